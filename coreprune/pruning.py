"""Unstructured magnitude pruning of a dict of NumPy arrays.

Two verbs and a helper:

* :func:`prune_threshold` keeps the entries with ``|w| > t`` (strict) and zeroes the rest.
* :func:`prune_magnitude` removes exactly ``k = round(s * n)`` entries of smallest ``|w|``, per tensor
  (``scope="layer"``) or with one threshold across all selected tensors (``scope="global"``,
  ``k = round(s * N)`` with ``N`` the total size).
* :func:`apply_masks` zeroes the entries where a boolean mask is False.

Ordering and ties
-----------------
All entries are ranked by the key ``(|w|, tensor position in the mapping, flat C-order index)``
and the ``k`` lowest are removed. Magnitudes are compared exactly: float16, bfloat16 and float32
are widened to float32 and float64 stays float64, conversions that lose nothing. The tie-break
makes the result a pure function of the data, which gives two guarantees used throughout
the project:

* idempotence: pruning a pruned dict again at the same sparsity changes nothing;
* monotonicity: the kept set at a higher sparsity is a subset of the kept set at a lower one.

When no two candidate magnitudes tie, the masks equal those of PyTorch's
``torch.nn.utils.prune.l1_unstructured`` (``amount`` a float) and ``global_unstructured`` with
``L1Unstructured``, which use the same ``round(amount * n)``.

Fast paths
----------
Tensors that are C-contiguous float16/bfloat16/float32/float64 with at least
``coreprune._blocked.MIN_FAST_ELEMENTS`` values go through :mod:`coreprune._kernels` (blocked and
threaded, one pass for the mask and the pruned copy) and :mod:`coreprune._select` (the k-th
magnitude from a sample bracket and one counting pass). They give bit-identical results to the plain
NumPy code kept below, which handles every other input and which the tests compare them with.

Global threshold without concatenation
--------------------------------------
``scope="global"`` needs the k-th smallest magnitude of all selected tensors together. Instead of
concatenating them (a copy of the whole model), :func:`_kth_smallest_abs` runs a radix select on
the IEEE-754 bit patterns: for non-negative floats the bit pattern, read as an unsigned integer,
orders like the value. Each pass histograms 16 bits of every tensor with ``np.bincount``
(2 passes for float32, 4 for float64) and keeps only the bucket holding the k-th value, so the
extra memory is one tensor's temporaries plus a 65536-bin histogram.
:func:`_kth_smallest_abs_reference` is the plain concatenate-and-partition version the tests
compare it with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from . import _blocked, _kernels, _select
from ._select import kth_smallest as _kth_smallest
from .errors import CompressionError
from .selection import Pattern, check_weights, require_finite, select

__all__ = ["prune_threshold", "prune_magnitude", "apply_masks"]

_SCOPES = ("layer", "global")
_DIGIT_BITS = 16


def _real(value: object, what: str) -> float:
    """``value`` as a float, refusing bools, strings, None and NaN."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CompressionError(f"{what} must be a real number, got {value!r} ({type(value).__name__})")
    out = float(value)
    if math.isnan(out):
        raise CompressionError(f"{what} is NaN")
    return out


