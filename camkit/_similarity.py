"""Similarity: a target scoring the cosine between the model's embedding and a reference.

``S[n] = <e_n, r> / (|e_n| |r|)`` for the model's embedding ``e_n`` ``(D,)`` and a reference
embedding ``r``: another image's embedding (image retrieval, re-identification), or a text's
from the text side of a CLIP-like model (image-text matching), computed once and given as a
fixed array. The map shows where the image looks like the reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from ._errors import InputError, TargetError
from ._namespace import array_namespace, device
from ._targets import ScoredTarget, Target, _host_values

__all__ = ["SimilarityTarget"]

Array = Any
#: Fields of a model's outputs that hold an image embedding, tried in order when ``output`` is
#: not given (CLIP's ``image_embeds`` first).
_EMBEDDING_FIELDS = ("image_embeds", "embeddings", "pooler_output")


def _fields(outputs: Any) -> list[str]:
    if isinstance(outputs, Mapping):
        return [str(key) for key in outputs]
    return [name for name in dir(outputs) if not name.startswith("_")][:12]


@dataclass(frozen=True)
class SimilarityTarget(Target):
    """The cosine similarity of each sample's embedding to a reference embedding.

    Args:
        reference: the reference embedding ``(D,)`` for every sample, or ``(N, D)`` one per
            sample; with ``per_reference``, ``(K, D)`` references, each with its own map
            (``K`` prompts of a CLIP-like model, say), scored ``(N, K)`` with index ``k``.
        output: where the embedding is among the outputs: a key or attribute name
            (``"image_embeds"``), or a position in a tuple of outputs; ``None`` takes the
            outputs themselves where they are an array, else their ``image_embeds``,
            ``embeddings`` or ``pooler_output``.
        per_reference: one map per reference rather than one per sample.

    The embedding must be ``(N, D)``; pool a model's ``(N, T, D)`` tokens (or take its class
    token) in a callable target instead.
    """

    reference: Any = field(repr=False)
    output: str | int | None = None
    per_reference: bool = False
    raw_outputs: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.reference is None:  # a static target while a compiler traces its data
            return
        reference = np.asarray(_host_values(self.reference), np.float32)
        wanted = (1, 2) if not self.per_reference else (2,)
        if reference.ndim not in wanted or reference.shape[-1] == 0:
            raise InputError(
                f"SimilarityTarget.reference has shape {reference.shape}; give an embedding (D,) "
                "or one per sample (N, D)" if not self.per_reference else
                f"SimilarityTarget.reference has shape {reference.shape}; with per_reference give "
                "(K, D) embeddings, one per map"
            )  # fmt: skip
        if not np.isfinite(reference).all() or not np.abs(reference).sum(axis=-1).all():
            raise InputError(
                "SimilarityTarget.reference holds NaN, inf or an all-zero embedding, which has no "
                "direction; check how the reference was computed"
            )
        object.__setattr__(self, "reference", reference)

    def arrays(self, count: int) -> dict[str, np.ndarray]:
        reference = self.reference
        if reference.ndim == 2 and not self.per_reference and reference.shape[0] != count:
            raise TargetError(
                f"SimilarityTarget.reference has {reference.shape[0]} embeddings for a batch of "
                f"{count}; give one (D,) for all samples or (N, D), one per sample"
            )
        return {"reference": reference}

    def take(self, rows: np.ndarray) -> Target:
        if self.per_reference or self.reference.ndim == 1:
            return self
        return replace(self, reference=self.reference[rows])

    def _embedding(self, outputs: Any) -> Array:
        if self.output is None:
            if hasattr(outputs, "shape") and not isinstance(outputs, Mapping):
                return outputs
            names: tuple[str | int, ...] = _EMBEDDING_FIELDS
        else:
            names = (self.output,)
        for name in names:
            if isinstance(name, int) and isinstance(outputs, list | tuple):
                if -len(outputs) <= name < len(outputs):
                    return outputs[name]
            elif isinstance(name, str):
                found = outputs.get(name) if isinstance(outputs, Mapping) else None
                found = getattr(outputs, name, None) if found is None else found
                if found is not None:
                    return found
        raise TargetError(
            f"SimilarityTarget: the model's outputs ({type(outputs).__name__}) have no "
            f"{'embedding field' if self.output is None else repr(self.output)}; pass output= "
            f"one of {_fields(outputs)}"
        )

    def resolve(self, outputs: Any) -> ScoredTarget:
        embedding = self._embedding(outputs)
        if len(getattr(embedding, "shape", ())) != 2:
            raise TargetError(
                f"SimilarityTarget needs an embedding of shape (N, D), got "
                f"{getattr(embedding, 'shape', type(embedding).__name__)}; pool token outputs "
                "in a callable target"
            )
        xp = array_namespace(embedding)
        embedding = xp.astype(embedding, xp.float32)
        reference = self.reference
        if isinstance(reference, np.ndarray):
            self.arrays(embedding.shape[0])  # checks the count
            reference = xp.asarray(reference, device=device(embedding))
        if reference.shape[-1] != embedding.shape[1]:
            raise TargetError(
                f"SimilarityTarget.reference has {reference.shape[-1]} dimensions but the "
                f"model's embedding has {embedding.shape[1]}; compute the reference with the "
                "same model (or the text side of the same CLIP-like model)"
            )
        unit = embedding / _norm(embedding)
        reference = reference / _norm(reference)
        if not self.per_reference:
            return ScoredTarget(xp.sum(unit * reference, axis=-1), None)
        scores = xp.sum(unit[:, None, :] * reference[None, :, :], axis=-1)  # (N, K)
        references = xp.arange(reference.shape[0], dtype=xp.int32, device=device(embedding))
        return ScoredTarget(scores, xp.broadcast_to(references[None, :], tuple(scores.shape)))


def _norm(x: Array) -> Array:
    """The Euclidean norm along the last axis, kept for broadcasting; never 0."""
    xp = array_namespace(x)
    squares = xp.sum(x * x, axis=-1, keepdims=True)
    return xp.sqrt(xp.where(squares > 0, squares, xp.ones_like(squares)))
