"""Keras 3 on the JAX and PyTorch backends (``camkit_keras``): every method gives the maps of
the TensorFlow backend, on every kind of Keras model, and the guarantees hold. Keras reads
``KERAS_BACKEND`` once, at import, so each backend runs in a process of its own (a study of one
Keras model on the three backends, with camkit.run_study: docs/cross_framework.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import camkit

TESTS = Path(__file__).parent
#: The Keras backends installed here; TensorFlow's maps are the reference.
BACKENDS = [name for name in ("tensorflow", "jax", "torch") if importlib.util.find_spec(name)]
#: The backends camkit_keras explains.
OTHERS = [name for name in BACKENDS if name != "tensorflow"]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("keras") is None or "tensorflow" not in BACKENDS
    or len(BACKENDS) < 2,
    reason="needs Keras 3 with TensorFlow and JAX or PyTorch",
)  # fmt: skip


def _maps(backend: str, out: Path) -> dict[str, np.ndarray]:
    environment = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(TESTS)}
    done = subprocess.run(
        [sys.executable, str(TESTS / "keras_kind_maps.py"), str(out)],
        capture_output=True, text=True, env=environment, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as found:
        return dict(found)


@pytest.fixture(scope="module")
def tensorflow_maps(tmp_path_factory):
    return _maps("tensorflow", tmp_path_factory.mktemp("maps") / "tensorflow.npz")


@pytest.mark.parametrize("backend", OTHERS)
def test_every_method_and_kind_of_keras_model_gives_the_tensorflow_maps(
    backend, tmp_path, tensorflow_maps
):
    """Every method on the parity CNN, and functional, Sequential, nested and subclassed
    models (tests/keras_kind_maps.py: one method per capability, K maps from one forward); the
    script also fails if camkit changed a model, explained it with another backend than the
    one Keras runs on, let ``backend="tf"`` take it without saying what to do, or left a ReLU
    written in a subclassed ``call`` unguided."""
    reference = tensorflow_maps
    found = _maps(backend, tmp_path / f"{backend}.npz")
    assert found.keys() == reference.keys()
    assert len(found) == 4 * 9 + len(camkit.methods())
    for key, expected in reference.items():
        np.testing.assert_allclose(found[key], expected, atol=1e-4, err_msg=key)


def test_the_guarantees_hold_for_keras_models_off_tensorflow():
    """The bad-input catalogue and K maps per forward (on the functional model), threads and
    the model left as found, also by a failing model and by guided and bias passes (on all four
    Keras kinds), run by pytest in a process whose Keras runs on PyTorch (tests/model_kinds.py
    builds the kinds on the process's backend).

    On PyTorch only: the provider code is the same for JAX but for the gradients, which the
    maps test above runs on JAX for every method and kind (checking each model left as found);
    on JAX, whose eager ops compile on first use, this run would take about 140 s. Everything
    here also passes on JAX (run it with KERAS_BACKEND=jax and -k keras), but for the memory
    test: eager JAX keeps about one dead weak reference per gradient pass in its own caches
    (the scoring ops under a JVP trace), which that test counts.
    """
    pytest.importorskip("torch")
    selected = "keras-functional or (keras and (threads or left_as_found or failing))"
    files = ["test_guarantees.py", "test_backprop_kinds.py", "test_multi_targets.py"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         "-W", "ignore::DeprecationWarning", "-k", selected, *files],
        capture_output=True, text=True, cwd=TESTS, timeout=900,
        env={**os.environ, "KERAS_BACKEND": "torch"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
