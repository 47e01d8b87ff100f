"""``camkit.run_study``: one CNN with the same weights in PyTorch, Keras and Flax NNX, every
pair of builds compared per method."""

from __future__ import annotations

import numpy as np
import pytest
from model_kinds import keras_on_tensorflow

import camkit

pytest.importorskip("torch")
pytest.importorskip("flax")

TORCH = camkit.Build("torch", "study_builds:torch_cnn", layer="conv2")
NNX = camkit.Build("flax-nnx", "study_builds:nnx_cnn", layer="conv2")
METHODS = ["gradcam", "layercam", "scorecam", "guided-backprop", "fullgrad"]


def test_the_same_weights_give_the_same_maps_in_every_build():
    builds = [TORCH, NNX]
    if keras_on_tensorflow() is not None:
        builds.append(camkit.Build("keras", "study_builds:keras_cnn", layer="conv2"))
    study = camkit.run_study(builds, METHODS, options={"scorecam": {"batch_size": 4}},
                             processes=False)  # fmt: skip
    assert len(study.agreements) == len(METHODS) * len(builds) * (len(builds) - 1) // 2
    for row in study.rows():
        assert row["pearson"] > 0.9999 and row["max_difference"] < 1e-4, row
        assert row["top_iou"] == 1.0 and row["same_peak"] == 1.0
    assert study.maps[("torch", "gradcam")].shape == (2, 12, 12)
    assert "| `gradcam` | torch / flax-nnx |" in study.table()
    grid = study.figure()
    assert grid.dtype == np.uint8 and grid.ndim == 3


def test_builds_run_in_processes_of_their_own():
    """Spawned processes: the factory is imported there, the maps come back."""
    study = camkit.run_study([TORCH, NNX], ["gradcam"])
    (agreement,) = study.agreements.values()
    assert agreement.means["pearson"] > 0.9999
    np.testing.assert_array_equal(study.targets, camkit.explain(*_torch(), "gradcam").targets)


def _torch():
    import study_builds

    return study_builds.torch_cnn()


def test_the_first_build_chooses_the_classes_the_others_explain(monkeypatch):
    seen = []
    real = camkit.explain

    def recording(model, inputs, method, layer, target, **options):
        seen.append(target)
        return real(model, inputs, method, layer, target, **options)

    monkeypatch.setattr(camkit, "explain", recording)
    study = camkit.run_study([TORCH, NNX], ["gradcam"], processes=False)
    assert seen == [None, study.targets.tolist()]


def test_bad_studies_are_refused():
    with pytest.raises(camkit.InputError, match="at least two builds"):
        camkit.run_study([TORCH], ["gradcam"])
    with pytest.raises(camkit.InputError, match="distinct names"):
        camkit.run_study([TORCH, TORCH], ["gradcam"])
    with pytest.raises(camkit.InputError, match="package.module:function"):
        camkit.Build("x", "no_function_here")
    with pytest.raises(camkit.InputError, match="methods='gradcam'"):
        camkit.run_study([TORCH, NNX], "gradcam")
    broken = camkit.Build("broken", "study_builds:no_such_factory")
    with pytest.raises(camkit.CamkitError, match="build 'broken'.*no_such_factory"):
        camkit.run_study([TORCH, broken], ["gradcam"], processes=False)
