"""Relative indices of a sparse tensor: the gaps between surviving entries in small fixed-width fields.

A pruned tensor keeps ``nnz`` of its ``n`` entries. Instead of absolute positions, Deep
Compression stores each survivor's distance from the previous one in a ``width``-bit field, and
when a distance does not fit it inserts a *filler*: an extra entry, stored as a weight of value
zero, that only advances the position. Two schemes, both with fields in ``[0, M]``,
``M = 2**width - 1``, where a field ``f`` means "skip ``f`` entries":

* ``"filler"`` (the paper's): every field is followed by a stored element; a gap ``g > M`` is
  split into fields of ``M`` each followed by a filler element (a code that decodes to zero), so
  it takes ``g // (M + 1)`` fillers, and each filler also costs a code in the code stream.
* ``"escape"`` (this project's ``.cpz`` csr layout): the field value ``M`` means "skip ``M``, no
  element", so a gap takes ``g // M`` escape fields and no code. It is never larger than the
  filler scheme's index plus its filler codes, and it is what the ``.cpz`` codebook layout stores.

:func:`gap_fields` builds the field stream, :func:`positions_from_fields` inverts it, and
:func:`best_gap_width` picks the width whose entropy-coded stream is smallest.
"""

from __future__ import annotations

import numpy as np

from .entropy import empirical_entropy
from .errors import CompressionError

__all__ = ["gap_fields", "positions_from_fields", "best_gap_width"]

_SCHEMES = ("escape", "filler")


def _check_width(width: object) -> int:
    if isinstance(width, (bool, np.bool_)) or not isinstance(width, (int, np.integer)) or not 0 < width <= 16:
        raise CompressionError(f"gap width must be an int in 1..16, got {width!r}")
    return int(width)


def _gaps(positions: np.ndarray) -> np.ndarray:
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    gaps = np.diff(positions, prepend=-1) - 1
    if gaps.size and int(gaps.min()) < 0:
        raise CompressionError("positions must be strictly increasing and non-negative")
    return gaps


def gap_fields(positions: np.ndarray, width: int, *, scheme: str = "escape") -> tuple[np.ndarray, int]:
    """The relative-index field stream of strictly increasing flat ``positions``.

    Parameters
    ----------
    positions : numpy.ndarray of int
        Flat (C-order) indices of the stored elements, strictly increasing, ``>= 0``.
    width : int
        Bits per field, 1 to 16.
    scheme : {"escape", "filler"}
        See the module docstring.

    Returns
    -------
    (fields, extra) : (numpy.ndarray of uint16, int)
        The fields in order, and the number of escape fields (``"escape"``) or filler elements
        (``"filler"``) they include.

    Examples
    --------
    >>> import numpy as np
    >>> gap_fields(np.array([1, 2, 12]), 3)                    # gaps 1, 0, 9 = 7 + 2
    (array([1, 0, 7, 2], dtype=uint16), 1)
    >>> gap_fields(np.array([1, 2, 12]), 3, scheme="filler")   # a filler at position 10
    (array([1, 0, 7, 1], dtype=uint16), 1)
    """
    width = _check_width(width)
    if scheme not in _SCHEMES:
        raise CompressionError(f"scheme must be one of {_SCHEMES}, got {scheme!r}")
    gaps = _gaps(positions)
    step = (1 << width) - 1 if scheme == "escape" else 1 << width  # entries one extra field covers
    extra_per = gaps // step
    total = gaps.size + int(extra_per.sum())
    out = np.full(total, (1 << width) - 1, dtype=np.uint16)
    last = np.cumsum(extra_per + 1) - 1  # where each element's own field goes
    out[last] = gaps % step
    return out, total - gaps.size


def positions_from_fields(fields: np.ndarray, width: int, *, n: int, scheme: str = "escape") -> np.ndarray:
    """Invert :func:`gap_fields`: the flat positions of the stored elements.

    With ``scheme="filler"`` the result includes the fillers' positions (their elements are the
    stored zeros), as the decoder of the paper's format sees them.

    Parameters
    ----------
    fields : numpy.ndarray of int
        Values in ``[0, 2**width)``.
    width : int
    n : int
        Size of the tensor; a position at or past it is an error.
    scheme : {"escape", "filler"}

    Returns
    -------
    numpy.ndarray of int64

    Raises
    ------
    CompressionError
        Fields out of range, a stream ending with an escape, or positions past ``n``.

    Examples
    --------
    >>> import numpy as np
    >>> positions_from_fields(np.array([1, 0, 7, 2]), 3, n=20).tolist()
    [1, 2, 12]
    """
    width = _check_width(width)
    if scheme not in _SCHEMES:
        raise CompressionError(f"scheme must be one of {_SCHEMES}, got {scheme!r}")
    f = np.asarray(fields, dtype=np.int64).reshape(-1)
    escape = (1 << width) - 1
    if f.size and (int(f.min()) < 0 or int(f.max()) > escape):
        raise CompressionError(f"gap fields outside [0, {escape}]")
    if scheme == "filler":
        positions = np.cumsum(f + 1) - 1
    else:
        final = f != escape
        if f.size and not final[-1]:
            raise CompressionError("the gap stream ends with an escape field")
        positions = (np.cumsum(f + final) - 1)[final]
    if positions.size and int(positions[-1]) >= n:
        raise CompressionError(f"the gap stream points past the tensor's {n} elements")
    return positions


def best_gap_width(positions: np.ndarray, widths: range = range(2, 13)) -> int:
    """The escape-scheme width whose fields cost the fewest entropy-coded bits.

    The cost of a width is ``fields * H(fields) + 8 * 2**width`` bits: the order-0 entropy of its
    field stream (what the ANS coder of :mod:`coreprune.entropy` reaches) plus its one-byte-per-
    symbol histogram. Narrow fields need many escapes; wide ones a large histogram.

    Examples
    --------
    >>> import numpy as np
    >>> best_gap_width(np.arange(0, 10000, 3))     # every gap is 2
    2
    """
    gaps_ok = _gaps(positions)
    if gaps_ok.size == 0:
        return min(widths)
    best, best_cost = None, None
    for width in widths:
        fields, _ = gap_fields(positions, width)
        cost = fields.size * empirical_entropy(fields, 1 << width) + 8 * (1 << width)
        if best_cost is None or cost < best_cost:
            best, best_cost = width, cost
    assert best is not None
    return best
