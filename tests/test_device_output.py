"""``on_device=`` and ``dtype=``: the maps where and as the user wants them, the same maps.

Expected values: ``float16`` maps are the float32 maps rounded to half precision (within
``2**-11`` relative, ``< 5e-4`` on ``[0, 1]``); ``uint8`` maps are ``round(255 * m)``, within one
step of 255 * the float32 maps (the device may round ``x.5`` either way after its own float math).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from model_kinds import KIND_NAMES, kind, with_value

import camkit
from camkit import InputError


def _framework_types(framework: str) -> tuple[type, ...]:
    if framework == "torch":
        import torch

        return (torch.Tensor,)
    if framework == "jax":
        import jax

        return (jax.Array,)
    return (np.ndarray,)  # TensorFlow's captures come back on the host: its maps are numpy


@pytest.mark.parametrize("name", KIND_NAMES)
def test_every_kind_gives_the_same_maps_on_device_and_in_each_dtype(name: str) -> None:
    k = kind(name)
    x = k.inputs
    reference = camkit.explain(k.model, x, layer=k.layer)
    assert reference.cams.dtype == np.float32 and isinstance(reference.cams, np.ndarray)

    on_device = camkit.explain(k.model, x, layer=k.layer, on_device=True)
    assert isinstance(on_device.cams, _framework_types(k.framework))
    assert isinstance(on_device.scores, _framework_types(k.framework))
    host = on_device.numpy()
    np.testing.assert_allclose(host.cams, reference.cams, atol=1e-6)
    np.testing.assert_array_equal(host.targets, reference.targets)
    assert host.targets.dtype == np.int64 and host.scores.dtype == np.float32
    np.testing.assert_allclose(host.scores, reference.scores, rtol=1e-6)

    half = camkit.explain(k.model, x, layer=k.layer, dtype="float16")
    assert half.cams.dtype == np.float16
    np.testing.assert_allclose(half.cams.astype(np.float32), reference.cams, atol=5e-4)

    steps = camkit.explain(k.model, x, layer=k.layer, dtype="uint8", on_device=True).numpy()
    assert steps.cams.dtype == np.uint8
    assert np.abs(steps.cams.astype(np.int64) - np.round(255 * reference.cams)).max() <= 1


@pytest.mark.parametrize("name", KIND_NAMES)
def test_nonfinite_samples_get_nan_maps_on_the_device(name: str) -> None:
    k = kind(name)
    x = with_value(k, np.nan, sample=1)
    explanation = camkit.explain(
        k.model, x, layer=k.layer, on_device=True, nonfinite="nan", dtype="float16"
    ).numpy()
    assert np.isnan(explanation.cams[1]).all()
    assert np.isfinite(explanation.cams[0]).all()
    with pytest.raises(InputError, match=r"samples \[1\]"):
        camkit.explain(k.model, x, layer=k.layer, on_device=True)


def test_attributions_stay_on_the_device_too() -> None:
    torch = pytest.importorskip("torch")
    k = kind("torch")
    x = k.inputs
    reference = camkit.explain(k.model, x, method="guided-gradcam", layer=k.layer)
    on_device = camkit.explain(k.model, x, method="guided-gradcam", layer=k.layer, on_device=True)
    assert isinstance(on_device.attributions, torch.Tensor)
    np.testing.assert_allclose(on_device.numpy().attributions, reference.attributions, atol=1e-6)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"dtype": "float64"}, "dtype='float64' is not a map dtype"),
        ({"dtype": "uint8", "normalize": "none"}, "needs maps in [0, 1]"),
        ({"dtype": "uint8", "nonfinite": "nan"}, "has no NaN"),
        ({"on_device": "yes"}, "on_device"),
    ],
)
def test_bad_output_options_say_what_to_do(options: dict[str, Any], words: str) -> None:
    k = kind(KIND_NAMES[0])
    with pytest.raises(InputError) as error:
        camkit.GradCAM(k.model, k.layer, **options)
    assert words in str(error.value)


def test_metrics_and_save_take_device_and_uint8_maps(tmp_path: Any) -> None:
    """The metrics and ``camkit.save`` read ``uint8`` maps as ``m / 255`` and fetch device
    maps themselves."""
    pytest.importorskip("torch")
    k = kind("torch")
    x = k.inputs
    reference = camkit.explain(k.model, x, layer=k.layer)
    steps = camkit.explain(k.model, x, layer=k.layer, dtype="uint8", on_device=True)
    as_float = steps.numpy().cams.astype(np.float32) / 255
    deletion = camkit.metrics.deletion(k.model, x, steps, steps=4)
    expected = camkit.metrics.deletion(k.model, x, as_float, steps=4)
    np.testing.assert_allclose(deletion.auc, expected.auc, rtol=1e-6)
    images = np.zeros((len(reference), 8, 8, 3), np.uint8)
    results = camkit.save(steps, images, tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / results[0].map), as_float[0], atol=1e-7)
