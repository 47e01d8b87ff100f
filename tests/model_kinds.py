"""The nine kinds of model camkit explains, each built small, for the guarantees every backend
must keep: the bad-input catalogue, threads and memory.

Every kind has the same shape of network (conv, normalization, ReLU, conv, ReLU, pooling,
dropout, linear, three classes) where its framework allows, a valid batch of two 8x8 images in
the model's own layout, a spatial layer ``layer``, and a ``snapshot`` of everything camkit must
leave as it found it (weights, batch-norm statistics, modes, hooks, ``call`` attributes).
Kinds whose framework is not installed are left out of :data:`KIND_NAMES`.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CLASSES = 3
SIZE = 8
_RNG = np.random.default_rng(11)
#: Two images, channels-first; each kind moves them to its own layout.
IMAGES = _RNG.normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)


@dataclass
class Kind:
    """One model kind: the model, valid inputs and what camkit must leave unchanged.

    ``faulty(error)`` builds a model of this kind whose forward raises ``error``;
    ``dict_outputs(key)`` one that returns ``{key: logits}``; ``scalar``/``vector`` make the
    framework's own 0-d and 1-d integer arrays; ``wrong_layout`` are the inputs in the other
    channel layout; ``unused_layer`` names a layer the forward pass never calls (``None`` where
    the kind cannot have one).
    """

    name: str
    framework: str
    model: Any
    inputs: Any
    layer: str
    classifier: str
    wrong_layout: Any
    unused_layer: str | None
    snapshot: Callable[[], Any]
    faulty: Callable[[BaseException], Any]
    dict_outputs: Callable[[str], Any]
    scalar: Callable[[int], Any]
    vector: Callable[[list[int]], Any]
    channels_last: bool


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def keras_on_tensorflow() -> Any:
    """Keras, for a test that needs it on TensorFlow; the test is skipped where it is not."""
    import pytest

    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("Keras runs on another backend here")
    return keras


def _keras_ready() -> bool:
    """Whether Keras and the framework it runs on here (``KERAS_BACKEND``) are installed."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    return _installed("keras", backend)


# -- PyTorch ---------------------------------------------------------------------------------


def torch_kind() -> Kind:
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(
            self, fail: BaseException | None = None, output_key: str | None = None
        ) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.relu1 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.relu2 = nn.ReLU()
            self.drop = nn.Dropout(0.5)
            self.fc = nn.Linear(4, CLASSES)
            self.spare = nn.Conv2d(4, 4, 1)
            self.fail = fail
            self.output_key = output_key

        def forward(self, x: Any) -> Any:
            x = self.relu2(self.conv2(self.relu1(self.bn(self.conv1(x)))))
            if self.fail is not None:
                raise self.fail
            logits = self.fc(self.drop(x.mean((2, 3))))
            return {self.output_key: logits} if self.output_key else logits

    def build(**options: Any) -> Any:
        torch.manual_seed(0)
        model = Net(**options)
        with torch.no_grad():  # non-trivial running statistics
            model.bn.running_mean.uniform_(-0.2, 0.2)
            model.bn.running_var.uniform_(0.5, 1.5)
        return model.train()

    model = build()

    def snapshot() -> Any:
        return {
            "training": [m.training for m in model.modules()],
            "requires_grad": [p.requires_grad for p in model.parameters()],
            "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            "hooks": [
                (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                for m in model.modules()
            ],
            "state": {k: v.clone().numpy() for k, v in model.state_dict().items()},
            "grad_mode": torch.is_grad_enabled(),
        }

    return Kind(
        name="torch",
        framework="torch",
        model=model,
        inputs=torch.from_numpy(IMAGES.copy()),
        layer="conv2",
        classifier="fc",
        wrong_layout=torch.from_numpy(IMAGES.transpose(0, 2, 3, 1).copy()),
        unused_layer="spare",
        snapshot=snapshot,
        faulty=lambda error: build(fail=error),
        dict_outputs=lambda key: build(output_key=key),
        scalar=lambda i: torch.tensor(i),
        vector=lambda v: torch.tensor(v),
        channels_last=False,
    )


# -- Keras -----------------------------------------------------------------------------------


def _keras_layers(keras: Any) -> list[Any]:
    layers = keras.layers
    return [
        layers.Conv2D(4, 3, padding="same", name="conv1"),
        layers.BatchNormalization(name="bn"),
        layers.ReLU(name="relu1"),
        layers.Conv2D(4, 3, padding="same", name="conv2"),
        layers.ReLU(name="relu2"),
    ]


