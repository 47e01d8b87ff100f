"""The guarantees camkit makes on every model kind (torch; Keras functional, Sequential,
nested, subclassed; Flax NNX, Flax Linen, Equinox, function pairs):

- every bad input of the catalogue gets a camkit error naming the argument, the value and the
  fix, every valid one works, and the model is left exactly as it was;
- threads explaining one model, through ``explain`` or one shared method object, get the maps
  of serial calls and leave the model as it was;
- NaN or inf in the inputs is an error naming the samples (or, on request, NaN maps for them);
- repeated ``explain(layer=None)`` grows no memory.
"""

from __future__ import annotations

import gc
import threading
import warnings
from collections import Counter

import numpy as np
import pytest
from catalogue import CASES, run
from model_kinds import BUILDERS, KIND_NAMES, kind, same_snapshot, with_nan

import camkit


@pytest.mark.parametrize("kind_name", KIND_NAMES)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_catalogue(case, kind_name):
    k = kind(kind_name)
    if not case.applies(k):
        pytest.skip("the case does not apply to this kind of model")
    outcome = run(case, k)
    assert outcome.category in ("clear", "works"), f"{outcome.category}: {outcome.detail}"
    assert not outcome.changed, "the model was changed"


# -- threads -----------------------------------------------------------------------------------

THREAD_MODES = ["explain", "explain, layer=None", "one method object", "scorecam"]


@pytest.mark.parametrize("kind_name", KIND_NAMES)
@pytest.mark.parametrize("mode", THREAD_MODES)
def test_threads_get_the_maps_of_serial_calls(kind_name, mode):
    """Four threads, ten calls each, alternating two targets, on one fresh model: before the
    per-model lock, torch models in train mode got wrong maps and changed batch-norm statistics,
    and Keras models were left with camkit's wrapper as a layer's ``call``."""
    k = BUILDERS[kind_name]()  # fresh: nothing about it is cached yet
    layer = None if mode == "explain, layer=None" else k.layer
    method = "scorecam" if mode == "scorecam" else "gradcam"
    shared = camkit.GradCAM(k.model, layer) if mode == "one method object" else None

    def explain(target):
        if shared is not None:
            return shared(k.inputs, target=target)
        return camkit.explain(k.model, k.inputs, method, layer, target=target)

    before = k.snapshot()
    serial = {target: explain(target).cams for target in (0, 2)}
    results: Counter[str] = Counter()
    start = threading.Barrier(4)

    def work(first):
        start.wait()
        for call in range(10):
            target = (0, 2)[(first + call) % 2]
            try:
                same = np.array_equal(explain(target).cams, serial[target])
                results["same" if same else "different"] += 1
            except Exception as error:
                results[f"{type(error).__name__}: {error}"] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == Counter(same=40)
    assert same_snapshot(before, k.snapshot()), "the model was changed"


# -- non-finite inputs -------------------------------------------------------------------------


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_nonfinite_inputs_name_the_samples_or_give_nan_maps(kind_name):
    k = kind(kind_name)
    inputs = with_nan(k, sample=1)
    with pytest.raises(camkit.InputError, match=r"samples \[1\] are not finite"):
        camkit.explain(k.model, inputs, layer=k.layer)
    marked = camkit.explain(k.model, inputs, layer=k.layer, nonfinite="nan")
    clean = camkit.explain(k.model, k.inputs, layer=k.layer)
    assert np.isnan(marked.cams[1]).all()
    np.testing.assert_array_equal(marked.cams[0], clean.cams[0])


# -- memory ------------------------------------------------------------------------------------


def _objects() -> int:
    gc.collect()
    return len(gc.get_objects())


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_repeated_automatic_layer_grows_no_memory(kind_name):
    """300 one-call ``explain(layer=None)``: after a warm-up, the number of live objects
    stays put (before, Flax NNX made two classes per call, about 30 KB a call); a leak of one
    object per call would cross the bar."""
    k = kind(kind_name)
    for _ in range(50):
        camkit.explain(k.model, k.inputs)
    warm = _objects()
    for _ in range(300):
        camkit.explain(k.model, k.inputs)
    assert _objects() - warm < 200


# -- a user's own target and the automatic layer, on every kind ---------------------------------


class Margin(camkit.targets.Target):
    """A user's target: the margin of class 1 over class 0, in camkit's array namespace."""

    def resolve(self, outputs):
        xp = camkit.provider.array_namespace(outputs)
        return camkit.targets.ScoredTarget(xp.astype(outputs[:, 1] - outputs[:, 0], xp.float32),
                                           None)  # fmt: skip


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_a_user_target_subclass_works_on_every_kind(kind_name):
    k = kind(kind_name)
    raw = {"relu": False, "normalize": "none", "size": "layer"}
    margin = camkit.explain(k.model, k.inputs, "gradcam", k.layer, target=Margin(), **raw)
    # the gradient of a difference of logits is the difference of their gradients
    one = camkit.explain(k.model, k.inputs, "gradcam", k.layer, target=1, **raw)
    zero = camkit.explain(k.model, k.inputs, "gradcam", k.layer, target=0, **raw)
    np.testing.assert_allclose(margin.cams, one.cams - zero.cams, atol=1e-5)
    np.testing.assert_allclose(margin.scores, one.scores - zero.scores, atol=1e-5)
    assert margin.targets.tolist() == [-1, -1]


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_the_automatic_layer_is_found_once_per_model(kind_name, monkeypatch):
    k = BUILDERS[kind_name]()
    provider_class = type(camkit.GradCAM(k.model, k.layer).provider)
    probes = []
    probe = provider_class._probe
    counted = lambda self, x: probes.append(1) or probe(self, x)  # noqa: E731
    monkeypatch.setattr(provider_class, "_probe", counted)
    chosen = {camkit.explain(k.model, k.inputs).layers for _ in range(3)}
    assert len(probes) == 1 and len(chosen) == 1
