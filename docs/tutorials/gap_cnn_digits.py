"""A small CNN with global average pooling, trained on scikit-learn's digits, with and without
max-pooling, and its class activation maps.

Run from the repository root: ``python docs/tutorials/gap_cnn_digits.py``. Offline: the digits
ship with scikit-learn.
"""

from pathlib import Path

import cv2
import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import camkit

ROOT = Path(__file__).resolve().parents[2]
FIGURE = ROOT / "docs" / "tutorials" / "figures" / "gap_cnn_digits.png"
SIZE = 32  # the 8 x 8 digits, upsampled
SHOWN = 10  # test images in the figure
DISPLAY = 96  # pixels per image in the figure
EPOCHS = 8


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits as float32 (N, SIZE, SIZE, 1) in [0, 1], and their labels (N,)."""
    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")  # grey levels 0..16
    upsampled = [cv2.resize(i, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR) for i in images]
    return np.stack(upsampled)[..., None], digits.target


def gap_cnn(max_pooling: bool) -> keras.Model:
    """Three 5 x 5 convolutions, global average pooling and one Dense layer: the architecture
    CAM needs. With max-pooling the last maps are 8 x 8; without, 32 x 32."""
    layers = [keras.Input((SIZE, SIZE, 1))]
    for n, channels in enumerate((8, 16, 32)):
        name = "last_conv" if n == 2 else f"conv{n + 1}"
        layers.append(
            keras.layers.Conv2D(channels, 5, padding="same", activation="relu", name=name)
        )
        if max_pooling and n < 2:
            layers.append(keras.layers.MaxPooling2D(2))
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, name="digit")]
    model = keras.Sequential(layers, name="with_pooling" if max_pooling else "without_pooling")
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


keras.utils.set_random_seed(0)
images, labels = digit_images()
train_images, test_images, y_train, y_test = train_test_split(
    images, labels, test_size=0.2, random_state=0, stratify=labels
)
mean, std = train_images.mean(), train_images.std()  # standardized inputs train much faster
x_train, x_test = (train_images - mean) / std, (test_images - mean) / std
shown = x_test[:SHOWN]
pictures = [
    cv2.resize(i[..., 0], (DISPLAY, DISPLAY), interpolation=cv2.INTER_NEAREST)
    for i in test_images[:SHOWN]
]

tiles, titles = [], []
for max_pooling in (True, False):
    model = gap_cnn(max_pooling)
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"{model.name}: test accuracy {accuracy:.3f}")
    explanation = camkit.explain(model, shown, method="cam", layer="last_conv", classifier="digit")
    maps = explanation.cams
    tiles += [camkit.overlay(p, cam, alpha=0.4) for p, cam in zip(pictures, maps, strict=True)]
    row = "pool" if max_pooling else "no pool"
    titles += [f"{row}: {digit}" for digit in explanation.targets]

camkit.save_image(FIGURE, camkit.image_grid(tiles, columns=SHOWN, titles=titles))
print(f"wrote {FIGURE.relative_to(ROOT)}")
