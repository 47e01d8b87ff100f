"""Layer layouts in PyTorch: a channels-last layer read by hand, an ambiguous one refused with the
fix, the user's ``layout=`` (a name or a function), hand-built ConvNeXt- and Swin-style blocks
and the pretrained EfficientNet-Lite0 through every gradient method."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import camkit  # noqa: E402

RAW = {"relu": False, "normalize": "none", "size": "layer"}
GRADIENT_METHODS = [
    "gradcam", "gradcam++", "xgradcam", "hirescam", "gradcam-elementwise", "layercam",
    "eigengradcam", "smoothgradcam++",
]  # fmt: skip


class Permute(nn.Module):
    """torchvision's ``Permute``: a module whose layout torch cannot tell."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv, then norm and MLP channels-last, then back: ConvNeXt's block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.to_last = Permute(0, 2, 3, 1)
        self.norm = nn.LayerNorm(channels)
        self.pwconv1 = nn.Linear(channels, 4 * channels)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * channels, channels)
        self.to_first = Permute(0, 3, 1, 2)

    def forward(self, x):
        y = self.pwconv2(self.act(self.pwconv1(self.norm(self.to_last(self.dwconv(x))))))
        return x + self.to_first(y)


class ConvNeXtStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.block = ConvNeXtBlock(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


class SwinBlock(nn.Module):
    """Windowed self-attention and an MLP on a channels-last map (N, H, W, C), as torchvision's
    Swin stages keep it (no shift, 2x2 windows)."""

    def __init__(self, channels: int, window: int = 2) -> None:
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(channels)
        self.attention = nn.MultiheadAttention(channels, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 2 * channels), nn.GELU(),
                                 nn.Linear(2 * channels, channels))  # fmt: skip

    def forward(self, x):
        n, h, w, c = x.shape
        k = self.window
        windows = self.norm1(x).reshape(n, h // k, k, w // k, k, c).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(-1, k * k, c)
        mixed = self.attention(windows, windows, windows, need_weights=False)[0]
        mixed = mixed.reshape(n, h // k, w // k, k, k, c).permute(0, 1, 3, 2, 4, 5)
        x = x + mixed.reshape(n, h, w, c)
        return x + self.mlp(self.norm2(x))


class SwinStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, 8, 2, stride=2)
        self.to_last = Permute(0, 2, 3, 1)
        self.norm = nn.LayerNorm(8)
        self.stage = nn.Sequential(SwinBlock(8), SwinBlock(8))
        self.head_norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stage(self.norm(self.to_last(self.patches(x))))
        return self.fc(self.head_norm(x).mean((1, 2)))


@pytest.fixture
def x():
    return torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))


def hand_gradcam(model, x, module, target, channels_last):
    """Grad-CAM on ``module``'s output written out by hand, its layout read as told."""
    store = {}

    def hook(mod, args, output):
        output.retain_grad()
        store["a"] = output

    handle = module.register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    logits[torch.arange(len(x)), target].sum().backward()
    model.zero_grad(set_to_none=True)
    a, g = store["a"].detach(), store["a"].grad
    if channels_last:
        a, g = a.permute(0, 3, 1, 2), g.permute(0, 3, 1, 2)
    return (g.mean((2, 3), keepdim=True) * a).sum(1).numpy()


def test_a_channels_last_layer_is_read_channels_last(x):
    """``pwconv2`` returns (N, H, W, C): read as NCHW it would mix rows with channels."""
    torch.manual_seed(0)
    model = ConvNeXtStyle().eval()
    table = camkit.layers(model, x)
    assert table["block.pwconv2"].layout == "channels_last"
    assert table["block.dwconv"].layout == "channels_first"
    assert table["block"].layout == "channels_first"  # its input's, and its shape
    got = camkit.explain(model, x, "gradcam", "block.pwconv2", target=[1, 3], **RAW)
    expected = hand_gradcam(model, x, model.block.pwconv2, [1, 3], channels_last=True)
    np.testing.assert_allclose(got.cams, expected, atol=1e-5)
    # the user's function gives the same map
    by_function = camkit.explain(model, x, "gradcam", "block.pwconv2", target=[1, 3],
                                 layout=lambda a: a.permute(0, 3, 1, 2), **RAW)  # fmt: skip
    np.testing.assert_allclose(by_function.cams, expected, atol=1e-5)


def test_an_ambiguous_layer_is_refused_with_the_fix(x):
    """``to_first`` is a module torch knows nothing of, in a model with channels-last layers:
    camkit says so instead of guessing; ``layout=`` settles it."""
    torch.manual_seed(0)
    model = ConvNeXtStyle().eval()
    assert camkit.layers(model, x)["block.to_first"].layout is None
    with pytest.raises(camkit.LayerError, match="'block.to_first'.*layout='channels_first'"):
        camkit.explain(model, x, layer="block.to_first")
    got = camkit.explain(model, x, "gradcam", "block.to_first", target=0,
                         layout="channels_first", **RAW)  # fmt: skip
    expected = hand_gradcam(model, x, model.block.to_first, [0, 0], channels_last=False)
    np.testing.assert_allclose(got.cams, expected, atol=1e-5)
    with pytest.raises(camkit.InputError, match="layout='nchw' is not valid"):
        camkit.explain(model, x, layout="nchw")


def test_a_swin_style_stage_is_channels_last(x):
    torch.manual_seed(0)
    model = SwinStyle().eval()
    table = camkit.layers(model, x)
    assert [table[f"stage.{i}"].layout for i in (0, 1)] == ["channels_last"] * 2
    assert table["stage"].layout == "channels_last"
    got = camkit.explain(model, x, "gradcam", "stage.1", target=2, **RAW)
    expected = hand_gradcam(model, x, model.stage[1], [2, 2], channels_last=True)
    np.testing.assert_allclose(got.cams, expected, atol=1e-5)
    assert camkit.explain(model, x).layers == ("head_norm",)  # pooled over every position


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_every_gradient_method_on_hand_built_blocks(x, method):
    torch.manual_seed(0)
    for model, layer in ((ConvNeXtStyle().eval(), "block.pwconv2"), (SwinStyle().eval(), "stage")):
        got = camkit.explain(model, x, method, layer, target=1)
        assert got.cams.shape == (2, 12, 12) and np.isfinite(got.cams).all()
        assert got.cams.max() > 0


@pytest.mark.slow
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_every_gradient_method_on_the_pretrained_efficientnet(method):
    demo = pytest.importorskip("camkit._demo")
    model = demo.load_model()
    coffee = demo.to_model_inputs(demo.load_photos(["coffee"]))
    got = camkit.explain(model, coffee, method, target=967)  # espresso
    assert got.layers == ("_swish",) and got.cams.shape == (1, 224, 224)
    assert np.isfinite(got.cams).all() and got.cams.max() == 1.0
    # the cup is in the middle of the photo, the table at its border
    middle, border = got.cams[0, 80:150, 60:170].mean(), got.cams[0, :20].mean()
    assert middle > border
