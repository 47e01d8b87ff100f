from __future__ import annotations

import os
import sys
from pathlib import Path

if "PYTEST_XDIST_WORKER" in os.environ:
    # one compute thread per worker: the workers share the machine's cores, and frameworks
    # that each start a thread per core slow each other down (set before any framework is
    # imported; the processes the tests start inherit it)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                     "TF_NUM_INTEROP_THREADS"):  # fmt: skip
        os.environ.setdefault(variable, "1")
    os.environ.setdefault(
        "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the toy numpy backend module

import camkit
from camkit import _registry


@pytest.fixture
def registry():
    """Register backends freely inside a test; the registry is restored afterwards."""
    _registry._REGISTRY.ensure_loaded()
    saved = dict(_registry._REGISTRY.backends), dict(_registry._REGISTRY.factories)
    yield _registry._REGISTRY
    _registry._REGISTRY.backends.clear()
    _registry._REGISTRY.backends.update(saved[0])
    _registry._REGISTRY.factories.clear()
    _registry._REGISTRY.factories.update(saved[1])


@pytest.fixture
def numpy_backend(registry):
    """The toy numpy backend, registered directly (no entry point)."""
    import numpy_backend

    for backend in numpy_backend.camkit_backends():
        camkit.register_backend(backend, replace=True)
    return numpy_backend
