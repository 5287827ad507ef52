"""Layout planner: the bytes a tensor takes when the zeros are not stored, and the layout that wins.

This module only counts; :mod:`coreprune.io.cpz` writes the bytes it plans. Each tensor is stored
in the smallest of four layouts:

* ``full``: every element. Arrays as raw little-endian bytes (``n * itemsize``),
  quantized codes bit-packed at their bit width (``ceil(n * bits / 8)``).
* ``bitmask``: one bit per element saying which elements are *stored*, then the
  stored elements only: ``ceil(n / 8) + cost(nnz)``.
* ``csr``: the gaps between stored elements as 8- or 16-bit unsigned integers,
  then the stored elements: ``entries * width / 8 + cost(nnz)``. A gap ``g`` of
  skipped elements takes ``g // M`` escape entries of value ``M = 2**width - 1``
  (each skips ``M`` elements and stores nothing) and one entry ``g % M``;
  ``entries = nnz + sum(g // M)``. Elements after the last stored one are implicit.
* ``nm`` (tensors with ``ndim >= 2``): at most ``n`` stored elements in every run of ``m`` along
  axis 1 (an N:M-pruned weight), stored as exactly ``n`` values per run plus a per-run index of their
  positions (:mod:`coreprune.nm_layout`); taken only when strictly smaller than the other three.

An element is *not stored* when it is the fill value: for arrays an all-zero bit
pattern (``+0.0``; ``-0.0`` has a sign bit, so it is stored), for quantized codes
the code of 0.0 (0 when symmetric, the ``zero_point`` of the element's channel or
group when affine; ``bits == 1`` has no code for 0.0 and is always ``full``).
A pruned-then-quantized tensor therefore keeps its saving: only the surviving codes
are packed, at ``bits`` each, plus the index.

:func:`encoded_nbytes` is the honest size of a value in this format: the bytes of
its chosen layout, plus ``scale`` and ``zero_point`` for a QuantizedArray; for a
quantized tensor stored ``full`` it equals ``QuantizedArray.nbytes``, for an array
stored ``full`` it equals ``ndarray.nbytes``. The byte layout is documented in
``docs/compressed-format.md``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Union

import numpy as np

from .dtypes import by_name, cpz_dtype_names
from .errors import CompressionError, WeightFileError
from .nm_layout import plan_nm
from .quant_layout import expand_params, param_shape
from .quantization import QuantizedArray

__all__ = ["encoded_nbytes", "layout_of", "Value"]

#: What the planner (and the ``.cpz`` format) stores: an array or a QuantizedArray.
Value = Union[np.ndarray, QuantizedArray]

_CPZ_DTYPES = cpz_dtype_names()


def _dtype_name(dtype: np.dtype, name: str) -> str:
    dtype = np.dtype(dtype)
    if dtype.name in _CPZ_DTYPES:
        return dtype.name
    raise CompressionError(
        f"tensor {name!r} has dtype {dtype}, which .cpz does not store (numeric dtypes and the ml_dtypes "
        "floats only)"
    )


def _parse_dtype(text: object, where: str) -> np.dtype:
    """The (native) dtype named in a manifest."""
    info = by_name(text) if isinstance(text, str) else None
    if info is None:
        raise WeightFileError(f"{where}: unknown dtype {text!r}")
    found = info.dtype
    if found is None:
        raise WeightFileError(f"{where}: dtype {text!r} needs a newer ml_dtypes than the one installed")
    return found


def _little(a: np.ndarray) -> np.ndarray:
    """C-contiguous, little-endian view (or copy) of ``a``."""
    order = a.dtype.byteorder
    if a.dtype.itemsize > 1 and (order == ">" or (order == "=" and sys.byteorder == "big")):
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.ascontiguousarray(a)



def _stored_mask(flat: np.ndarray) -> np.ndarray:
    """True where a 1-D array's element is not the all-zero bit pattern."""
    size = flat.dtype.itemsize
    if size in (1, 2, 4, 8):
        return flat.view(f"u{size}") != 0
    return np.asarray(flat.view(np.uint8).reshape(flat.size, size).any(axis=1))


