"""The README's Keras example runs as written, offline (no weight download)."""

from __future__ import annotations

import re
from pathlib import Path

from model_kinds import keras_on_tensorflow

README = Path(__file__).parents[1] / "README.md"


def _block_after(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(f"\n{heading}\n") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_keras_example_runs_offline():
    keras_on_tensorflow()
    scope: dict = {}
    exec(compile(_block_after("## Keras"), "README.md (Keras)", "exec"), scope)
    assert scope["explanation"].cams.shape == (2, 224, 224)