def _keras_head(keras: Any) -> list[Any]:
    layers = keras.layers
    return [
        layers.GlobalAveragePooling2D(name="pool"),
        layers.Dropout(0.5, name="drop"),
        layers.Dense(CLASSES, name="fc"),
    ]


def _keras_snapshot(model: Any) -> Callable[[], Any]:
    def layers_of(layer: Any, prefix: str = "") -> dict[str, Any]:
        found = {}
        for child in layer._flatten_layers(include_self=False, recursive=False):
            found[prefix + child.name] = child
            found.update(layers_of(child, prefix + child.name + "/"))
        return found

    def snapshot() -> Any:
        layers = layers_of(model)
        return {
            "weights": [np.asarray(w) for w in model.get_weights()],
            "attributes": {p: sorted(vars(layer)) for p, layer in layers.items()},
            "calls": {p: "call" in vars(layer) for p, layer in layers.items()},
            "trainable": {p: layer.trainable for p, layer in layers.items()},
        }

    return snapshot


def _raising_layer(keras: Any, error: BaseException) -> Any:
    """A Keras layer whose call raises ``error`` once ``armed`` (after the model is built)."""

    class Raising(keras.layers.Layer):
        armed = False

        def call(self, x: Any) -> Any:
            if self.armed:
                raise error
            return x

    return Raising(name="raising")


def keras_kind(style: str) -> Kind:
    """A Keras 3 model of ``style`` on the Keras backend of this process (``KERAS_BACKEND``)."""
    import keras

    def build(fail: BaseException | None = None, output_key: str | None = None) -> Any:
        keras.utils.set_random_seed(0)
        head = _keras_head(keras)
        extra = [] if fail is None else [_raising_layer(keras, fail)]
        if style == "sequential" and not output_key:
            model = keras.Sequential(
                [keras.Input((SIZE, SIZE, 3)), *_keras_layers(keras), *extra, *head]
            )
        elif style == "subclassed":

            class Subclassed(keras.Model):
                def __init__(self) -> None:
                    super().__init__()
                    self.blocks = [*_keras_layers(keras), *extra, *head]
                    self.spare = keras.layers.Conv2D(4, 1, name="spare")

                def call(self, x: Any, training: bool = False) -> Any:
                    for layer in self.blocks:
                        x = layer(x, training=training)
                    return {output_key: x} if output_key else x

            model = Subclassed()
            with warnings.catch_warnings():  # Keras: "build() was called ... unbuilt state"
                warnings.simplefilter("ignore", UserWarning)
                model(np.zeros((1, SIZE, SIZE, 3), np.float32))
        else:
            inputs = keras.Input((SIZE, SIZE, 3))
            if style == "nested":
                backbone = keras.Sequential(
                    [keras.Input((SIZE, SIZE, 3)), *_keras_layers(keras)], name="backbone"
                )
                x = backbone(inputs)
            else:
                x = inputs
                for layer in _keras_layers(keras):
                    x = layer(x)
            for layer in [*extra, *head]:
                x = layer(x)
            model = keras.Model(inputs, {output_key: x} if output_key else x)
        bn = [w for w in model.weights if "moving" in w.path]
        for weight in bn:  # non-trivial running statistics
            weight.assign(np.linspace(0.5, 1.5, weight.shape[0]).astype(np.float32))
        for layer in extra:
            layer.armed = True
        return model

    model = build()
    channels_last = IMAGES.transpose(0, 2, 3, 1).copy()
    return Kind(
        name=f"keras-{style}",
        framework="keras",
        model=model,
        inputs=channels_last,
        layer="backbone/conv2" if style == "nested" else "conv2",
        classifier="fc",
        wrong_layout=IMAGES.copy(),
        unused_layer="spare" if style == "subclassed" else None,
        snapshot=_keras_snapshot(model),
        faulty=lambda error: build(fail=error),
        dict_outputs=lambda key: build(output_key=key),
        scalar=lambda i: keras.ops.convert_to_tensor(i),
        vector=lambda v: keras.ops.convert_to_tensor(v),
        channels_last=True,
    )


# -- JAX -------------------------------------------------------------------------------------


def _jax_tree_snapshot(tree: Callable[[], Any]) -> Callable[[], Any]:
    import jax

    def host(leaf: Any) -> np.ndarray:
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        return np.array(leaf, copy=True)

    def snapshot() -> Any:
        leaves, structure = jax.tree_util.tree_flatten(tree())
        return str(structure), [host(leaf) for leaf in leaves]

    return snapshot


