"""What a backend needs to offer parameter randomization, framework-free.

A provider with the capability :data:`~camkit.provider.PARAMETER_RANDOMIZATION` lists the
layers that own parameters in forward order and builds randomized models of its framework;
these helpers make every backend order the layers, seed them and draw the fallback values
alike:

- :func:`forward_order` sorts the parameter owners by the layer table of a forward pass;
- :func:`parameter_seed` gives each layer (and each of its parameters) a seed of its own, so a
  layer gets the same new values at every step of a cascade that randomizes it;
- :func:`rescaled_normal` draws the new values of a parameter whose layer has no initializer
  the framework exposes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from ._layout import LayerTable

__all__ = ["forward_order", "parameter_seed", "rescaled_normal"]


def parameter_seed(seed: int, *names: str) -> int:
    """A 32-bit seed from a run's ``seed`` and names (a layer's, a parameter's): the same in
    every process (unlike ``hash``), and different for different layers of one run."""
    key = "/".join([str(seed), *names]).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")


def forward_order(owners: Sequence[str], table: LayerTable, separator: str) -> list[str]:
    """The layers ``owners`` (of parameters) in the order a forward pass reaches them.

    Each is placed where ``table`` has it or, if it is never called itself (a container of
    parameters that its parent uses), where its nearest ancestor is (names joined by
    ``separator``); the model itself, named ``""``, first; owners the pass never reaches are
    left out: randomizing them would change nothing. Ties keep the order of ``owners``.
    """
    position = {row.name: index for index, row in enumerate(table)}

    def place(name: str) -> int | None:
        if name == "":
            return -1
        parts = name.split(separator)
        for end in range(len(parts), 0, -1):
            found = position.get(separator.join(parts[:end]))
            if found is not None:
                return found
        return None

    placed = []
    for index, name in enumerate(owners):
        at = place(name)
        if at is not None:
            placed.append((at, index, name))
    return [name for _, _, name in sorted(placed)]


def rescaled_normal(values: np.ndarray, seed: int) -> np.ndarray:
    """New values for a parameter: seeded standard normal draws of ``values``' shape times the
    root mean square of ``values`` (so they keep its scale; a scale of all ones stays of
    order one, where its standard deviation, 0, would erase it), in ``values``' dtype."""
    scale = np.sqrt(np.mean(np.square(values.astype(np.float64)))) if values.size else 0.0
    draws = np.random.default_rng(seed).standard_normal(values.shape)
    return (draws * scale).astype(values.dtype)
