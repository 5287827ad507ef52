"""N:M semi-structured sparsity masks (2:4 for sparse tensor cores, and any N:M).

In every run of ``m`` consecutive weights along the **input** dimension (axis 1 of a
``(out, in, *kernel)`` conv or ``(out, in)`` linear weight, at a fixed output channel and kernel
position), the ``n`` of largest magnitude are kept and the other ``m - n`` zeroed: the layout
NVIDIA's sparse tensor cores and ``torch.sparse.to_sparse_semi_structured`` expect for 2:4 on a
linear weight. Among equal magnitudes the earlier position is kept. The masks are plain boolean
arrays: apply them with :func:`coreprune.apply_masks` and keep them through fine-tuning with the
adapters' ``attach_masks``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import CompressionError
from ..selection import Pattern, require_finite, select

__all__ = ["nm_masks"]


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise CompressionError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def nm_masks(
    weights: Mapping[str, np.ndarray],
    n: int = 2,
    m: int = 4,
    *,
    include: Pattern = None,
    exclude: Pattern = None,
) -> dict[str, np.ndarray]:
    """Boolean N:M masks (``n`` kept of every ``m`` along the input axis) for the selected tensors.

    Parameters
    ----------
    weights : mapping of str to numpy.ndarray
        Name -> array; not modified.
    n, m : int
        Keep ``n`` of every ``m`` consecutive input positions, ``1 <= n <= m``.
    include, exclude : pattern
        Which tensors (:func:`coreprune.select`; by default every floating array with ``ndim >= 2``).

    Returns
    -------
    dict of str to numpy.ndarray of bool
        One mask per selected tensor, of its shape: exactly ``n`` True in each run of ``m``.

    Raises
    ------
    CompressionError
        On bad ``n``/``m``, a selected tensor with fewer than 2 axes, or an input size not divisible
        by ``m``, naming the tensor; on NaN/Inf.

    Examples
    --------
    >>> import numpy as np
    >>> w = {"fc.weight": np.array([[0.1, -3.0, 2.0, 0.5, 1.0, 1.0, -1.0, 0.0]])}
    >>> nm_masks(w, 2, 4)["fc.weight"].astype(int).tolist()
    [[0, 1, 1, 0, 1, 1, 0, 0]]
    """
    n = _count(n, "n")
    m = _count(m, "m")
    if n > m:
        raise CompressionError(f"n ({n}) must not exceed m ({m})")
    out = {}
    for name in select(weights, include=include, exclude=exclude):
        w = weights[name]
        if w.ndim < 2:
            raise CompressionError(f"tensor {name!r} of shape {w.shape} has no input axis for N:M sparsity")
        if w.shape[1] % m:
            raise CompressionError(f"tensor {name!r}: input size {w.shape[1]} is not a multiple of m={m}")
        require_finite(name, w)
        mag = np.abs(np.moveaxis(w, 1, -1).astype(np.float64))
        runs = mag.reshape(*mag.shape[:-1], w.shape[1] // m, m)
        # Stable sort of -|w|: the n largest, earlier position first among equals.
        order = np.argsort(-runs, axis=-1, kind="stable")
        keep = np.zeros(runs.shape, dtype=bool)
        np.put_along_axis(keep, order[..., :n], True, axis=-1)
        out[name] = np.moveaxis(keep.reshape(mag.shape), -1, 1).copy()
    return out
