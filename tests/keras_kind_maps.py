"""Maps of the four kinds of Keras model (functional, Sequential, nested, subclassed) on the
Keras backend of this process, for tests/test_keras_backends.py, which runs this script once
per backend (``KERAS_BACKEND`` is read when Keras is imported) and compares the results.

``python tests/keras_kind_maps.py OUT.npz`` writes ``{kind}/{method}`` maps, with the same
weights on every backend (drawn here, by variable, not by Keras' backend-specific seeding), and
``parity/{method}`` maps of every method on the parity CNN (study_builds.keras_cnn, the weights
of test_torch.SmallCNN; noisy methods with ``seed=0``, the same host noise everywhere),
and fails if camkit changed a model, chose another backend than Keras runs on, or let
``backend="tf"`` explain a model off TensorFlow without saying what to do, or (on PyTorch and
JAX) read a value back from the device before a method's final maps.
"""

from __future__ import annotations

import functools
import sys

import numpy as np
from model_kinds import keras_kind, same_snapshot

import camkit
from camkit.targets import TopK

STYLES = ("functional", "sequential", "nested", "subclassed")
#: One method per capability the keras backends provide, and K maps from one forward.
METHODS = {
    "gradcam": {},
    "gradcam-topk": {"method": "gradcam", "target": TopK(2)},
    "cam": {"classifier": "fc"},
    "eigencam": {},
    "scorecam": {},
    "sscam": {"seed": 0, "samples": 4},
    "ablationcam": {},
    "guided-backprop": {"layer": None},
    "fullgrad": {"layer": None},
}


def weighted(style: str):
    """The kind's model with weights drawn by variable, the same on every backend."""
    import keras

    kind = keras_kind(style)
    rng = np.random.default_rng(5)
    for variable in kind.model.weights:
        shape = tuple(variable.shape)
        if "variance" in variable.path:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(scale=0.5, size=shape)
        variable.assign(keras.ops.convert_to_tensor(value.astype(np.float32)))
    return kind


def raw_relu_is_guided() -> None:
    """Off TensorFlow, a ReLU a subclassed ``call`` writes itself (``keras.ops.relu``) is guided
    as a ``ReLU`` layer is: the guided rule comes from the framework, not from the layers."""
    import keras

    class Raw(keras.Model):
        def __init__(self, layer_relu: bool) -> None:
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3, name="conv")
            self.relu = keras.layers.ReLU() if layer_relu else keras.ops.relu
            self.fc = keras.layers.Dense(3, name="fc")

        def call(self, x):
            return self.fc(keras.ops.mean(self.relu(self.conv(x)), axis=(1, 2)))

    images = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype(np.float32)
    models = [Raw(layer_relu) for layer_relu in (True, False)]
    for model in models:
        model(images)
    models[1].set_weights(models[0].get_weights())
    guided = [camkit.explain(m, images, "guided-backprop", target=1) for m in models]
    np.testing.assert_allclose(guided[0].attributions, guided[1].attributions, atol=1e-6)
    plain = camkit.GuidedBackprop(models[1]).provider.input_gradients(
        camkit.ModelInputs(images), camkit.targets.ClassTarget(1), rule="standard"
    )[0]
    assert not np.allclose(np.asarray(plain), guided[1].attributions, atol=1e-6)


def parity_maps() -> dict[str, np.ndarray]:
    """Every method on the parity CNN, each as its own reading of ``layer``."""
    from study_builds import keras_cnn

    model, images = keras_cnn()
    maps = {}
    for name, method in camkit.methods().items():
        layer = "conv2" if method.explains_layer else None
        options = {"seed": 0} if name in ("smoothgradcam++", "sscam") else {}
        maps[f"parity/{name}"] = camkit.explain(model, images, name, layer, **options).cams
        again = functools.partial(camkit.explain, model, images, name, layer, **options)
        reads_nothing_before_its_final_maps(again, name)
    return maps


def reads_nothing_before_its_final_maps(explain, name: str) -> None:
    """On Keras' PyTorch and JAX backends, ``explain()`` reads nothing back from the device
    before camkit's final step (tests/test_host_sync.py's checks, run here where Keras is)."""
    import keras
    from test_host_sync import final_step_allowed, final_step_marked, torch_recorder

    if keras.backend.backend() == "jax":
        import jax

        with final_step_allowed(jax), jax.transfer_guard_device_to_host("disallow"):
            explain()
    elif keras.backend.backend() == "torch":
        log: list[str] = []
        with final_step_marked() as inside, torch_recorder(log, inside):
            explain()
        # Keras' own convert_to_tensor moves inputs .to(its device), "cpu" on this machine
        log = [line for line in log if "keras/src/backend" not in line]
        assert not log, (name, log[0])


def main(out: str) -> None:
    import keras

    maps = parity_maps()
    for style in STYLES:
        kind = weighted(style)
        before = kind.snapshot()
        backend = camkit.GradCAM(kind.model, kind.layer).provider.__module__.split(".")[0]
        expected = "camkit_tf" if keras.backend.backend() == "tensorflow" else "camkit_keras"
        assert backend == expected, (style, backend)
        for name, options in METHODS.items():
            options = {"method": name, "layer": kind.layer, **options}
            explanation = camkit.explain(kind.model, kind.inputs, **options)
            maps[f"{style}/{name}"] = explanation.cams
        assert same_snapshot(before, kind.snapshot()), style
    if expected == "camkit_keras":
        raw_relu_is_guided()
        # asked for by name, TensorFlow's backend says what to do
        try:
            camkit.explain(kind.model, kind.inputs, backend="tf")
        except camkit.BackendError as error:
            assert "KERAS_BACKEND=tensorflow" in str(error), error
        else:
            raise AssertionError("backend='tf' explained a Keras model off TensorFlow")
    np.savez(out, **maps)


if __name__ == "__main__":
    main(sys.argv[1])
