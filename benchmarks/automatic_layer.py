"""What ``layer=None`` costs: one-call ``camkit.explain`` with the layer chosen automatically
against the same call with the layer named, on every model kind, side by side in one run.

The automatic choice probes the model once and is remembered per model (weakly), so a repeated
``explain(layer=None)`` should cost what a named layer costs. Models: Keras ResNet50
(``weights=None``, one 224 px image; its last spatial layer is ``conv5_block3_out``) and the
small CNN of every model kind in ``tests/model_kinds.py`` (two 8x8 images).
Run: ``python benchmarks/automatic_layer.py [--rounds 10] [--kinds torch nnx ...]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

import numpy as np
from _timing import report, side_by_side
from model_kinds import KIND_NAMES, kind

import camkit


def resnet50(rounds: int) -> None:
    import keras
    import tensorflow as tf

    model = keras.applications.ResNet50(weights=None)
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype("float32"))
    forward = tf.function(lambda images: model(images, training=False))
    runs = {
        "forward (tf.function)": lambda: forward(x),
        "explain(layer='conv5_block3_out')": lambda: camkit.explain(
            model, x, layer="conv5_block3_out"
        ),
        "explain(layer=None)": lambda: camkit.explain(model, x),
    }
    medians = side_by_side(runs, rounds)
    report("Keras ResNet50 (weights=None), one 224 px image", medians, "forward (tf.function)")


def small_kind(name: str, rounds: int) -> None:
    k = kind(name)
    runs = {
        f"explain(layer={k.layer!r})": lambda: camkit.explain(k.model, k.inputs, layer=k.layer),
        "explain(layer=None)": lambda: camkit.explain(k.model, k.inputs),
    }
    medians = side_by_side(runs, rounds)
    report(f"{name}: small CNN, two 8x8 images", medians, f"explain(layer={k.layer!r})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--kinds", nargs="*", default=KIND_NAMES)
    parser.add_argument("--no-resnet", action="store_true", help="skip Keras ResNet50")
    args = parser.parse_args()
    if not args.no_resnet and "keras-functional" in KIND_NAMES:
        resnet50(args.rounds)
    for name in args.kinds:
        small_kind(name, args.rounds * 3)


if __name__ == "__main__":
    main()
