"""Guided Backpropagation, Guided Grad-CAM and FullGrad: by hand on a tiny network built in
every kind of model, against captum and pytorch-grad-cam on one PyTorch model, and the errors.

The tiny network (every number below derives from it): one image ``x`` of 1 channel, 2 x 2,
``x = [[1, -1], [2, -3]]``; a 1 x 1 convolution to 2 channels with weights ``[1, -1]`` and
bias ``[0, 0.5]``, so ``z0 = x = [[1, -1], [2, -3]]`` and ``z1 = 0.5 - x =
[[-0.5, 1.5], [-1.5, 3.5]]``; a ReLU, ``a0 = [[1, 0], [2, 0]]``, ``a1 = [[0, 1.5], [0, 3.5]]``;
global average pooling; a linear layer whose class-0 weights are ``[1, -2]`` (class 1:
``[0.5, 0.5]``), no bias. The score of class 0 is ``S = mean(a0) - 2 mean(a1) = 0.75 - 2.5 =
-1.75``, so ``dS/da0 = 1/4`` and ``dS/da1 = -2/4 = -1/2`` at every pixel.
"""

from __future__ import annotations

import numpy as np
import pytest

import camkit
from camkit.provider import ModelInputs

X = np.array([[[[1.0, -1.0], [2.0, -3.0]]]], np.float32)  # (1, 1, 2, 2) channels-first
CONV_WEIGHT = np.array([1.0, -1.0], np.float32)
CONV_BIAS = np.array([0.0, 0.5], np.float32)
FC_WEIGHT = np.array([[1.0, -2.0], [0.5, 0.5]], np.float32)  # (classes, features)

# standard: dS/dz_c = [z_c > 0] dS/da_c, dS/dx = 1 * dS/dz0 - 1 * dS/dz1
#   = 1/4 [x > 0] + 1/2 [z1 > 0] = [[1/4, 1/2], [1/4, 1/2]]
STANDARD = np.array([[[[0.25, 0.5], [0.25, 0.5]]]], np.float32)
# guided: dS/dz_c = [z_c > 0] ReLU(dS/da_c): channel 1's -1/2 is stopped, dS/dx = 1/4 [x > 0]
GUIDED = np.array([[[[0.25, 0.0], [0.25, 0.0]]]], np.float32)
# Guided Grad-CAM on the ReLU's output: w_c = mean dS/da_c = (1/4, -1/2),
# L = a0 / 4 - a1 / 2 = [[0.25, -0.75], [0.5, -1.75]], ReLU [[0.25, 0], [0.5, 0]], times GUIDED
GUIDED_GRADCAM_POST_RELU = np.array([[[[0.0625, 0.0], [0.125, 0.0]]]], np.float32)
# ... on the convolution's output: w_c = mean dS/dz_c = (1/8, -1/4), L = z0 / 8 - z1 / 4 =
# [[0.25, -0.5], [0.625, -1.25]], ReLU [[0.25, 0], [0.625, 0]], times GUIDED
GUIDED_GRADCAM_PRE_RELU = np.array([[[[0.0625, 0.0], [0.15625, 0.0]]]], np.float32)
# FullGrad: |x * dS/dx| = [[0.25, 0.5], [0.5, 1.5]] rescaled: [[0, 0.2], [0.2, 1]]; the bias
# terms b_c dS/dz_c: channel 0 has b = 0 (a constant map, rescaled to 0), channel 1
# 0.5 * [[0, -0.5], [0, -0.5]], |.| rescaled [[0, 1], [0, 1]]; the sum [[0, 1.2], [0.2, 2]]
# rescaled by its own min and max:
FULLGRAD = np.array([[[0.0, 0.6], [0.1, 1.0]]], np.float32)
# completeness: S = sum x dS/dx + sum of the bias terms (+ the linear layer's bias, 0 here):
# (0.25 - 0.5 + 0.5 - 1.5) + (-0.25 - 0.25) = -1.75


def _torch():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(1, 2, 1))
    model.add_module("relu", nn.ReLU())
    model.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    model.add_module("fc", nn.Linear(2, 2))
    with torch.no_grad():
        model.conv.weight.copy_(torch.from_numpy(CONV_WEIGHT).reshape(2, 1, 1, 1))
        model.conv.bias.copy_(torch.from_numpy(CONV_BIAS))
        model.fc.weight.copy_(torch.from_numpy(FC_WEIGHT))
        model.fc.bias.zero_()
    return model.eval(), torch.from_numpy(X), "relu", True


