"""The worked examples of ``examples/`` run offline and show what they claim.

Each trains (or loads) a real model; shorter training than the scripts' defaults keeps the run
near ten seconds each, with bars that the shorter training still clears.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))

pytestmark = pytest.mark.slow


def test_multilabel_maps_lie_on_their_own_digit(tmp_path):
    import multilabel

    summary = multilabel.main(tmp_path / "multilabel.png", steps=300)
    assert summary["both digits found"] > 0.7
    assert summary["maps on their own digit"] > 0.9
    assert (tmp_path / "multilabel.png").stat().st_size > 0


def test_detection_maps_lie_in_their_own_box(tmp_path):
    import detection

    summary = detection.main(tmp_path / "detection.png", steps=400)
    assert summary["boxes matched"] > 0.15
    assert summary["maps on their own box"] > 0.9


def test_similarity_search_finds_the_same_cat(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    import similarity

    summary = similarity.main(tmp_path / "similarity.png")
    assert summary["best match is the same cat"] == 1.0 and summary["best cosine"] > 0.8
