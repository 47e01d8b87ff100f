"""``import camkit`` must import no framework, and a backend's plugin module not its framework."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FRAMEWORKS = ("torch", "tensorflow", "keras", "jax", "flax", "cv2")


def imported_after(statement: str) -> list[str]:
    code = (
        f"import json, sys\n{statement}\n"
        f"print(json.dumps([m for m in {FRAMEWORKS!r} if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    "statement",
    [
        "import camkit",
        "import camkit; camkit.backends(); camkit.methods()",
        "import camkit_torch",
        "import camkit_tf",
        "import camkit_jax",
        "import camkit_keras",
        "import camkit, camkit.targets; camkit.explain.__doc__",
        "import camkit.metrics",
    ],
)
def test_no_framework_is_imported(statement):
    assert imported_after(statement) == []


def test_public_names_are_importable():
    import camkit

    for name in camkit.__all__:
        assert hasattr(camkit, name), name
    assert set(camkit.methods()) == {
        "cam", "gradcam", "gradcam++", "xgradcam", "hirescam", "gradcam-elementwise",
        "layercam", "eigencam", "eigengradcam", "smoothgradcam++", "scorecam", "sscam",
        "iscam", "fasterscorecam", "ablationcam", "guided-backprop", "guided-gradcam",
        "fullgrad",
    }  # fmt: skip