def _keras(style):
    from model_kinds import keras_on_tensorflow

    keras = keras_on_tensorflow()
    conv = keras.layers.Conv2D(2, 1, activation="relu", name="conv")  # a fused ReLU
    head = [keras.layers.GlobalAveragePooling2D(name="pool"), keras.layers.Dense(2, name="fc")]
    if style == "sequential":
        model = keras.Sequential([keras.Input((2, 2, 1)), conv, *head])
    elif style == "subclassed":

        class Tiny(keras.Model):
            def __init__(self):
                super().__init__()
                self.blocks = [conv, *head]

            def call(self, x):
                for layer in self.blocks:
                    x = layer(x)
                return x

        model = Tiny()
        model(np.zeros((1, 2, 2, 1), np.float32))
    else:
        inputs = keras.Input((2, 2, 1))
        if style == "nested":
            x = keras.Sequential([keras.Input((2, 2, 1)), conv], name="backbone")(inputs)
        else:
            x = conv(inputs)
        for layer in head:
            x = layer(x)
        model = keras.Model(inputs, x)
    conv.set_weights([CONV_WEIGHT.reshape(1, 1, 1, 2), CONV_BIAS])
    head[1].set_weights([FC_WEIGHT.T.copy(), np.zeros(2, np.float32)])
    layer = "backbone/conv" if style == "nested" else "conv"
    return model, X.transpose(0, 2, 3, 1).copy(), layer, True


def _nnx():
    jnp = pytest.importorskip("jax.numpy")
    nnx = pytest.importorskip("flax.nnx")

    class Tiny(nnx.Module):
        def __init__(self):
            self.conv = nnx.Conv(1, 2, (1, 1), rngs=nnx.Rngs(0))
            self.fc = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
            self.conv.kernel[...] = jnp.asarray(CONV_WEIGHT).reshape(1, 1, 1, 2)
            self.conv.bias[...] = jnp.asarray(CONV_BIAS)
            self.fc.kernel[...] = jnp.asarray(FC_WEIGHT.T)
            self.fc.bias[...] = jnp.zeros(2)

        def __call__(self, x):
            return self.fc(nnx.relu(self.conv(x)).mean((1, 2)))

    return Tiny(), X.transpose(0, 2, 3, 1).copy(), "conv", False


def _linen():
    linen = pytest.importorskip("flax.linen")

    class Tiny(linen.Module):
        @linen.compact
        def __call__(self, x):
            a = linen.relu(linen.Conv(2, (1, 1), name="conv")(x))
            return linen.Dense(2, name="fc")(a.mean((1, 2)))

    variables = {"params": {
        "conv": {"kernel": CONV_WEIGHT.reshape(1, 1, 1, 2), "bias": CONV_BIAS},
        "fc": {"kernel": FC_WEIGHT.T.copy(), "bias": np.zeros(2, np.float32)},
    }}  # fmt: skip
    return (Tiny(), variables), X.transpose(0, 2, 3, 1).copy(), "conv", False


def _equinox():
    jax = pytest.importorskip("jax")
    eqx = pytest.importorskip("equinox")

    class Tiny(eqx.Module):
        conv: eqx.nn.Conv2d
        fc: eqx.nn.Linear

        def __init__(self):
            key = jax.random.PRNGKey(0)
            conv = eqx.nn.Conv2d(1, 2, 1, key=key)
            conv = eqx.tree_at(
                lambda c: (c.weight, c.bias),
                conv,
                (CONV_WEIGHT.reshape(2, 1, 1, 1), CONV_BIAS.reshape(2, 1, 1)),
            )
            fc = eqx.nn.Linear(2, 2, key=key)
            self.conv = conv
            self.fc = eqx.tree_at(lambda f: (f.weight, f.bias), fc, (FC_WEIGHT, np.zeros(2)))

        def __call__(self, x):  # one image (C, H, W)
            return self.fc(jax.nn.relu(self.conv(x)).mean((1, 2)))

    return Tiny(), X.copy(), "conv", False


def _functions():
    jax = pytest.importorskip("jax")
    import camkit_jax

    def features(p, x):  # (N, H, W, 1) -> (N, H, W, 2), the ReLU inside
        return jax.nn.relu(x * p["weight"] + p["bias"])

    def head(p, a):
        return a.mean((1, 2)) @ p["fc"].T

    params = {"weight": CONV_WEIGHT, "bias": CONV_BIAS, "fc": FC_WEIGHT}
    split = camkit_jax.FunctionSplit(features, head, params)
    return split, X.transpose(0, 2, 3, 1).copy(), "features", True


