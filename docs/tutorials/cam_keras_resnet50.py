"""CAM on a Keras ResNet50 with camkit, checked against the computation by hand.

Run from the repository root: ``python docs/tutorials/cam_keras_resnet50.py``. Offline: the
network has random weights (``weights=None``), so the maps show the mechanics, not where a
trained network looks.
"""

from pathlib import Path

import cv2
import keras
import numpy as np
import skimage.data

import camkit

ROOT = Path(__file__).resolve().parents[2]
FIGURE = ROOT / "docs" / "tutorials" / "figures" / "cam_keras_resnet50.png"
PHOTOS = ("chelsea", "coffee", "astronaut")
SIZE = 224  # ResNet50's input size; its last block's maps are 7 x 7
LAYER = "conv5_block3_out"  # the last block's output, which global average pooling reduces
CLASSIFIER = "predictions"  # the Dense layer after the pooling: 2048 features -> 1000 classes


def square_photo(name: str, size: int) -> np.ndarray:
    """A scikit-image photo, centre-cropped to a square and resized: uint8 RGB (size, size, 3)."""
    photo = getattr(skimage.data, name)()
    height, width = photo.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = photo[top : top + side, left : left + side]
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)


def minmax(heatmap: np.ndarray) -> np.ndarray:
    """``(M - min M) / (max M - min M)``: one map rescaled to [0, 1]."""
    return (heatmap - heatmap.min()) / (heatmap.max() - heatmap.min())


def cam_by_hand(model: keras.Model, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``M_n = sum_k w[c_n, k] * A_n[:, :, k]`` for each image n, upsampled to the input size
    (bilinear, half-pixel centres) and min-max normalized: (N, SIZE, SIZE)."""
    features = keras.Model(model.input, model.get_layer(LAYER).output)
    activations = keras.ops.convert_to_numpy(features(x))  # A: (N, 7, 7, 2048)
    kernel = keras.ops.convert_to_numpy(model.get_layer(CLASSIFIER).kernel)  # (2048, 1000)
    weights = kernel[:, classes].T  # w[c_n, :] for each image: (N, 2048)
    maps = np.einsum("nhwk,nk->nhw", activations, weights)  # (N, 7, 7)
    return np.stack(
        [minmax(cv2.resize(m, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)) for m in maps]
    )


keras.utils.set_random_seed(0)
model = keras.applications.ResNet50(weights=None)  # the walkthrough loads weights="imagenet"
photos = np.stack([square_photo(name, SIZE) for name in PHOTOS])
x = keras.applications.resnet50.preprocess_input(photos.astype("float32"))

explanation = camkit.explain(model, x, method="cam", layer=LAYER, classifier=CLASSIFIER)
by_hand = cam_by_hand(model, x, explanation.targets)
difference = float(np.abs(explanation.cams - by_hand).max())
assert difference < 1e-4, difference
print(f"camkit's CAM and the hand computation differ by at most {difference:.1e}")

tiles = [*photos]
tiles += [camkit.overlay(photo, cam) for photo, cam in zip(photos, explanation.cams, strict=True)]
tiles += [camkit.overlay(photo, cam) for photo, cam in zip(photos, by_hand, strict=True)]
titles = [*PHOTOS]
titles += [f"camkit: class {c}" for c in explanation.targets]
titles += ["by hand"] * len(PHOTOS)
camkit.save_image(FIGURE, camkit.image_grid(tiles, columns=len(PHOTOS), titles=titles))
print(f"wrote {FIGURE.relative_to(ROOT)}")
