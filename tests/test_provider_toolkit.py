"""The public provider toolkit: a third-party backend written from public names alone runs
every method, camkit's own backends use nothing else, and the pieces behave as documented."""

from __future__ import annotations

import ast
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest

import camkit
from camkit import provider as kit

ROOT = Path(__file__).parents[1]
PUBLIC_MODULES = {"camkit", "camkit.provider", "camkit.targets", "camkit.metrics"}


@pytest.fixture
def toy(registry):
    import toy_backend

    camkit.register_backend(toy_backend.BACKEND, replace=True)
    return toy_backend


def _torch_twin(model):
    """The toy network in PyTorch: 1x1 convolutions, ReLU, pooling, linear."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    conv1, _, conv2, _, _, fc = model.layers
    twin = nn.Sequential()
    for name, layer in (("conv1", conv1), ("conv2", conv2)):
        conv = nn.Conv2d(layer.weight.shape[1], layer.weight.shape[0], 1)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor(layer.weight[:, :, None, None], dtype=torch.float32))
            conv.bias.copy_(torch.tensor(layer.bias, dtype=torch.float32))
        twin.add_module(name, conv)
        twin.add_module(name.replace("conv", "relu"), nn.ReLU())
    twin.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    linear = nn.Linear(4, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(fc.weight, dtype=torch.float32))
        linear.bias.copy_(torch.tensor(fc.bias, dtype=torch.float32))
    twin.add_module("fc", linear)
    return twin.eval()


OPTIONS = {
    "sscam": {"samples": 2, "seed": 3},
    "smoothgradcam++": {"samples": 2, "seed": 3},
    "iscam": {"samples": 2},
    "fasterscorecam": {"channels": 2},
}


@pytest.mark.parametrize("method", list(camkit.methods()))
def test_a_third_party_backend_runs_every_method_like_pytorch(toy, method):
    """The toy backend (numpy, hand-written vector-Jacobian products, public names only) gives
    the maps of camkit's PyTorch backend on the same network, for every method."""
    import torch
    from toy_framework import small_cnn

    model = small_cnn()
    x = np.random.default_rng(4).normal(size=(2, 3, 5, 5)).astype(np.float32)
    layer = {"cam": "relu2", "guided-backprop": None}.get(method, "conv2")
    options = OPTIONS.get(method, {})
    got = camkit.explain(model, x, method, layer, target=[0, 2], **options)
    expected = camkit.explain(
        _torch_twin(model), torch.from_numpy(x), method, layer, target=[0, 2], **options
    )
    assert got.backend == "toy" and expected.backend == "torch"
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)
    assert np.abs(got.cams - expected.cams).max() <= 1e-4


def test_the_toy_backend_keeps_the_guarantees(toy):
    from toy_framework import small_cnn

    model = small_cnn()
    x = np.random.default_rng(4).normal(size=(2, 3, 5, 5)).astype(np.float32)
    assert camkit.explain(model, x).layers == ("relu2",)  # the automatic layer, remembered
    with pytest.raises(camkit.LayerError, match="closest valid names.*'conv2'"):
        camkit.explain(model, x, layer="conv3")
    with pytest.raises(camkit.TargetError, match="target=5 is out of range: the model has 3"):
        camkit.explain(model, x, layer="conv2", target=5)
    bad = x.copy()
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(camkit.InputError, match=r"samples \[1\] are not finite"):
        camkit.explain(model, bad, layer="conv2")
    # the toy backend takes one gradient of all the scores: several per sample are refused
    with pytest.raises(camkit.CapabilityError, match=r"shape \(2, 4, 5, 5\) for a target with 2"):
        camkit.explain(model, x, layer="conv2", target=camkit.targets.TopK(2))
    # gradient-free methods need no per-score gradients
    several = camkit.explain(model, x, "scorecam", "conv2", target=camkit.targets.TopK(2))
    assert several.cams.shape == (2, 2, 5, 5)


