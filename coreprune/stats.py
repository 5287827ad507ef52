"""Statistics of a dict of weights: how sparse it is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .selection import Pattern, select

__all__ = ["sparsity"]


def sparsity(
    weights: Mapping[str, np.ndarray],
    *,
    include: Pattern = None,
    exclude: Pattern = None,
) -> dict[str, Any]:
    """Fraction of exact zeros, per selected tensor and over the whole selection.

    An entry counts as zero when ``w == 0`` (``-0.0`` included, NaN not). An empty tensor has
    fraction 0.0, and so does ``total`` when the selection holds no entry at all.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Name to array. Not modified.
    include, exclude : glob, list of globs, predicate, or None
        Which tensors to count, see :func:`coreprune.selection.select` (default: the weights,
        :func:`coreprune.selection.is_default_weight`).

    Returns
    -------
    dict
        ``{"per_tensor": {name: float}, "zeros": int, "count": int, "total": float}`` where
        ``zeros`` and ``count`` are summed over the selection and ``total = zeros / count``.

    Examples
    --------
    >>> import numpy as np
    >>> s = sparsity({"a": np.array([[0.0, 1.0], [0.0, 0.0]]), "b": np.zeros((2, 2)), "bias": np.zeros(3)})
    >>> s["per_tensor"], s["zeros"], s["count"], s["total"]
    ({'a': 0.75, 'b': 1.0}, 7, 8, 0.875)
    """
    per_tensor: dict[str, float] = {}
    zeros = count = 0
    for name in select(weights, include, exclude):
        w = weights[name]
        z = int(np.count_nonzero(w == 0))
        per_tensor[name] = z / w.size if w.size else 0.0
        zeros += z
        count += int(w.size)
    total = zeros / count if count else 0.0
    return {"per_tensor": per_tensor, "zeros": zeros, "count": count, "total": total}