def nnx_kind() -> Kind:
    import jax.numpy as jnp
    from flax import nnx

    class Net(nnx.Module):
        def __init__(
            self, fail: BaseException | None = None, output_key: str | None = None
        ) -> None:
            rngs = nnx.Rngs(0)
            self.conv1 = nnx.Conv(3, 4, (3, 3), rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.conv2 = nnx.Conv(4, 4, (3, 3), rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.fc = nnx.Linear(4, CLASSES, rngs=rngs)
            self.spare = nnx.Conv(4, 4, (1, 1), rngs=rngs)
            self.fail = fail
            self.output_key = output_key
            self.bn.mean[...] = jnp.linspace(-0.2, 0.2, 4)
            self.bn.var[...] = jnp.linspace(0.5, 1.5, 4)

        def __call__(self, x: Any) -> Any:
            x = nnx.relu(self.conv2(nnx.relu(self.bn(self.conv1(x)))))
            if self.fail is not None:
                raise self.fail
            logits = self.fc(self.drop(x.mean((1, 2))))
            return {self.output_key: logits} if self.output_key else logits

    model = Net()
    model.train()  # the user's mode; camkit explains an eval-mode copy

    def snapshot() -> Any:
        state = _jax_tree_snapshot(lambda: nnx.state(model))()
        modes = {str(p): (type(m), getattr(m, "deterministic", None),
                          getattr(m, "use_running_average", None))
                 for p, m in nnx.iter_modules(model)}  # fmt: skip
        return state, modes

    return Kind(
        name="nnx",
        framework="jax",
        model=model,
        inputs=IMAGES.transpose(0, 2, 3, 1).copy(),
        layer="conv2",
        classifier="fc",
        wrong_layout=IMAGES.copy(),
        unused_layer="spare",
        snapshot=snapshot,
        faulty=lambda error: Net(fail=error),
        dict_outputs=lambda key: Net(output_key=key),
        scalar=lambda i: jnp.asarray(i),
        vector=lambda v: jnp.asarray(v),
        channels_last=True,
    )


def linen_kind() -> Kind:
    import jax
    import jax.numpy as jnp
    from flax import linen

    class Net(linen.Module):
        fail: Any = None
        output_key: str | None = None

        @linen.compact
        def __call__(self, x: Any) -> Any:
            x = linen.Conv(4, (3, 3), name="conv1")(x)
            x = linen.BatchNorm(use_running_average=True, name="bn")(x)
            x = linen.relu(linen.Conv(4, (3, 3), name="conv2")(linen.relu(x)))
            if self.fail is not None:
                raise self.fail
            logits = linen.Dense(CLASSES, name="fc")(x.mean((1, 2)))
            return {self.output_key: logits} if self.output_key else logits

    channels_last = IMAGES.transpose(0, 2, 3, 1).copy()
    variables = Net().init(jax.random.PRNGKey(0), jnp.asarray(channels_last))
    variables = jax.tree_util.tree_map(np.asarray, variables)
    model = (Net(), variables)
    return Kind(
        name="linen",
        framework="jax",
        model=model,
        inputs=channels_last,
        layer="conv2",
        classifier="fc",
        wrong_layout=IMAGES.copy(),
        unused_layer=None,
        snapshot=_jax_tree_snapshot(lambda: variables),
        faulty=lambda error: (Net(fail=error), variables),
        dict_outputs=lambda key: (Net(output_key=key), variables),
        scalar=lambda i: jnp.asarray(i),
        vector=lambda v: jnp.asarray(v),
        channels_last=True,
    )


def equinox_kind() -> Kind:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    class Net(eqx.Module):
        conv1: eqx.nn.Conv2d
        conv2: eqx.nn.Conv2d
        fc: eqx.nn.Linear
        spare: eqx.nn.Conv2d
        fail: Any = eqx.field(static=True, default=None)
        output_key: str | None = eqx.field(static=True, default=None)

        def __init__(
            self, fail: BaseException | None = None, output_key: str | None = None
        ) -> None:
            k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
            self.conv1 = eqx.nn.Conv2d(3, 4, 3, padding=1, key=k1)
            self.conv2 = eqx.nn.Conv2d(4, 4, 3, padding=1, key=k2)
            self.fc = eqx.nn.Linear(4, CLASSES, key=k3)
            self.spare = eqx.nn.Conv2d(4, 4, 1, key=k4)
            self.fail = fail
            self.output_key = output_key

        def __call__(self, x: Any) -> Any:  # one image (C, H, W)
            x = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))
            if self.fail is not None:
                raise self.fail
            logits = self.fc(x.mean((1, 2)))
            return {self.output_key: logits} if self.output_key else logits

    model = Net()
    return Kind(
        name="equinox",
        framework="jax",
        model=model,
        inputs=IMAGES.copy(),
        layer="conv2",
        classifier="fc",
        wrong_layout=IMAGES.transpose(0, 2, 3, 1).copy(),
        unused_layer="spare",
        snapshot=_jax_tree_snapshot(lambda: eqx.filter(model, eqx.is_array)),
        faulty=lambda error: Net(fail=error),
        dict_outputs=lambda key: Net(output_key=key),
        scalar=lambda i: jnp.asarray(i),
        vector=lambda v: jnp.asarray(v),
        channels_last=False,
    )


