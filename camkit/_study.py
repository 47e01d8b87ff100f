"""A cross-framework study: the same model built in several frameworks (or one Keras model on
several Keras backends), every method explained in each, and every pair of builds compared.

Each build runs in a process of its own by default: frameworks that cannot share a process
(Keras picks its backend at import) then need nothing more than an environment variable, and
a build that fails takes only its process down. The core still imports no framework: a build
is named by a factory, ``"package.module:function"``, imported in its process.
"""

from __future__ import annotations

import importlib
import itertools
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._compare import Agreement, compare
from ._errors import CamkitError, InputError

__all__ = ["Build", "Study", "run_study"]


@dataclass(frozen=True)
class Build:
    """One framework's build of the model under study.

    ``factory`` names a function, ``"package.module:function"``, that returns
    ``(model, inputs)``: the model and the study's inputs in that framework's own layout and
    array type (channels-last for Keras and Flax). ``layer`` is the layer explained, by the
    framework's name for it (``None``: the automatic choice); methods that explain the image
    itself (Guided Backpropagation, FullGrad) are run with ``layer=None``. ``environment``
    is set in the build's process before the factory is imported
    (``{"KERAS_BACKEND": "tensorflow"}``).
    """

    name: str
    factory: str
    layer: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        module, _, function = self.factory.partition(":")
        if not module or not function:
            raise InputError(
                f"Build({self.name!r}).factory={self.factory!r} is not valid; name a function "
                "as 'package.module:function'"
            )


def _explain_build(
    build: Build, methods: Sequence[str], target: Any, options: Mapping[str, Mapping[str, Any]]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Build the model and explain its inputs with every method: ``{method: (cams,
    targets)}``. Runs in the build's process when the study uses processes."""
    os.environ.update(build.environment)
    import camkit  # after the environment: a backend may read it at import

    module, _, function = build.factory.partition(":")
    model, inputs = getattr(importlib.import_module(module), function)()
    found = {}
    for method in methods:
        chosen = camkit.methods().get(method)
        layer = build.layer if chosen is None or chosen.explains_layer else None
        explanation = camkit.explain(
            model, inputs, method, layer, target, **options.get(method, {})
        )
        found[method] = (explanation.cams, explanation.targets)
    return found


def _run(
    build: Build, methods: Sequence[str], target: Any,
    options: Mapping[str, Mapping[str, Any]], processes: bool,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    try:
        if not processes:
            return _explain_build(build, methods, target, options)
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no framework
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(_explain_build, build, methods, target, options).result()
    except CamkitError:
        raise
    except Exception as error:  # the factory's own failure, named with the build
        where = "in its process" if processes else "here"
        raise CamkitError(
            f"build {build.name!r} ({build.factory}) failed {where}: "
            f"{type(error).__name__}: {error}"
        ) from error


@dataclass(frozen=True)
class Study:
    """The maps of every build and method, and every pair of builds compared.

    ``maps[(build, method)]`` ``(N, *S)``; ``targets`` ``(N,)`` the classes every build
    explains (the first build's choice); ``agreements[(method, a, b)]`` the
    :class:`~camkit.Agreement` of builds ``a`` and ``b``'s maps.
    """

    builds: tuple[str, ...]
    methods: tuple[str, ...]
    maps: dict[tuple[str, str], np.ndarray]
    targets: np.ndarray
    agreements: dict[tuple[str, str, str], Agreement]

    def rows(self) -> list[dict[str, Any]]:
        """One row per method and pair of builds, with each measure's mean over the inputs."""
        return [
            {"method": method, "a": a, "b": b, **agreement.means}
            for (method, a, b), agreement in self.agreements.items()
        ]

    def table(self) -> str:
        """The rows as a Markdown table."""
        lines = [
            "| method | builds | Pearson | Spearman | max abs difference | top-k IoU | same peak |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in self.rows():
            lines.append(
                f"| `{row['method']}` | {row['a']} / {row['b']} | {row['pearson']:.6f} | "
                f"{row['spearman']:.6f} | {row['max_difference']:.2e} | {row['top_iou']:.3f} | "
                f"{row['same_peak']:.2f} |"
            )
        return "\n".join(lines)

    def figure(self, sample: int = 0, colormap: str = "jet") -> np.ndarray:
        """A grid of sample ``sample``'s maps: one row per method, one column per build
        (uint8 RGB)."""
        from ._overlay import image_grid, overlay

        tiles, titles = [], []
        for method in self.methods:
            for build in self.builds:
                cam = self.maps[(build, method)][sample]
                tiles.append(overlay(np.zeros((*cam.shape, 3), np.uint8), cam, 1.0, colormap))
                titles.append(f"{method} / {build}")
        return image_grid(tiles, columns=len(self.builds), titles=titles)


def run_study(
    builds: Sequence[Build],
    methods: Sequence[str] = ("gradcam",),
    target: Any = None,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    processes: bool = True,
    top: int | float = 0.1,
) -> Study:
    """Explain the same inputs with every method in every build and compare every pair.

    The first build explains ``target`` (``None``: each input's top-1 class); the others
    explain the classes it chose, so that a build whose logits differ slightly still explains
    the same class. ``options[method]`` are that method's options (``{"scorecam":
    {"batch_size": 8}}``). With ``processes`` each build runs in a fresh process of its own
    (spawned; its ``environment`` set first), one at a time; without, all run here. Agreement
    per pair and method as :func:`camkit.compare` measures it (``top``: its top-k pixels).
    """
    builds = list(builds)
    names = [build.name for build in builds]
    if len(builds) < 2 or len(set(names)) != len(names):
        raise InputError(
            f"builds are named {names}; a study compares at least two builds with distinct names"
        )
    if not methods or isinstance(methods, str):
        raise InputError(f"methods={methods!r} is not valid; give a sequence of method names")
    options = dict(options or {})
    maps: dict[tuple[str, str], np.ndarray] = {}
    pinned: Any = target
    targets = np.empty(0, np.int64)
    for index, build in enumerate(builds):
        found = _run(build, list(methods), pinned, options, processes)
        for method, (cams, chosen) in found.items():
            maps[(build.name, method)] = cams
            if index == 0:
                targets = chosen
        if index == 0 and (targets >= 0).all():
            pinned = targets.tolist()
    agreements = {
        (method, a, b): compare(maps[(a, method)], maps[(b, method)], top=top)
        for method in methods
        for a, b in itertools.combinations(names, 2)
    }
    return Study(tuple(names), tuple(methods), maps, targets, agreements)