def _imports(path: Path) -> list[str]:
    """What ``path`` takes from camkit: module paths and names, non-public ones flagged."""
    tree = ast.parse(path.read_text())
    found = []
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            if node.module.split(".")[0] == "camkit":
                found.append(node.module)
                found += [f"{node.module}.{alias.name}" for alias in node.names]
                aliases |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "camkit":
                    found.append(alias.name)
                    aliases.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in aliases and node.attr.startswith("_"):
                found.append(f"{node.value.id}.{node.attr}")
    return found


BACKEND_FILES = sorted(
    [*ROOT.glob("camkit_torch/*.py"), *ROOT.glob("camkit_tf/*.py"), *ROOT.glob("camkit_jax/*.py"),
     *ROOT.glob("camkit_keras/*.py"), ROOT / "tests" / "toy_backend.py"]
)  # fmt: skip


@pytest.mark.parametrize("path", BACKEND_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_backends_use_public_names_only(path):
    for name in _imports(path):
        module, _, last = name.rpartition(".")
        assert not any(part.startswith("_") for part in name.split(".")), name
        assert name in PUBLIC_MODULES or module in PUBLIC_MODULES or not module, name
        assert last or name


def test_capability_returns_the_provider_or_names_what_is_missing(numpy_backend):
    model = numpy_backend.GapLinearModel(np.eye(2, dtype=np.float32))
    provider = numpy_backend.NumpyProvider(model)
    assert kit.capability(provider, kit.FORWARD_SCORES) is provider
    bare = numpy_backend.NumpyProvider(numpy_backend.StaticModel(np.zeros(1), np.zeros(1)))
    with pytest.raises(camkit.CapabilityError, match="does not offer the capability 'forward_sc"):
        kit.capability(bare, kit.FORWARD_SCORES)

    class Liar(numpy_backend.NumpyProvider):
        capabilities = frozenset({kit.FORWARD_FROM_LAYER})
        forward_from_layer = None

    with pytest.raises(camkit.CapabilityError, match=r"declares .* but has no forward_from_layer"):
        kit.capability(Liar(model), kit.FORWARD_FROM_LAYER)


def test_model_table_is_weak_and_by_identity():
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

    table = kit.ModelTable(list)
    first, second = Unhashable(), Unhashable()
    table.get(first).append(1)
    assert table.get(first) == [1] and table.get(second) == []
    alive = weakref.ref(first)
    del first
    assert alive() is None and len(table) == 1


def test_model_lock_is_one_reentrant_lock_per_model():
    class Model:
        pass

    model = Model()
    lock = kit.model_lock(model)
    assert kit.model_lock(model) is lock and kit.model_lock(Model()) is not lock
    with lock, lock:  # re-entrant
        entered = threading.Event()
        other = threading.Thread(target=lambda: lock.acquire(timeout=0.2) and entered.set())
        other.start()
        other.join()
        assert not entered.is_set()  # another thread waits


def test_compiled_cache_is_bounded_and_counts_traces():
    cache = kit.CompiledCache(limit=2)
    built = []

    def build(traced):
        built.append(traced)
        return lambda: traced()

    for key in ("a", "b", "a", "c", "a"):
        cache.get(key, build)()
    assert len(cache) == 2 and len(built) == 3  # "b" dropped, "a" kept as most recent
    assert cache.traces(["a"]) == 3 and cache.traces() == 5


def test_running_model_names_the_inputs_and_the_layout():
    with pytest.raises(camkit.ModelError, match=r"Net failed on inputs of shape \(2, 3, 8, 8\).*"
                       r"ValueError: bad.*takes channels-last") as caught:  # fmt: skip
        with kit.running_model("Net", (2, 3, 8, 8), "float32", channels_last=True):
            raise ValueError("bad")
    assert isinstance(caught.value.__cause__, ValueError)
    with pytest.raises(camkit.LayerError):  # camkit's own errors pass through
        with kit.running_model("Net", (2, 3, 8, 8), "float32"):
            raise camkit.LayerError("mine")