def _work_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype in which ``|w|`` is compared: exact for every float of 32 bits or fewer."""
    return np.dtype(np.float32) if np.dtype(dtype).itemsize <= 4 else np.dtype(np.float64)


def _abs_flat(w: np.ndarray, work: np.dtype) -> np.ndarray:
    """``|w|`` as a new 1-D array of ``work`` dtype, C order."""
    return np.abs(w.astype(work, copy=False)).reshape(-1)


def _zero_where_false_reference(w: np.ndarray, keep: np.ndarray) -> np.ndarray:
    # np.where with a +0 of w's dtype: multiplying by the mask would turn negative entries into -0.0.
    return np.where(keep, w, np.zeros((), dtype=w.dtype))


def _zero_where_false(w: np.ndarray, keep: np.ndarray) -> np.ndarray:
    if _kernels.eligible(w, dtypes=None):
        return _kernels.zero_where_false(w, keep)
    return _zero_where_false_reference(w, keep)


def _kth_smallest_abs_reference(
    tensors: Sequence[np.ndarray], k: int, work: np.dtype
) -> tuple[np.generic, int]:
    """Reference for :func:`_kth_smallest_abs`: concatenate every ``|w|`` and partition.

    Returns ``(v, r)``: ``v`` the k-th smallest magnitude (1-based, as a ``work`` scalar) and ``r``
    how many entries equal to ``v`` are among the k smallest (``1 <= r``). Needs ``1 <= k <= N``.
    """
    return _kth_smallest(np.concatenate([_abs_flat(w, work) for w in tensors]), k)


def _kth_smallest_abs(tensors: Sequence[np.ndarray], k: int, work: np.dtype) -> tuple[np.generic, int]:
    """The k-th smallest ``|w|`` over several tensors, without concatenating them (radix select).

    Parameters
    ----------
    tensors : sequence of numpy.ndarray
        Finite floating arrays of any shapes; their total size ``N`` must satisfy ``1 <= k <= N``.
    k : int
        1-based rank.
    work : numpy.dtype
        float32 or float64: the dtype every ``|w|`` is converted to (exactly) before ranking.

    Returns
    -------
    (v, r) : (numpy scalar of ``work``, int)
        ``v`` is the k-th smallest magnitude; ``r >= 1`` of the entries equal to ``v`` are among the
        k smallest (the others equal to ``v`` rank after them).
    """
    uint = np.dtype(f"u{work.itemsize}")
    nbits = 8 * work.itemsize
    prefix, remaining = 0, k
    for shift in range(nbits - _DIGIT_BITS, -1, -_DIGIT_BITS):
        hist = np.zeros(1 << _DIGIT_BITS, dtype=np.int64)
        for w in tensors:
            key = _abs_flat(w, work).view(uint)
            if shift + _DIGIT_BITS < nbits:  # only the bucket chosen by the previous passes
                key = key[(key >> uint.type(shift + _DIGIT_BITS)) == uint.type(prefix)]
            digit = ((key >> uint.type(shift)) & uint.type(0xFFFF)).astype(np.intp)
            hist += np.bincount(digit, minlength=1 << _DIGIT_BITS)
        cumulative = np.cumsum(hist)
        d = int(np.searchsorted(cumulative, remaining))  # first digit whose bucket reaches rank
        remaining -= int(cumulative[d - 1]) if d > 0 else 0
        prefix = (prefix << _DIGIT_BITS) | d
    v = np.array(prefix, dtype=uint).view(work)[()]
    return v, remaining


def _prune_smallest_job(tensors: Sequence[np.ndarray], k: int, work: np.dtype) -> _blocked.Job:
    """Fast path (a job) of removing the ``k`` smallest magnitudes over ``tensors`` (``1 <= k <= N``).

    Same ranking as the reference: every ``|w| < v`` goes, then the first ``r`` entries equal to
    ``v`` in (tensor, C-order index) order, located per block from per-block counts of ``v``.
    Returns ``[(pruned, keep), ...]``, or the index of the first tensor holding NaN/Inf (the
    counting pass of the selection checks it), for :func:`require_finite` to report.
    """
    sel = yield from _select.select_job(tensors, k, work)
    if sel.nonfinite is not None:
        return sel.nonfinite
    if sel.equal == sel.ties:  # every entry equal to v goes: no tie to break
        jobs = [_kernels.prune_job(w, sel.value, work) for w in tensors]
    else:
        per_block = sel.per_block
        if per_block is None:
            counting = [_kernels.count_equal_job(w, sel.value, work) for w in tensors]
            per_block = yield from _blocked.gather(counting)
        jobs, remaining = [], sel.ties
        for w, ties in zip(tensors, per_block):
            skips = []
            for n_equal in ties:
                skips.append(min(remaining, n_equal))
                remaining -= skips[-1]
            jobs.append(_kernels.prune_job(w, sel.value, work, skips, ties))
    results = yield from _blocked.gather(jobs)
    return [(pruned, keep) for pruned, keep, _ in results]


def _fast_tensors(tensors: Sequence[np.ndarray]) -> bool:
    """Whether a set of tensors ranked together takes the fast path (all of them, or none)."""
    total = sum(w.size for w in tensors)
    return total >= _blocked.MIN_FAST_ELEMENTS and all(
        w.flags.c_contiguous and w.dtype in _kernels.FAST_FLOATS for w in tensors
    )


def _keep_mask(a: np.ndarray, v: np.generic, ties: int) -> tuple[np.ndarray, int]:
    """Flat keep-mask for magnitudes ``a``: drop ``a < v`` and the first ``ties`` entries equal to ``v``.

    Returns the mask and how many of ``ties`` are left for later tensors.
    """
    keep = a > v
    equal = np.flatnonzero(a == v)
    keep[equal[ties:]] = True
    return keep, ties - min(ties, equal.size)


def prune_threshold(
    weights: Mapping[str, np.ndarray],
    threshold: float,
    *,
    include: Pattern = None,
    exclude: Pattern = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Zero every selected entry with ``|w| <= threshold``.

    ``mask = |w| > threshold`` (strict, so zeros are always removed), ``pruned = where(mask, w, 0)``.
    As in NumPy and the frameworks (``abs(w) > t`` on a float32 tensor), ``threshold`` is first
    rounded to the tensor's dtype: a float32 weight equal to ``float32(0.2)`` is removed by
    ``threshold=0.2``.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Name to array, any shapes. Not modified.
    threshold : float
        Non-negative, not NaN; ``inf`` removes everything.
    include, exclude : glob, list of globs, predicate, or None
        Which tensors to prune, see :func:`coreprune.selection.select` (default: floating arrays
        with ``ndim >= 2``).

    Returns
    -------
    pruned : dict[str, numpy.ndarray]
        Same names and order as ``weights``. Selected tensors are new arrays of the same shape and
        dtype, removed entries exactly ``+0``; the others are the input objects themselves.
    masks : dict[str, numpy.ndarray]
        For each selected name, a bool array of the tensor's shape, True where kept.

    Raises
    ------
    CompressionError
        Negative or NaN ``threshold``; a selected tensor holding NaN/Inf; a non-array value.

    Examples
    --------
    >>> import numpy as np
    >>> w = {"fc.weight": np.array([[0.5, -0.1], [0.2, -2.0]], np.float32), "fc.bias": np.ones(2)}
    >>> pruned, masks = prune_threshold(w, 0.2)
    >>> pruned["fc.weight"].tolist()
    [[0.5, 0.0], [0.0, -2.0]]
    >>> masks["fc.weight"].tolist()
    [[True, False], [False, True]]
    >>> pruned["fc.bias"] is w["fc.bias"]
    True
    """
    t = _real(threshold, "threshold")
    if t < 0:
        raise CompressionError(f"threshold must be >= 0, got {t}")
    names = select(weights, include, exclude)
    pruned = dict(weights)
    masks: dict[str, np.ndarray] = {}
    cuts = {}
    for name in names:
        work = _work_dtype(weights[name].dtype)
        with np.errstate(over="ignore"):  # a threshold beyond the dtype's range becomes inf: prune all
            cuts[name] = work.type(np.array(t).astype(weights[name].dtype))
    fast = [name for name in names if _kernels.eligible(weights[name])]
    jobs = [_kernels.prune_job(weights[n], cuts[n], _work_dtype(weights[n].dtype)) for n in fast]
    done = dict(zip(fast, _blocked.run_jobs(jobs)))
    # in order, so that the first tensor holding NaN/Inf is the one reported (the kernels check it)
    for name in names:
        w = weights[name]
        if name in done:
            pruned[name], masks[name], finite = done[name]
            if not finite:
                require_finite(name, w)
            continue
        require_finite(name, w)
        work, t_work = _work_dtype(w.dtype), cuts[name]
        keep = (np.abs(w.astype(work, copy=False)) > t_work).reshape(w.shape)
        masks[name] = keep
        pruned[name] = _zero_where_false_reference(w, keep)
    return pruned, masks


