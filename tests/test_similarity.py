"""Similarity: ``SimilarityTarget`` on embedding models of every backend and on a CLIP model.

Scores are cosines computed by hand from the models' plain outputs; one map per reference must
equal one call per reference.
"""

from __future__ import annotations

import numpy as np
import pytest
from model_kinds import keras_on_tensorflow

import camkit
from camkit import targets

IMAGES = np.random.default_rng(8).normal(size=(2, 8, 8, 3)).astype(np.float32)
DIMENSIONS = 5
REFERENCES = np.random.default_rng(9).normal(size=(3, DIMENSIONS)).astype(np.float32)


def _cosines(embeddings, references):
    e = embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)
    r = references / np.linalg.norm(references, axis=-1, keepdims=True)
    return e @ r.T


def test_cosine_by_hand():
    # (3, 4) . (1, 0) / 5 = 0.6; (0, 2) . (1, 0) = 0
    scored = targets.SimilarityTarget([1.0, 0.0]).resolve(np.array([[3.0, 4.0], [0.0, 2.0]]))
    np.testing.assert_allclose(scored.scores, [0.6, 0.0], rtol=1e-6)
    assert scored.indices is None
    each = targets.SimilarityTarget([[1.0, 0.0], [0.0, -3.0]], per_reference=True)
    scored = each.resolve(np.array([[3.0, 4.0], [0.0, 2.0]]))
    # (3, 4) . (0, -1) / 5 = -0.8; (0, 2) . (0, -1) / 2 = -1
    np.testing.assert_allclose(scored.scores, [[0.6, -0.8], [0.0, -1.0]], rtol=1e-6)
    assert np.asarray(scored.indices).tolist() == [[0, 1], [0, 1]]


def _embedder(framework):
    """A conv embedding model: torch returns ``{"image_embeds": e}`` (CLIP's field), Keras the
    array, Flax NNX a tuple ``(e, features)``; and the images in its layout."""
    if framework == "torch":
        torch = pytest.importorskip("torch")

        class Embedder(torch.nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(4)
                self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
                self.project = torch.nn.Linear(6, DIMENSIONS)

            def forward(self, x):
                return {"image_embeds": self.project(torch.relu(self.conv(x)).mean((2, 3)))}

        model = Embedder().eval()
        images = torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy())
        with torch.no_grad():
            return model, images, model(images)["image_embeds"].numpy(), None
    if framework == "keras":
        keras = keras_on_tensorflow()
        keras.utils.set_random_seed(4)
        model = keras.Sequential(
            [
                keras.Input((8, 8, 3)),
                keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(DIMENSIONS),
            ]
        )
        return model, IMAGES, np.asarray(model(IMAGES)), None
    pytest.importorskip("flax")
    import jax
    from flax import nnx

    class Embedder(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 6, (3, 3), rngs=rngs)
            self.project = nnx.Linear(6, DIMENSIONS, rngs=rngs)

        def __call__(self, x):
            features = jax.nn.relu(self.conv(x))
            return self.project(features.mean((1, 2))), features

    model = Embedder(nnx.Rngs(4))
    return model, IMAGES, np.asarray(model(IMAGES)[0]), 0


@pytest.mark.parametrize("framework", ["torch", "keras", "nnx"])
def test_similarity_by_hand_on_every_backend(framework):
    model, images, embeddings, output = _embedder(framework)
    one = camkit.explain(
        model,
        images,
        "gradcam",
        "conv",
        target=targets.SimilarityTarget(REFERENCES[0], output=output),
    )
    np.testing.assert_allclose(one.scores, _cosines(embeddings, REFERENCES[:1])[:, 0], rtol=1e-5)
    assert one.targets.tolist() == [-1, -1] and one.cams.shape == (2, 8, 8)
    # another image's embedding per sample: sample 0 against sample 1 and back
    swapped = embeddings[::-1].copy()
    pairs = camkit.explain(
        model, images, "gradcam", "conv", target=targets.SimilarityTarget(swapped, output=output)
    )
    np.testing.assert_allclose(pairs.scores, _cosines(embeddings, swapped).diagonal(), rtol=1e-5)


@pytest.mark.parametrize(
    ("framework", "method"),
    [("torch", "gradcam++"), ("torch", "scorecam"), ("keras", "gradcam"), ("nnx", "gradcam")],
)
def test_one_map_per_reference_equals_one_call_each(framework, method):
    model, images, embeddings, output = _embedder(framework)
    options = {"batch_size": 6} if method == "scorecam" else {}
    each = camkit.explain(
        model,
        images,
        method,
        "conv",
        target=targets.SimilarityTarget(REFERENCES, output=output, per_reference=True),
        **options,
    )
    np.testing.assert_allclose(each.scores, _cosines(embeddings, REFERENCES), rtol=1e-5)
    assert each.targets.tolist() == [[0, 1, 2]] * 2
    for k in range(3):
        one = camkit.explain(
            model,
            images,
            method,
            "conv",
            target=targets.SimilarityTarget(REFERENCES[k], output=output),
            **options,
        )
        np.testing.assert_allclose(each.cams[:, k], one.cams, atol=1e-5)


def test_image_text_similarity_of_a_clip_model():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = transformers.CLIPConfig(
        text_config=dict(
            tower, vocab_size=100, max_position_embeddings=16, bos_token_id=0, eos_token_id=1
        ),
        vision_config=dict(tower, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    clip = transformers.CLIPModel(config).eval()

    class ImageTower(torch.nn.Module):
        """The image side alone: its projected embedding, ``pooler_output`` ``(N, 16)``."""

        def __init__(self):
            super().__init__()
            self.clip = clip

        def forward(self, pixel_values):
            return self.clip.get_image_features(pixel_values=pixel_values)

    images = torch.randn(2, 3, 32, 32)
    prompts = torch.randint(2, 100, (3, 7))
    with torch.no_grad():
        both = clip(pixel_values=images, input_ids=prompts)
        text = clip.get_text_features(input_ids=prompts).pooler_output  # fixed: computed once
    each = camkit.explain(
        ImageTower(), images, target=targets.SimilarityTarget(text.numpy(), per_reference=True)
    )
    # CLIP's logits are its learned scale times these cosines
    expected = (both.logits_per_image / clip.logit_scale.exp()).detach().numpy()
    np.testing.assert_allclose(each.scores, expected, rtol=1e-4, atol=1e-6)
    assert each.layers[0].startswith("clip.vision_model") and each.cams.shape == (2, 3, 32, 32)
    for k in range(3):
        one = camkit.explain(
            ImageTower(),
            images,
            layer=each.layers,
            target=targets.SimilarityTarget(text[k].numpy()),
        )
        np.testing.assert_allclose(each.cams[:, k], one.cams, atol=1e-5)


def test_similarity_errors_name_the_fix():
    with pytest.raises(camkit.TargetError, match=r"no 'embeds'.*pass output= one of \['a'\]"):
        targets.SimilarityTarget([1.0, 0.0], output="embeds").resolve({"a": np.ones((1, 2))})
    with pytest.raises(camkit.TargetError, match=r"shape \(N, D\), got \(1, 4, 2\).*pool"):
        targets.SimilarityTarget([1.0, 0.0]).resolve(np.ones((1, 4, 2)))
    with pytest.raises(camkit.InputError, match=r"per_reference give \(K, D\)"):
        targets.SimilarityTarget([1.0, 0.0], per_reference=True)
    with pytest.raises(camkit.TargetError, match=r"3 embeddings for a batch of 2"):
        targets.SimilarityTarget(np.ones((3, 2))).resolve(np.ones((2, 2)))
