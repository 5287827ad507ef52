"""The k-th smallest magnitude over several tensors: the one selection engine of coreprune.

``prune_magnitude`` needs, for ``k`` in ``1..N``, the k-th smallest ``|w|`` over all selected
tensors (``N`` values together) and how many entries equal to it rank among the ``k`` smallest.
Concatenating the tensors and calling ``np.partition`` copies the whole model and runs a
selection over it; a radix select over the bit patterns needs two passes or more. Here:

1. **Sample.** Every ``step``-th value of the (virtually concatenated) tensors, ``S = N / step``
   between 2**16 and 2**18 values, ``step`` coprime with 2, 3, 5 and 7 so that it does not alias
   with row lengths.
2. **Bracket.** If the sample is a fair one, the k-th value lies between its quantiles
   ``p - d`` and ``p + d`` (``p = k / N``, ``d`` = ``Z`` standard errors of a sample quantile):
   ``lo <= v <= hi``.
3. **One counting pass**, in cache-sized blocks on every core: ``L`` = the number of values
   ``< lo``, and the values in ``[lo, hi]`` themselves (the candidates, a fraction ``~2 d`` of
   ``N``).
4. **Exact answer.** When ``L < k <= L + #candidates`` the answer is the ``(k - L)``-th smallest
   candidate (``np.partition``); this is exact whatever the sample was. Otherwise (an unfair
   sample) or when the candidates outgrow their budget (``N / 48`` values), the radix select
   (:func:`radix_job`) finds the same value.

The radix select is the one for tensors that are not all in memory too (a lazy reader, one tensor
read per pass): for non-negative IEEE floats the bit pattern read as an unsigned integer orders
like the value, so each pass histograms the next 16 bits of every magnitude whose higher bits
equal the prefix found so far, until the bucket holding the k-th value has at most the candidate
budget (``N / 48``) values; one more pass collects them and ``np.partition`` finishes. The counting
pass compares floats, which for finite values gives the same order. All comparisons happen on
magnitudes converted exactly to ``work``.

:func:`kth_smallest_abs_reference` (concatenate every magnitude, ``np.partition``) is the reference
the tests compare both with; the public functions use it for inputs below
:data:`~coreprune._fast.blocked.MIN_FAST_ELEMENTS` values.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import cast

import numpy as np

from .blocked import Job, block_ranges, run_job, scratch
from .kernels import work_abs

__all__ = [
    "kth_smallest",
    "kth_smallest_abs",
    "kth_smallest_abs_reference",
    "select_job",
    "radix_job",
    "next_digit",
    "radix_select",
    "Selection",
]

#: Sample size: N / SAMPLE_SHARE, clamped to [SAMPLE_MIN, SAMPLE_MAX] (all of N when smaller).
SAMPLE_SHARE = 64
SAMPLE_MIN = 1 << 16
SAMPLE_MAX = 1 << 18
#: Half-width of the bracket in standard errors of the sample quantile (a miss, which only costs
#: time, has probability ~6e-7 for a fair sample).
Z = 5.0
#: The candidates may hold at most N / CANDIDATE_SHARE values (2.1 %; at least CANDIDATE_MIN), else
#: the radix select runs. With S >= 2**16, 2 Z sqrt(p (1 - p) / S) N stays below that for every p.
#: They exist twice at the peak (the blocks' pieces and their concatenation): <= 4.2 % of N values.
CANDIDATE_SHARE = 48
CANDIDATE_MIN = 1 << 16
_DIGIT_BITS = 16


def kth_smallest(a: np.ndarray, k: int) -> tuple[np.generic, int]:
    """``(v, r)`` for one flat array ``a``: the k-th smallest value and how many ties of it rank <= k.

    Examples
    --------
    >>> v, r = kth_smallest(np.array([3.0, 1.0, 2.0, 2.0]), 2)
    >>> float(v), r
    (2.0, 1)
    """
    v = np.partition(a, k - 1)[k - 1]
    return v, k - int(np.count_nonzero(a < v))


def kth_smallest_abs_reference(
    tensors: Sequence[np.ndarray], k: int, work: np.dtype
) -> tuple[np.generic, int]:
    """Reference of the engine: concatenate every ``|w|`` (as ``work``) and partition.

    Returns ``(v, r)``: ``v`` the k-th smallest magnitude (1-based, as a ``work`` scalar) and ``r``
    how many entries equal to ``v`` are among the k smallest (``1 <= r``). Needs ``1 <= k <= N``.

    Examples
    --------
    >>> v, r = kth_smallest_abs_reference([np.array([[3.0, -1.0]]), np.array([-2.0, 2.0])], 3,
    ...                                   np.dtype(np.float64))
    >>> float(v), r
    (2.0, 2)
    """
    return kth_smallest(np.concatenate([np.abs(np.asarray(w).astype(work)).reshape(-1) for w in tensors]), k)


class Selection:
    """Result of :func:`kth_smallest_abs`.

    Attributes
    ----------
    value : numpy scalar of ``work``
        The k-th smallest magnitude ``v``.
    ties : int
        ``r >= 1``: how many entries equal to ``v`` rank among the ``k`` smallest, i.e. are removed.
    equal : int
        How many entries equal ``v`` in all (``>= ties``).
    per_block : list of list of int, or None
        For each tensor and each block of :func:`~coreprune.blocked.block_ranges` of its size,
        the number of entries equal to ``v``; None when the radix select ran (count them then).
    nonfinite : int or None
        Index of the first tensor holding NaN or Inf, found by the counting pass; the other fields
        are then meaningless (the caller reports the tensor). None when all values are finite.
    """

    __slots__ = ("value", "ties", "equal", "per_block", "nonfinite")

    def __init__(
        self,
        value: np.generic,
        ties: int,
        equal: int,
        per_block: list[list[int]] | None,
        nonfinite: int | None = None,
    ) -> None:
        self.value, self.ties, self.equal, self.per_block = value, ties, equal, per_block
        self.nonfinite = nonfinite


def _sample_step(n: int) -> int:
    step = max(1, n // min(max(n // SAMPLE_SHARE, SAMPLE_MIN), SAMPLE_MAX))
    while step > 1 and math.gcd(step, 2 * 3 * 5 * 7) != 1:  # avoid aliasing with row lengths
        step += 1
    return step


def _sample_tasks(flats: Sequence[np.ndarray], work: np.dtype) -> list[Callable[[], np.ndarray]]:
    """Tasks that each return part of the sample: every ``step``-th magnitude of the tensors taken
    as one sequence, as ``work``, one task per block."""
    total = sum(f.size for f in flats)
    step = _sample_step(total)
    tasks: list[Callable[[], np.ndarray]] = []
    start = 0
    for f in flats:
        first = (-start) % step  # the first sampled index of this tensor
        for s, e in block_ranges(f.size):
            tasks.append(partial(_sample_part, f, s + (first - s) % step, e, step, work))
        start += f.size
    return tasks


def _sample_part(f: np.ndarray, s: int, e: int, step: int, work: np.dtype) -> np.ndarray:
    return np.abs(f[s:e:step].astype(work))


def _bracket(sample: np.ndarray, k: int, n: int) -> tuple[np.generic | None, np.generic | None]:
    """``(lo, hi)`` around the k-th of ``n`` from the sample's quantiles; None is an open end."""
    s = sample.size
    p = k / n
    center = p * s
    margin = Z * math.sqrt(s * p * (1.0 - p)) + 2.0
    i_lo, i_hi = math.floor(center - margin) - 1, math.ceil(center + margin)
    wanted = [i for i in (i_lo, i_hi) if 0 <= i < s]
    if wanted:
        sample = np.partition(sample, wanted)
    lo = sample[i_lo] if 0 <= i_lo < s else None
    hi = sample[i_hi] if 0 <= i_hi < s else None
    return lo, hi


