"""Top-5 Grad-CAM maps on EfficientNet-Lite0, batch 16, 224 px, CPU: one call vs five.

``TopK(5)`` runs one forward and one batched backward for the five maps per image; the
contenders are one single-target map, five single-target calls (five forwards), and torchcam's
five maps from one forward (five backward passes over a retained graph). All are timed side by
side in one run; the table reports medians and the ratio to one single-target map (the goal:
top-5 at most 1.3x of it). Run: ``python benchmarks/multi_target_torch_cpu.py [--rounds 10]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from _timing import report, side_by_side

import camkit
from camkit._demo import load_model
from camkit.targets import TopK

LAYER = "_bn1"
K = 5


def contenders(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    from torchcam.methods import GradCAM as TorchcamGradCAM

    method = camkit.GradCAM(model, LAYER)
    torchcam = TorchcamGradCAM(model, target_layer=LAYER)

    def forward_no_grad() -> object:
        with torch.no_grad():
            return model(x)

    def five_calls() -> object:
        with torch.no_grad():
            top = model(x).topk(K, dim=1).indices
        return [method(x, top[:, k]) for k in range(K)]

    def torchcam_five() -> object:
        scores = model(x)
        top = scores.topk(K, dim=1).indices
        return [
            torchcam(class_idx=top[:, k].tolist(), scores=scores, retain_graph=k < K - 1)
            for k in range(K)
        ]

    return {
        "forward (no_grad)": forward_no_grad,
        "camkit GradCAM, one map (top-1)": lambda: method(x),
        f"camkit GradCAM, TopK({K}) in one call": lambda: method(x, TopK(K)),
        f"camkit GradCAM, {K} calls (+ top-{K} forward)": five_calls,
        f"torchcam GradCAM, {K} maps from one forward": torchcam_five,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model()
    x = torch.randn(args.batch, 3, 224, 224)
    medians = side_by_side(contenders(model, x), args.rounds)
    title = (
        f"EfficientNet-Lite0, batch {args.batch}, 224 px, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {args.rounds} rounds (median)"
    )
    report(title, medians, "camkit GradCAM, one map (top-1)")


if __name__ == "__main__":
    main()
