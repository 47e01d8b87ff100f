from __future__ import annotations

import sys
from pathlib import Path

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