def _param_shape(
    shape: tuple[int, ...], axis: int | None, group_size: int | None, flatten: bool = False
) -> tuple[int, ...]:
    """Shape of ``scale`` / ``zero_point`` for a quantizer layout (see QuantizedArray)."""
    return param_shape(shape, axis, group_size, flatten)


def _fill_codes(
    bits: int,
    symmetric: bool,
    zero_point: np.ndarray | None,
    axis: int | None,
    group_size: int | None,
    shape: tuple[int, ...],
    flatten: bool = False,
) -> np.ndarray | None:
    """Code of 0.0 for every element, flat (or a 0-d array); None where 0.0 has no code (bits=1)."""
    if bits == 1:
        return None
    if symmetric or zero_point is None:
        return np.zeros((), np.int8)
    if group_size is None and axis is None:
        return zero_point.reshape(())
    return expand_params(zero_point, shape, axis, group_size, flatten).reshape(-1)


def _fill_of(q: QuantizedArray) -> np.ndarray | None:
    return _fill_codes(q.bits, q.symmetric, q.zero_point, q.axis, q.group_size, q.shape, q.flatten)


@dataclass(frozen=True)
class _Plan:
    layout: str  # "full" | "bitmask" | "csr" | "nm"
    nbytes: int  # payload bytes of the layout (values/codes + index)
    nnz: int
    width: int = 0  # csr index width in bits
    entries: int = 0  # csr index entries
    n: int = 0  # nm: values stored per group
    m: int = 0  # nm: group size along axis 1
    index: str = ""  # nm: "rank" or "offset"


def _with_nm(plan: _Plan, stored: np.ndarray | None, shape: tuple[int, ...], itemsize: int,
             bits: int | None) -> _Plan:
    """``plan``, or the ``nm`` layout (:mod:`coreprune.nm_layout`) where it is strictly smaller."""
    if stored is None or len(shape) < 2 or int(np.count_nonzero(stored)) == stored.size:
        return plan  # a tensor with every element stored has no run of m with fewer than m
    nm = plan_nm(stored.reshape(shape), itemsize=itemsize, bits=bits)
    if nm is None or nm.nbytes >= plan.nbytes:
        return plan
    groups = int(np.prod(shape, dtype=np.int64)) // nm.m
    return _Plan("nm", nm.nbytes, groups * nm.n, n=nm.n, m=nm.m, index=nm.index)


def _value_bytes(count: int, itemsize: int, bits: int | None) -> int:
    return math.ceil(count * bits / 8) if bits is not None else count * itemsize


