"""The last step of every explanation: from the pipeline's arrays on the model's device to what
the user asked for.

Everything before this step stays on the device and never waits on it (tests/test_host_sync.py
proves it). Here, still on the device, samples whose score or map is not finite are found and
(with ``nonfinite="nan"``) given NaN maps, and the maps are cast to the dtype asked for:
``float16`` halves and ``uint8`` quarters the copy that follows, which for a fast model is the
next cost after the forward pass. Then either everything is copied to the host at once (numpy
results, the default), or it stays where it is (``on_device=True``); with
``nonfinite="raise"`` the ``(N,)`` finite flags are the one read that step needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._errors import InputError
from ._namespace import array_namespace, device

__all__ = ["MapDtype", "Output", "host_array", "map_dtype", "unit_maps"]

Array = Any
MapDtype = Literal["float32", "float16", "uint8"]
NonFinite = Literal["raise", "nan"]


def map_dtype(dtype: object, *, normalized: bool, nonfinite: NonFinite) -> MapDtype:
    """``dtype=`` checked against the options it must agree with."""
    if dtype not in ("float32", "float16", "uint8"):
        raise InputError(
            f"dtype={dtype!r} is not a map dtype; use 'float32' (the default), 'float16' (half "
            "the memory and copy) or 'uint8' (round(255 * map), a quarter)"
        )
    if dtype == "uint8" and not normalized:
        raise InputError(
            "dtype='uint8' stores maps as round(255 * map), which needs maps in [0, 1]; keep "
            "normalize='minmax' (or 'minmax-before-resize'), or use dtype='float16'"
        )
    if dtype == "uint8" and nonfinite == "nan":
        raise InputError(
            "dtype='uint8' has no NaN for the maps of non-finite samples that nonfinite='nan' "
            "asks for; use nonfinite='raise', or dtype='float16'"
        )
    return dtype  # type: ignore[return-value]


def host_array(array: Array) -> np.ndarray:
    """Any framework's array as a numpy array on the host (a copy where it lives elsewhere)."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "detach") and hasattr(array, "cpu"):  # torch, on any device
        return np.asarray(array.detach().cpu())
    return np.asarray(array)


def unit_maps(cams: Array) -> np.ndarray:
    """Maps of any dtype and framework as float32 numpy maps: ``uint8`` ones back to
    ``[0, 1]`` (``m / 255``), float ones as they are."""
    maps = host_array(cams)
    if maps.dtype == np.uint8:
        return maps.astype(np.float32) / np.float32(255)
    return maps.astype(np.float32, copy=False)


@dataclass(frozen=True)
class Output:
    """What an explanation's arrays become: ``on_device``, ``dtype``, ``nonfinite``."""

    on_device: bool = False
    dtype: MapDtype = "float32"
    nonfinite: NonFinite = "raise"

    def finish(
        self, cams: Array, scores: Array, indices: Array | None, attributions: Array | None,
        to_numpy: Callable[[Array], np.ndarray],
    ) -> tuple[Array, Array, Array, Array | None]:  # fmt: skip
        """``(cams, targets, scores, attributions)`` as asked for.

        ``cams`` ``(N, [K,] *S)`` float, ``scores`` and ``indices`` ``(N, [K])`` (``None``:
        no class applies, ``-1`` everywhere), ``attributions`` ``(N, [K,] C, *S)`` or ``None``,
        all in the backend's namespace; ``to_numpy`` the backend's copy to the host.
        """
        xp = array_namespace(cams)
        scores = xp.astype(scores, xp.float32)
        per_map = xp.reshape(cams, (*scores.shape, -1))  # one row per map
        finite = xp.isfinite(scores) & xp.all(xp.isfinite(per_map), axis=-1)
        if self.nonfinite == "raise":
            self._raise_if_any(to_numpy(finite))
        else:
            nan = xp.asarray(float("nan"), dtype=cams.dtype, device=device(cams))
            cams = xp.reshape(xp.where(finite[..., None], per_map, nan), cams.shape)
            if attributions is not None:
                lost = (*finite.shape, *(1,) * (attributions.ndim - finite.ndim))
                attributions = xp.where(xp.reshape(finite, lost), attributions, nan)
        cams = self._cast(xp, xp.astype(cams, xp.float32))
        if attributions is not None:
            attributions = xp.astype(attributions, xp.float32)
        if self.on_device and not isinstance(cams, np.ndarray):  # TensorFlow's are on the host
            return cams, indices if indices is not None else xp.full(
                scores.shape, -1, dtype=xp.int32, device=device(scores)
            ), scores, attributions  # fmt: skip
        targets = (
            np.full(scores.shape, -1, dtype=np.int64) if indices is None
            else to_numpy(indices).astype(np.int64)
        )  # fmt: skip
        host = None if attributions is None else to_numpy(attributions)
        # the maps as cast (a provider's to_numpy may widen float16), in one copy
        return np.ascontiguousarray(host_array(cams)), targets, to_numpy(scores), host

    def _cast(self, xp: Any, cams: Array) -> Array:
        if self.dtype == "float16":
            return xp.astype(cams, xp.float16)
        if self.dtype == "uint8":
            unit = xp.minimum(xp.maximum(cams, xp.zeros_like(cams)), xp.ones_like(cams))
            return xp.astype(unit * 255 + 0.5, xp.uint8)  # round half up: truncation of >= 0
        return cams

    @staticmethod
    def _raise_if_any(finite: np.ndarray) -> None:
        if finite.all():
            return
        samples = sorted({int(n) for n in np.argwhere(~finite)[:, 0]})
        raise InputError(
            f"NaN or inf: the scores or maps of samples {samples} are not finite, so their "
            "inputs (or the model's weights) hold NaN or inf; check np.isfinite(inputs[i]).all() "
            "for those samples, or pass nonfinite='nan' to get NaN maps for them"
        )
