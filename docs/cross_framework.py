"""Write docs/cross_framework.md: the demo's pretrained EfficientNet-Lite0 in PyTorch and ported
weight for weight to Flax NNX and Keras (examples/efficientnet_ports.py), the Keras port run on
each of Keras 3's backends (TensorFlow, JAX, PyTorch), every method's maps on scikit-image's
photos compared across the five builds by ``camkit.run_study``.

Offline: ``python docs/cross_framework.py`` (with the ``demo`` and ``dev`` extras; about 20
minutes on 2 CPU cores, each build in a process of its own).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))  # the ports: factories the builds' processes import

import camkit  # noqa: E402

BUILDS = [
    camkit.Build("torch", "efficientnet_ports:torch_efficientnet", layer="_swish"),
    camkit.Build("flax-nnx", "efficientnet_ports:nnx_efficientnet", layer="head_act"),
    *(
        camkit.Build(f"keras-{backend}", "efficientnet_ports:keras_efficientnet",
                     layer="head_act", environment={"KERAS_BACKEND": backend})
        for backend in ("tensorflow", "jax", "torch")
    ),
]  # fmt: skip
#: One masked (or ablated) pass per channel of the 1280-channel head, in each framework: tens of
#: minutes on a CPU. Their parity is tested on small networks (tests/test_tf.py, test_jax.py).
SLOW = {"scorecam", "sscam", "iscam", "ablationcam"}
OPTIONS = {"smoothgradcam++": {"seed": 0}, "fasterscorecam": {"batch_size": 16}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=str(Path(__file__).with_name("cross_framework.md")))
    args = parser.parse_args()
    methods = [m for m in camkit.methods() if m not in SLOW]
    start = time.perf_counter()
    study = camkit.run_study(BUILDS, methods, options=OPTIONS)
    seconds = time.perf_counter() - start
    worst = max(study.rows(), key=lambda row: row["max_difference"])
    about = " ".join([
        "Written by `python docs/cross_framework.py`: the demo's pretrained EfficientNet-Lite0",
        "(PyTorch) and its ports to Flax NNX and Keras 3, weight for weight",
        "(`examples/efficientnet_ports.py`; the ports' logits agree with PyTorch's to 1e-6",
        "relative, tested in `tests/test_ports.py`), the one Keras model run on each of Keras",
        "3's backends (`keras-tensorflow`, `keras-jax`, `keras-torch`: the same code and",
        "weights, `KERAS_BACKEND` set in each build's process), explain scikit-image's",
        "`coffee`, `chelsea` and `astronaut` photos (224 px) for PyTorch's top-1 classes on",
        "the head's ReLU6 (`_swish` in PyTorch, `head_act` in the ports). Each row compares",
        "one method's maps in two builds, averaged over the photos: Pearson and Spearman",
        "correlation, the largest absolute difference of the normalized maps, the IoU of the",
        "top 10% pixels, and the share of photos whose maps peak on the same pixel. Each",
        "build ran in a process of",
        f"its own; the study took {seconds:.0f} s on 2 CPU cores (Keras on JAX runs eagerly).",
    ])  # fmt: skip
    cause = " ".join([
        "Where maps differ at all, the cause is float32 round-off in different orders of",
        "summation (oneDNN, XLA and PyTorch's own convolutions), amplified where a map is",
        "nearly flat before min-max normalization: the ports use the same padding (each",
        "convolution's own, asymmetric for strided ones, written out), batch-norm epsilon",
        "(1e-3) and activation (ReLU6) as the PyTorch model. The largest difference is",
        f"{worst['max_difference']:.1e} (`{worst['method']}`, {worst['a']} / {worst['b']}).",
        "Score-CAM, SS-CAM, IS-CAM and Ablation-CAM are left out here (one pass per channel of",
        "the 1280-channel head in each framework); their parity is tested on small networks.",
    ])  # fmt: skip
    lines = ["# Cross-framework study", "", about, "", cause, "", study.table(), ""]
    Path(args.output).write_text("\n".join(lines))
    figure = Path(args.output).with_suffix(".png")
    import cv2

    cv2.imwrite(str(figure), np.ascontiguousarray(study.figure()[:, :, ::-1]))
    print(f"wrote {args.output} and {figure}")


if __name__ == "__main__":
    main()
