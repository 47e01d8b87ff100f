"""pytorch-grad-cam, imported for differential tests.

Its package imports torchvision at the top level, whose wheel does not load beside the CPU
build of torch these tests run on. The names it takes from torchvision serve only its image
preprocessing, its Faster R-CNN target and SESS, none of which a test here calls, so they are
stood in for by placeholders that fail if called. ``load()`` returns the package, or skips the
test where it is not installed (``scripts/setup dev`` installs it).
"""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest


def _unavailable(*args: object, **kwargs: object) -> None:
    raise RuntimeError("torchvision is not available beside the CPU torch of these tests")


def _stand_in_for_torchvision() -> None:
    if "torchvision" in sys.modules:
        return
    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    for name in ("Compose", "Normalize", "ToTensor"):
        setattr(transforms, name, _unavailable)
    functional.resize = _unavailable  # type: ignore[attr-defined]
    ops.box_iou = _unavailable  # type: ignore[attr-defined]
    transforms.functional = functional  # type: ignore[attr-defined]
    root.transforms, root.ops = transforms, ops  # type: ignore[attr-defined]
    sys.modules.update(
        {
            "torchvision": root,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
            "torchvision.ops": ops,
        }
    )


def load() -> types.ModuleType:
    """The ``pytorch_grad_cam`` package (skips the calling test where it is absent)."""
    pytest.importorskip("torch")
    pytest.importorskip("cv2")
    pytest.importorskip("ttach")
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        pytest.skip("pytorch-grad-cam is not installed (scripts/setup dev installs it)")
    try:
        import torchvision  # noqa: F401  (a working torchvision needs no stand-in)
    except Exception:  # absent, or its C++ operators fail to register beside this torch
        for name in [name for name in sys.modules if name.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        _stand_in_for_torchvision()
    import pytorch_grad_cam

    return pytorch_grad_cam
