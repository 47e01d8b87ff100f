"""Grad-CAM on a Keras ResNet50 with camkit, next to the hand-written GradientTape recipe.

Run from the repository root: ``python docs/tutorials/gradcam_keras_resnet50.py``. Offline: the
network has random weights (``weights=None``), so the maps show the mechanics, not where a
trained network looks.
"""

from pathlib import Path

import cv2
import keras
import numpy as np
import skimage.data
import tensorflow as tf

import camkit

ROOT = Path(__file__).resolve().parents[2]
FIGURE = ROOT / "docs" / "tutorials" / "figures" / "gradcam_keras_resnet50.png"
PHOTOS = ("chelsea", "coffee", "astronaut")
SIZE = 224
LAYER = "conv5_block3_out"


def square_photo(name: str, size: int) -> np.ndarray:
    """A scikit-image photo, centre-cropped to a square and resized: uint8 RGB (size, size, 3)."""
    photo = getattr(skimage.data, name)()
    height, width = photo.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = photo[top : top + side, left : left + side]
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)


def minmax(heatmap: tf.Tensor) -> np.ndarray:
    """``(M - min M) / (max M - min M)``: one map rescaled to [0, 1]."""
    heatmap = np.asarray(heatmap)
    return (heatmap - heatmap.min()) / (heatmap.max() - heatmap.min())


def gradcam_by_hand(model: keras.Model, image: np.ndarray) -> tuple[tf.Tensor, int]:
    """The classic recipe for one image (H, W, 3): the ReLU of the layer's maps weighted by the
    mean gradient of the top class's score over each map, at the layer's size (7, 7)."""
    grad_model = keras.Model(model.input, [model.get_layer(LAYER).output, model.output])
    with tf.GradientTape() as tape:
        conv_output, predictions = grad_model(image[None])
        top_class = int(tf.argmax(predictions[0]))
        class_score = predictions[:, top_class]
    grads = tape.gradient(class_score, conv_output)  # dy_c / dA: (1, 7, 7, 2048)
    pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))  # alpha_k: (2048,)
    heatmap = conv_output[0] @ pooled_grads[..., None]  # sum_k alpha_k A_k: (7, 7, 1)
    return tf.nn.relu(heatmap[..., 0]), top_class


keras.utils.set_random_seed(0)
# The walkthrough loads weights="imagenet" and drops the softmax so the score is a logit.
model = keras.applications.ResNet50(weights=None, classifier_activation=None)
photos = np.stack([square_photo(name, SIZE) for name in PHOTOS])
x = keras.applications.resnet50.preprocess_input(photos.astype("float32"))

explanation = camkit.explain(model, x, method="gradcam", layer=LAYER)
at_layer = camkit.explain(model, x, method="gradcam", layer=LAYER, size="layer")

hand_maps = []
for n, image in enumerate(x):
    heatmap, top_class = gradcam_by_hand(model, image)
    assert top_class == explanation.targets[n]
    # camkit's defaults: ReLU, then a bilinear resize to the input, then min-max per map
    upsampled = tf.image.resize(heatmap[..., None], (SIZE, SIZE), method="bilinear")[..., 0]
    hand_maps.append(minmax(upsampled))
    layer_difference = float(np.abs(at_layer.cams[n] - minmax(heatmap)).max())
    assert layer_difference < 1e-4, layer_difference
by_hand = np.stack(hand_maps)
difference = float(np.abs(explanation.cams - by_hand).max())
assert difference < 1e-4, difference
print(f"camkit's Grad-CAM and the GradientTape recipe differ by at most {difference:.1e}")

tiles = [*photos]
tiles += [camkit.overlay(photo, cam) for photo, cam in zip(photos, explanation.cams, strict=True)]
tiles += [camkit.overlay(photo, cam) for photo, cam in zip(photos, by_hand, strict=True)]
titles = [*PHOTOS]
titles += [f"camkit: class {c}" for c in explanation.targets]
titles += ["GradientTape recipe"] * len(PHOTOS)
camkit.save_image(FIGURE, camkit.image_grid(tiles, columns=len(PHOTOS), titles=titles))
print(f"wrote {FIGURE.relative_to(ROOT)}")
