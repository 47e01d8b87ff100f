"""The shared pipeline of every method: capture, per-layer map, ReLU, resize, normalize, fuse.

A method subclass says only what it needs (gradients or not, optional capabilities) and how one
layer's activations and gradients become one raw map, ``layer_map(A, G) -> (N, H, W)``. The
pipeline around it is the same for every method:

1. the backend runs the model once and captures each layer's activations ``A`` and gradients
   ``G = dS/dA`` of the target score ``S`` (token layers ``(N, T, C)`` become grids);
2. per layer: ``M = layer_map(A, G)``, then ``ReLU(M)`` if ``relu``, then a bilinear resize
   to the output size, then a per-map min-max normalization if ``normalize == "minmax"``;
3. several layers are fused (mean, max or product) and the fused map normalized again.

A target with ``K`` scores per sample (``TopK``, a box per map, ...) is captured once, with
``K`` gradients per layer; the pipeline then runs on ``N * K`` virtual samples (each sample's
activations repeated, one gradient each) and its maps come back as ``(N, K, *S)``.

Everything up to the final maps runs in the backend's namespace, on the model's device. Only the
final maps and scores come back to the host, and they are what non-finite inputs are detected
from: no extra check waits on the device.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import numpy as np
from array_api_compat import array_namespace

from . import _checks, _ops
from ._choose import choose_layer
from ._errors import CamkitError, CapabilityError, InputError, LayerError
from ._inputs import ModelInputs, as_model_inputs
from ._layout import LayerTable, LayoutLike, check_layout, layer_layout, to_channels_first
from ._output import MapDtype, NonFinite, Output, host_array, map_dtype
from ._protocol import (
    FORWARD_SCORES,
    FUSED_PIPELINE,
    ActivationGradientProvider,
    Batch,
    Capture,
    capability,
)
from ._registry import provider_for
from ._scoring import TargetLike, as_target
from ._smoothing import Augmentations, as_augmentations, smoothed_maps
from ._targets import Target

__all__ = [
    "CamMethod",
    "ChannelWeightedMethod",
    "Explanation",
    "NonFinite",
    "Normalize",
    "OutputSize",
]

Array = Any
Normalize = Literal["minmax", "none", "minmax-before-resize"]
OutputSize = Literal["input", "layer"] | tuple[int, ...]
LayerLike = str | object


@dataclass(frozen=True, repr=False)
class Explanation:
    """The result of explaining a batch.

    ``cams`` ``(N, *S)`` float32 (``(N, H, W)`` for images, ``(N, L)`` for signals,
    ``(N, D, H, W)`` for volumes), in ``[0, 1]`` when normalized; ``targets`` ``(N,)`` int64,
    the output index each map explains (``-1`` for a callable target); ``scores`` ``(N,)``
    float32, the target score of each sample; ``layers`` the layers' names as the backend knows
    them; ``method`` and ``backend`` the names used. For a target with ``K`` scores per sample
    (``TopK(k)``, classes per sample, one per box), ``cams`` is ``(N, K, *S)`` and ``targets``
    and ``scores`` are ``(N, K)``: ``cams[n, k]`` explains ``scores[n, k]``, of class
    ``targets[n, k]``.

    ``attributions`` is ``None``, except for the methods that explain each input channel
    (Guided Backpropagation, Guided Grad-CAM): then it is ``(N, C, *S)`` float32 (``(N, K, C,
    *S)`` for ``K`` scores per sample), channels-first whatever the model's layout, unscaled,
    and ``cams`` is its magnitude over channels, ``max_c |attributions[n, c]|`` (normalized
    as ``cams`` are).

    With ``on_device=True`` the arrays are the model's framework's, on its device (``targets``
    in the framework's integer type); :meth:`numpy` copies them to the host. ``cams`` are
    float16 or uint8 (``round(255 * map)``) when ``dtype=`` asks for it.
    """

    cams: Array
    targets: Array
    scores: Array
    layers: tuple[str, ...]
    method: str
    backend: str
    attributions: Array | None = None

    def __len__(self) -> int:
        return int(self.cams.shape[0])

    def numpy(self) -> Explanation:
        """This explanation with numpy arrays on the host (itself when they are already):
        ``targets`` int64, ``scores`` float32, ``cams`` in their dtype."""
        if isinstance(self.cams, np.ndarray):
            return self
        attributions = None if self.attributions is None else host_array(self.attributions)
        return dataclasses.replace(
            self, cams=np.ascontiguousarray(host_array(self.cams)),
            targets=host_array(self.targets).astype(np.int64),
            scores=host_array(self.scores).astype(np.float32), attributions=attributions,
        )  # fmt: skip

    def __repr__(self) -> str:
        targets = (
            repr(self.targets.tolist()) if isinstance(self.targets, np.ndarray)
            else f"<{type(self.targets).__name__} {tuple(self.targets.shape)}>"
        )  # fmt: skip
        return (
            f"Explanation(method={self.method!r}, backend={self.backend!r}, "
            f"layers={self.layers!r}, cams=<{self.cams.dtype} {tuple(self.cams.shape)}>, "
            f"targets={targets})"
        )


class CamMethod(ABC):
    """A class-activation-map method bound to one model and its layers.

    Build it once and call it on batches: ``cam = camkit.GradCAM(model); cam(x, target=3)``.
    Use it as a context manager (or call :meth:`close`) to release what the backend caches.

    Args:
        model: the model, in any framework a backend handles.
        layer: a layer name, a layer object, or a sequence of them (their maps are fused);
            ``None`` picks the last layer whose every position reaches the target's score
            (see :func:`camkit.layers` for what a model offers).
        backend: a backend name (``"torch"``, ...) to override automatic selection.
        relu: keep only the positive part of each layer's map; ``None`` uses the method's
            paper (on for the gradient methods, off for CAM and Eigen-CAM).
        normalize: ``"minmax"`` rescales each map to ``[0, 1]`` after resizing it; ``"none"``
            keeps raw values; ``"minmax-before-resize"`` rescales each layer's map at its own
            size, then resizes it, and rescales the (fused) result again (pytorch-grad-cam's
            reading; for one layer it equals ``"minmax"``, min-max being affine).
        size: ``"input"`` (the inputs' spatial size), ``"layer"`` (the largest layer's own
            size) or a size with one number per spatial axis (``(H, W)`` for images).
        fusion: how several layers' maps combine: ``"mean"``, ``"max"`` or ``"product"``.
        layout: how the layers' outputs are laid out: ``"channels_first"`` ``(N, C, *S)``,
            ``"channels_last"`` ``(N, *S, C)``, ``"tokens"`` ``(N, T, C)``, or a function in
            the model's framework turning the output into ``(N, C, *S)``; ``None`` infers it
            from the framework (a module type, a Keras ``data_format``, a channels-last
            framework) and says so where it cannot.
        grid: the patch grid of token layers, one number per spatial axis; ``None`` finds it
            from the inputs' size.
        prefix_tokens: leading tokens (class, distillation, registers) to drop from token
            layers; ``None`` drops the fewest that leave a grid of the inputs' shape.
        nonfinite: what a sample whose score or map is NaN or infinite (NaN or inf in its
            inputs, say) gets: ``"raise"`` an :class:`~camkit.InputError` naming the samples,
            ``"nan"`` a map of NaN (so that a long run goes on and the sample can be dropped).
        eigen_smooth: replace each layer's channel sum ``sum_c Z[n, c]`` of its per-channel
            contributions (``w_c A_c`` for channel-weighted methods, ``G * A`` for HiResCAM,
            ...) by their mean-centred first principal projection
            (:func:`camkit._ops.first_principal_projection`, pytorch-grad-cam's
            ``eigen_smooth``); it removes noise at the price of class-discrimination.
        aug_smooth: ``True`` averages the maps of augmented views of the inputs (horizontal
            flips times intensity factors 0.9, 1, 1.1, as pytorch-grad-cam does), each brought
            back onto the inputs' pixels; a :class:`~camkit.Augmentations` chooses the views
            (flips, factors, spatial scales). Needs the ``forward_scores`` capability.
        on_device: keep the result's arrays as the framework's arrays on the model's device
            (:meth:`Explanation.numpy` copies them to the host when wanted): nothing is read
            back from the device, except, with ``nonfinite="raise"``, the ``(N,)`` flags of
            which samples are finite (pass ``nonfinite="nan"`` to read nothing).
        dtype: the maps' dtype: ``"float32"``, ``"float16"`` or ``"uint8"``
            (``round(255 * map)``, for normalized maps); cast on the device, before any copy.

    A method object may be called from several threads; calls on one model run one at a time
    (each backend holds the model's lock while it runs the model).
    """

    #: The name ``camkit.explain`` knows the method by.
    name: ClassVar[str]
    #: The paper that defines the method.
    paper: ClassVar[str]
    #: Whether the method needs ``dS/dA``.
    needs_gradients: ClassVar[bool] = True
    #: Whether the paper applies a ReLU to the map.
    relu_by_default: ClassVar[bool] = True
    #: Optional provider capabilities the method needs.
    requires: ClassVar[frozenset[str]] = frozenset()
    #: Whether the map pipeline is a pure function of the capture (compilable with it).
    fusable: ClassVar[bool] = True
    #: Whether the method reads ``batch.inputs`` and ``batch.target`` (to run more passes).
    needs_inputs: ClassVar[bool] = False
    #: Whether ``layer`` names the layer whose output the map is made of (``False`` for the
    #: methods that explain the image itself: Guided Backpropagation takes no layer, FullGrad
    #: takes a subset of the layers with biases).
    explains_layer: ClassVar[bool] = True

    provider: ActivationGradientProvider

    def __init__(
        self,
        model: Any,
        layer: LayerLike | Sequence[LayerLike] | None = None,
        *,
        backend: str | None = None,
        relu: bool | None = None,
        normalize: Normalize = "minmax",
        size: OutputSize = "input",
        fusion: _ops.Fusion = "mean",
        layout: LayoutLike | None = None,
        grid: Sequence[int] | None = None,
        prefix_tokens: int | None = None,
        nonfinite: NonFinite = "raise",
        eigen_smooth: bool = False,
        aug_smooth: bool | Augmentations = False,
        on_device: bool = False,
        dtype: MapDtype = "float32",
    ) -> None:
        self.normalize: Normalize = _checks.one_of(normalize, "normalize", get_args(Normalize))
        self.fusion: _ops.Fusion = _checks.one_of(fusion, "fusion", ("mean", "max", "product"))
        self.size: OutputSize = (
            size
            if isinstance(size, str) and size in ("input", "layer")
            else _checks.positive_sizes(size, "size", "'input', 'layer' or (height, width)")
        )
        flag = _checks.optional_flag(relu, "relu")
        self.relu = self.relu_by_default if flag is None else flag
        self.layout = check_layout(layout)
        self.grid = None if grid is None else _checks.positive_sizes(
            grid, "grid", "the patch grid, (rows, columns) for images, or None to find it"
        )  # fmt: skip
        self.prefix_tokens = (
            None if prefix_tokens is None
            else _checks.non_negative_int(prefix_tokens, "prefix_tokens")
        )  # fmt: skip
        checked: NonFinite = _checks.one_of(nonfinite, "nonfinite", ("raise", "nan"))
        self.output = Output(
            on_device=bool(_checks.optional_flag(on_device, "on_device")),
            dtype=map_dtype(dtype, normalized=self.normalize != "none", nonfinite=checked),
            nonfinite=checked,
        )
        self.eigen_smooth = bool(_checks.optional_flag(eigen_smooth, "eigen_smooth"))
        self.aug_smooth = as_augmentations(aug_smooth)
        self.backend, self.provider = provider_for(model, backend)
        wanted = self.requires | ({FORWARD_SCORES} if self.aug_smooth else frozenset())
        missing = wanted - self.provider.capabilities
        if missing:
            raise CapabilityError(
                f"method {self.name!r} needs the capability {str(sorted(missing)[0])!r}, which "
                f"the {self.backend!r} backend does not provide for this model "
                f"({type(model).__qualname__}); choose a method that needs only "
                f"{sorted(map(str, self.provider.capabilities)) or 'activations and gradients'}"
            )
        self._layers = None if layer is None else self._resolve(layer)
        self._closed = False

    def _resolve(self, layer: LayerLike | Sequence[LayerLike]) -> tuple[str, ...]:
        items = list(layer) if isinstance(layer, (list, tuple)) else [layer]
        layers = tuple(self.provider.resolve_layer(item) for item in items)
        if not layers:
            raise InputError("layer=[] names no layer; pass None to pick one automatically")
        return layers

    @property
    def nonfinite(self) -> NonFinite:
        """``nonfinite=`` as given (held by :attr:`output`, which applies it)."""
        return self.output.nonfinite

    @property
    def layers(self) -> tuple[str, ...] | None:
        """The layers' names; ``None`` until the first call when chosen automatically."""
        return self._layers

    def __call__(
        self,
        inputs: Any,
        target: TargetLike = None,
        *,
        image: int | str | None = None,
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> Explanation:
        """Explain a batch: ``inputs``, ``target``, ``image`` and ``forward_kwargs`` as in
        :func:`camkit.explain`."""
        if self._closed:
            raise CamkitError(f"this {type(self).__name__} is closed; create a new one")
        model_inputs = as_model_inputs(inputs, forward_kwargs, image)
        chosen = as_target(target)
        if self.aug_smooth is None:
            return self._explanation(*self._maps(model_inputs, chosen))
        return self._explanation(*smoothed_maps(self, model_inputs, chosen, self.aug_smooth))

    def _maps(self, model_inputs: ModelInputs, chosen: Target) -> tuple[Array, Capture]:
        """The maps of one batch, in the backend's namespace, and the capture they came from."""
        table = self.provider.layers(model_inputs)
        if self._layers is None:
            if "layer" not in table.chosen:
                table.chosen["layer"] = choose_layer(self.provider, model_inputs, chosen, table)
            self._layers = (table.chosen["layer"],)
        layers = self._layers
        layouts = tuple(self._layout_of(table, name) for name in layers)
        size = self.provider.input_size(model_inputs)
        for argument, value in (("grid", self.grid), ("size", self.size)):
            if isinstance(value, tuple) and len(value) != len(size):
                raise InputError(
                    f"{argument}={value!r} has {len(value)} axes but the inputs have "
                    f"{len(size)} spatial axes {size}; give one number per axis"
                )
        if self.fusable and FUSED_PIPELINE in self.provider.capabilities:
            detached = self._detached()

            def pipeline(capture: Capture, size: tuple[int, ...]) -> Array:
                return detached._pipeline(capture, Batch(size, layouts))

            return capability(self.provider, FUSED_PIPELINE).run_pipeline(
                model_inputs, layers, chosen, gradients=self.needs_gradients,
                pipeline=pipeline, key=(self._pipeline_key(), layouts),
            )  # fmt: skip
        capture = self._capture(model_inputs, layers, chosen)
        batch = Batch(size, layouts)
        if self.needs_inputs:
            x = capability(self.provider, FORWARD_SCORES).core_inputs(model_inputs)
            batch = dataclasses.replace(batch, image=x, inputs=model_inputs, target=chosen)
        return self._pipeline(capture, batch), capture

    def _layout_of(self, table: LayerTable, layer: str) -> LayoutLike:
        """How ``layer``'s output is read: ``layout=``, else as the layer table says."""
        if layer not in table:
            raise LayerError(
                f"layer {layer!r} was not called during the forward pass; choose a layer that "
                "the model uses"
            )
        return layer_layout(table[layer], self.layout, table)

    def _capture(self, inputs: ModelInputs, layers: Sequence[str], target: Target) -> Capture:
        """The provider's capture of one batch; a method needing several overrides this."""
        return self.provider.capture(inputs, layers, target, gradients=self.needs_gradients)

    def _pipeline_key(self) -> tuple[Any, ...]:
        """Everything the map pipeline depends on: equal keys give equal pipelines."""
        options = (
            self.relu, self.normalize, self.size, self.fusion, self.grid, self.prefix_tokens,
            self.eigen_smooth,
        )  # fmt: skip
        return (type(self), *options, *self._method_options())

    def _method_options(self) -> tuple[Any, ...]:
        """A subclass's own options that change its maps."""
        return ()

    def _detached(self) -> CamMethod:
        """A copy without the provider, for compiled caches that must not keep models alive."""
        clone = copy.copy(self)
        clone.provider = None  # type: ignore[assignment]
        return clone

    def _pipeline(self, capture: Capture, batch: Batch) -> Array:
        """Capture -> maps ``(N, *S)``, or ``(N, K, *S)`` for ``K`` scores per sample: a pure
        function of the capture's arrays."""
        columns = int(capture.scores.shape[1]) if capture.scores.ndim == 2 else None
        if columns is not None:
            capture = _virtual_samples(capture, columns)
            batch = dataclasses.replace(batch, columns=columns)
        maps = self._layer_maps(capture, batch)
        out_size = self._output_size(batch.size, maps)
        maps = [self._finish(m, out_size) for m in maps]
        cams = _ops.fuse(maps, self.fusion)
        if self.normalize == "minmax-before-resize" or (
            len(maps) > 1 and self.normalize == "minmax"
        ):
            cams = _ops.normalize_minmax(cams)
        if columns is not None:
            cams = array_namespace(cams).reshape(cams, (-1, columns, *cams.shape[1:]))
        return cams

    def _layer_maps(self, capture: Capture, batch: Batch) -> list[Array]:
        """Each layer's raw map ``(N, *S)``, in the order of ``layers``."""
        gradients = capture.gradients or (None,) * len(capture.activations)
        maps = []
        for layer, layout, activations, layer_gradients in zip(
            self._layers or (), batch.layouts, capture.activations, gradients, strict=True
        ):
            activations = self._as_grid(activations, layer, layout, batch)
            if layer_gradients is not None:
                layer_gradients = self._as_grid(layer_gradients, layer, layout, batch)
            maps.append(self.layer_map(activations, layer_gradients, capture, batch))
        return maps

    def _as_grid(self, x: Array, layer: str, layout: LayoutLike, batch: Batch) -> Array:
        """A layer's output in ``layout`` as ``(N, C, *S)``, with as many spatial axes as the
        inputs."""
        grid = to_channels_first(x, layout, batch.size, self.grid, self.prefix_tokens)
        if grid.ndim != len(batch.size) + 2:
            raise InputError(
                f"layer {layer!r} read as {layout!r} gives shape {tuple(grid.shape)}, not "
                f"(N, C) and {len(batch.size)} spatial axes like the inputs; choose a layer "
                "with spatial axes, or pass layout= (see camkit.layers(model, inputs))"
            )
        return grid

    def _output_size(self, input_size: tuple[int, ...], maps: Sequence[Array]) -> tuple[int, ...]:
        if self.size == "input":
            return input_size
        if self.size == "layer":
            sizes = [tuple(int(s) for s in m.shape[1:]) for m in maps]
            return max(sizes, key=math.prod)
        return tuple(self.size)

    def _finish(self, layer_map: Array, size: tuple[int, ...]) -> Array:
        if self.relu:
            layer_map = _ops.relu(layer_map)
        if self.normalize == "minmax-before-resize":
            return _ops.resize_linear(_ops.normalize_minmax(layer_map), size)
        layer_map = _ops.resize_linear(layer_map, size)
        return _ops.normalize_minmax(layer_map) if self.normalize == "minmax" else layer_map

    def _channel_sum(self, contributions: Array) -> Array:
        """``(N, C, *S) -> (N, *S)``: a layer's map from its per-channel contributions, their
        sum, or with ``eigen_smooth`` their mean-centred first principal projection."""
        if self.eigen_smooth:
            return _ops.first_principal_projection(contributions, centered=True)
        return array_namespace(contributions).sum(contributions, axis=1)

    def _weighted_channel_sum(self, weights: Array, activations: Array) -> Array:
        """``(N, C), (N, C, *S) -> (N, *S)``: ``sum_c w[n, c] A[n, c]`` (see
        :meth:`_channel_sum` for ``eigen_smooth``)."""
        if self.eigen_smooth:
            xp = array_namespace(weights)
            spread = (*weights.shape, *(1,) * (activations.ndim - 2))
            return self._channel_sum(xp.reshape(weights, spread) * activations)
        return _ops.weighted_channel_sum(weights, activations)

    def _explanation(
        self, cams: Array, capture: Capture, *, attributions: Array | None = None,
        layers: tuple[str, ...] | None = None,
    ) -> Explanation:  # fmt: skip
        """The final step: the maps and scores of a batch as ``on_device``/``dtype`` ask
        (:class:`~camkit._output.Output`), the only step that reads from the device."""
        maps, targets, scores, attributions = self.output.finish(
            cams, capture.scores, capture.indices, attributions, self.provider.to_numpy
        )
        return Explanation(
            cams=maps,
            targets=targets,
            scores=scores,
            layers=tuple(self._layers or ()) if layers is None else layers,
            method=self.name,
            backend=self.backend,
            attributions=attributions,
        )

    @abstractmethod
    def layer_map(
        self, activations: Array, gradients: Array | None, capture: Capture, batch: Batch
    ) -> Array:
        """One layer's raw map, ``(N, C, H, W), (N, C, H, W) -> (N, H, W)``."""

    def close(self) -> None:
        """Release the backend's caches; the object cannot be called afterwards."""
        if not self._closed:
            self._closed = True
            self.provider.close()

    def __enter__(self) -> CamMethod:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={self._layers!r}, backend={self.backend!r})"


class ChannelWeightedMethod(CamMethod):
    """A method whose map is a weighted sum of channels: ``M = sum_c w[n, c] * A[n, c]``."""

    @abstractmethod
    def channel_weights(
        self, activations: Array, gradients: Array | None, capture: Capture, batch: Batch
    ) -> Array:
        """``(N, C, H, W), (N, C, H, W) -> (N, C)``: one weight per sample and channel."""

    def layer_map(
        self, activations: Array, gradients: Array | None, capture: Capture, batch: Batch
    ) -> Array:
        weights = self.channel_weights(activations, gradients, capture, batch)
        return self._weighted_channel_sum(weights, activations)


def _virtual_samples(capture: Capture, columns: int) -> Capture:
    """A capture of ``K = columns`` scores per sample as ``N * K`` virtual samples, sample
    ``n``'s score ``k`` at ``n * K + k``: activations repeated ``K`` times, gradients
    ``(N, K, ...)``, scores and indices ``(N, K)`` flattened."""
    xp = array_namespace(capture.scores)
    count = capture.scores.shape[0]
    for activations, gradients in zip(capture.activations, capture.gradients or (), strict=False):
        if tuple(gradients.shape) != (count, columns, *activations.shape[1:]):
            raise CapabilityError(
                f"the backend returned gradients of shape {tuple(gradients.shape)} for a "
                f"target with {columns} scores per sample; it must return one gradient per "
                f"score, shape {(count, columns, *activations.shape[1:])} (see "
                "camkit.provider.Capture); explain one target at a time with this backend"
            )

    def flat(array: Array) -> Array:
        return xp.reshape(array, (-1, *array.shape[2:]))

    return Capture(
        activations=tuple(xp.repeat(a, columns, axis=0) for a in capture.activations),
        gradients=None if capture.gradients is None else tuple(map(flat, capture.gradients)),
        outputs=capture.outputs,
        scores=flat(capture.scores),
        indices=None if capture.indices is None else flat(capture.indices),
    )