def function_kind() -> Kind:
    import jax
    import jax.numpy as jnp

    import camkit_jax

    rng = np.random.default_rng(2)
    params = {
        "kernel": rng.normal(size=(3, 3, 3, 4)).astype(np.float32) * 0.3,
        "dense": rng.normal(size=(4, CLASSES)).astype(np.float32),
    }

    def features(p: Any, x: Any) -> Any:
        y = jax.lax.conv_general_dilated(
            x, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jax.nn.relu(y)

    def head(p: Any, a: Any) -> Any:
        return a.mean((1, 2)) @ p["dense"]

    def build(fail: BaseException | None = None, output_key: str | None = None) -> Any:
        def faulty_head(p: Any, a: Any) -> Any:
            if fail is not None:
                raise fail
            logits = head(p, a)
            return {output_key: logits} if output_key else logits

        return camkit_jax.FunctionSplit(features, faulty_head, params)

    model = build()
    return Kind(
        name="functions",
        framework="jax",
        model=model,
        inputs=IMAGES.transpose(0, 2, 3, 1).copy(),
        layer="features",
        classifier="features",
        wrong_layout=IMAGES.copy(),
        unused_layer=None,
        snapshot=_jax_tree_snapshot(lambda: params),
        faulty=lambda error: build(fail=error),
        dict_outputs=lambda key: build(output_key=key),
        scalar=lambda i: jnp.asarray(i),
        vector=lambda v: jnp.asarray(v),
        channels_last=True,
    )


BUILDERS: dict[str, Callable[[], Kind]] = {}
if _installed("torch"):
    BUILDERS["torch"] = torch_kind
if _keras_ready():
    for _style in ("functional", "sequential", "nested", "subclassed"):
        BUILDERS[f"keras-{_style}"] = lambda style=_style: keras_kind(style)
if _installed("jax", "flax"):
    BUILDERS["nnx"] = nnx_kind
    BUILDERS["linen"] = linen_kind
if _installed("jax", "equinox"):
    BUILDERS["equinox"] = equinox_kind
if _installed("jax"):
    BUILDERS["functions"] = function_kind

#: The installed kinds, in a fixed order.
KIND_NAMES = list(BUILDERS)
_BUILT: dict[str, Kind] = {}


def kind(name: str) -> Kind:
    """The kind ``name``, built once per process."""
    if name not in _BUILT:
        _BUILT[name] = BUILDERS[name]()
    return _BUILT[name]


def framework_array(k: Kind, array: np.ndarray) -> Any:
    """A numpy array as the kind's inputs are typed (torch tensors for torch)."""
    if k.framework == "torch":
        import torch

        return torch.from_numpy(array)
    return array


def with_value(k: Kind, value: float, sample: int = 1) -> Any:
    """The kind's inputs with one pixel of ``sample`` set to ``value``."""
    array = np.array(np.asarray(k.inputs), dtype=np.float32)
    array[sample, 0, 0, 0] = value
    return framework_array(k, array)


def with_nan(k: Kind, sample: int = 1) -> Any:
    """The kind's inputs with a NaN in ``sample``."""
    return with_value(k, float("nan"), sample)


def same_snapshot(before: Any, after: Any) -> bool:
    """Whether two snapshots are equal, arrays compared exactly."""
    if isinstance(before, dict):
        return before.keys() == after.keys() and all(
            same_snapshot(before[k], after[k]) for k in before
        )
    if isinstance(before, (list, tuple)):
        return len(before) == len(after) and all(
            same_snapshot(b, a) for b, a in zip(before, after, strict=True)
        )
    if isinstance(before, np.ndarray):
        return isinstance(after, np.ndarray) and np.array_equal(before, after, equal_nan=True)
    return bool(before == after)