TINY = {
    "torch": _torch,
    "keras-functional": lambda: _keras("functional"),
    "keras-sequential": lambda: _keras("sequential"),
    "keras-nested": lambda: _keras("nested"),
    "keras-subclassed": lambda: _keras("subclassed"),
    "nnx": _nnx,
    "linen": _linen,
    "equinox": _equinox,
    "functions": _functions,
}


def _gradients(model, x, rule):
    provider = camkit.GuidedBackprop(model).provider
    gradients, scored = provider.input_gradients(ModelInputs(x), camkit.targets.ClassTarget(0),
                                                 rule=rule)  # fmt: skip
    np.testing.assert_allclose(provider.to_numpy(scored.scores), [-1.75], atol=1e-6)
    return provider.to_numpy(gradients)


@pytest.mark.parametrize("kind_name", list(TINY))
def test_every_kind_by_hand(kind_name):
    model, x, layer, post_relu = TINY[kind_name]()
    np.testing.assert_allclose(_gradients(model, x, "standard"), STANDARD, atol=1e-6)
    np.testing.assert_allclose(_gradients(model, x, "guided"), GUIDED, atol=1e-6)
    np.testing.assert_allclose(_gradients(model, x, "standard"), STANDARD, atol=1e-6)

    guided = camkit.explain(model, x, "guided-backprop", target=0)
    np.testing.assert_allclose(guided.attributions, GUIDED, atol=1e-6)
    np.testing.assert_allclose(guided.cams, [[[1, 0], [1, 0]]], atol=1e-6)
    assert guided.layers == () and guided.scores.tolist() == [-1.75]

    weighted = camkit.explain(model, x, "guided-gradcam", layer, target=0)
    expected = GUIDED_GRADCAM_POST_RELU if post_relu else GUIDED_GRADCAM_PRE_RELU
    np.testing.assert_allclose(weighted.attributions, expected, atol=1e-6)
    np.testing.assert_allclose(weighted.cams, expected[:, 0] / expected.max(), atol=1e-6)

    if kind_name == "functions":
        with pytest.raises(camkit.CapabilityError, match="'bias_gradients'"):
            camkit.explain(model, x, "fullgrad", target=0)
        return
    full = camkit.explain(model, x, "fullgrad", target=0)
    np.testing.assert_allclose(full.cams, FULLGRAD, atol=1e-6)
    assert full.layers[-1].endswith("conv") and full.attributions is None
    provider = camkit.FullGrad(model).provider
    terms = provider.bias_gradients(ModelInputs(x), full.layers, camkit.targets.ClassTarget(0))
    # the pre-activation gradients times the bias: 0 * [[1/4, 0], [1/4, 0]] and
    # 0.5 * [[0, -1/2], [0, -1/2]]
    expected_term = [[[[0, 0], [0, 0]], [[0, -0.25], [0, -0.25]]]]
    np.testing.assert_allclose(provider.to_numpy(terms.bias_terms[-1]), expected_term, atol=1e-6)


# -- peers, on one PyTorch model ---------------------------------------------------------------


