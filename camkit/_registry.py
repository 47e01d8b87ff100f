"""Backend discovery and selection through pluggy.

Backends are found through the ``camkit`` entry-point group. Each entry point names a module (or
object) implementing the ``camkit_backends`` hook, which returns cheap :class:`Backend` records;
the heavy provider is imported only when a model needs it. Entry points load one at a time: one
that fails becomes a warning and an entry in :func:`camkit.backends`, never a crash.

Environment variables, read when the registry first loads:

``CAMKIT_DISABLE_PLUGIN_AUTOLOAD``
    Any non-empty value skips third-party entry points; camkit's own backends still load.
``CAMKIT_BLOCK_PLUGINS``
    Comma-separated entry-point names never to load, camkit's own included (``torch,tf``).

camkit's own entry points load first, and the backend names ``torch``, ``tf`` and ``jax`` are
reserved for them: a third-party plugin using one becomes a warning, never a takeover. A plugin
that raises anything (``SystemExit`` included) while it loads, lists its backends, or answers
``available()``/``can_handle()`` is skipped with a warning and shown in :func:`camkit.backends`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

from ._errors import BackendError, CamkitError, closest_names
from ._protocol import ActivationGradientProvider

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendInfo",
    "backends",
    "hookimpl",
    "module_available",
    "provider_for",
    "register_backend",
]

ENTRY_POINT_GROUP = "camkit"
_DISTRIBUTION = "camkit"
hookspec = pluggy.HookspecMarker(ENTRY_POINT_GROUP)
#: Decorator for a plugin's ``camkit_backends()`` hook implementation.
hookimpl = pluggy.HookimplMarker(ENTRY_POINT_GROUP)

ProviderFactory = Callable[[Any], ActivationGradientProvider]


def _always() -> bool:
    return True


def module_available(module: str) -> Callable[[], bool]:
    """An ``available`` check for :class:`Backend`: whether ``module`` is importable, found
    without importing it (or already imported). Once found, it stays found (the search costs
    a file-system walk, on every selection of a backend)."""
    found = False

    def available() -> bool:
        nonlocal found
        found = found or module in sys.modules or importlib.util.find_spec(module) is not None
        return found

    return available


@dataclass(frozen=True)
class Backend:
    """A backend's registration record. Everything here must be cheap: no framework imports.

    ``provider`` is a factory ``provider(model)`` or its lazy import path ``"module:attribute"``.
    ``can_handle(model)`` claims a model (it must not import the framework: check
    ``sys.modules`` first); ``available()`` says whether the framework is installed. Among the
    claimants the highest ``priority`` wins; ``install`` tells users how to get the framework.
    """

    name: str
    provider: str | ProviderFactory
    can_handle: Callable[[Any], bool]
    available: Callable[[], bool] = _always
    priority: int = 0
    install: str = ""


@dataclass(frozen=True)
class BackendInfo:
    """What :func:`camkit.backends` reports of one backend or failed plugin."""

    name: str
    available: bool
    loaded: bool
    priority: int | None = None
    error: str | None = None


class _HookSpecs:
    @hookspec
    def camkit_backends(self) -> Sequence[Backend]:  # type: ignore[empty-body]
        """Return the backends this plugin provides."""


#: Backend names kept for camkit's own backends: a third-party plugin cannot take them over.
RESERVED_NAMES = frozenset({"torch", "tf", "jax", "keras"})
#: What a plugin may raise and still leave camkit working: anything but a keyboard interrupt.
_PLUGIN_FAILURES = (Exception, SystemExit)


@dataclass
class _Registry:
    backends: dict[str, Backend] = field(default_factory=dict)
    factories: dict[str, ProviderFactory] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # plugins that registered nothing
    errors: dict[str, str] = field(default_factory=dict)  # registered backends that misbehaved
    loaded: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)

    def ensure_loaded(self) -> None:
        with self.lock:
            if self.loaded:
                return
            self.loaded = True
            manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
            manager.add_hookspecs(_HookSpecs)
            own: set[str] = set()
            for entry_point, is_own in self._entry_points():
                name = entry_point.name
                if name in RESERVED_NAMES and not is_own:  # never in the way of camkit's own
                    name = f"{name} ({_distribution(entry_point)})"
                try:
                    manager.register(entry_point.load(), name=name)
                except _PLUGIN_FAILURES as error:  # a broken plugin must not break camkit
                    self._fail(name, error)
                    continue
                if is_own:
                    own.add(name)
            for implementation in manager.hook.camkit_backends.get_hookimpls():
                plugin = implementation.plugin_name
                try:
                    returned: Any = implementation.function()
                    records = list(returned)
                except _PLUGIN_FAILURES as error:
                    self._fail(plugin, error)
                else:
                    self._add_all(plugin, records, plugin in own)

    def _entry_points(self) -> list[tuple[importlib.metadata.EntryPoint, bool]]:
        """The entry points to load, camkit's own first, each with whether it is camkit's."""
        blocked = {n.strip() for n in os.environ.get("CAMKIT_BLOCK_PLUGINS", "").split(",")}
        no_autoload = bool(os.environ.get("CAMKIT_DISABLE_PLUGIN_AUTOLOAD"))
        chosen = []
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            own = _distribution(entry_point) == _DISTRIBUTION
            if entry_point.name in blocked or (no_autoload and not own):
                continue
            chosen.append((entry_point, own))
        return sorted(chosen, key=lambda pair: not pair[1])

    def _fail(self, name: str, error: BaseException | str, backend: bool = False) -> None:
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        table = self.errors if backend else self.failures
        if name in table:
            return  # warned once already
        table[name] = message
        what = "backend {!r} misbehaved" if backend else "plugin {!r} failed to load"
        warnings.warn(
            f"camkit {what.format(name)} and is skipped ({message}); set "
            f"CAMKIT_BLOCK_PLUGINS={name.split(' ')[0]} to silence this",
            RuntimeWarning,
            stacklevel=5,
        )

    def _add_all(self, plugin: str, records: list[Any], own: bool) -> None:
        for record in records:
            if not isinstance(record, Backend):
                self._fail(plugin, TypeError(f"camkit_backends returned {record!r}"))
            elif record.name in RESERVED_NAMES and not own:
                self._fail(
                    plugin,
                    BackendError(f"backend name {record.name!r} is reserved for camkit's own"),
                )
            elif record.name in self.backends:
                self._fail(plugin, BackendError(f"backend {record.name!r} is taken"))
            else:
                self.backends[record.name] = record

    def ask(self, backend: Backend, question: str, *args: Any) -> bool:
        """``backend.available()`` or ``backend.can_handle(model)``; a backend that raises
        answers no, with a warning (once) and an entry in :func:`camkit.backends`."""
        try:
            return bool(getattr(backend, question)(*args))
        except _PLUGIN_FAILURES as error:
            self._fail(backend.name, f"{question}() raised {type(error).__name__}: {error}", True)
            return False

    def add(self, backend: Backend, replace: bool) -> None:
        with self.lock:
            self.ensure_loaded()
            if backend.name in self.backends and not replace:
                raise BackendError(
                    f"a backend named {backend.name!r} is already registered; pass "
                    "replace=True to replace it"
                )
            self.backends[backend.name] = backend
            self.factories.pop(backend.name, None)
            self.errors.pop(backend.name, None)

    def factory(self, backend: Backend) -> ProviderFactory:
        with self.lock:
            if backend.name not in self.factories:
                provider = backend.provider
                if isinstance(provider, str):
                    module, _, attribute = provider.partition(":")
                    try:
                        provider = getattr(importlib.import_module(module), attribute)
                    except _PLUGIN_FAILURES as error:
                        self._fail(backend.name, error, backend=True)
                        raise BackendError(
                            f"backend {backend.name!r} failed to load its provider "
                            f"{backend.provider!r}: {type(error).__name__}: {error}"
                        ) from error
                self.factories[backend.name] = provider
            return self.factories[backend.name]


def _distribution(entry_point: importlib.metadata.EntryPoint) -> str | None:
    return None if entry_point.dist is None else entry_point.dist.name


_REGISTRY = _Registry()


def register_backend(backend: Backend, *, replace: bool = False) -> None:
    """Register a backend directly, without an entry point (tests, notebooks, private code)."""
    _REGISTRY.add(backend, replace)


def backends() -> list[BackendInfo]:
    """Every known backend, and every plugin that failed to load, with its state."""
    _REGISTRY.ensure_loaded()
    infos = [
        BackendInfo(
            name=b.name,
            available=_REGISTRY.ask(b, "available"),
            loaded=b.name in _REGISTRY.factories,
            priority=b.priority,
            error=_REGISTRY.errors.get(b.name),
        )
        for b in list(_REGISTRY.backends.values())
    ]
    infos += [
        BackendInfo(name=name, available=False, loaded=False, error=message)
        for name, message in _REGISTRY.failures.items()
    ]
    return infos


def _describe(backend: Backend) -> str:
    if _REGISTRY.ask(backend, "available"):
        return backend.name
    return f"{backend.name} (framework not installed: {backend.install or 'see its docs'})"


def _select(model: object, name: str | None) -> Backend:
    _REGISTRY.ensure_loaded()
    known = _REGISTRY.backends
    if name is not None:
        if name in _REGISTRY.failures:
            raise BackendError(f"backend={name!r} failed to load: {_REGISTRY.failures[name]}")
        if name not in known:
            raise BackendError(f"backend={name!r} is not registered; {closest_names(name, known)}")
        backend = known[name]
        if not _REGISTRY.ask(backend, "available"):
            raise BackendError(
                f"backend={name!r} needs its framework, which is not installed: "
                f"{backend.install or 'install it'}"
            )
        return backend
    claimants = [
        b
        for b in list(known.values())
        if _REGISTRY.ask(b, "available") and _REGISTRY.ask(b, "can_handle", model)
    ]
    if not claimants:
        listed = ", ".join(_describe(b) for b in known.values()) or "none"
        raise BackendError(
            f"no camkit backend can handle a model of type {_qualname(model)}; backends: "
            f"{listed}. Pass backend= to choose one, or register one with "
            "camkit.register_backend"
        )
    best = max(b.priority for b in claimants)
    top = [b for b in claimants if b.priority == best]
    if len(top) > 1:
        names = ", ".join(repr(b.name) for b in top)
        raise BackendError(
            f"backends {names} all claim a model of type {_qualname(model)} at priority {best}; "
            "pass backend= to choose one"
        )
    return top[0]


def _qualname(model: object) -> str:
    kind = type(model)
    return f"{kind.__module__}.{kind.__qualname__}"


def provider_for(
    model: object, backend: str | None = None
) -> tuple[str, ActivationGradientProvider]:
    """The name and a new provider of the backend that handles ``model`` (or of ``backend``)."""
    chosen = _select(model, backend)
    factory = _REGISTRY.factory(chosen)
    try:
        return chosen.name, factory(model)
    except CamkitError:
        raise
    except Exception as error:
        raise BackendError(
            f"the {chosen.name!r} backend failed to set up {_qualname(model)}: "
            f"{type(error).__name__}: {error}"
        ) from error