def _plan(
    stored: np.ndarray | None, n: int, itemsize: int, bits: int | None
) -> tuple[_Plan, np.ndarray | None, np.ndarray | None]:
    """Cheapest layout for ``n`` elements of which ``stored`` (bool, flat) must be kept.

    Ties go to the simpler layout (full, then bitmask, then csr with 8-bit, then 16-bit gaps).
    Returns the plan and, when the csr layouts had to be sized, the stored elements' flat
    positions and gaps (int64), which :func:`_encode_gaps` reuses.

    The sizes come from counts: ``nnz``, and for csr the escape entries ``sum(g // M)``, which only
    gaps ``g >= M`` contribute. A csr index needs at least one byte per stored element, so when
    ``nnz`` bytes already reach the cheaper of full and bitmask (any sparsity below ~7/8),
    csr cannot win and no position is computed.
    """
    full = _Plan("full", _value_bytes(n, itemsize, bits), n)
    if stored is None or n == 0:
        return full, None, None
    nnz = int(np.count_nonzero(stored))
    values = _value_bytes(nnz, itemsize, bits)
    bitmask = _Plan("bitmask", math.ceil(n / 8) + values, nnz)
    best = bitmask if bitmask.nbytes < full.nbytes else full
    if best.nbytes <= nnz + values:  # the smallest possible csr (8-bit, no escapes) does not beat it
        return best, None, None
    positions = np.flatnonzero(stored)
    gaps = np.diff(positions, prepend=-1) - 1
    over = gaps[gaps >= 255]  # the only gaps that need escape entries at either width
    for width in (8, 16):
        escape = (1 << width) - 1
        if width == 16:
            over = over[over >= escape]
        entries = nnz + int((over // escape).sum())
        plan = _Plan("csr", entries * width // 8 + values, nnz, width, entries)
        if plan.nbytes < best.nbytes:
            best = plan
    return best, positions, gaps


def layout_of(value: Value) -> str:
    """The layout :func:`coreprune.save_compressed` picks: ``"full"``, ``"bitmask"``, ``"csr"`` or ``"nm"``.

    Parameters
    ----------
    value : numpy.ndarray or QuantizedArray

    Examples
    --------
    >>> import numpy as np
    >>> w = np.zeros(1000, np.float32); w[::2] = 1.0
    >>> layout_of(w), layout_of(np.ones(1000, np.float32)), layout_of(np.eye(100, dtype=np.float32))
    ('bitmask', 'full', 'csr')
    >>> layout_of(np.tile(np.float32([1, 0, 0, 2]), (8, 4)))    # 2:4 along the input axis
    'nm'

    """
    return _plan_value(value, "value")[0].layout


def _plan_value(
    value: Value, name: str
) -> tuple[_Plan, np.ndarray | None, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The plan for one value, its flat ``stored`` mask (None when the layout is full), its flat
    little-endian data (the codes of a QuantizedArray), and the positions and gaps of the stored
    elements when the planner computed them (None otherwise)."""
    if isinstance(value, QuantizedArray):
        fill = _fill_of(value)
        flat = value.codes.reshape(-1)
        stored = None if fill is None else flat != fill
        plan, positions, gaps = _plan(stored, flat.size, flat.dtype.itemsize, value.bits)
        plan = _with_nm(plan, stored, value.shape, flat.dtype.itemsize, value.bits)
    elif isinstance(value, np.ndarray):
        _dtype_name(value.dtype, name)
        flat = _little(value).reshape(-1)
        stored = _stored_mask(flat)
        plan, positions, gaps = _plan(stored, flat.size, flat.dtype.itemsize, None)
        plan = _with_nm(plan, stored, value.shape, flat.dtype.itemsize, None)
    else:
        raise CompressionError(
            f"tensor {name!r} is a {type(value).__name__}; .cpz stores numpy arrays and QuantizedArray"
        )
    return plan, (None if plan.layout == "full" else stored), flat, positions, gaps


def encoded_nbytes(value: Value) -> int:
    """Bytes of ``value``'s data in a ``.cpz`` file, before alignment and manifest.

    The honest size of a compressed tensor: the smallest of the full, bitmask, csr and nm
    layouts (module docstring), plus ``scale.nbytes`` and ``zero_point.nbytes`` for a
    :class:`~coreprune.quantization.QuantizedArray`. Never more than ``value.nbytes``.

    Parameters
    ----------
    value : numpy.ndarray or QuantizedArray

    Returns
    -------
    int

    Examples
    --------
    >>> import numpy as np
    >>> w = np.zeros(1000, np.float32); w[::2] = 1.0    # 500 non-zeros
    >>> encoded_nbytes(w)     # bitmask 125 bytes + 500 float32 values
    2125
    >>> w[::2] = 0; w[::10] = 1.0                       # 100 non-zeros, gaps of 9
    >>> encoded_nbytes(w)     # csr: 100 one-byte gaps + 100 float32 values
    500
    >>> encoded_nbytes(np.ones(1000, np.float32))
    4000
    """
    plan = _plan_value(value, "value")[0]
    if isinstance(value, QuantizedArray):
        extra = value.scale.nbytes + (value.zero_point.nbytes if value.zero_point is not None else 0)
        return plan.nbytes + extra
    return plan.nbytes
