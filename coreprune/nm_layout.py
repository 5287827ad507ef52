"""The ``nm`` storage layout: a tensor with at most N stored elements in every M along its input axis.

A weight pruned with :func:`coreprune.nm_masks` keeps ``n`` of every ``m`` consecutive elements along
axis 1 (the input axis of a ``(out, in, *kernel)`` weight). Such a tensor is stored as exactly ``n``
values per group, in group order (the tensor with axis 1 moved last, read in C order, cut into runs of
``m``), plus one index per group saying which ``n`` of the ``m`` positions they occupy, in one of two
encodings, whichever is smaller (ties go to ``offset``):

* ``rank``: the group's position set as its rank among the ``C(m, n)`` subsets (combinatorial number
  system, colex order: ``sum_i C(c_i, i + 1)`` for positions ``c_0 < c_1 < ...``), bit-packed at
  ``ceil(log2(C(m, n)))`` bits per group (3 bits for 2:4);
* ``offset``: each stored value's position in its group, bit-packed at ``ceil(log2(m))`` bits
  (4 bits per group for 2:4).

A group with fewer than ``n`` non-fill elements (an all-zero group, say) stores fill values at its
first unused positions, so every group holds exactly ``n`` values and decoding is exact. The planner
(:mod:`coreprune.layout_planner`) tries ``m`` in :data:`GROUP_SIZES` dividing the input size, with
``n`` the largest count of stored elements in any group, and takes the layout only when it is strictly
smaller than full, bitmask and csr.

Examples
--------
>>> import numpy as np
>>> stored = np.array([[1, 1, 0, 0, 0, 1, 0, 1]], bool)
>>> p = plan_nm(stored, itemsize=4, bits=None)
>>> p.n, p.m, p.index, p.nbytes      # 4 float32 values + one byte of index
(2, 4, 'offset', 17)
>>> plan_nm(np.tile(stored, (8, 1)), itemsize=4, bits=None).index   # 16 ranks: 6 bytes, not 8
'rank'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import CompressionError
from .packing import pack_bits, unpack_bits

__all__ = ["GROUP_SIZES", "MAX_GROUP", "NM_INDEXES", "NMPlan", "plan_nm", "nm_index_nbytes", "nm_positions",
           "nm_select", "gather_nm", "scatter_nm", "encode_nm_index", "decode_nm_index"]

#: Group sizes ``m`` the planner tries.
GROUP_SIZES = (2, 4, 8, 16)
#: The two index encodings.
NM_INDEXES = ("offset", "rank")
#: Largest ``m`` a file may declare (ranks then fit in 14 bits, offsets in 4).
MAX_GROUP = 16


@dataclass(frozen=True)
class NMPlan:
    """An ``nm`` layout: ``n`` of every ``m``, the index encoding and the payload bytes."""

    n: int
    m: int
    index: str  # "rank" | "offset"
    nbytes: int  # values (or packed codes) + index


def _rank_bits(n: int, m: int) -> int:
    return max(1, (math.comb(m, n) - 1).bit_length())


def _offset_bits(m: int) -> int:
    return max(1, math.ceil(math.log2(m)))


def nm_index_nbytes(index: str, n: int, m: int, groups: int) -> int:
    """Bytes of the index of ``groups`` groups in encoding ``index``.

    Examples
    --------
    >>> nm_index_nbytes("rank", 2, 4, 8), nm_index_nbytes("offset", 2, 4, 8)
    (3, 4)
    """
    if index == "rank":
        return math.ceil(groups * _rank_bits(n, m) / 8)
    return math.ceil(groups * n * _offset_bits(m) / 8)


def _grouped(a: np.ndarray, m: int) -> np.ndarray:
    """``a`` (ndim >= 2) with axis 1 last, cut into runs of ``m``: shape ``(groups, m)``."""
    return np.moveaxis(a, 1, -1).reshape(-1, m)


def plan_nm(stored: np.ndarray, *, itemsize: int, bits: int | None) -> NMPlan | None:
    """The cheapest ``nm`` layout for the boolean ``stored`` array (its shape is the tensor's), or None.

    Parameters
    ----------
    stored : numpy.ndarray of bool, ndim >= 2
        True where the element differs from the fill value.
    itemsize : int
        Bytes per stored value (arrays).
    bits : int or None
        Bits per stored code (quantized tensors), else None.

    Returns
    -------
    NMPlan or None
        None when the tensor has fewer than 2 axes or no group size divides its input size.
    """
    if stored.ndim < 2 or stored.size == 0:
        return None
    width = stored.shape[1]
    best: NMPlan | None = None
    # One byte (0 or 1) per element, runs consecutive; a run of m <= 8 bytes read as one unsigned
    # word and multiplied by 0x0101...01 has the run's count in its top byte (no carries: counts <= 8).
    flags = np.ascontiguousarray(np.moveaxis(stored, 1, -1)).reshape(-1).view(np.uint8)
    by8 = None
    for m in GROUP_SIZES:
        if width % m:
            break
        if m == 16:
            assert by8 is not None
            counts = by8[0::2] + by8[1::2]
        else:
            counts = _run_counts(flags.reshape(-1, m), m)
            if m == 8:
                by8 = counts
        groups = stored.size // m
        n = max(1, int(counts.max()))
        if n >= m:
            continue
        values = math.ceil(groups * n * bits / 8) if bits is not None else groups * n * itemsize
        for index in NM_INDEXES:
            plan = NMPlan(n, m, index, values + nm_index_nbytes(index, n, m, groups))
            if best is None or plan.nbytes < best.nbytes:
                best = plan
    return best


def nm_select(stored: np.ndarray, n: int, m: int) -> np.ndarray:
    """The elements the ``nm`` layout stores: bool ``(groups, m)``, exactly ``n`` True per run.

    The non-fill elements, then each short run's first fill positions.

    Raises
    ------
    CompressionError
        A run holds more than ``n`` non-fill elements.
    """
    g = _grouped(stored, m)
    counts = g.sum(axis=1, dtype=np.int64) if m > 8 else _run_counts(g, m)
    if counts.size and int(counts.max()) > n:
        raise CompressionError(f"a group holds more than {n} of {m} stored elements")
    short = np.flatnonzero(counts < n)
    if short.size:  # usually few runs (all-zero ones): pad those with their first fill positions
        g = g.copy()
        sub = g[short]
        order = np.argsort(~sub, axis=1, kind="stable")[:, :n]  # stored first, then fill, by position
        sub[:] = False
        np.put_along_axis(sub, order, True, axis=1)
        g[short] = sub
    return g


def nm_positions(stored: np.ndarray, n: int, m: int, selected: np.ndarray | None = None) -> np.ndarray:
    """Positions (in each group, ascending) of the ``n`` values stored per group: ``(groups, n)`` uint8.

    ``selected``: :func:`nm_select`'s result, when the caller has it.
    """
    sel = nm_select(stored, n, m) if selected is None else selected
    # exactly n per run: the flat positions, in order, are each run's positions ascending
    return (np.flatnonzero(sel.reshape(-1)) % m).astype(np.uint8).reshape(-1, n)


def _run_counts(g: np.ndarray, m: int) -> np.ndarray:
    """Count of True in each row of the C-contiguous bool ``(groups, m)``, ``m`` in 2, 4, 8."""
    word = np.dtype(f"u{m}")
    magic = word.type(int.from_bytes(b"\x01" * m, "little"))
    flags = np.ascontiguousarray(g).reshape(-1).view(np.uint8)
    return (flags.view(word) * magic) >> word.type(8 * (m - 1))


def _flat_index(positions: np.ndarray, m: int) -> np.ndarray:
    return (np.arange(positions.shape[0], dtype=np.int64) * m)[:, None] + positions


def gather_nm(a: np.ndarray, selected: np.ndarray, m: int) -> np.ndarray:
    """The stored values of ``a`` (the mask's shape), run by run: 1-D, ``groups * n``.

    ``selected`` is :func:`nm_select`'s ``(groups, m)`` result.
    """
    return np.compress(selected.reshape(-1), _grouped(a, m).reshape(-1))


def scatter_nm(values: np.ndarray, positions: np.ndarray, fill: np.ndarray, shape: tuple[int, ...],
               m: int) -> np.ndarray:
    """Inverse of :func:`gather_nm`: an array of ``shape`` with ``values`` at ``positions``, else ``fill``.

    ``fill`` is broadcast against the tensor with axis 1 last (a 0-d array, or one fill per element).
    """
    moved = (shape[0], *shape[2:], shape[1])
    out = np.empty(moved, values.dtype)
    out[...] = np.moveaxis(fill.reshape(shape), 1, -1) if fill.ndim else fill
    out.reshape(-1)[_flat_index(positions, m).reshape(-1)] = values.reshape(-1)
    return np.moveaxis(out, -1, 1)


def encode_nm_index(positions: np.ndarray, n: int, m: int, index: str) -> np.ndarray:
    """The packed index (uint8) of ``positions`` ``(groups, n)``.

    Examples
    --------
    >>> import numpy as np
    >>> pos = np.array([[0, 1], [1, 3]])
    >>> decode_nm_index(encode_nm_index(pos, 2, 4, "rank"), 2, 4, "rank", 2).tolist()
    [[0, 1], [1, 3]]
    """
    if index == "offset":
        return pack_bits(positions.reshape(-1).astype(np.uint16), _offset_bits(m))
    ranks = np.zeros(positions.shape[0], np.uint16)  # C(16, 8) = 12870: ranks fit in 16 bits
    for i in range(n):  # one small-table lookup per column, not a 2-D fancy index
        column = np.array([math.comb(c, i + 1) for c in range(m)], np.uint16)
        ranks += column.take(positions[:, i])
    return pack_bits(ranks, _rank_bits(n, m))


def decode_nm_index(packed: np.ndarray, n: int, m: int, index: str, groups: int) -> np.ndarray:
    """Positions ``(groups, n)``, uint8, from a packed index, validated (strictly increasing, below ``m``).

    Raises
    ------
    CompressionError
        An offset or rank that names no valid position set (the message starts with ``where``).
    """
    if index == "offset":
        # uint8 positions (m <= 16): the decoded index stays small next to the values it places
        pos = unpack_bits(packed, _offset_bits(m), groups * n, np.dtype(np.uint8)).reshape(groups, n)
        if pos.size and (int(pos.max()) >= m or (n > 1 and not (pos[:, 1:] > pos[:, :-1]).all())):
            raise CompressionError(f"an N:M offset group is not {n} increasing positions below {m}")
        return pos
    ranks = unpack_bits(packed, _rank_bits(n, m), groups, np.dtype(np.uint16)).astype(np.int64)
    if ranks.size and int(ranks.max()) >= math.comb(m, n):
        raise CompressionError(f"an N:M rank is not below C({m}, {n})")
    table = np.array([[math.comb(c, k) for c in range(m)] for k in range(n + 1)], np.int64)
    pos = np.empty((groups, n), np.uint8)
    for i in range(n - 1, -1, -1):  # greedy colex unranking: the largest c with C(c, i+1) <= rank
        row = table[i + 1]
        c = np.searchsorted(row, ranks, side="right") - 1
        pos[:, i] = c
        ranks = ranks - row[c]
    return pos
