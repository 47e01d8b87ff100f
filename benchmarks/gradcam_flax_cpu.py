"""Grad-CAM cost on a ResNet-18-style Flax NNX model, batch 16, 224 px, CPU.

camkit's jitted Grad-CAM (capture, gradient, weights, map, resize, normalization in one jit) is
timed side by side with a jitted plain forward pass (``_timing.side_by_side``); the model is
randomly initialized, in eval mode (batch-norm running statistics).
Run: ``python benchmarks/gradcam_flax_cpu.py [--rounds 10]``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from _timing import report, side_by_side
from flax import nnx

import camkit


class BasicBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(
            cin, cout, (3, 3), strides=stride, padding=1, use_bias=False, rngs=rngs
        )
        self.bn1 = nnx.BatchNorm(cout, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding=1, use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(cout, rngs=rngs)
        self.shortcut = (
            nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
            if stride != 1 or cin != cout
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.bn2(self.conv2(nnx.relu(self.bn1(self.conv1(x)))))
        return nnx.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet18(nnx.Module):
    def __init__(self, classes: int, rngs: nnx.Rngs) -> None:
        self.stem = nnx.Conv(3, 64, (7, 7), strides=2, padding=3, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(64, rngs=rngs)
        widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        self.layers = nnx.List(
            [BasicBlock(a, b, s, rngs) for a, b, s in widths for _ in range(1)]
            + [BasicBlock(b, b, 1, rngs) for _, b, _ in widths]
        )
        self.head = nnx.Linear(512, classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn(self.stem(x)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for first, second in zip(self.layers[:4], self.layers[4:], strict=True):
            x = second(first(x))
        return self.head(x.mean((1, 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    model = ResNet18(1000, nnx.Rngs(0))
    model.eval()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(args.batch, 224, 224, 3)), jnp.float32)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, images: nnx.merge(graphdef, state)(images))
    method = camkit.GradCAM(model)  # layer=None: the last block, layers.7

    runs = {
        "forward (jax.jit)": lambda: forward(state, x).block_until_ready(),
        "camkit GradCAM (jitted, layer=None)": lambda: method(x),
    }
    medians = side_by_side(runs, args.rounds)
    title = (
        f"ResNet-18-style Flax NNX, batch {args.batch}, 224 px, JAX {jax.__version__} on "
        f"{jax.devices()[0].platform}, layer {method.layers}, {args.rounds} rounds (median)"
    )
    report(title, medians, "forward (jax.jit)")


if __name__ == "__main__":
    main()
