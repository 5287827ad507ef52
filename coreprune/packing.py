"""n-bit integer codes <-> a dense little-endian bit stream of bytes.

Layout: value ``i`` occupies bits ``[i * bits, (i + 1) * bits)`` of the stream, least-significant
bit first, and bit ``j`` of the stream is bit ``j % 8`` of byte ``j // 8``. Signed codes are stored
as ``bits``-bit two's complement. ``n`` values take ``ceil(n * bits / 8)`` bytes; the unused high
bits of the last byte are 0.

The reference implementation below is vectorised: values are split into a bit matrix that
``np.packbits`` / ``np.unpackbits`` (``bitorder="little"``) turn into bytes, a chunk of values at a
time so the temporary memory stays bounded; 8- and 16-bit codes are plain byte views. Arrays of at
least ``coreprune._fast.blocked.MIN_FAST_ELEMENTS`` values take the blocked, threaded path of
:mod:`coreprune._fast.bitpack` instead (shifts of whole bytes and 64-bit words, no bit matrix), which
produces the same bytes.
"""

from __future__ import annotations

import math

import numpy as np

from ._fast import bitpack as _bitpack
from ._fast import kernels as _kernels
from .errors import CompressionError

__all__ = ["pack_bits", "unpack_bits"]

# values per chunk: a multiple of 8, so that every chunk but the last ends on a byte boundary
_CHUNK = 1 << 18


def _check_bits(bits: object) -> int:
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
        raise CompressionError(f"bits must be an int in 1..16, got {bits!r}")
    return int(bits)


def _value_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack integer codes into ``bits`` bits each.

    Parameters
    ----------
    codes : numpy.ndarray
        Integer array of any shape, read in C order. Signed dtypes must lie in
        ``[-2**(bits-1), 2**(bits-1) - 1]`` (stored as two's complement), unsigned ones in
        ``[0, 2**bits - 1]``.
    bits : int
        1 to 16.

    Returns
    -------
    numpy.ndarray
        1-D uint8 array of ``ceil(codes.size * bits / 8)`` bytes.

    Raises
    ------
    CompressionError
        ``bits`` out of 1..16, a non-integer ``codes`` array, or a code outside the range.

    Examples
    --------
    >>> import numpy as np
    >>> pack_bits(np.array([1, 2, 3], np.uint8), 2).tolist()  # 0b11_10_01
    [57]
    >>> pack_bits(np.array([-1, 3], np.int8), 3).tolist()  # 0b011_111
    [31]
    """
    bits = _check_bits(bits)
    if not isinstance(codes, np.ndarray) or not np.issubdtype(codes.dtype, np.integer):
        raise CompressionError(
            f"codes must be an integer numpy array, got {getattr(codes, 'dtype', type(codes).__name__)}"
        )
    flat = codes.reshape(-1)
    lo, hi = _value_range(bits, np.issubdtype(codes.dtype, np.signedinteger))
    if _kernels.eligible(codes, dtypes=None):
        packed, found = _bitpack.pack(flat, bits)  # packs and finds min/max in one pass
    else:
        packed, found = None, (int(flat.min()), int(flat.max())) if flat.size else (lo, hi)
    if found[0] < lo or found[1] > hi:
        raise CompressionError(
            f"codes out of range for bits={bits} ({codes.dtype}): found [{found[0]}, "
            f"{found[1]}], allowed [{lo}, {hi}]"
        )
    if packed is not None:
        return packed
    # two's complement: masking the low `bits` bits of the int64 value
    unsigned = (flat.astype(np.int64) & ((1 << bits) - 1)).astype(np.uint16)
    if bits == 8:
        return unsigned.astype(np.uint8)
    if bits == 16:
        return unsigned.astype("<u2").view(np.uint8)
    shifts = np.arange(bits, dtype=np.uint16)
    chunks = [
        np.packbits(((part[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1), bitorder="little")
        for part in (unsigned[i : i + _CHUNK] for i in range(0, unsigned.size, _CHUNK))
    ]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)


def unpack_bits(packed: np.ndarray, bits: int, count: int, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`pack_bits`: read ``count`` values of ``bits`` bits each.

    Parameters
    ----------
    packed : numpy.ndarray
        1-D uint8 array of exactly ``ceil(count * bits / 8)`` bytes.
    bits : int
        1 to 16.
    count : int
        Number of values, ``>= 0``.
    dtype : numpy.dtype
        Integer dtype of the result, wide enough for ``bits`` bits. Signed dtypes sign-extend
        (two's complement), unsigned ones do not.

    Returns
    -------
    numpy.ndarray
        1-D array of ``count`` values of ``dtype``.

    Raises
    ------
    CompressionError
        Bad ``bits`` / ``count`` / ``dtype``, or ``packed`` not uint8 1-D of the right length.

    Examples
    --------
    >>> import numpy as np
    >>> unpack_bits(np.array([31], np.uint8), 3, 2, np.int8).tolist()
    [-1, 3]
    >>> unpack_bits(np.array([31], np.uint8), 3, 2, np.uint8).tolist()
    [7, 3]
    """
    bits = _check_bits(bits)
    if isinstance(count, (bool, np.bool_)) or not isinstance(count, (int, np.integer)) or count < 0:
        raise CompressionError(f"count must be an int >= 0, got {count!r}")
    count = int(count)
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise CompressionError(f"dtype {dtype!r} is not a numpy dtype") from None
    if not np.issubdtype(dtype, np.integer) or 8 * dtype.itemsize < bits:
        raise CompressionError(f"dtype {dtype} cannot hold {bits}-bit codes")
    n_bytes = math.ceil(count * bits / 8)
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8 or packed.ndim != 1:
        raise CompressionError(
            f"packed must be a 1-D uint8 array, got {getattr(packed, 'dtype', type(packed).__name__)} "
            f"of shape {getattr(packed, 'shape', '?')}"
        )
    if packed.size != n_bytes:
        raise CompressionError(
            f"packed has {packed.size} bytes; {count} values of {bits} bits need {n_bytes}"
        )
    if count and _kernels.eligible(packed, dtypes=None):
        return _bitpack.unpack(packed, bits, count, dtype)
    if bits == 8:
        unsigned = packed.astype(np.uint16)
    elif bits == 16:
        unsigned = packed.view("<u2").astype(np.uint16)
    else:
        bytes_per_chunk = _CHUNK * bits // 8
        parts = []
        for start in range(0, count, _CHUNK):
            n = min(_CHUNK, count - start)
            chunk = packed[start // 8 * bits : start // 8 * bits + bytes_per_chunk]
            bit_matrix = np.zeros((n, 16), np.uint8)
            bit_matrix[:, :bits] = np.unpackbits(chunk, bitorder="little")[: n * bits].reshape(n, bits)
            parts.append(np.packbits(bit_matrix, axis=1, bitorder="little").view("<u2").reshape(n))
        unsigned = np.concatenate(parts).astype(np.uint16) if parts else np.zeros(0, np.uint16)
    if np.issubdtype(dtype, np.signedinteger):
        values = unsigned.astype(np.int32)
        values[values >= 1 << (bits - 1)] -= 1 << bits
        return values.astype(dtype)
    return unsigned.astype(dtype)
