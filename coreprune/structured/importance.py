"""Importance of every unit of a coupling group, from the weights alone.

Built-in criteria (the names :func:`group_importance` accepts):

``"l2"``
    Sum of the squared entries of every ``weight`` slice of the unit: the producers' output filters,
    the norms' scales and the consumers' input columns (biases and running statistics excluded).
    Within a group this ranks channels as Torch-Pruning's ``MagnitudeImportance(p=2,
    group_reduction="mean", normalizer=None)`` does, since every unit of a plain group has one slice
    per layer.
``"l1"``
    The same with absolute values.
``"bn_scale"``
    Sum of ``|gamma|`` of the unit's batch norms (network slimming); a group without a batch norm
    gets ``None`` and is left whole.

Or a callable ``f(group, weights) -> array of len(group)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Literal, Union, overload

import numpy as np

from ..errors import CompressionError
from .groups import Group

__all__ = ["IMPORTANCES", "group_importance"]

#: The names of the built-in criteria.
IMPORTANCES = ("l2", "l1", "bn_scale")

Importance = Union[str, Callable[[Group, Mapping[str, np.ndarray]], np.ndarray]]


def _per_index(weights: Mapping[str, np.ndarray], key: str, axis: int, p: int, cache: dict) -> np.ndarray:
    """``sum |w|^p`` over every axis but ``axis``, in float64, one value per index (cached)."""
    hit = cache.get((key, axis, p))
    if hit is None:
        w = np.abs(np.asarray(weights[key], dtype=np.float64))
        if p == 2:
            w = w * w
        hit = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).sum(axis=1)
        cache[(key, axis, p)] = hit
    return hit


# Only "bn_scale" can give None (a group without a batch norm); the other criteria always score.
@overload
def group_importance(
    group: Group,
    weights: Mapping[str, np.ndarray],
    importance: Literal["l2", "l1"] | Callable[[Group, Mapping[str, np.ndarray]], np.ndarray] = "l2",
    *,
    _cache: dict | None = None,
) -> np.ndarray: ...
@overload
def group_importance(
    group: Group,
    weights: Mapping[str, np.ndarray],
    importance: Importance = "l2",
    *,
    _cache: dict | None = None,
) -> np.ndarray | None: ...
def group_importance(
    group: Group,
    weights: Mapping[str, np.ndarray],
    importance: Importance = "l2",
    *,
    _cache: dict | None = None,
) -> np.ndarray | None:
    """One score per unit of ``group``; higher means more important (kept first).

    Parameters
    ----------
    group : Group
        From :func:`~coreprune.structured.coupling_groups`.
    weights : mapping of str to numpy.ndarray
        The weight dict the group was computed on (finite floating arrays).
    importance : str or callable
        One of :data:`IMPORTANCES`, or ``f(group, weights)`` returning ``len(group)`` finite numbers.

    Returns
    -------
    numpy.ndarray of float64, shape (len(group),), or None
        None only for ``"bn_scale"`` on a group without a batch norm.

    Raises
    ------
    CompressionError
        On an unknown name, a non-finite weight, or a callable returning the wrong shape or
        non-finite values.

    Examples
    --------
    >>> import numpy as np
    >>> from coreprune.structured import Graph, Node, coupling_groups
    >>> g = Graph([Node("x", "input", (), 1), Node("a", "linear", ("x",), 2, {"weight": "a"}),
    ...            Node("b", "linear", ("a",), 1, {"weight": "b"})], ["b"])
    >>> w = {"a": np.array([[1.0], [3.0]]), "b": np.array([[2.0, 0.0]])}
    >>> group_importance(coupling_groups(g, w)[0], w, "l2").tolist()
    [5.0, 9.0]
    """
    cache = {} if _cache is None else _cache
    if callable(importance):
        scores = np.asarray(importance(group, weights), dtype=np.float64)
        if scores.shape != (len(group),) or not np.isfinite(scores).all():
            raise CompressionError(
                f"importance function gave shape {scores.shape} (or non-finite values) for group "
                f"{group.name!r} of {len(group)} units; expected {len(group)} finite numbers"
            )
        return scores
    if importance not in IMPORTANCES:
        raise CompressionError(f"unknown importance {importance!r}; use one of {IMPORTANCES} or a callable")
    p = 2 if importance == "l2" else 1
    kinds = ("norm",) if importance == "bn_scale" else ("producer", "norm", "consumer")
    scores = np.zeros(len(group), dtype=np.float64)
    seen = False
    for u, unit in enumerate(group.units):
        terms = [
            _per_index(weights, s.key, s.axis, p, cache)[s.index]
            for s in unit.slices
            if s.role == "weight" and s.kind in kinds
        ]
        # fsum is exact: the score does not depend on the order in which a framework lists the layers.
        scores[u] = math.fsum(terms)
        seen = seen or bool(terms)
    if not seen:
        if importance == "bn_scale":
            return None
        raise CompressionError(f"group {group.name!r} has no weight slice to score")
    if not np.isfinite(scores).all():
        raise CompressionError(f"group {group.name!r}: non-finite weights")
    return scores
