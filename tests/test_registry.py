"""Backend discovery through entry points, failure isolation, opt-outs, and selection rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import camkit

TESTS = Path(__file__).parent


def install_fake_distribution(site: Path, entry_points: dict[str, str]) -> None:
    """A distribution 'camkit-toy' whose entry points in group camkit are ``entry_points``."""
    info = site / "camkit_toy-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: camkit-toy\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[camkit]\n{lines}")


def run_python(code: str, site: Path, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter that sees the fake distribution; it prints JSON."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CAMKIT_")}
    environment.update(env)
    environment["PYTHONPATH"] = os.pathsep.join([str(site), str(TESTS), *sys.path])
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env=environment, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "stderr": done.stderr}


REPORT = """
import json, numpy as np, camkit
from numpy_backend import GapLinearModel
result = {}
if "numpy" in {b.name for b in camkit.backends() if b.error is None}:
    weights = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]], np.float32)
    x = np.random.default_rng(0).uniform(size=(2, 2, 3, 3)).astype(np.float32)
    e = camkit.explain(GapLinearModel(weights), x, "gradcam", target=2, normalize="none")
    result["backend"] = e.backend
    result["cams"] = e.cams.tolist()
    result["expected"] = np.maximum((x[:, 0] - x[:, 1]) / 9, 0).tolist()
result["backends"] = {b.name: [b.available, b.loaded, b.error] for b in camkit.backends()}
print(json.dumps(result))
"""


@pytest.fixture
def site(tmp_path):
    install_fake_distribution(
        tmp_path, {"numpy": "numpy_backend", "broken": "camkit_no_such_module"}
    )
    return tmp_path


def test_third_party_backend_through_an_entry_point(site):
    report = run_python(REPORT, site)
    assert report["backend"] == "numpy"
    # Grad-CAM on GAP + linear: w = W[k] / HW, so the map is ReLU(A0 - A1) / 9 for class 2
    np.testing.assert_allclose(report["cams"], report["expected"], atol=1e-6)
    assert report["backends"]["numpy"] == [True, True, None]


def test_a_broken_plugin_is_a_warning_and_an_entry(site):
    report = run_python(REPORT, site)
    available, loaded, error = report["backends"]["broken"]
    assert (available, loaded) == (False, False)
    assert "ModuleNotFoundError" in error and "camkit_no_such_module" in error
    assert "camkit plugin 'broken' failed to load" in report["stderr"]
    assert report["backend"] == "numpy"  # the others still work


def test_block_plugins_by_name(site):
    report = run_python(REPORT, site, CAMKIT_BLOCK_PLUGINS="broken, numpy")
    assert "numpy" not in report["backends"] and "broken" not in report["backends"]
    assert "torch" in report["backends"]
    assert "failed to load" not in report["stderr"]


def test_disable_autoload_keeps_camkits_own_backends(site):
    report = run_python(REPORT, site, CAMKIT_DISABLE_PLUGIN_AUTOLOAD="1")
    assert set(report["backends"]) == {"torch", "tf", "jax", "keras"}


def test_registration_does_not_import_frameworks(site):
    code = """
    import json, sys, camkit
    camkit.backends()
    print(json.dumps({"imported": [m for m in ("torch", "tensorflow", "jax", "keras")
                                   if m in sys.modules]}))
    """
    assert run_python(code, site)["imported"] == []


# -- selection, in process ------------------------------------------------------------------


def test_explicit_backend_wins_and_ties_are_errors(numpy_backend):
    weights = np.eye(2, dtype=np.float32)
    model = numpy_backend.GapLinearModel(weights)
    x = np.ones((1, 2, 2, 2), np.float32)
    twin = camkit.Backend(
        name="numpy-twin",
        provider=numpy_backend.NumpyProvider,
        can_handle=numpy_backend.is_numpy_model,
        priority=1,
    )
    camkit.register_backend(twin)
    with pytest.raises(camkit.BackendError, match="'numpy', 'numpy-twin' all claim"):
        camkit.explain(model, x)
    assert camkit.explain(model, x, backend="numpy-twin").backend == "numpy-twin"
    with pytest.raises(camkit.BackendError, match="already registered"):
        camkit.register_backend(twin)
    preferred = camkit.Backend(
        "numpy-twin", numpy_backend.NumpyProvider, numpy_backend.is_numpy_model, priority=5
    )
    camkit.register_backend(preferred, replace=True)
    assert camkit.explain(model, x).backend == "numpy-twin"


def test_unknown_and_unavailable_backends(numpy_backend):
    model = numpy_backend.GapLinearModel(np.eye(2, dtype=np.float32))
    with pytest.raises(camkit.BackendError, match="backend='nump' is not registered.*'numpy'"):
        camkit.explain(model, None, backend="nump")
    camkit.register_backend(
        camkit.Backend(
            name="absent",
            provider="nowhere:Provider",
            can_handle=lambda m: True,
            available=lambda: False,
            install="pip install 'camkit[absent]'",
        )
    )
    with pytest.raises(camkit.BackendError, match=r"pip install 'camkit\[absent\]'"):
        camkit.explain(model, None, backend="absent")
    with pytest.raises(camkit.BackendError, match="no camkit backend can handle.*builtins.str"):
        camkit.explain("not a model", None)


def test_missing_capability_names_it_and_the_backend(numpy_backend, registry):
    class NoClassifier(numpy_backend.NumpyProvider):
        def __init__(self, model):
            super().__init__(model)
            self.capabilities = frozenset()

    camkit.register_backend(
        camkit.Backend("bare", NoClassifier, numpy_backend.is_numpy_model, priority=9)
    )
    model = numpy_backend.GapLinearModel(np.eye(2, dtype=np.float32))
    with pytest.raises(camkit.CapabilityError, match="'classifier_weights'.*'bare' backend"):
        camkit.CAM(model)


def test_context_manager_closes_the_provider(numpy_backend):
    model = numpy_backend.GapLinearModel(np.eye(2, dtype=np.float32))
    with camkit.GradCAM(model) as method:
        method(np.ones((1, 2, 2, 2), np.float32))
    assert method.provider.closed


# -- broken plugins, whatever way they break ---------------------------------------------------

_BACKEND = """
import camkit

