"""Guided Backpropagation, Guided Grad-CAM and FullGrad on every model kind (torch; Keras
functional, Sequential, nested, subclassed; Flax NNX, Flax Linen, Equinox, function pairs):

- the model is left exactly as it was (weights, statistics, modes, hooks, ``call`` and
  ``activation`` attributes, module classes, no PyTorch function mode left on), also when it
  fails, and the plain input gradient afterwards is the plain one;
- FullGrad's terms add up to the score (completeness, Srinivas & Fleuret 2019): the models
  are piecewise linear, so ``S = sum x dS/dx + sum_l sum b_l dS/dz_l + b_fc`` exactly;
- two threads, one guiding the ReLUs of one model while the other takes plain gradients of
  another model (or of the same one), get what serial calls get (one kind per backend).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from model_kinds import BUILDERS, KIND_NAMES, kind, same_snapshot

import camkit
from camkit.provider import BIAS_GRADIENTS, ModelInputs, capability
from camkit.targets import ClassTarget


def _gradients(provider, inputs, rule, target=1):
    gradients, _ = provider.input_gradients(ModelInputs(inputs), ClassTarget(target), rule=rule)
    return np.asarray(provider.to_numpy(gradients))


def _keras_layers(model):
    found = {}
    for child in model._flatten_layers(include_self=False, recursive=True):
        found[id(child)] = child
    return list(found.values())


def _state(k, model):
    """What the guided and bias passes touch beyond ``Kind.snapshot``: PyTorch's hooks and
    function modes, Keras' shadowed attributes, the classes of NNX's modules."""
    if k.framework == "torch":
        import torch

        hooks = [(len(m._forward_hooks), len(m._backward_hooks)) for m in model.modules()]
        return (
            hooks,
            [m.training for m in model.modules()],
            torch._C._is_torch_function_mode_enabled(),
        )
    if k.framework == "keras":
        return [
            ("call" in vars(layer), id(getattr(layer, "activation", None)), sorted(vars(layer)))
            for layer in _keras_layers(model)
        ]
    if k.name == "nnx":
        from flax import nnx

        return [(path, type(module)) for path, module in nnx.iter_modules(model)]
    return None


def _methods(k):
    provider = camkit.GradCAM(k.model, k.layer).provider
    found = [("guided-backprop", None), ("guided-gradcam", k.layer)]
    return found + ([("fullgrad", None)] if BIAS_GRADIENTS in provider.capabilities else [])


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_the_model_is_left_as_found(kind_name):
    k = kind(kind_name)
    provider = camkit.GuidedBackprop(k.model).provider
    before, state, plain = (
        k.snapshot(),
        _state(k, k.model),
        _gradients(provider, k.inputs, "standard"),
    )
    for method, layer in _methods(k):
        explanation = camkit.explain(k.model, k.inputs, method, layer, target=1)
        assert explanation.cams.shape == (2, 8, 8) and np.isfinite(explanation.cams).all()
        if method != "fullgrad":
            assert explanation.attributions.shape == (2, 3, 8, 8)
    guided = _gradients(provider, k.inputs, "guided")
    assert same_snapshot(before, k.snapshot()) and _state(k, k.model) == state
    np.testing.assert_array_equal(_gradients(provider, k.inputs, "standard"), plain)
    assert not np.allclose(guided, plain)  # the rule changed the gradient, not the model


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_a_failing_model_is_left_as_found(kind_name):
    k = kind(kind_name)
    model = k.faulty(RuntimeError("broken on purpose"))
    state = _state(k, model)
    for method in ("guided-backprop", "fullgrad"):
        try:
            explainer = camkit.methods()[method](model)
        except camkit.CapabilityError:
            continue  # a function pair has no biases
        with pytest.raises(camkit.ModelError, match="broken on purpose"):
            explainer(k.inputs, target=1)
        assert _state(k, model) == state


def _final_bias(k):
    """The bias of the model's last linear layer ``fc`` for class 1."""
    if k.framework == "torch":
        return float(k.model.fc.bias[1].detach())
    if k.framework == "keras":
        layer = next(layer for layer in _keras_layers(k.model) if layer.name == "fc")
        return float(np.asarray(layer.bias)[1])
    if k.name == "nnx":
        return float(k.model.fc.bias[...][1])
    if k.name == "linen":
        return float(k.model[1]["params"]["fc"]["bias"][1])
    return float(k.model.fc.bias[1])


@pytest.mark.parametrize("kind_name", [name for name in KIND_NAMES if name != "functions"])
def test_fullgrad_terms_add_up_to_the_score(kind_name):
    k = kind(kind_name)
    provider = camkit.FullGrad(k.model).provider
    inputs = ModelInputs(k.inputs)
    bias = capability(provider, BIAS_GRADIENTS)
    layers = bias.bias_layers(inputs)
    # conv1, the batch normalization (its effective bias; Equinox's model has none), conv2
    assert list(layers.values())[-1] == "convolution" and len(layers) in (2, 3)
    full = bias.bias_gradients(inputs, list(layers), ClassTarget(1))
    x = np.asarray(provider.to_numpy(provider.core_inputs(inputs)))
    terms = [np.asarray(provider.to_numpy(t)) for t in full.bias_terms]
    gradients = np.asarray(provider.to_numpy(full.input_gradients))
    total = (x * gradients).sum((1, 2, 3)) + sum(t.sum((1, 2, 3)) for t in terms)
    scores = np.asarray(provider.to_numpy(full.scored.scores))
    np.testing.assert_allclose(scores, total + _final_bias(k), atol=1e-5)


@pytest.mark.parametrize(
    "kind_name", [n for n in ("torch", "keras-functional", "nnx") if n in KIND_NAMES]
)
def test_two_threads_get_the_gradients_of_serial_calls(kind_name):
    """One kind per backend: PyTorch's function modes are per thread, Keras shadows attributes
    only while it traces under the model's lock, JAX changes no model at all."""
    first, second = BUILDERS[kind_name](), BUILDERS[kind_name]()
    providers = [camkit.GuidedBackprop(m.model).provider for m in (first, second)]
    jobs = [(0, "guided"), (1, "standard"), (0, "standard"), (1, "guided")]

    def run(job):
        index, rule = job
        return _gradients(providers[index], (first, second)[index].inputs, rule)

    serial = [run(job) for job in jobs]
    before = [(m.snapshot(), _state(m, m.model)) for m in (first, second)]
    failures = []
    start = threading.Barrier(2)

    def work(offset):
        start.wait()
        for call in range(6):
            job = (offset + call) % len(jobs)
            if not np.array_equal(run(jobs[job]), serial[job]):
                failures.append(jobs[job])

    threads = [threading.Thread(target=work, args=(offset,)) for offset in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    for m, (snapshot, state) in zip((first, second), before, strict=True):
        assert same_snapshot(snapshot, m.snapshot()) and _state(m, m.model) == state
