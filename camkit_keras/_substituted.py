"""A Keras 3 model run on other values of some of its variables, without copying it.

Imported by the package's entry point, so it imports no framework until it runs a model.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from camkit import CapabilityError

__all__ = ["Substituted"]


@dataclass(frozen=True, eq=False)
class Substituted:
    """``model`` with the values of some variables replaced: ``state_mapping`` holds
    ``(variable, value)`` pairs, as ``keras.StatelessScope`` takes them.

    The model is not changed: it runs inside ``keras.StatelessScope(state_mapping)``, where
    reading a mapped variable gives its new value. It is what
    :func:`camkit.metrics.parameter_randomization` explains for a Keras model (a subclassed
    model cannot be copied in general), and camkit explains it like the model itself, with the
    same layer names; calling it runs the model on the new values. Keras 3 only.
    """

    model: Any
    state_mapping: Sequence[tuple[Any, Any]]

    def __post_init__(self) -> None:
        if type(self.model).__module__.split(".")[0] == "tf_keras":
            raise CapabilityError(
                "camkit_keras.Substituted runs a Keras 3 model in keras.StatelessScope, which "
                "tf-keras does not have; use Keras 3"
            )

    def scope(self) -> Any:
        """The ``keras.StatelessScope`` to run the model in."""
        keras = importlib.import_module("keras")
        return keras.StatelessScope(state_mapping=list(self.state_mapping))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.scope():
            return self.model(*args, **kwargs)