def _peer_model(relu="module"):
    """conv, batch norm, ReLU, strided conv, ReLU, pooling, linear; its ReLUs as modules (what
    captum hooks), in place, or as functions."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    functional = torch.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
            self.bn = nn.BatchNorm2d(6)
            self.relu1 = nn.ReLU(inplace=relu == "in place")
            self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
            self.relu2 = nn.ReLU(inplace=relu == "in place")
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            x = self.bn(self.conv1(x))
            x = functional.relu(x) if relu == "function" else self.relu1(x)
            x = self.conv2(x)
            x = x.relu() if relu == "function" else self.relu2(x)
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.3, 0.3)
        model.bn.running_var.uniform_(0.5, 1.5)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.3, 0.3)
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    return model.eval(), x


def _relative_error(got, expected):
    return np.abs(got - expected).max() / np.abs(expected).max()


def test_guided_backprop_equals_captum():
    captum = pytest.importorskip("captum.attr")
    model, x = _peer_model()
    got = camkit.explain(model, x, "guided-backprop", target=[1, 4, 2])
    with pytest.warns(UserWarning, match="backward hooks on ReLU"):
        peer = captum.GuidedBackprop(model).attribute(x.clone().requires_grad_(), target=[1, 4, 2])
    assert _relative_error(got.attributions, peer.detach().numpy()) < 1e-6
    # the ReLUs in place, or as functions, which captum cannot hook, give the same
    for relu in ("in place", "function"):
        again = camkit.explain(_peer_model(relu)[0], x, "guided-backprop", target=[1, 4, 2])
        np.testing.assert_allclose(again.attributions, got.attributions, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("upsample", "mode"), [("nearest", "nearest"), ("linear", "bilinear")])
def test_guided_gradcam_equals_captum(upsample, mode):
    captum = pytest.importorskip("captum.attr")
    model, x = _peer_model()
    got = camkit.explain(model, x, "guided-gradcam", "conv2", target=[1, 4, 2], upsample=upsample)
    with pytest.warns(UserWarning, match="backward hooks on ReLU"):
        peer = captum.GuidedGradCam(model, model.conv2).attribute(
            x.clone().requires_grad_(), target=[1, 4, 2], interpolate_mode=mode
        )
    assert _relative_error(got.attributions, peer.detach().numpy()) < 1e-6
    magnitude = np.abs(got.attributions).max(axis=1)
    np.testing.assert_allclose(got.cams, magnitude / magnitude.max(axis=(1, 2), keepdims=True),
                               atol=1e-6)  # fmt: skip


def test_fullgrad_equals_pytorch_grad_cam():
    from pytorch_grad_cam_peer import load

    pytorch_grad_cam = load()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = _peer_model()
    targets = [ClassifierOutputTarget(k) for k in (1, 4, 2)]
    peer = pytorch_grad_cam.FullGrad(model, [])(x, targets=targets)
    got = camkit.explain(model, x, "fullgrad", target=[1, 4, 2], variant="pytorch-grad-cam")
    assert got.layers == ("conv1", "bn", "conv2")
    assert np.abs(got.cams - peer).max() < 1e-5
    # the paper's exact rescaling differs from the peer's only where a channel's range is small
    paper = camkit.explain(model, x, "fullgrad", target=[1, 4, 2])
    assert 0 < np.abs(paper.cams - peer).max() < 1e-2


def test_fullgrad_by_layer_and_by_kind_of_bias():
    torch = pytest.importorskip("torch")
    model, x = _peer_model()
    one = camkit.explain(model, x, "fullgrad", "bn", target=1)
    assert one.layers == ("bn",)
    with pytest.raises(camkit.LayerError, match=r"'relu1' has no bias.*'conv1', 'bn', 'conv2'"):
        camkit.explain(model, x, "fullgrad", "relu1")

    class Mixer(torch.nn.Module):
        """A linear layer on a channels-last feature map: its bias lies over every pixel."""

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.mix = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.mix(self.conv(x).permute(0, 2, 3, 1)).mean((1, 2))

    torch.manual_seed(0)
    mixer = Mixer()
    paper = camkit.explain(mixer, x, "fullgrad", target=1)
    peer = camkit.explain(mixer, x, "fullgrad", target=1, variant="pytorch-grad-cam")
    assert paper.layers == ("conv", "mix") and peer.layers == ("conv",)
    assert not np.allclose(paper.cams, peer.cams)


# -- what cannot be guided, and bad options ---------------------------------------------------


def test_options_that_do_not_apply_are_refused():
    model, x = _peer_model()
    with pytest.raises(camkit.InputError, match="layer='conv2': guided-backprop .* no layer"):
        camkit.explain(model, x, "guided-backprop", "conv2")
    with pytest.raises(camkit.InputError, match="aug_smooth does not apply to method 'fullgrad'"):
        camkit.explain(model, x, "fullgrad", aug_smooth=True)
    with pytest.raises(camkit.InputError, match="eigen_smooth does not apply to guided-backprop"):
        camkit.explain(model, x, "guided-backprop", eigen_smooth=True)
    with pytest.raises(camkit.InputError, match="normalize='minmax-before-resize' is not valid"):
        camkit.explain(model, x, "guided-gradcam", normalize="minmax-before-resize")
    with pytest.raises(camkit.InputError, match="upsample='bicubic' is not valid.*'nearest'"):
        camkit.explain(model, x, "guided-gradcam", upsample="bicubic")
    with pytest.raises(camkit.InputError, match="variant='official' is not valid"):
        camkit.explain(model, x, "fullgrad", variant="official")


def test_a_nan_sample_gets_nan_attributions():
    model, x = _peer_model()
    bad = x.clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(camkit.InputError, match=r"samples \[1\] are not finite"):
        camkit.explain(model, bad, "guided-backprop")
    marked = camkit.explain(model, bad, "guided-backprop", nonfinite="nan", target=1)
    clean = camkit.explain(model, x, "guided-backprop", target=1)
    assert np.isnan(marked.attributions[1]).all() and np.isnan(marked.cams[1]).all()
    np.testing.assert_array_equal(marked.attributions[0], clean.attributions[0])


def test_several_scores_per_sample_need_one_gradient_each(registry):
    import toy_backend
    from toy_framework import small_cnn

    camkit.register_backend(toy_backend.BACKEND, replace=True)
    x = np.random.default_rng(4).normal(size=(2, 3, 5, 5)).astype(np.float32)
    # the toy backend returns one gradient of all the scores together
    with pytest.raises(camkit.CapabilityError, match=r"shape \(2, 3, 5, 5\) for scores of shape"):
        camkit.explain(small_cnn(), x, "guided-backprop", target=camkit.targets.TopK(2))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_cannot_be_guided():
    torch = pytest.importorskip("torch")
    model, x = _peer_model()
    model.conv2 = torch.jit.script(model.conv2)
    with pytest.raises(camkit.CapabilityError, match="'conv2' is TorchScript"):
        camkit.explain(model, x, "guided-backprop")


def test_a_relu_keras_cannot_reach_is_refused():
    from model_kinds import keras_on_tensorflow

    keras = keras_on_tensorflow()
    import tensorflow as tf

    class OwnRelu(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(2, 1, name="conv")
            self.fc = keras.layers.Dense(2, name="fc")

        def call(self, x):
            return self.fc(tf.reduce_mean(tf.nn.relu(self.conv(x)), axis=(1, 2)))

    model = OwnRelu()
    x = X.transpose(0, 2, 3, 1).copy()
    model(x)
    with pytest.raises(camkit.CapabilityError, match="applies a ReLU .* in its own code"):
        camkit.explain(model, x, "guided-backprop", target=0)
    assert "call" not in vars(model.conv)  # left as found


def test_jax_guides_relus_inside_calls_and_control_flow():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from camkit_jax._guided import guided

    rng = np.random.default_rng(1)
    p = jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)
    w = jnp.asarray([1.0, -1.0, 2.0])
    x = jnp.asarray([1.0, 2.0, 0.5])

    def nested(x):
        return (jax.nn.relu(jax.nn.relu(x @ p) @ p) * w).sum()

    def scanned(x):
        y, _ = jax.lax.scan(lambda c, _: (jax.nn.relu(c @ p), None), x, None, length=2)
        return (y * w).sum()

    def branched(x):
        twice = lambda z: jnp.maximum(jnp.maximum(z @ p, 0.0) @ p, 0.0)  # noqa: E731
        return (jax.lax.cond(True, twice, lambda z: z, x) * w).sum()

    expected = jax.grad(guided(nested))(x)
    assert not np.allclose(expected, jax.grad(nested)(x))  # the rule changes this gradient
    for function in (scanned, branched, jax.checkpoint(nested), jax.jit(nested)):
        np.testing.assert_allclose(jax.grad(guided(function))(x), expected, rtol=1e-6)
        assert guided(function)(x) == pytest.approx(float(function(x)))

    @jax.custom_vjp
    def own(z):
        return jax.nn.relu(z)

    own.defvjp(lambda z: (own(z), None), lambda _, g: (g,))
    with pytest.raises(camkit.CapabilityError, match="ReLU inside 'custom_vjp_call'"):
        jax.grad(guided(lambda z: own(z).sum()))(x)


@pytest.mark.parametrize("relu6", ["module", "function", "hardtanh"])
def test_torch_guides_capped_relus(relu6):
    """S = relu6(x0) + relu6(x1) - relu6(x2) + relu6(x3), x = [-1, 2, 3, 8]: dS/dy = [1, 1, -1,
    1]; the guided rule passes [0 < x < 6] * ReLU(dS/dy) = [0, 1, 0, 0], where the standard
    gradient is [0, 1, -1, 0]. The same rule as JAX's relu6 and Keras' ReLU(max_value=6)."""
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    activation = {
        "module": torch.nn.ReLU6(),
        "function": functional.relu6,
        "hardtanh": lambda x: functional.hardtanh(x, 0.0, 6.0),
    }[relu6]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Conv1d(1, 1, 1, bias=False)  # the identity: a layer to own x
            torch.nn.init.ones_(self.scale.weight)

        def forward(self, x):
            y = activation(self.scale(x))
            return (y * torch.tensor([1.0, 1.0, -1.0, 1.0])).sum(dim=(1, 2))[:, None]

    x = torch.tensor([[[-1.0, 2.0, 3.0, 8.0]]])
    guided = camkit.explain(Net(), x, "guided-backprop", target=0, normalize="none")
    np.testing.assert_array_equal(guided.attributions[0, 0], [0.0, 1.0, 0.0, 0.0])
