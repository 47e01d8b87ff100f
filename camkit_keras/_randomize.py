"""Randomized Keras 3 models, for the parameter-randomization sanity check.

A Keras model cannot be copied in general (``copy.deepcopy`` and ``clone_model`` rebuild it
from its config, which a subclassed model need not have), so nothing is copied: the randomized
model is a :class:`~camkit_keras.Substituted`, the user's model run inside
``keras.StatelessScope`` with new values for the chosen layers' variables. The model itself is
only read. A variable ``w`` of a layer gets new values from the layer's initializer named after
it (``kernel_initializer`` for ``kernel``, ``gamma_initializer`` for ``gamma``), re-seeded per
layer and variable, or else seeded normal draws at the variable's root mean square. Only the
variables training updates change (Keras' record of them, kept while a layer is frozen), never
a batch normalization's moving statistics. tf-keras has no ``StatelessScope`` and is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from camkit import provider as kit
from camkit.provider import CapabilityError, LayerTable

from ._substituted import Substituted

__all__ = ["parameter_layers", "randomized"]


def _require_keras3(keras: Any) -> None:
    if keras.__name__ != "keras" or not hasattr(keras, "StatelessScope"):
        raise CapabilityError(
            "camkit randomizes a Keras model's parameters by running it in "
            "keras.StatelessScope, which tf-keras does not have (and a tf-keras model cannot "
            "be copied in general); use Keras 3, or randomize a copy yourself and compare with "
            "camkit.metrics.data_randomization(model, copy, inputs)"
        )


def _own_variables(layer: Any) -> list[Any]:
    """The variables training updates that ``layer`` itself holds (not its sublayers): Keras
    3's record, which a frozen layer (``trainable=False``) keeps too."""
    return list(getattr(layer, "_trainable_variables", ()))


def _owners(model: Any, layers: Mapping[str, Any]) -> dict[str, Any]:
    """The model (``""``) and its layers by path."""
    return {"": model, **layers}


def parameter_layers(
    keras: Any, model: Any, layers: Mapping[str, Any], table: LayerTable
) -> list[str]:
    """The layers holding variables themselves (``""`` for the model), in forward order."""
    _require_keras3(keras)
    owners = [path for path, layer in _owners(model, layers).items() if _own_variables(layer)]
    return kit.forward_order(owners, table, "/")


def _new_value(keras: Any, layer: Any, variable: Any, seed: int) -> Any:
    """New values for ``variable`` of ``layer``: its initializer's, re-seeded, or else
    :func:`camkit.provider.rescaled_normal`."""
    initializer = getattr(layer, f"{variable.name}_initializer", None)
    if initializer is None:
        return keras.ops.convert_to_tensor(
            kit.rescaled_normal(keras.ops.convert_to_numpy(variable), seed)
        )
    initializer = keras.initializers.get(initializer)
    config = initializer.get_config()
    if "seed" in config:
        initializer = type(initializer).from_config({**config, "seed": seed})
    return initializer(tuple(variable.shape), dtype=variable.dtype)


def randomized(
    keras: Any, model: Any, layers: Mapping[str, Any], chosen: Sequence[str], seed: int,
    base: Substituted | None, model_name: str,
) -> Substituted:  # fmt: skip
    """``model`` (with ``base``'s values, if it is a substituted one) with new values for the
    own variables of the ``chosen`` layers."""
    _require_keras3(keras)
    owners = _owners(model, layers)
    paths = [
        kit.find_layer(path, owners, model_name, separator="/", argument="layers")
        for path in chosen
    ]
    mapping = {} if base is None else {id(v): (v, value) for v, value in base.state_mapping}
    with kit.model_lock(model):
        for path in paths:
            layer = owners[path]
            for variable in _own_variables(layer):
                value = _new_value(
                    keras, layer, variable, kit.parameter_seed(seed, path, variable.name)
                )
                mapping[id(variable)] = (variable, value)
    return Substituted(model, tuple(mapping.values()))
