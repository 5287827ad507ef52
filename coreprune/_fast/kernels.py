"""Blocked, threaded fast paths of the element-wise work in pruning and quantization.

Every function here computes exactly what a plain NumPy expression in :mod:`coreprune.pruning` or
:mod:`coreprune.quantization` computes -- the same IEEE operations on the same values, in blocks
(see :mod:`coreprune._fast.blocked`) -- so the results are bit-identical; ``tests/core/test_fast_paths.py``
checks each against its reference. They are called only for inputs that :func:`eligible` accepts;
everything else (small, non-contiguous or exotic arrays) takes the reference path.

Each kernel comes as a *job* (a generator for :func:`coreprune.blocked.run_jobs`, so that all
tensors of a dict are processed in one sweep); a few also come as a plain function running one job.

Two tricks avoid full-size temporaries and casts:

* ``where(keep, w, +0)`` is an integer product: the bits of ``w`` viewed as an unsigned integer
  times the bool mask are the bits of ``w`` or all-zero bits, which is ``+0`` (``w * keep`` on
  floats would give ``-0.0`` for negative entries).
* The symmetric quantizer's rounding writes the integer codes directly: its clip to
  ``[-qmax, qmax]`` never changes a value (see the bound in :func:`quantize_job`), so it is left out.

The kernels also report whether their input was finite (the maximum of a block's ``|w|`` is NaN
or Inf exactly when the block holds a NaN or Inf), so that no separate validation pass is needed;
the callers then let :func:`coreprune.selection.require_finite` raise its usual error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import lru_cache, partial

import ml_dtypes
import numpy as np

from . import blocked
from .blocked import Job, block_ranges, run_job, scratch

__all__ = [
    "FAST_FLOATS",
    "eligible",
    "work_abs",
    "zero_job",
    "zero_where_false",
    "prune_job",
    "count_equal_job",
    "minmax_job",
    "minmax",
    "row_peaks",
    "round_to_codes",
    "quantize_job",
    "dequantize_job",
]

#: dtypes with IEEE-754 sign-magnitude layouts whose fast paths are tested.
FAST_FLOATS = frozenset(
    {np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32), np.dtype(np.float64)}
)


def eligible(a: np.ndarray, dtypes: frozenset | None = FAST_FLOATS) -> bool:
    """True when the fast path applies: C-contiguous, big enough, and of a tested dtype.

    ``dtypes=None`` accepts any non-object, non-structured dtype of 1, 2, 4 or 8 bytes.
    """
    if a.size < blocked.MIN_FAST_ELEMENTS or not a.flags.c_contiguous:
        return False
    if dtypes is None:
        return not a.dtype.hasobject and a.dtype.itemsize in (1, 2, 4, 8) and a.dtype.fields is None
    return a.dtype in dtypes


_UINTS = {n: np.dtype(f"u{n}") for n in (1, 2, 4, 8)}


def _uint(itemsize: int) -> np.dtype:
    return _UINTS[itemsize]


def work_abs(x: np.ndarray, work: np.dtype, slot: str = "abs") -> np.ndarray:
    """``|x|`` converted to ``work`` (float32 or float64), in a per-thread scratch array.

    The conversion is exact (a widening or the identity), as ``np.abs(x.astype(work))``.
    """
    a = scratch(slot, x.size, work).reshape(x.shape)
    if x.dtype == work:
        np.abs(x, out=a)
    else:
        np.copyto(a, x, casting="unsafe")
        np.abs(a, out=a)
    return a


# ------------------------------------------------------------------------------------------ pruning


def zero_job(w: np.ndarray, keep: np.ndarray) -> Job:
    """Job: ``np.where(keep, w, zeros((), w.dtype))`` for a C-contiguous ``w`` and bool ``keep`` of its shape.

    The result is a new C-contiguous array; removed entries are all-zero bytes, which is what
    ``np.zeros`` holds for every non-object dtype (``+0.0`` for floats).
    """
    out = np.empty(w.shape, w.dtype)
    u = _uint(w.dtype.itemsize)
    src, dst = w.reshape(-1).view(u), out.reshape(-1).view(u)
    mask = np.ascontiguousarray(keep).reshape(-1)

    def block(s: int, e: int) -> None:
        np.multiply(src[s:e], mask[s:e], out=dst[s:e])

    yield [partial(block, s, e) for s, e in block_ranges(w.size)]
    return out


def zero_where_false(w: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """:func:`zero_job` run on its own."""
    return run_job(zero_job(w, keep))


def prune_job(
    w: np.ndarray,
    cut: np.generic,
    work: np.dtype,
    skips: Sequence[int] | None = None,
    ties: Sequence[int] | None = None,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> Job:
    """Job: ``keep = |w| > cut`` (compared in ``work``) and ``pruned = where(keep, w, +0)`` in one pass.

    With ``skips`` and ``ties`` (one entry per block of :func:`~coreprune.blocked.block_ranges`):
    block ``b`` holds ``ties[b]`` entries equal to ``cut``, of which the first ``skips[b]`` (in C
    order) are removed and the rest kept. Without them every entry equal to ``cut`` is removed.
    ``out``: C-contiguous ``(pruned, keep)`` arrays to write into instead of new ones (the public
    functions always return new arrays; ``tests/benchmarks/bench_compression.py`` uses this to time
    the kernel apart from the cost of fresh memory).

    Returns
    -------
    pruned : numpy.ndarray
        ``w``'s shape and dtype, C order.
    keep : numpy.ndarray
        bool, ``w``'s shape, C order.
    finite : bool
        Whether every entry of ``w`` is finite.
    """
    flat = w.reshape(-1)
    u = _uint(w.dtype.itemsize)
    pruned, keep = (np.empty(w.shape, w.dtype), np.empty(w.shape, np.bool_)) if out is None else out
    src, dst, kf = flat.view(u), pruned.reshape(-1).view(u), keep.reshape(-1)

    def block(b: int, s: int, e: int) -> bool:
        a = work_abs(flat[s:e], work)
        k = kf[s:e]
        if skips is None or ties is None or skips[b] >= ties[b]:
            np.greater(a, cut, out=k)
        elif skips[b] == 0:
            np.greater_equal(a, cut, out=k)
        else:
            np.greater(a, cut, out=k)
            k[np.flatnonzero(a == cut)[skips[b] :]] = True
        np.multiply(src[s:e], k, out=dst[s:e])
        return bool(np.isfinite(np.maximum.reduce(a))) if a.size else True  # NaN propagates through max

    finite = yield [partial(block, b, s, e) for b, (s, e) in enumerate(block_ranges(flat.size))]
    return pruned, keep, all(finite)


def count_equal_job(w: np.ndarray, value: np.generic, work: np.dtype) -> Job:
    """Job: per block of :func:`~coreprune.blocked.block_ranges`, how many ``|w| == value`` (in ``work``)."""
    flat = w.reshape(-1)

    def block(s: int, e: int) -> int:
        return int(np.count_nonzero(work_abs(flat[s:e], work) == value))

    counts = yield [partial(block, s, e) for s, e in block_ranges(flat.size)]
    return counts


def minmax_job(a: np.ndarray) -> Job:
    """Job: ``(int(a.min()), int(a.max()))`` of a non-empty C-contiguous integer array, in one pass."""
    flat = a.reshape(-1)

    def block(s: int, e: int) -> tuple[int, int]:
        part = flat[s:e]
        return int(part.min()), int(part.max())

    parts = yield [partial(block, s, e) for s, e in block_ranges(flat.size)]
    return min(p[0] for p in parts), max(p[1] for p in parts)


def minmax(a: np.ndarray) -> tuple[int, int]:
    """:func:`minmax_job` run on its own."""
    return run_job(minmax_job(a))


# ------------------------------------------------------------------------------------ quantization


def _row_reduce(ufunc: np.ufunc, a: np.ndarray) -> np.ndarray:
    """``ufunc.reduce(a, axis=1)`` for a 2-D C-contiguous ``a``; exact for max and min.

    ``reduceat`` over the flat array runs the short rows of group quantization (32..256 values)
    about twice as fast as a reduction along axis 1, which pays a set-up per row.
    """
    rows, cols = a.shape
    if cols >= 1024 or rows == 1:
        return ufunc.reduce(a, axis=1)
    return ufunc.reduceat(a.reshape(-1), _row_starts(rows, cols))


@lru_cache(maxsize=64)
def _row_starts(rows: int, cols: int) -> np.ndarray:
    starts = np.arange(0, rows * cols, cols)
    starts.flags.writeable = False  # shared by every thread and call
    return starts


#: Per work dtype, ``1.5 * 2**p`` for ``p`` mantissa bits: for ``|q| < 2**(p - 1)`` the float sum
#: ``q + magic`` lies in ``[2**p, 2**(p + 1))``, where the spacing is 1, so the addition rounds ``q`` to
#: the nearest integer ``r``, ties to even (``magic`` is even), exactly as ``np.rint``; and the sum's
#: bit pattern is ``exponent | (2**(p - 1) + r)``, whose low 16 bits are ``r`` in two's complement.
_ROUNDING_MAGIC = {np.dtype(np.float32): 1.5 * 2.0**23, np.dtype(np.float64): 1.5 * 2.0**52}


def round_to_codes(q: np.ndarray, codes: np.ndarray) -> None:
    """``codes[...] = np.rint(q)`` for float32/float64 ``q`` with ``|q| < 2**21``, integer ``codes``
    of 1 or 2 bytes (values taken modulo ``2**(8 * itemsize)``). Overwrites ``q``.

    One addition and one integer truncation instead of ``rint`` and a float-to-integer cast, a
    buffered conversion that costs more than both (see :data:`_ROUNDING_MAGIC`, and the per-step
    times in docs/performance.md).

    Examples
    --------
    >>> q = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 7.49, -0.0], np.float32)
    >>> codes = np.empty(7, np.int8)
    >>> round_to_codes(q, codes)
    >>> codes.tolist()  # half to even, as np.rint
    [-2, -2, 0, 0, 2, 7, 0]
    """
    np.add(q, q.dtype.type(_ROUNDING_MAGIC[q.dtype]), out=q)
    np.copyto(codes.view(_uint(codes.dtype.itemsize)), q.view(_uint(q.dtype.itemsize)), casting="unsafe")


def row_peaks(x: np.ndarray) -> np.ndarray:
    """``np.max(np.abs(x), axis=1)`` for a 2-D float array of a :data:`FAST_FLOATS` dtype, exactly,
    as an array of ``x``'s dtype; NaN where a row holds a NaN.

    Computed on the bit patterns: with the sign bit cleared, the patterns of non-negative floats
    (subnormals and infinity included) order as the values do, and every NaN's pattern is above
    infinity's. One integer ``and`` and an integer reduction, no float ``abs`` (nor a cast of
    float16/bfloat16 to float32); NumPy's integer maximum is also the faster ``reduceat``.

    Examples
    --------
    >>> row_peaks(np.array([[-3.0, 2.0], [0.5, -0.0], [np.nan, 1.0]], np.float32)).tolist()
    [3.0, 0.5, nan]
    """
    u = _uint(x.dtype.itemsize)
    mag = scratch("peaks", x.size, u).reshape(x.shape)
    np.bitwise_and(x.view(u), u.type((1 << (8 * u.itemsize - 1)) - 1), out=mag)
    return _row_reduce(np.maximum, mag).view(x.dtype)


def _as_work(x: np.ndarray, work: np.dtype) -> np.ndarray:
    if x.dtype == work:
        return x
    out = scratch("cast", x.size, work).reshape(x.shape)
    np.copyto(out, x, casting="unsafe")
    return out


def _tiles(rows: int, cols: int) -> tuple[list[tuple[int, int, int, int]], bool]:
    """Tiles ``(r0, r1, c0, c1)`` of about one block each, and whether every tile holds whole rows."""
    block = blocked.BLOCK_ELEMENTS
    if cols <= block:
        per = max(1, block // cols)
        return [(r, min(r + per, rows), 0, cols) for r in range(0, rows, per)], True
    return [(r, r + 1, c0, c1) for r in range(rows) for c0, c1 in block_ranges(cols)], False


def quantize_job(
    x2: np.ndarray,
    bits: int,
    symmetric: bool,
    code_dtype: np.dtype,
    scale_of: Callable[[np.ndarray], np.ndarray],
    failure: type[Exception],
) -> Job:
    """Job: quantize each row of a C-contiguous 2-D view with its own scale (``bits >= 2``).

    Parameters
    ----------
    x2 : numpy.ndarray
        ``(R, C)`` view of the tensor: one scale per row (per channel of axis 0, per group, or the
        whole tensor as one row).
    bits, symmetric : int, bool
    code_dtype : numpy.dtype
    scale_of : callable
        ``scale_of(stat64) -> float32 scales`` for a float64 array of row statistics (``max|w|``
        for symmetric; the span ``hi - lo`` for affine): the reference's own scale rule, applied to
        a few rows at a time.
    failure : exception type
        What ``scale_of`` raises for a scale it refuses; the job then returns None.

    Returns
    -------
    (codes, scale, zero_point) or None
        ``codes`` ``(R, C)`` of ``code_dtype``, ``scale`` float32 ``(R,)``, ``zero_point`` ``(R,)``
        of ``code_dtype`` for affine (else None). None when the tensor holds NaN or Inf (a row
        statistic is then not finite) or ``scale_of`` refused: the caller's reference path then
        reports the problem with its usual message.

    Notes
    -----
    Rows that fit in a block are quantized tile by tile -- statistics, scales and codes while the
    tile is in cache, one read of the tensor. Longer rows (the whole tensor as one row) take two
    phases: the statistics of all tiles (max and min combine exactly), then the codes.
    """
    rows, cols = x2.shape
    work = np.dtype(np.float64 if x2.dtype.itemsize > 4 else np.float32)
    codes = np.empty((rows, cols), code_dtype)
    scale = np.empty(rows, np.float32)
    zero_point = None if symmetric else np.empty(rows, code_dtype)
    qmax = (1 << (bits - 1)) - 1 if symmetric else (1 << bits) - 1
    tiles, whole_rows = _tiles(rows, cols)
    failed = threading.Event()

    def stats(r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray | None]:
        if symmetric:
            return row_peaks(x2[r0:r1, c0:c1]), None
        x = _as_work(x2[r0:r1, c0:c1], work)
        return _row_reduce(np.minimum, x), _row_reduce(np.maximum, x)

    def set_scales(r0: int, r1: int, first: np.ndarray, second: np.ndarray | None) -> bool:
        # first/second (float64): per-row max|w| (symmetric, >= +0 from row_peaks) or min and max
        # (affine); the reference reduces with `initial=0`, hence the affine minimum/maximum with 0.
        # All finite <=> these reductions are: NaN propagates through max and min, a row minimum
        # of +inf means a row maximum of +inf, a row maximum of -inf a row minimum of -inf.
        if not (np.isfinite(first.max() if symmetric else first.min())
                and (second is None or np.isfinite(second.max()))):
            failed.set()
            return False
        try:
            if symmetric:
                scale[r0:r1] = scale_of(first)
            else:
                assert second is not None and zero_point is not None  # affine: both exist
                lo, hi = np.minimum(first, 0.0), np.maximum(second, 0.0)
                with np.errstate(over="ignore"):  # an infinite span is refused by scale_of; the
                    span = hi - lo  # reference path then warns and raises, as without this path
                s = scale_of(span)
                scale[r0:r1] = s
                zero_point[r0:r1] = np.clip(np.rint(-lo / s.astype(np.float64)), 0, qmax)
        except failure:
            failed.set()
            return False
        return True

    magic = work.type(_ROUNDING_MAGIC[work])

    def encode(r0: int, r1: int, c0: int, c1: int) -> None:
        x = _as_work(x2[r0:r1, c0:c1], work)
        q = scratch("q", x.size, work).reshape(x.shape)
        np.divide(x, scale[r0:r1, None] if work == scale.dtype else scale[r0:r1, None].astype(work), out=q)
        # |x| <= peak (symmetric) or |x| <= hi - lo (affine) and the stored scale is at least
        # (peak or span / qmax)(1 - 2**-24) (a float64 quotient rounded to float32, or raised to the
        # floor), so |q| <= qmax (1 + 2**-22) after the division's own rounding: far below 2**21,
        # where round_to_codes is rint. For symmetric codes that bound is below qmax + 0.008 (qmax
        # <= 32767): rint gives at most qmax, what the reference's clip(rint(q), -qmax, qmax)
        # gives, so there is no clip.
        if symmetric:
            round_to_codes(q, codes[r0:r1, c0:c1])
            return
        # affine: rint, then the zero point, then the clip, as in the reference. With the rounding
        # magic added first the three steps are exact on integers offset by the magic constant.
        assert zero_point is not None  # affine
        np.add(q, magic, out=q)
        np.add(q, zero_point[r0:r1, None].astype(work), out=q)
        np.clip(q, magic, magic + qmax, out=q)
        np.copyto(codes[r0:r1, c0:c1].view(_uint(code_dtype.itemsize)), q.view(_uint(work.itemsize)),
                  casting="unsafe")

    def tile(r0: int, r1: int, c0: int, c1: int) -> None:
        if failed.is_set():
            return
        first, second = stats(r0, r1, c0, c1)
        with np.errstate(invalid="ignore"):  # a signalling NaN's cast warns; set_scales reports it
            first64 = first.astype(np.float64)
            second64 = None if second is None else second.astype(np.float64)
        if set_scales(r0, r1, first64, second64):
            encode(r0, r1, c0, c1)

    if whole_rows:
        yield [partial(tile, *t) for t in tiles]
    else:
        partial_stats = yield [partial(stats, *t) for t in tiles]
        row_of = np.array([t[0] for t in tiles])
        first = np.full(rows, -np.inf if symmetric else np.inf)
        second = None
        with np.errstate(invalid="ignore"):  # a NaN statistic is reported by set_scales, not warned about
            combine = np.maximum if symmetric else np.minimum
            combine.at(first, row_of, [float(p[0][0]) for p in partial_stats])
            if not symmetric:
                second = np.full(rows, -np.inf)
                np.maximum.at(second, row_of, [float(p[1][0]) for p in partial_stats])
        if set_scales(0, rows, first, second):
            yield [partial(encode, *t) for t in tiles]
    return None if failed.is_set() else (codes, scale, zero_point)


def dequantize_job(
    codes2: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    bits: int,
    dtype: np.dtype,
) -> Job:
    """Job: ``clip(scale * (codes [- zero_point]), -max, max).astype(dtype)`` per row, in ``work`` precision.

    ``codes2`` is the ``(R, C)`` view of the codes and ``scale`` (and ``zero_point``) hold one value
    per row; ``bits == 1`` maps code ``c`` to ``2 c - 1``. The steps and their order are those of
    :meth:`coreprune.quantization.QuantizedArray.dequantize`. Returns the ``(R, C)`` array.
    """
    rows, cols = codes2.shape
    work = np.dtype(np.float64 if dtype.itemsize > 4 else np.float32)
    out = np.empty((rows, cols), dtype)
    peak = float(ml_dtypes.finfo(dtype).max)
    scale_w = scale.astype(work)
    zp_w = None if zero_point is None else zero_point.astype(work)
    # The clip only changes values beyond the dtype's range. |code (- zero point)| is at most 1
    # (bits=1), 2**(bits-1) (symmetric) or 2**bits - 1 (affine) and the product's rounding adds
    # less than 2**-20 relatively, so when this bound is within range the clip changes nothing.
    largest = 1 if bits == 1 else (1 << (bits - 1)) if zero_point is None else (1 << bits) - 1
    clip = not scale.size or float(np.max(scale)) * largest * (1 + 2.0**-20) > peak

    def tile(r0: int, r1: int, c0: int, c1: int) -> None:
        target = out[r0:r1, c0:c1]
        v = target if dtype == work else scratch("deq", target.size, work).reshape(target.shape)
        np.copyto(v, codes2[r0:r1, c0:c1], casting="unsafe")
        if bits == 1:
            v *= 2
            v -= 1
        elif zp_w is not None:
            v -= zp_w[r0:r1, None]
        with np.errstate(over="ignore"):
            np.multiply(v, scale_w[r0:r1, None], out=v)
        if clip:
            np.clip(v, -peak, peak, out=v)
        if v is not target:
            np.copyto(target, v, casting="unsafe")

    yield [partial(tile, *t) for t in _tiles(rows, cols)[0]]
    return out