def boom(*args):
    raise RuntimeError("boom")

@camkit.hookimpl
def camkit_backends():
    return [camkit.Backend(name={name!r}, provider="nowhere:Nothing", can_handle={can_handle},
                           available={available}, priority=100)]
"""

BROKEN = {
    "import error": ("broken", "raise ImportError('a missing dependency')"),
    "sys.exit at import": ("broken", "import sys\nsys.exit(3)"),
    "hook raises": (
        "broken",
        "import camkit\n@camkit.hookimpl\ndef camkit_backends():\n    raise KeyError(1)",
    ),
    "hook returns garbage": (
        "broken",
        "import camkit\n@camkit.hookimpl\ndef camkit_backends():\n    return 5",
    ),
    "available raises": (
        "broken",
        _BACKEND.format(name="broken", can_handle="lambda m: True", available="boom"),
    ),
    "can_handle raises": (
        "broken",
        _BACKEND.format(name="broken", can_handle="boom", available="lambda: True"),
    ),
    # a third party taking a built-in name, by entry point or by backend name, claiming
    # every model at a high priority
    "entry point named torch": (
        "torch",
        _BACKEND.format(name="torch", can_handle="lambda m: True", available="lambda: True"),
    ),
    "backend named jax": (
        "broken",
        _BACKEND.format(name="jax", can_handle="lambda m: True", available="lambda: True"),
    ),
}

SURVIVES = """
import json, numpy as np, camkit
from numpy_backend import GapLinearModel
result = {}
x = np.random.default_rng(0).uniform(size=(1, 2, 3, 3)).astype(np.float32)
result["numpy"] = camkit.explain(GapLinearModel(np.eye(2, dtype=np.float32)), x).backend
try:
    import torch
except ImportError:
    pass
else:
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(18, 2))
    result["torch"] = camkit.explain(model, torch.from_numpy(x), layer="0").backend
result["cli"] = __import__("camkit._cli", fromlist=["main"]).main(["backends"])
result["backends"] = {b.name: b.error for b in camkit.backends()}
print(json.dumps(result))
"""


@pytest.mark.parametrize("how", list(BROKEN))
def test_a_broken_plugin_is_a_warning_and_camkit_keeps_working(tmp_path, how):
    entry_name, source = BROKEN[how]
    (tmp_path / "camkit_broken_plugin.py").write_text(source)
    install_fake_distribution(
        tmp_path, {"numpy": "numpy_backend", entry_name: "camkit_broken_plugin"}
    )
    report = run_python(SURVIVES, tmp_path)
    assert report["numpy"] == "numpy"
    assert report["cli"] == 0
    if "torch" in report:
        assert report["torch"] == "torch"  # camkit's own, never the impostor
    assert "camkit plugin" in report["stderr"] or "camkit backend" in report["stderr"]
    assert any(error for error in report["backends"].values()), report["backends"]


def test_a_third_party_entry_point_loaded_first_never_takes_a_builtin_name(tmp_path, monkeypatch):
    """Entry points come in installation order; a third party's ``torch`` found before
    camkit's own must neither disable nor replace it."""
    import importlib.metadata

    from camkit import _registry

    source = _BACKEND.format(name="torch", can_handle="lambda m: True", available="lambda: True")
    (tmp_path / "camkit_impostor.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    own = list(importlib.metadata.entry_points(group="camkit"))
    impostor = importlib.metadata.EntryPoint("torch", "camkit_impostor", "camkit")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [impostor, *own])
    registry = _registry._Registry()
    with pytest.warns(RuntimeWarning, match="reserved for camkit's own"):
        registry.ensure_loaded()
    assert registry.backends["torch"].provider == "camkit_torch._provider:TorchProvider"
    assert {"tf", "jax"} <= set(registry.backends)
