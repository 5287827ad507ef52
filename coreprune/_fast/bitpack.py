"""Blocked, threaded fast paths of :func:`coreprune.packing.pack_bits` and ``unpack_bits``.

Same layout as the reference (value ``i`` in stream bits ``[i * bits, (i + 1) * bits)``, LSB first),
but without its bit matrix, which holds ``bits`` bytes per value. Values are handled in blocks
whose starts are multiples of 8, so every block begins on a byte boundary of the stream
(``8 * bits`` stream bits = ``bits`` bytes per 8 values) and blocks are packed independently:

* ``bits`` in 1, 2, 4: several values per byte, gathered by shifts of the 2 or 4 bytes that hold
  them read as one integer (``np.packbits`` for 1);
* ``bits`` 8 and 16: the low byte(s) of each value, little-endian;
* any other width: each group of 8 values is assembled in one or two little-endian uint64
  words (``8 * bits <= 128`` bits), whose first ``bits`` bytes are the group's bytes.

:func:`pack` also returns the minimum and maximum code (one pass), for the caller's range check.
``tests/core/test_fast_paths.py`` compares both directions with the reference for every width.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from .blocked import Job, block_ranges, run_job, scratch

__all__ = ["pack_job", "pack", "unpack"]

_U8 = np.dtype(np.uint8)
_LE64 = np.dtype("<u8")


def _small(bits: int) -> np.dtype:
    return np.dtype(np.uint8 if bits <= 8 else np.uint16)


def _pack_values(u: np.ndarray, bits: int, dest: np.ndarray) -> None:
    """Write the bytes of ``u`` (unsigned, ``< 2**bits``, a multiple of 8 values) to ``dest``.

    ``dest`` is a uint8 array of at most ``u.size * bits / 8`` bytes: the stream is cut there.
    """
    full = dest.size == u.size * bits // 8
    if bits == 8:
        np.copyto(dest, u[: dest.size])
    elif bits == 16 and full:
        np.copyto(dest.view("<u2"), u)
    elif bits in (2, 4) and full:
        # bits=4: byte pairs as one little-endian uint16 h << 8 | l (l, h < 16): w | w >> 4 has
        # l | h << 4 in its low byte, which the cast to uint8 keeps. bits=2: four values b0..b3 in a
        # little-endian uint32; x = w | w >> 6 puts b1 at bit 2, then x | x >> 12 puts b2 at bit 4
        # and b3 at bit 6.
        word = np.dtype("<u2" if bits == 4 else "<u4")
        w = u.view(word)
        x = scratch("pack_word", w.size, word)
        np.right_shift(w, word.type(4 if bits == 4 else 6), out=x)
        np.bitwise_or(x, w, out=x)
        if bits == 2:
            w = scratch("pack_word2", w.size, word)
            np.right_shift(x, word.type(12), out=w)
            np.bitwise_or(x, w, out=x)
        np.copyto(dest, x, casting="unsafe")  # the low byte
    else:
        np.copyto(dest, _pack_bytes(u, bits)[: dest.size])


def _pack_bytes(u: np.ndarray, bits: int) -> np.ndarray:
    """All ``u.size * bits / 8`` bytes of ``u`` (see :func:`_pack_values`), as a new array."""
    if bits == 16:
        return u.astype("<u2").view(_U8)
    if bits == 1:
        return np.packbits(u, bitorder="little")
    if bits in (2, 4):
        out = np.empty(u.size * bits // 8, _U8)
        _pack_values(u, bits, out)
        return out
    groups = u.size // 8
    v = u.reshape(groups, 8)
    lo = np.zeros(groups, _LE64)
    hi = np.zeros(groups, _LE64) if bits > 8 else None
    for i in range(8):
        offset = i * bits
        value = v[:, i].astype(_LE64)
        if offset < 64:
            lo |= value << np.uint64(offset)  # bits beyond 64 fall off; `hi` takes them
        if offset + bits > 64:
            hi |= (value >> np.uint64(64 - offset)) if offset < 64 else (value << np.uint64(offset - 64))
    out = np.empty((groups, bits), _U8)
    out[:, : min(bits, 8)] = lo.view(_U8).reshape(groups, 8)[:, : min(bits, 8)]
    if hi is not None:
        out[:, 8:] = hi.view(_U8).reshape(groups, 8)[:, : bits - 8]
    return out.reshape(-1)


def _unpack_values(b: np.ndarray, bits: int, n8: int) -> np.ndarray:
    """Inverse of :func:`_pack_values`: ``n8`` (a multiple of 8) values from ``n8 * bits / 8`` bytes."""
    if bits == 8:
        return b
    if bits == 16:
        return b.view("<u2")
    if bits == 1:
        return np.unpackbits(b, bitorder="little")
    if bits == 4:
        # the inverse of the uint16 trick of _pack_values: w | w << 4 puts the high nibble in the high byte
        w = b.astype("<u2")
        return ((w | (w << np.uint16(4))) & np.uint16(0x0F0F)).view(_U8)
    if bits == 2:
        w = b.astype("<u4")
        x = w | (w << np.uint32(12))
        return ((x | (x << np.uint32(6))) & np.uint32(0x03030303)).view(_U8)
    groups = n8 // 8
    bb = b.reshape(groups, bits)
    lo = np.zeros(groups, _LE64)
    lo.view(_U8).reshape(groups, 8)[:, : min(bits, 8)] = bb[:, : min(bits, 8)]
    hi = None
    if bits > 8:
        hi = np.zeros(groups, _LE64)
        hi.view(_U8).reshape(groups, 8)[:, : bits - 8] = bb[:, 8:]
    mask = np.uint64((1 << bits) - 1)
    u = np.empty((groups, 8), _small(bits))
    for i in range(8):
        offset = i * bits
        if offset >= 64:
            value = hi >> np.uint64(offset - 64)
        else:
            value = lo >> np.uint64(offset)
            if offset + bits > 64:
                value |= hi << np.uint64(64 - offset)
        np.bitwise_and(value, mask, out=value)
        u[:, i] = value
    return u.reshape(-1)


def pack_job(flat: np.ndarray, bits: int) -> Job:
    """Job: ``(packed, (min, max))`` of a 1-D integer array, as :func:`pack`."""
    n = flat.size
    out = np.empty(-(-n * bits // 8), _U8)
    mask = (1 << bits) - 1
    if bits <= 8 * flat.dtype.itemsize:
        # two's complement: the low bits of the unsigned view are the code
        src = flat.view(np.dtype(f"u{flat.dtype.itemsize}"))
        mask_scalar = src.dtype.type(mask)
    else:  # a byte-wide dtype with 9..16 bits: widen (sign-extending) before masking
        src, mask_scalar = flat, np.int32(mask)

    def block(s: int, e: int) -> tuple[int, int]:
        part = flat[s:e]
        m = e - s
        m8 = -(-m // 8) * 8
        u = scratch("pack", m8, _small(bits))
        u[m:] = 0
        np.bitwise_and(src[s:e], mask_scalar, out=u[:m], casting="unsafe")
        start = s * bits // 8
        _pack_values(u, bits, out[start : start + -(-m * bits // 8)])
        return int(part.min()), int(part.max())

    extremes = yield [partial(block, s, e) for s, e in block_ranges(n, align=8)]
    return out, (min(x[0] for x in extremes), max(x[1] for x in extremes))


def pack(flat: np.ndarray, bits: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Pack a non-empty 1-D C-contiguous integer array, ``bits`` (1..16) bits per value.

    Values are taken modulo ``2**bits`` (their low bits, two's complement for signed dtypes).
    Returns the packed uint8 array and ``(min, max)`` of ``flat``.
    """
    return run_job(pack_job(flat, bits))


