"""Tensors stored once under several names (tied weights).

A model whose embedding and output layer share one matrix holds one tensor under two names: the
same ``numpy.ndarray`` object twice, or two arrays viewing the same memory (what
``state_dict().numpy()`` and :func:`coreprune.io.load` give for a tied torch checkpoint). Pruning
must count such a tensor once and give every name the same mask; this module finds them.

Two arrays are *aliases* when they view exactly the same elements: the same start address,
shape, strides and dtype. Arrays that share some memory without being aliases (a slice and the
whole, a transpose) cannot be given one mask per name consistently, so :func:`group_aliases`
refuses them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .errors import CompressionError

__all__ = ["group_aliases"]


def _layout(a: np.ndarray) -> tuple[int, tuple[int, ...], tuple[int, ...], str]:
    return a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str


def _extent(a: np.ndarray) -> tuple[int, int]:
    """``[lo, hi)``: the bytes ``a``'s elements span (size > 0)."""
    lo = hi = a.__array_interface__["data"][0]
    for n, s in zip(a.shape, a.strides):
        if s < 0:
            lo += s * (n - 1)
        else:
            hi += s * (n - 1)
    return lo, hi + a.itemsize


def group_aliases(weights: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, str]:
    """Map every name in ``names`` that aliases an earlier one to that earlier (first) name.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Name to array.
    names : sequence of str
        The names to compare, in order; the first name of each group is its canonical name.

    Returns
    -------
    dict[str, str]
        ``alias -> canonical`` for every name that is not the first of its group; names stored
        once are absent. Empty arrays are never aliases.

    Raises
    ------
    CompressionError
        Two of the arrays overlap in memory without viewing the same elements (a slice of
        another, a transposed view).

    Examples
    --------
    >>> import numpy as np
    >>> emb = np.ones((4, 3), np.float32)
    >>> group_aliases({"emb.weight": emb, "head.weight": emb, "fc.weight": np.ones((2, 2))},
    ...               ["emb.weight", "head.weight", "fc.weight"])
    {'head.weight': 'emb.weight'}
    """
    out: dict[str, str] = {}
    first_of: dict[tuple, str] = {}
    spans = []
    for name in names:
        a = weights[name]
        if not isinstance(a, np.ndarray) or a.size == 0:
            continue
        key = _layout(a)
        if key in first_of:
            out[name] = first_of[key]
            continue
        first_of[key] = name
        spans.append((*_extent(a), name))
    # Different layouts that overlap: sweep the spans by start address, comparing each with the
    # spans still open (a handful at most in a real model, so this stays O(n log n)).
    spans.sort(key=lambda t: t[0])
    open_spans: list[tuple[int, int, str]] = []
    for lo, hi, name in spans:
        open_spans = [s for s in open_spans if s[1] > lo]
        for _, _, other in open_spans:
            if np.shares_memory(weights[name], weights[other]):
                raise CompressionError(
                    f"tensors {other!r} and {name!r} share memory without being the same tensor (shapes "
                    f"{weights[other].shape} and {weights[name].shape}); copy one (np.array(...)) or "
                    "select only one of them"
                )
        open_spans.append((lo, hi, name))
    return out
