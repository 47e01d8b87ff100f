"""What camkit keeps per model, and the lock that lets one thread at a time run it.

One cache-lifetime policy for every backend: what camkit learns or compiles about a model lives
in a record keyed by the model object's identity and held weakly, so it goes when the model
goes and never keeps it alive; compiled functions are further bounded per model
(:class:`CompiledCache`, least recently used dropped first).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from ._layout import LayerTable

__all__ = ["CompiledCache", "ModelTable", "layer_table", "model_lock"]

T = TypeVar("T")
F = TypeVar("F")


class ModelTable(Generic[T]):
    """Records per model object, made by ``factory`` on first use and dropped with the model.

    Keyed by identity (models need not be hashable: an Equinox module is not) and held through
    a weak reference. An object that cannot be weakly referenced gets a fresh record at every
    call, remembered nowhere.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._records: dict[int, tuple[weakref.ref[object], T]] = {}
        # re-entrant: a collection inside get() may run a weak-reference callback here
        self._lock = threading.RLock()

    def get(self, model: object) -> T:
        key = id(model)
        with self._lock:
            entry = self._records.get(key)
            if entry is not None and entry[0]() is model:
                return entry[1]
            record = self._factory()
            try:
                reference = weakref.ref(model, self._forget(key))
            except TypeError:
                return record
            self._records[key] = (reference, record)
            return record

    def _forget(self, key: int) -> Callable[[weakref.ref[object]], None]:
        def forget(reference: weakref.ref[object]) -> None:
            with self._lock:
                entry = self._records.get(key)
                if entry is not None and entry[0] is reference:
                    del self._records[key]

        return forget

    def __len__(self) -> int:
        return len(self._records)


_LOCKS: ModelTable[threading.RLock] = ModelTable(threading.RLock)


def model_lock(model: object) -> threading.RLock:
    """The model's lock: a provider holds it while it runs the model, so that two threads never
    interleave their hooks, mode switches or shadowed calls on one model.

    Re-entrant, one per model object (pass the object that identifies the model: for a pair
    such as ``(module, variables)``, the module).
    """
    return _LOCKS.get(model)


_TABLES: ModelTable[dict[Hashable, LayerTable]] = ModelTable(dict)


def layer_table(model: object, key: Hashable, probe: Callable[[], LayerTable]) -> LayerTable:
    """The layer table of ``model`` for inputs of signature ``key``
    (``ModelInputs.signature()``): ``probe()`` on the first call, remembered per model (with
    the automatic layer chosen from it) afterwards."""
    with model_lock(model):
        tables = _TABLES.get(model)
        if key not in tables:
            tables[key] = probe()
        return tables[key]


class CompiledCache(Generic[F]):
    """Compiled functions by key, at most ``limit`` of them (least recently used dropped first),
    with how many times each was traced.

    ``get(key, build)`` calls ``build(traced)`` to make a missing function; the function's
    Python body calls ``traced()`` each time the compiler traces it (Python runs only then).
    """

    def __init__(self, limit: int = 32) -> None:
        self.limit = limit
        self._functions: OrderedDict[Hashable, F] = OrderedDict()
        self._traces: dict[Hashable, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[Callable[[], None]], F]) -> F:
        """The function under ``key``, built if there is none."""
        with self._lock:
            if key in self._functions:
                self._functions.move_to_end(key)
                return self._functions[key]
        function = build(lambda: self._traced(key))
        with self._lock:
            self._functions[key] = function
            while len(self._functions) > self.limit:
                dropped, _ = self._functions.popitem(last=False)
                self._traces.pop(dropped, None)
        return function

    def _traced(self, key: Hashable) -> None:
        with self._lock:
            self._traces[key] = self._traces.get(key, 0) + 1
            self._total += 1

    def traces(self, keys: Iterable[Hashable] | None = None) -> int:
        """How many times the functions under ``keys`` (all, ever, if ``None``) were traced."""
        with self._lock:
            if keys is None:
                return self._total
            return sum(self._traces.get(key, 0) for key in keys)

    def __len__(self) -> int:
        return len(self._functions)