def unpack(packed: np.ndarray, bits: int, count: int, dtype: np.dtype) -> np.ndarray:
    """``count`` values of ``bits`` bits from ``packed`` as ``dtype``, as the reference ``unpack_bits``.

    Signed dtypes sign-extend (``(u ^ s) - s`` with ``s = 2**(bits-1)``), unsigned ones do not.
    """
    out = np.empty(count, dtype)
    signed = np.issubdtype(dtype, np.signedinteger)
    sign = 1 << (bits - 1)

    def block(s: int, e: int) -> None:
        m = e - s
        m8 = -(-m // 8) * 8
        start, n_bytes = s * bits // 8, m8 * bits // 8
        available = packed[start : start + n_bytes]
        if available.size < n_bytes:  # the last block: pad the stream to whole groups
            padded = scratch("unpack", n_bytes, _U8)
            padded[: available.size] = available
            padded[available.size :] = 0
            available = padded
        u = _unpack_values(available, bits, m8)[:m]
        if signed:
            v = scratch("sign", m, np.int32)
            np.copyto(v, u, casting="unsafe")
            v ^= sign
            v -= sign
            np.copyto(out[s:e], v, casting="unsafe")
        else:
            np.copyto(out[s:e], u, casting="unsafe")

    def job() -> Job:
        yield [partial(block, s, e) for s, e in block_ranges(count, align=8)]
        return out

    return run_job(job())
