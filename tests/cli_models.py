"""Model factories for ``camkit explain --model cli_models:FACTORY`` in tests/test_cli.py."""

from __future__ import annotations

import numpy as np


def torch_cnn():
    from test_torch import SmallCNN

    return SmallCNN().eval()


def nnx_cnn_with_preprocessing():
    """The study's Flax NNX CNN and its own preprocessing: RGB uint8 images to 12x12 floats."""
    import cv2
    from study_builds import nnx_cnn

    model, _ = nnx_cnn()

    def preprocess(images):
        resized = [cv2.resize(image, (12, 12), interpolation=cv2.INTER_AREA) for image in images]
        return np.stack(resized).astype(np.float32) / 255.0

    return model, preprocess
