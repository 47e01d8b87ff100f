"""Grad-CAM of a regression output (an age) through a nested Keras Xception backbone.

Run from the repository root: ``python docs/tutorials/regression_xception.py``. Offline: the
network has random weights (``weights=None``) and was never trained on ages, so the maps show
the mechanics, not what makes a face look older.
"""

from pathlib import Path

import cv2
import keras
import numpy as np
import skimage.data

import camkit
from camkit.targets import RegressionTarget

ROOT = Path(__file__).resolve().parents[2]
FIGURE = ROOT / "docs" / "tutorials" / "figures" / "regression_xception.png"
SIZE = 96  # small inputs keep it fast; Xception's last maps are then 3 x 3
LAYER = "xception/block14_sepconv2_act"  # the backbone's last activation, by its nested path
DISPLAY = 192  # pixels per image in the figure


def crops() -> dict[str, np.ndarray]:
    """Square crops of scikit-image's photos, resized to SIZE: uint8 RGB (SIZE, SIZE, 3)."""
    astronaut = skimage.data.astronaut()
    squares = {
        "astronaut, face": astronaut[20:240, 140:360],
        "astronaut": astronaut,
        "chelsea": skimage.data.chelsea()[:, 75:375],
    }
    return {
        name: cv2.resize(square, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        for name, square in squares.items()
    }


def age_model() -> keras.Model:
    """Xception without its top, used as one layer, then global average pooling and a Dense
    layer with one output: the age in years."""
    backbone = keras.applications.Xception(
        weights=None, include_top=False, input_shape=(SIZE, SIZE, 3)
    )  # the walkthrough loads weights="imagenet" and trains the head on faces with ages
    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    age = keras.layers.Dense(1, bias_initializer=keras.initializers.Constant(35.0), name="age")
    return keras.Model(inputs, age(features))


keras.utils.set_random_seed(0)
model = age_model()
photos = crops()
pictures = np.stack(list(photos.values()))
x = keras.applications.xception.preprocess_input(pictures.astype("float32"))  # to [-1, 1]

# print(camkit.layers(model, x)) lists every layer a forward pass runs, nested ones by path
table = camkit.layers(model, x)
print(f"explaining {LAYER}, output {table[LAYER].shape}")

older = camkit.explain(model, x, method="gradcam", layer=LAYER, target=RegressionTarget())
# A callable target is written in the model's framework: here the negated age, whose
# Grad-CAM shows where the evidence for a younger age lies.
younger = camkit.explain(model, x, method="gradcam", layer=LAYER, target=lambda y: -y[:, 0])
print("predicted ages: " + ", ".join(f"{age:.1f}" for age in older.scores))

tiles, titles = [], []
for n, name in enumerate(photos):
    picture = cv2.resize(pictures[n], (DISPLAY, DISPLAY), interpolation=cv2.INTER_LINEAR)
    tiles += [picture, camkit.overlay(picture, older.cams[n])]
    tiles += [camkit.overlay(picture, younger.cams[n])]
    titles += [name, "raises the age", "lowers the age"]
camkit.save_image(FIGURE, camkit.image_grid(tiles, columns=3, titles=titles))
print(f"wrote {FIGURE.relative_to(ROOT)}")