def select_job(tensors: Sequence[np.ndarray], k: int, work: np.dtype) -> Job:
    """Job computing :func:`kth_smallest_abs` (see there), for :func:`~coreprune.blocked.run_jobs`."""
    flats = [np.ascontiguousarray(t).reshape(-1) for t in tensors]
    total = sum(f.size for f in flats)
    parts = yield _sample_tasks(flats, work)
    # one task: the brackets of all jobs of a sweep (one per tensor in layer scope) run in parallel
    ((lo, hi),) = yield [partial(_bracket, np.concatenate(parts), k, total)]
    budget = max(CANDIDATE_MIN, total // CANDIDATE_SHARE)
    stored = [0]
    overflow = threading.Event()
    lock = threading.Lock()
    bad: set[int] = set()

    def count(i: int, s: int, e: int) -> tuple[int, int, np.ndarray | None]:
        a = work_abs(flats[i][s:e], work)
        if not np.isfinite(np.maximum.reduce(a)):  # NaN propagates through the maximum
            bad.add(i)
            return 0, 0, None
        below = np.less(a, lo, out=scratch("lt", a.size, np.bool_)) if lo is not None else None
        upto = np.less_equal(a, hi, out=scratch("le", a.size, np.bool_)) if hi is not None else None
        n_below = int(np.count_nonzero(below)) if below is not None else 0
        n_upto = int(np.count_nonzero(upto)) if upto is not None else a.size
        if n_upto == n_below or overflow.is_set():
            return n_below, n_upto, None
        with lock:
            stored[0] += n_upto - n_below
            if stored[0] > budget:
                overflow.set()
                return n_below, n_upto, None
        if below is None and upto is None:
            return n_below, n_upto, a.copy()
        if below is None:
            assert upto is not None  # both None returned above
            inside = upto
        elif upto is None:
            inside = np.logical_not(below, out=below)
        else:
            inside = np.logical_xor(below, upto, out=upto)  # below implies upto
        return n_below, n_upto, a[np.flatnonzero(inside)]

    blocks = [[(s, e) for s, e in block_ranges(f.size)] for f in flats]
    results = yield [partial(count, i, s, e) for i in range(len(flats)) for s, e in blocks[i]]
    if bad:
        return Selection(work.type(0), 0, 0, None, nonfinite=min(bad))
    below = sum(r[0] for r in results)
    upto = sum(r[1] for r in results)
    if overflow.is_set() or not below < k <= upto:
        found = yield from radix_job(flats.__getitem__, len(flats), total, k, work, check=False)
        assert not isinstance(found, int)  # the counting pass found every value finite
        v, r, equal = found
        return Selection(v, r, sum(equal), None)
    candidates = [r[2] if r[2] is not None else np.zeros(0, work) for r in results]
    del results
    ((v, r),) = yield [partial(_kth_in_place, candidates, k - below)]
    per_block, pos = [], 0
    for b in blocks:
        mine = candidates[pos : pos + len(b)]
        per_block.append([int(np.count_nonzero(c == v)) if c.size else 0 for c in mine])
        pos += len(b)
    return Selection(v, r, sum(map(sum, per_block)), per_block)


def _kth_in_place(parts: list[np.ndarray], k: int) -> tuple[np.generic, int]:
    """:func:`kth_smallest` of the concatenated ``parts``, partitioning the concatenation in place
    (``np.partition`` would add a third copy of the candidates)."""
    a = np.concatenate(parts)
    a.partition(k - 1)
    v = a[k - 1]
    return v, k - int(np.count_nonzero(a < v))


def kth_smallest_abs(tensors: Sequence[np.ndarray], k: int, work: np.dtype) -> Selection:
    """The k-th smallest ``|w|`` over several tensors, without concatenating them.

    Parameters
    ----------
    tensors : sequence of numpy.ndarray
        Floating arrays; their total size ``N`` must satisfy ``1 <= k <= N``.
    k : int
        1-based rank.
    work : numpy.dtype
        float32 or float64: every ``|w|`` is converted to it (exactly) before ranking.

    Returns
    -------
    Selection
        ``value`` and ``ties`` equal ``_kth_smallest_abs_reference`` in :mod:`coreprune.pruning`.

    Examples
    --------
    >>> sel = kth_smallest_abs([np.array([[3.0, -1.0]]), np.array([-2.0, 2.0])], 3, np.dtype(np.float64))
    >>> float(sel.value), sel.ties, sel.equal, sel.per_block
    (2.0, 2, 2, [[0], [2]])
    """
    return run_job(select_job(tensors, k, work))


def _histogram_block(
    flat: np.ndarray, span: tuple[int, int], *, work: np.dtype, known: int, prefix: int, check: bool
) -> np.ndarray | None:
    """Counts of the 16-bit digit after the ``known`` top bits of the magnitudes in ``flat[span]``
    whose top bits equal ``prefix``; None if ``check`` and the block holds NaN/Inf."""
    a = work_abs(flat[span[0] : span[1]], work)
    if check and a.size and not np.isfinite(np.maximum.reduce(a)):  # NaN propagates through max
        return None
    uint = np.dtype(f"u{work.itemsize}")
    nbits = 8 * work.itemsize
    key = a.view(uint)
    if known:
        key = key[(key >> uint.type(nbits - known)) == uint.type(prefix)]
    digit = ((key >> uint.type(nbits - known - _DIGIT_BITS)) & uint.type(0xFFFF)).astype(np.intp)
    return np.bincount(digit, minlength=1 << _DIGIT_BITS)


def _bucket_block(
    flat: np.ndarray, span: tuple[int, int], *, work: np.dtype, known: int, prefix: int, check: bool
) -> np.ndarray | None:
    """The magnitudes in ``flat[span]`` whose ``known`` top bits equal ``prefix`` (a new array)."""
    a = work_abs(flat[span[0] : span[1]], work)
    if check and a.size and not np.isfinite(np.maximum.reduce(a)):
        return None
    if not known:
        return a.copy()
    uint = np.dtype(f"u{work.itemsize}")
    return a[(a.view(uint) >> uint.type(8 * work.itemsize - known)) == uint.type(prefix)]


def _count_block(flat: np.ndarray, span: tuple[int, int], *, work: np.dtype, v: np.generic) -> int:
    return int(np.count_nonzero(work_abs(flat[span[0] : span[1]], work) == v))


def next_digit(hist: np.ndarray, prefix: int, known: int, remaining: int) -> tuple[int, int, int, int]:
    """One radix step: from the histogram of the next 16 bits, the digit whose bucket holds the
    ``remaining``-th smallest value. Returns ``(prefix, known, remaining, bucket)`` for the next pass:
    the prefix extended by that digit, 16 more known bits, the rank inside the bucket and its size.

    Examples
    --------
    >>> hist = np.zeros(1 << 16, np.int64); hist[[3, 7]] = [5, 4]
    >>> next_digit(hist, 0, 0, 6)
    (7, 16, 1, 4)
    """
    cumulative = np.cumsum(hist)
    d = int(np.searchsorted(cumulative, remaining))  # first digit whose bucket reaches the rank
    remaining -= int(cumulative[d - 1]) if d > 0 else 0
    return (prefix << _DIGIT_BITS) | d, known + _DIGIT_BITS, remaining, int(hist[d])


def radix_job(
    load: Callable[[int], np.ndarray],
    count: int,
    total: int,
    k: int,
    work: np.dtype,
    *,
    check: bool,
    budget: int | None = None,
) -> Job:
    """Job: radix select of the k-th smallest magnitude of ``count`` tensors, 16 bits per pass.

    ``load(i)`` gives tensor ``i`` as a flat array; it is called once per tensor and pass and the
    array dropped after, so tensors read lazily from a file are held one at a time. ``total`` is
    their number of values. While the bucket holding the k-th value has more than
    ``budget`` values (default ``max(CANDIDATE_MIN, total // CANDIDATE_SHARE)``; 0 runs every pass
    down to the last bit), a pass histograms the next 16 bits of
    the magnitudes in it; then one more pass collects the bucket and ``np.partition`` finishes
    (float32 data: usually two passes in all).

    Returns ``(v, r, equal)`` -- the k-th smallest magnitude, how many entries equal to it rank among
    the ``k`` smallest, and each tensor's count of entries equal to it -- or, when ``check`` is true
    and a tensor holds NaN or Inf, that tensor's index (the first one). Needs ``1 <= k <= total``.
    """
    nbits = 8 * work.itemsize
    if budget is None:
        budget = max(CANDIDATE_MIN, total // CANDIDATE_SHARE)
    prefix, known, remaining, bucket = 0, 0, k, total
    while bucket > budget and known < nbits:  # one histogram pass per 16 bits
        hist = np.zeros(1 << _DIGIT_BITS, dtype=np.int64)
        for i in range(count):
            flat = load(i)
            step = partial(_histogram_block, flat, work=work, known=known, prefix=prefix, check=check)
            parts = yield [partial(step, span) for span in block_ranges(flat.size)]
            del flat
            if any(p is None for p in parts):
                return i
            for h in parts:
                hist += h
        check = False
        prefix, known, remaining, bucket = next_digit(hist, prefix, known, remaining)
    uint = np.dtype(f"u{work.itemsize}")
    if known == nbits:  # the bucket is one value: count it per tensor
        # indexing a 0-d array by () gives a scalar; NumPy's stubs say ndarray
        v = cast(np.generic, np.array(prefix, dtype=uint).view(work)[()])
        equal = []
        for i in range(count):
            flat = load(i)
            count_step = partial(_count_block, flat, work=work, v=v)
            counts = yield [partial(count_step, span) for span in block_ranges(flat.size)]
            equal.append(sum(counts))
        return v, remaining, equal
    candidates = []
    for i in range(count):
        flat = load(i)
        collect = partial(_bucket_block, flat, work=work, known=known, prefix=prefix, check=check)
        parts = yield [partial(collect, span) for span in block_ranges(flat.size)]
        if any(p is None for p in parts):
            return i
        candidates.append(np.concatenate([np.zeros(0, work), *parts]))
    ((v, r),) = yield [partial(_kth_in_place, candidates, remaining)]
    return v, r, [int(np.count_nonzero(c == v)) for c in candidates]


def radix_select(
    tensors: Sequence[np.ndarray], k: int, work: np.dtype, *, budget: int | None = None
) -> tuple[np.generic, int]:
    """``(v, r)`` of :func:`radix_job` over tensors in memory (``budget=0`` runs every 16-bit pass).

    Examples
    --------
    >>> tensors = [np.array([[3.0, -1.0]]), np.array([-2.0, 2.0])]
    >>> v, r = radix_select(tensors, 3, np.dtype(np.float64), budget=0)
    >>> float(v), r
    (2.0, 2)
    """
    flats = [np.ascontiguousarray(t).reshape(-1) for t in tensors]
    total = sum(f.size for f in flats)
    v, r, _ = run_job(radix_job(flats.__getitem__, len(flats), total, k, work, check=False, budget=budget))
    return v, r
