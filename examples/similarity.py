"""Worked example: a similarity search, and where a match looks like the query.

The pretrained EfficientNet-Lite0 of the demo, without its classifier, embeds photos (its pooled
1280 features). A query, a tighter, mirrored crop of one photo, is compared with a gallery of
scikit-image photos by cosine similarity; ``SimilarityTarget(query_embedding)`` then explains
each gallery photo's similarity to the query: the map shows which parts of the match make it
alike. All offline.

The same target explains a CLIP-like model against a text: pass the text side's embedding,
computed once, as the reference (``SimilarityTarget(text_embeds)``, or several prompts with
``per_reference=True``, one map each), and the image side as the model.

Run: ``python examples/similarity.py [--output similarity.png]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from figures import write_figure
from torch import nn

import camkit
from camkit._demo import load_model, load_photos, to_model_inputs
from camkit.targets import SimilarityTarget

GALLERY = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")


class Embedder(nn.Module):
    """EfficientNet-Lite0 up to its pooled features: ``(N, 3, 224, 224) -> (N, 1280)``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network._avg_pooling(self.network.extract_features(x)).flatten(1)


def query_photo() -> np.ndarray:
    """Chelsea the cat again, framed tighter and mirrored: the same subject, another picture."""
    import cv2
    from skimage import data

    picture = data.chelsea()[40:260, 60:280, :][:, ::-1]
    return cv2.resize(np.ascontiguousarray(picture), (224, 224), interpolation=cv2.INTER_AREA)


def main(output: Path | None = None) -> dict[str, float]:
    model = Embedder(load_model()).eval()
    gallery = load_photos(GALLERY)
    query = query_photo()
    with torch.no_grad():
        reference = model(to_model_inputs(query[None]))[0].numpy()
    x = to_model_inputs(gallery)
    # the gallery against the query: one call gives the similarities and their maps
    matches = camkit.explain(model, x, "gradcam", target=SimilarityTarget(reference))
    ranking = np.argsort(-matches.scores)
    for rank, index in enumerate(ranking, 1):
        print(f"{rank}. {GALLERY[index]:<18} cosine {matches.scores[index]:.3f}")
    summary = {
        "best match is the same cat": float(GALLERY[ranking[0]] == "chelsea"),
        "best cosine": float(matches.scores[ranking[0]]),
    }
    if output is not None:
        tiles = [query] + [camkit.overlay(gallery[i], matches.cams[i]) for i in ranking]
        titles = ["query"] + [f"{GALLERY[i]} {matches.scores[i]:.2f}" for i in ranking]
        write_figure(camkit.image_grid(tiles, columns=len(tiles), titles=titles), output)
        print(f"maps of layer {matches.layers[0]}")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("similarity.png"))
    main(parser.parse_args().output)