def prune_magnitude(
    weights: Mapping[str, np.ndarray],
    sparsity: float,
    *,
    scope: str = "layer",
    include: Pattern = None,
    exclude: Pattern = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Remove exactly ``k = round(sparsity * n)`` entries of smallest magnitude.

    ``scope="layer"``: for each selected tensor of size ``n``, the ``round(sparsity * n)`` entries
    with the smallest ``|w|`` become 0. ``scope="global"``: one ranking over all selected tensors
    together (total size ``N``), the ``round(sparsity * N)`` smallest go, so layers with small
    weights lose more. ``round`` is Python's (half to even), as in ``torch.nn.utils.prune``.
    Ties in ``|w|`` are broken by position: earlier tensor (mapping order), then lower flat
    C-order index, is removed first. Hence pruning is idempotent and the kept set shrinks
    monotonically as ``sparsity`` grows.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Name to array. Not modified.
    sparsity : float
        Fraction to remove, in ``[0, 1]``.
    scope : {"layer", "global"}
    include, exclude : glob, list of globs, predicate, or None
        Which tensors to prune, see :func:`coreprune.selection.select`.

    Returns
    -------
    pruned : dict[str, numpy.ndarray]
        Same names, order, shapes and dtypes as ``weights``; removed entries are exactly ``+0``.
        Tensors not selected are the input objects.
    masks : dict[str, numpy.ndarray]
        Bool array per selected name, tensor's shape, True where kept.

    Raises
    ------
    CompressionError
        ``sparsity`` outside ``[0, 1]`` or NaN; unknown ``scope``; NaN/Inf in a selected tensor.

    Examples
    --------
    >>> import numpy as np
    >>> w = {"a": np.array([[1.0, -4.0], [3.0, 2.0]]), "b": np.array([[0.5, 5.0]])}
    >>> pruned, masks = prune_magnitude(w, 0.5)
    >>> pruned["a"].tolist(), pruned["b"].tolist()
    ([[0.0, -4.0], [3.0, 0.0]], [[0.0, 5.0]])
    >>> pruned, masks = prune_magnitude(w, 0.5, scope="global")
    >>> masks["a"].tolist(), masks["b"].tolist()
    ([[False, True], [True, False]], [[False, True]])
    """
    s = _real(sparsity, "sparsity")
    if not 0.0 <= s <= 1.0:
        raise CompressionError(f"sparsity must be in [0, 1], got {s}")
    if scope not in _SCOPES:
        raise CompressionError(f"scope must be 'layer' or 'global', got {scope!r}")
    names = select(weights, include, exclude)
    flat_keep: dict[str, np.ndarray] = {}
    done: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (pruned, mask) from a fast path
    if scope == "layer":
        fast = [n for n in names if round(s * weights[n].size) > 0 and _fast_tensors([weights[n]])]
        jobs = [
            _prune_smallest_job([weights[n]], round(s * weights[n].size), _work_dtype(weights[n].dtype))
            for n in fast
        ]
        results = dict(zip(fast, _blocked.run_jobs(jobs)))
        # in order, so that the first tensor holding NaN/Inf is the one reported
        for name in names:
            w = weights[name]
            k = round(s * w.size)
            if name in results:
                if isinstance(results[name], int):  # not finite: the counting pass found it
                    require_finite(name, w)
                (done[name],) = results[name]
                continue
            require_finite(name, w)
            if k == 0:
                flat_keep[name] = np.ones(w.size, dtype=bool)
                continue
            a = _abs_flat(w, _work_dtype(w.dtype))
            v, ties = _kth_smallest(a, k)
            flat_keep[name], _ = _keep_mask(a, v, ties)
    else:
        tensors = [weights[name] for name in names]
        total = sum(w.size for w in tensors)
        k = round(s * total)
        # one comparison dtype for all, so that magnitudes from different dtypes rank exactly
        wide = any(_work_dtype(w.dtype).itemsize == 8 for w in tensors)
        work = np.dtype(np.float64 if wide else np.float32)
        if k > 0 and _fast_tensors(tensors):
            result = _blocked.run_job(_prune_smallest_job(tensors, k, work))
            if isinstance(result, int):  # the first tensor holding NaN/Inf
                require_finite(names[result], tensors[result])
            done = dict(zip(names, result))
        else:
            for name in names:
                require_finite(name, weights[name])
        if k == 0:
            flat_keep = {name: np.ones(weights[name].size, dtype=bool) for name in names}
        elif not done:
            v, ties = _kth_smallest_abs(tensors, k, work)
            for name in names:
                flat_keep[name], ties = _keep_mask(_abs_flat(weights[name], work), v, ties)
    pruned = dict(weights)
    masks: dict[str, np.ndarray] = {}
    for name in names:
        w = weights[name]
        if name in done:
            pruned[name], masks[name] = done[name]
            continue
        masks[name] = flat_keep[name].reshape(w.shape)
        pruned[name] = _zero_where_false(w, masks[name])
    return pruned, masks


def apply_masks(weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Zero the entries of ``weights[name]`` where ``masks[name]`` is False.

    ``out[name] = where(masks[name], weights[name], 0)`` for every masked name; the removed entries
    are exactly ``+0`` of the tensor's dtype. Re-apply masks after each optimiser step to keep a
    pruned model sparse.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Name to array. Not modified.
    masks : Mapping[str, numpy.ndarray]
        Name to bool array of exactly that tensor's shape; every name must be in ``weights``.

    Returns
    -------
    dict[str, numpy.ndarray]
        Same names and order as ``weights``; masked tensors are new arrays of the same dtype,
        the others are the input objects.

    Raises
    ------
    CompressionError
        A mask naming no tensor, of another shape, or not of dtype bool; a non-array value.

    Examples
    --------
    >>> import numpy as np
    >>> w = {"w": np.array([[1.0, -2.0], [3.0, 4.0]]), "b": np.ones(2)}
    >>> out = apply_masks(w, {"w": np.array([[True, False], [False, True]])})
    >>> out["w"].tolist()
    [[1.0, 0.0], [0.0, 4.0]]
    """
    check_weights(weights)
    check_weights(masks, what="masks")
    for name, mask in masks.items():
        if name not in weights:
            raise CompressionError(f"mask {name!r} names no tensor in weights")
        if mask.dtype != np.bool_:
            raise CompressionError(f"mask {name!r} has dtype {mask.dtype}, expected bool")
        if mask.shape != weights[name].shape:
            raise CompressionError(
                f"mask {name!r} has shape {mask.shape} but tensor {name!r} has shape {weights[name].shape}"
            )
    out = dict(weights)
    fast = [name for name in masks if _kernels.eligible(weights[name], dtypes=None)]
    out.update(zip(fast, _blocked.run_jobs([_kernels.zero_job(weights[n], masks[n]) for n in fast])))
    for name, mask in masks.items():
        if name not in fast:
            out[name] = _zero_where_false_reference(weights[name], mask)
    return out
