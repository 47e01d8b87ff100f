"""Grad-CAM cost on Keras EfficientNetB0 on the JAX or PyTorch Keras backend, CPU.

Keras reads ``KERAS_BACKEND`` at import, so one run measures one backend:
``KERAS_BACKEND=jax python benchmarks/gradcam_keras_backends_cpu.py [--rounds 5]`` (or
``torch``). Every contender is timed side by side in one run (``_timing.side_by_side``); the
table reports medians and the ratio to the backend's fastest plain forward pass: ``jax.jit`` of
``model.stateless_call`` on JAX, an eager forward under ``torch.no_grad()`` on PyTorch. No CAM
library besides camkit explains Keras on these backends, so there is no peer to time.
"""

from __future__ import annotations

import argparse

import keras
import numpy as np
from _timing import report, side_by_side

import camkit

LAYER = "top_activation"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    backend = keras.backend.backend()
    model = keras.applications.EfficientNetB0(weights=None)
    images = np.random.default_rng(0).uniform(0, 255, size=(args.batch, 224, 224, 3))
    x = keras.ops.convert_to_tensor(images.astype(np.float32))
    method = camkit.GradCAM(model, LAYER)
    runs = {"forward (eager)": lambda: model(x, training=False)}
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]
        jitted = jax.jit(lambda t, f, x: model.stateless_call(t, f, x, training=False)[0])
        baseline = "forward (jax.jit)"
        runs[baseline] = lambda: jitted(trainable, frozen, x).block_until_ready()
    else:
        import torch

        def no_grad_forward():
            with torch.no_grad():
                return model(x, training=False)

        baseline = "forward (torch.no_grad)"
        runs[baseline] = no_grad_forward
    runs[f"camkit GradCAM ({LAYER})"] = lambda: method(x)
    medians = side_by_side(runs, args.rounds)
    title = (
        f"Keras EfficientNetB0 (weights=None) on {backend}, batch {args.batch}, 224 px, "
        f"Keras {keras.__version__}, {args.rounds} rounds (median)"
    )
    report(title, medians, baseline)


if __name__ == "__main__":
    main()
