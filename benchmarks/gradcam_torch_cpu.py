"""Grad-CAM cost on EfficientNet-Lite0, batch 16, 224 px, CPU: camkit vs torchcam vs captum.

Every contender is timed side by side in one run (``_timing.side_by_side``); the table reports
medians and the ratio to the faster plain forward pass.
Run: ``python benchmarks/gradcam_torch_cpu.py [--rounds 15]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from _timing import report, side_by_side

import camkit
from camkit._demo import load_model

LAYER = "_bn1"  # called once per forward, so every library hooks the same single call


def contenders(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    from captum.attr import LayerGradCam
    from torchcam.methods import GradCAM as TorchcamGradCAM

    layer_module = dict(model.named_modules())[LAYER]
    method = camkit.GradCAM(model, LAYER)
    automatic = camkit.GradCAM(model)  # the shared _swish module, captured at its last call
    torchcam = TorchcamGradCAM(model, target_layer=LAYER)
    captum = LayerGradCam(model, layer_module)

    def forward() -> object:
        with torch.inference_mode():
            return model(x)

    def forward_no_grad() -> object:
        with torch.no_grad():
            return model(x)

    def torchcam_gradcam() -> object:
        scores = model(x)
        return torchcam(class_idx=scores.argmax(1).tolist(), scores=scores)

    def captum_gradcam() -> object:
        with torch.no_grad():
            top = model(x).argmax(1)
        return captum.attribute(x, target=top, relu_attributions=True)

    return {
        "forward (inference_mode)": forward,
        "forward (no_grad)": forward_no_grad,
        f"camkit GradCAM ({LAYER})": lambda: method(x),
        "camkit GradCAM (layer=None: _swish)": lambda: automatic(x),
        "camkit.explain (one call, layer=None)": lambda: camkit.explain(model, x),
        "torchcam GradCAM": torchcam_gradcam,
        "captum LayerGradCam (+ top-1 forward)": captum_gradcam,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model()
    x = torch.randn(args.batch, 3, 224, 224)
    medians = side_by_side(contenders(model, x), args.rounds)
    # the baseline is the faster plain forward, the stricter bound (on this machine,
    # inference_mode ran about 2x slower than no_grad once the allocator had warmed up)
    baseline = min(("forward (inference_mode)", "forward (no_grad)"), key=medians.__getitem__)
    title = (
        f"EfficientNet-Lite0, batch {args.batch}, 224 px, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {args.rounds} rounds (median)"
    )
    report(title, medians, baseline)


if __name__ == "__main__":
    main()
