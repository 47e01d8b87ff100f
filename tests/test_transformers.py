"""Hugging Face ``transformers`` image classifiers, with no glue: outputs carrying ``logits``
are scored on them, ``layer=None`` finds a layer the score reaches (never an embedding), token
layers lose their class/distillation tokens and find their grid, non-square inputs included.

Every model is built from a small random config (nothing is downloaded), and every map is
checked against Grad-CAM written by hand on the tensors the same module returns."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import camkit  # noqa: E402

SMALL_VIT = {
    "image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 2,
    "num_attention_heads": 2, "intermediate_size": 32, "num_labels": 3,
}  # fmt: skip


def vit():
    return transformers.ViTForImageClassification(transformers.ViTConfig(**SMALL_VIT))


def deit():
    config = transformers.DeiTConfig(**SMALL_VIT)
    return transformers.DeiTForImageClassificationWithTeacher(config)


def swin():
    config = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 1],
        window_size=2, num_labels=3,
    )  # fmt: skip
    return transformers.SwinForImageClassification(config)


def convnext():
    config = transformers.ConvNextConfig(
        num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3
    )
    return transformers.ConvNextForImageClassification(config)


def resnet():
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3
    )
    return transformers.ResNetForImageClassification(config)


def hand_gradcam(model, x, layer, target, prefix, grid, **forward_kwargs):
    """Grad-CAM on ``layer``'s output (its first tensor) with a full backward: tokens without
    their ``prefix`` tokens are laid out on ``grid`` by hand."""
    store = {}

    def hook(module, args, output):
        tensor = output[0] if isinstance(output, tuple) else output
        tensor.retain_grad()
        store["a"] = tensor

    handle = dict(model.named_modules())[layer].register_forward_hook(hook)
    try:
        logits = model(x, **forward_kwargs).logits
    finally:
        handle.remove()
    logits[torch.arange(len(x)), target].sum().backward()
    model.zero_grad(set_to_none=True)
    a, g = store["a"].detach(), store["a"].grad
    if a.ndim == 3:  # (N, T, C) tokens -> (N, C, h, w)
        a, g = (t[:, prefix:].reshape(len(x), *grid, -1).permute(0, 3, 1, 2) for t in (a, g))
    cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear")[:, 0]
    low, high = cam.amin((1, 2), keepdim=True), cam.amax((1, 2), keepdim=True)
    return ((cam - low) / (high - low)).numpy()


@pytest.mark.parametrize(
    ("build", "layer", "prefix", "grid"),
    [
        # class token only: the patches reach the score through the last block's attention, so
        # the layer is that block's input norm (its output reaches the class token alone)
        (vit, "vit.layers.1.layernorm_before", 1, (4, 4)),
        (deit, "deit.layers.1.layernorm_before", 2, (4, 4)),  # class and distillation tokens
        (swin, "swin.layernorm", 0, (4, 4)),  # pooled over every token: the last stage's norm
        (convnext, "convnext.encoder.stages.1", 0, None),  # channels-first feature maps
        (resnet, "resnet.encoder.stages.1", 0, None),
    ],
)
def test_image_classifiers_need_no_glue(build, layer, prefix, grid):
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    logits = model(x).logits.detach()
    explanation = camkit.explain(model, x)
    assert explanation.layers == (layer,)
    assert explanation.targets.tolist() == logits.argmax(1).tolist()
    np.testing.assert_allclose(explanation.scores, logits.max(1).values.numpy(), atol=1e-5)
    expected = hand_gradcam(model, x, layer, explanation.targets.tolist(), prefix, grid)
    assert np.abs(explanation.cams - expected).max() <= 1e-4


def test_a_non_square_input_finds_its_grid():
    """A 32x48 input to a ViT trained at 32x32 (``interpolate_pos_encoding`` through
    ``forward_kwargs``): 1 + 4 * 6 tokens, laid out 4 by 6."""
    torch.manual_seed(0)
    model = vit().eval()
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    options = {"interpolate_pos_encoding": True}
    layer = "vit.layers.1.layernorm_before"
    explanation = camkit.explain(model, x, target=[0, 2], forward_kwargs=options)
    assert explanation.layers == (layer,) and explanation.cams.shape == (2, 32, 48)
    expected = hand_gradcam(model, x, layer, [0, 2], 1, (4, 6), **options)
    assert np.abs(explanation.cams - expected).max() <= 1e-4


def test_the_layer_table_reads_transformer_layouts():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    table = camkit.layers(convnext().eval(), x)
    # ConvNeXt's depthwise convolution is channels-first; its norm and MLP run channels-last
    layer = "convnext.encoder.stages.1.layers.0"
    assert table[f"{layer}.dwconv"].layout == "channels_first"
    assert table[f"{layer}.layernorm"].layout == "channels_last"
    assert table[f"{layer}.pwconv2"].layout == "channels_last"
    assert table[layer].layout == "channels_first"
    vit_table = camkit.layers(vit().eval(), x)
    assert vit_table["vit.layers.1.mlp"].layout == "tokens"
    assert vit_table["vit.layers.1.mlp"].spatial == (4, 4)
    assert vit_table["classifier"].spatial is None


@pytest.mark.parametrize("method", camkit.methods())
def test_every_method_on_a_vit_and_a_convnext(method):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    options = {"batch_size": 64, "samples": 2} if method in ("sscam", "iscam") else {}
    for model in (vit().eval(), convnext().eval()):
        if method == "cam" and model.config.model_type == "vit":
            continue  # CAM needs the classifier to pool a feature map, not a class token
        explanation = camkit.explain(model, x, method, **options)
        assert explanation.cams.shape == (2, 32, 32) and np.isfinite(explanation.cams).all()
