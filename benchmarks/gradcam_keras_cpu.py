"""Grad-CAM cost on Keras EfficientNetB0, batch 16, 224 px, CPU: camkit vs tf-keras-vis.

Every contender is timed side by side in one run (``_timing.side_by_side``); the table reports
medians and the ratio to a plain forward pass compiled with ``tf.function``.
Run: ``python benchmarks/gradcam_keras_cpu.py [--rounds 10]``.
"""

from __future__ import annotations

import argparse
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
from _timing import report, side_by_side

import camkit

LAYER = "top_activation"  # the last spatial layer, what both libraries pick by default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.scores import CategoricalScore

    model = keras.applications.EfficientNetB0(weights=None)
    x = np.random.default_rng(0).uniform(0, 255, size=(args.batch, 224, 224, 3))
    x = tf.constant(x.astype(np.float32))
    compiled_forward = tf.function(lambda images: model(images, training=False))
    method = camkit.GradCAM(model, LAYER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = Gradcam(model, clone=False)
    top = compiled_forward(x).numpy().argmax(1).tolist()

    runs = {
        "forward (tf.function)": lambda: compiled_forward(x),
        "forward (eager)": lambda: model(x, training=False),
        f"camkit GradCAM ({LAYER})": lambda: method(x),
        "tf-keras-vis Gradcam (known top-1)": lambda: peer(
            CategoricalScore(top), x, penultimate_layer=LAYER, expand_cam=False
        ),
    }
    medians = side_by_side(runs, args.rounds)
    title = (
        f"Keras EfficientNetB0 (weights=None), batch {args.batch}, 224 px, TensorFlow "
        f"{tf.__version__}, Keras {keras.__version__}, {args.rounds} rounds (median)"
    )
    report(title, medians, "forward (tf.function)")


if __name__ == "__main__":
    main()
