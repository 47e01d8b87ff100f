"""Score-CAM cost on EfficientNet-Lite0, one 224 px image, CPU: camkit vs torchcam.

Both run the same computation (the 1280 channels of ``_swish``, masked inputs in batches of
``--batch-size``, torchcam's channel-softmax weighting) side by side in one run
(``_timing.side_by_side``), next to a plain forward pass of one batch of masked inputs and
Faster Score-CAM. A second side-by-side run times ``precision="bfloat16"`` and ``"float16"``
against float32 on Faster Score-CAM with 128 channels (on a CPU without native half precision
the full Score-CAM would take minutes per run). Each map's agreement with its float32 camkit
counterpart is the Pearson correlation and the largest absolute difference of the normalized
7x7 maps.
Run: ``python benchmarks/scorecam_torch_cpu.py [--rounds 3] [--no-half]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
from _timing import report, side_by_side

import camkit
from camkit._demo import load_model, load_photos, to_model_inputs

# the head's activation, 1280 channels at 7x7 (non-negative, so the maps are not all zero);
# the module is shared with the stem and both libraries take its last call
LAYER = "_swish"


def agreement(reference: np.ndarray, other: np.ndarray) -> str:
    correlation = np.corrcoef(reference.ravel(), other.ravel())[0, 1]
    return f"correlation {correlation:.4f}, max |diff| {np.abs(reference - other).max():.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-half", action="store_true", help="skip the half-precision run")
    args = parser.parse_args()
    from torchcam.methods import ScoreCAM as TorchcamScoreCAM

    model = load_model()
    x = to_model_inputs(load_photos())[:1]  # the espresso photo, (1, 3, 224, 224)
    options = {"batch_size": args.batch_size, "weighting": "channel-softmax", "size": "layer"}
    torchcam = TorchcamScoreCAM(model, target_layer=LAYER, batch_size=args.batch_size)
    batch = x.expand(args.batch_size, -1, -1, -1).contiguous()
    maps: dict[str, np.ndarray] = {}  # each contender's last map, for the agreement table

    def forward_batch() -> object:
        with torch.no_grad():
            return model(batch)

    def torchcam_scorecam() -> None:
        scores = model(x)
        (cams,) = torchcam(class_idx=scores.argmax(1).tolist(), scores=scores)
        maps["torchcam ScoreCAM"] = cams.detach().numpy()

    def camkit_run(name: str, method: camkit.CamMethod) -> Callable[[], None]:
        def run() -> None:
            maps[name] = method(x).cams

        return run

    def camkit_method(name: str, cls: type, **extra: object) -> tuple[str, Callable[[], None]]:
        return name, camkit_run(name, cls(model, LAYER, **options, **extra))

    forward_name = f"forward, one batch of {args.batch_size} (no_grad)"
    runs = dict(
        [
            (forward_name, forward_batch),
            camkit_method("camkit ScoreCAM", camkit.ScoreCAM),
            ("torchcam ScoreCAM", torchcam_scorecam),
            camkit_method("camkit FasterScoreCAM channels=16", camkit.FasterScoreCAM, channels=16),
            camkit_method(
                "camkit FasterScoreCAM channels=128", camkit.FasterScoreCAM, channels=128
            ),
        ]
    )
    passes = -(-1280 // args.batch_size)
    threads = torch.get_num_threads()
    report(
        f"Score-CAM, EfficientNet-Lite0 {LAYER} (1280 channels), one 224 px image, batch size "
        f"{args.batch_size} ({passes} masked passes), {threads} threads, torch "
        f"{torch.__version__}, {args.rounds} rounds (median)",
        side_by_side(runs, args.rounds, warmup=1),
        "torchcam ScoreCAM",
    )
    reference = maps["camkit ScoreCAM"]
    print("agreement with the camkit float32 Score-CAM map (7x7, normalized):")
    for name, cams in maps.items():
        if name != "camkit ScoreCAM":
            print(f"  {name:<40} {agreement(reference, cams)}")
    if args.no_half:
        return
    maps.clear()
    half_runs = dict(
        camkit_method(f"camkit FasterScoreCAM-128 {precision}", camkit.FasterScoreCAM,
                      channels=128, precision=precision)
        for precision in ("float32", "bfloat16", "float16")
    )  # fmt: skip
    report(
        "half precision (autocast of the masked passes), Faster Score-CAM, 128 channels",
        side_by_side(half_runs, args.rounds, warmup=1),
        "camkit FasterScoreCAM-128 float32",
    )
    reference = maps.pop("camkit FasterScoreCAM-128 float32")
    print("agreement with the float32 map of the same method:")
    for name, cams in maps.items():
        print(f"  {name:<40} {agreement(reference, cams)}")


if __name__ == "__main__":
    main()
