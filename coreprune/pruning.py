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
``coreprune._fast.blocked.MIN_FAST_ELEMENTS`` values go through :mod:`coreprune._fast.kernels` (blocked
and threaded, one pass for the mask and the pruned copy). The k-th smallest magnitude comes from the
one selection engine, :mod:`coreprune._fast.kth`: a sample bracket and one counting pass, with a
radix select on the IEEE-754 bit patterns as its fallback, and without concatenating the tensors.
They give bit-identical results to the plain NumPy code (and the engine's concatenate-and-partition
reference), which handles every other input and which the tests compare them with.

Streaming the global threshold
------------------------------
:func:`global_magnitude_threshold` gives the global ranking's cut -- the k-th smallest magnitude
``v`` and, per tensor, how many entries equal to ``v`` are removed -- so that each tensor can then
be pruned on its own with :meth:`GlobalThreshold.prune`. On a lazy
:class:`~coreprune.io.base.WeightReader` it reads one tensor at a time: the engine's radix select on
the bit patterns, 16 bits per pass over the file, until the bucket holding the k-th value has at
most ``N / 48`` values, then one more pass collects that bucket's values and ``np.partition`` finishes
(float32 data: two passes; the bucket of the top 16 bits -- sign, exponent, 7 mantissa bits --
typically holds well under 1 % of the values).
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from typing import cast

import numpy as np

from ._fast import blocked as _blocked
from ._fast import kernels as _kernels
from ._fast import kth as _kth
from ._fast.kth import kth_smallest as _kth_smallest
from .aliases import group_aliases
from .errors import CompressionError, EmptyLayerWarning
from .io.base import WeightReader
from .masks import check_masks
from .selection import Pattern, check_weights, require_finite, select

__all__ = [
    "prune_threshold", "prune_magnitude", "apply_masks", "global_magnitude_threshold", "GlobalThreshold",
    "PruneResult",
]

_SCOPES = ("layer", "global")


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


def _prune_smallest_job(tensors: Sequence[np.ndarray], k: int, work: np.dtype) -> _blocked.Job:
    """Fast path (a job) of removing the ``k`` smallest magnitudes over ``tensors`` (``1 <= k <= N``).

    Same ranking as the reference: every ``|w| < v`` goes, then the first ``r`` entries equal to
    ``v`` in (tensor, C-order index) order, located per block from per-block counts of ``v``.
    Returns ``[(pruned, keep), ...]``, or the index of the first tensor holding NaN/Inf (the
    counting pass of the selection checks it), for :func:`require_finite` to report.
    """
    sel = yield from _kth.select_job(tensors, k, work)
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


def _spec_view(weights: WeightReader) -> dict[str, np.ndarray]:
    """Zero-memory stand-ins with each tensor's shape and dtype, so ``select`` reads no data."""
    out = {}
    for name in weights:
        spec = weights.spec(name)
        out[name] = np.broadcast_to(np.zeros((), spec.dtype), spec.shape)
    return out


def _check_sparsity(sparsity: object, what: str = "sparsity") -> float:
    s = _real(sparsity, what)
    if not 0.0 <= s <= 1.0:
        raise CompressionError(f"{what} must be in [0, 1], got {s}")
    return s


def _removable(n: int, min_keep: float) -> int:
    """Most entries a tensor of ``n`` may lose and keep ``ceil(min_keep * n)``.

    ``min_keep`` is taken as the decimal it prints as (0.05 is 1/20, not the binary double just
    above it), so ``ceil(0.05 * 240)`` is 12 and ``ceil(0.3 * 10)`` is 3, as written.
    """
    keep = -((-Fraction(repr(float(min_keep))) * n) // 1)
    return n - int(keep)


def _layer_rates(
    names: Sequence[str], aliases: Mapping[str, str], layer_sparsity: Mapping[str, float] | None
) -> dict[str, float]:
    """Each selected name's own sparsity from ``layer_sparsity``: its exact name, else the first
    glob (in the map's order) that matches it. Names the map does not cover are absent."""
    if layer_sparsity is None:
        return {}
    if not isinstance(layer_sparsity, Mapping):
        raise CompressionError(
            "layer_sparsity must be a mapping of name or glob -> sparsity, got "
            f"{type(layer_sparsity).__name__}"
        )
    rates: dict[str, float] = {}
    checked = {}
    for key, value in layer_sparsity.items():
        if not isinstance(key, str):
            raise CompressionError(f"layer_sparsity has a non-string key {key!r}; keys are names or globs")
        checked[key] = _check_sparsity(value, f"layer_sparsity[{key!r}]")
    used = set()
    for name in names:
        if name in checked:
            rates[name] = checked[name]
            used.add(name)
            continue
        for key, rate in checked.items():
            if fnmatch.fnmatchcase(name, key):
                rates[name] = rate
                used.add(key)
                break
    unused = [key for key in checked if key not in used]
    if unused:
        shown = ", ".join(list(names)[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
        raise CompressionError(
            f"layer_sparsity key {unused[0]!r} matches no selected tensor; the selected names are: {shown}"
        )
    for alias, canonical in aliases.items():
        if rates.get(alias) != rates.get(canonical):
            raise CompressionError(
                f"{alias!r} and {canonical!r} are one tensor (tied) but layer_sparsity gives them different "
                f"sparsities ({rates.get(alias)} and {rates.get(canonical)})"
            )
    return rates


def _count_below_block(flat: np.ndarray, span: tuple[int, int], *, work: np.dtype, v: np.generic) -> int:
    return int(np.count_nonzero(_kernels.work_abs(flat[span[0] : span[1]], work) < v))


def _count_below(w: np.ndarray, work: np.dtype, v: np.generic) -> int:
    """How many ``|w| < v`` (in ``work``), block by block on every core; ``w`` read once."""
    flat = np.ascontiguousarray(w).reshape(-1)
    count = partial(_count_below_block, flat, work=work, v=v)
    return sum(_blocked.run_parallel(_blocked.block_ranges(flat.size), count))


class PruneResult(tuple):
    """``(pruned, masks)`` from :func:`prune_magnitude`, with what the pruning did to each layer.

    It unpacks as the two dicts (``pruned, masks = prune_magnitude(...)``); the record is on
    its attributes.

    Attributes
    ----------
    pruned : dict[str, numpy.ndarray]
    masks : dict[str, numpy.ndarray]
    empty : tuple of str
        Selected names whose every entry was removed (non-empty tensors only), aliases included.
        A warning (:class:`~coreprune.errors.EmptyLayerWarning`) names those whose requested
        sparsity was below 1.
    aliases : dict[str, str]
        ``name -> canonical name`` for selected tensors stored under several names (tied
        weights, see :func:`coreprune.aliases.group_aliases`): counted once, one mask for all.

    Examples
    --------
    >>> import numpy as np
    >>> r = prune_magnitude({"a": np.array([[3.0, 4.0]]), "b": np.array([[0.1, 0.2]])}, 0.5, scope="global")
    >>> r.empty
    ('b',)
    >>> pruned, masks = r
    """

    pruned: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    empty: tuple[str, ...]
    aliases: dict[str, str]

    def __new__(
        cls,
        pruned: dict[str, np.ndarray],
        masks: dict[str, np.ndarray],
        empty: tuple[str, ...] = (),
        aliases: dict[str, str] | None = None,
    ) -> PruneResult:
        self = super().__new__(cls, (pruned, masks))
        self.pruned, self.masks, self.empty, self.aliases = pruned, masks, tuple(empty), dict(aliases or {})
        return self


@dataclass(frozen=True)
class GlobalThreshold:
    """The cut of a global magnitude ranking (see :func:`global_magnitude_threshold`).

    Attributes
    ----------
    value : float
        ``v``, the k-th smallest ``|w|`` of the selected tensors (exact: a float32 or float64
        magnitude as a Python float); ``-inf`` when ``k == 0``.
    removed_at_value : dict[str, int]
        For each selected name, in mapping order: how many of its entries with ``|w| == v`` are
        removed -- the first ones in flat C order. The counts fill up in mapping order:
        earlier tensors lose all their ties before a later tensor loses any.
    k : int
        Entries removed in all, ``round(sparsity * total)``.
    total : int
        ``N``, the number of entries of the selected tensors.
    work : str
        ``"float32"`` or ``"float64"``: the dtype every ``|w|`` is compared in (float64 when a
        selected tensor is float64).
    layer_k : dict[str, int]
        Tensors pruned on their own rather than by the global cut, with the number of entries each
        loses (its smallest magnitudes): those given a sparsity by ``layer_sparsity``, and those
        the ``min_keep`` floor stopped at ``n - ceil(min_keep * n)`` removed entries.
    removed : dict[str, int]
        Entries each selected tensor loses, in mapping order (one entry per tied tensor);
        ``k == sum(removed.values())``.
    aliases : dict[str, str]
        ``name -> canonical name`` for tied tensors (counted once, pruned alike).
    empty : tuple of str
        Names (aliases included) of the non-empty tensors that lose every entry.
    """

    value: float
    removed_at_value: dict[str, int]
    k: int
    total: int
    work: str
    layer_k: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    empty: tuple[str, ...] = ()
    _equal: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    _per_block: dict[str, list[int]] = field(default_factory=dict, repr=False, compare=False)
    _rates: dict[str, float] = field(default_factory=dict, repr=False, compare=False)

    def prune(self, name: str, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Prune one selected tensor: remove every ``|w| < value`` and the first
        ``removed_at_value[name]`` entries equal to ``value``.

        Parameters
        ----------
        name : str
            A selected name (a key of ``removed_at_value``).
        w : numpy.ndarray
            That tensor, the same data the threshold was computed from.

        Returns
        -------
        (pruned, mask) : (numpy.ndarray, numpy.ndarray)
            As one entry of :func:`prune_magnitude`'s results: ``w``'s shape and dtype with removed
            entries exactly ``+0``, and the bool keep-mask.

        Raises
        ------
        CompressionError
            ``name`` was not selected.

        Examples
        --------
        >>> import numpy as np
        >>> w = {"a": np.array([[1.0, -4.0], [3.0, 2.0]]), "b": np.array([[0.5, 5.0]])}
        >>> t = global_magnitude_threshold(w, 0.5)
        >>> t.prune("a", w["a"])[0].tolist()
        [[0.0, -4.0], [3.0, 0.0]]
        """
        name = self.aliases.get(name, name)
        w = np.asarray(w)
        if name in self.layer_k:
            ((pruned, keep),) = _prune_own(w, self.layer_k[name], name)
            return pruned, keep
        if name not in self.removed_at_value:
            raise CompressionError(f"tensor {name!r} was not selected for this global threshold")
        if _kernels.eligible(w):
            return _blocked.run_job(self._prune_job(name, w))
        return self._prune_reference(name, w)

    def _prune_reference(self, name: str, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        work = np.dtype(self.work)
        keep, _ = _keep_mask(_abs_flat(w, work), work.type(self.value), self.removed_at_value[name])
        keep = keep.reshape(w.shape)
        return _zero_where_false(w, keep), keep

    def _prune_job(self, name: str, w: np.ndarray) -> _blocked.Job:
        """Fast path (a job) of :meth:`prune` for a C-contiguous fast-float tensor."""
        work = np.dtype(self.work)
        v = work.type(self.value)
        removed = self.removed_at_value[name]
        if removed == self._equal.get(name, 0):  # every entry equal to v goes (or there is none)
            job = _kernels.prune_job(w, v, work)
        elif removed == 0:  # |w| >= v is |w| > (the float just below v)
            job = _kernels.prune_job(w, np.nextafter(v, work.type(-np.inf)), work)
        else:
            ties = self._per_block.get(name)
            if ties is None:
                ties = yield from _kernels.count_equal_job(w, v, work)
            skips, remaining = [], removed
            for n_equal in ties:
                skips.append(min(remaining, n_equal))
                remaining -= skips[-1]
            job = _kernels.prune_job(w, v, work, skips, ties)
        pruned, keep, _ = yield from job
        return pruned, keep


def global_magnitude_threshold(
    weights: Mapping[str, np.ndarray],
    sparsity: float,
    *,
    include: Pattern = None,
    exclude: Pattern = None,
    min_keep: float = 0.0,
    layer_sparsity: Mapping[str, float] | None = None,
) -> GlobalThreshold:
    """The exact cut of ``prune_magnitude(weights, sparsity, scope="global")``, tensor by tensor.

    All selected entries (``N`` in all) are ranked by ``(|w|, tensor position in the mapping,
    flat C-order index)`` and the ``k = round(sparsity * N)`` lowest are removed. With ``v`` the
    k-th smallest magnitude, that is: every ``|w| < v``, plus the first ``r`` entries equal to ``v``
    in (tensor, C-order) order, where ``r >= 1`` of the entries equal to ``v`` rank among the ``k``.
    The result records ``v`` and, per tensor, its share of those ``r``, so that
    :meth:`GlobalThreshold.prune` can prune each tensor on its own with exactly the masks of
    :func:`prune_magnitude`.

    On a lazy :class:`~coreprune.io.base.WeightReader` the tensors are read one at a time (two
    or three passes over the file, see the module docstring), so the memory needed is one
    tensor's plus the candidates of the last pass (at most ``N / 48`` values, typically
    ``< N / 100``); names are selected from the header without reading data. Other mappings
    are ranked all together by the in-memory selection (:mod:`coreprune._fast.kth`).

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Name to array, or a lazy reader. Not modified.
    sparsity : float
        Fraction to remove, in ``[0, 1]``.
    include, exclude : glob, list of globs, predicate, or None
        Which tensors to rank, see :func:`coreprune.selection.select`.
    min_keep : float
        Floor per tensor, in ``[0, 1]``: every selected tensor of ``n`` entries keeps at least
        ``ceil(min_keep * n)`` of them. A tensor the global cut would take below its floor is
        pruned on its own to exactly the floor, and the cut is computed again over the others
        with the remaining budget (so ``k`` entries still go when the floors allow it; when they
        do not, every tensor ends at its floor). ``min_keep > 0`` means no layer ends empty.
    layer_sparsity : Mapping[str, float] or None
        Name or glob -> sparsity in ``[0, 1]``: a tensor it covers (its exact name, else the
        first matching glob in the map's order) leaves the global ranking and loses
        ``round(sparsity * n)`` of its own smallest magnitudes (then the floor applies). Every
        key must cover a selected tensor.

    Returns
    -------
    GlobalThreshold

    Raises
    ------
    CompressionError
        ``sparsity`` outside ``[0, 1]`` or NaN; NaN/Inf in a selected tensor (the first one in
        mapping order is named).

    Examples
    --------
    >>> import numpy as np
    >>> w = {"a": np.array([[1.0, 2.0], [2.0, 5.0]]), "b": np.array([[2.0, 0.5]])}
    >>> t = global_magnitude_threshold(w, 0.5)      # k = 3 of 6: 0.5, 1.0 and one of the 2.0s
    >>> t.value, t.removed_at_value, t.k
    (2.0, {'a': 1, 'b': 0}, 3)
    >>> global_magnitude_threshold(w, 0.5, min_keep=0.5).removed   # b keeps 1 of its 2
    {'a': 2, 'b': 1}

    Tied tensors (one array under two names, the same object or views of the same memory) are
    ranked once; both names get the same cut. On a lazy reader every tensor is read once more
    (a counting pass giving ``removed``), and the floor adds one selection per round of clamping.
    """
    s = _check_sparsity(sparsity)
    floor = _check_sparsity(min_keep, "min_keep")
    lazy = isinstance(weights, WeightReader)
    view: Mapping[str, np.ndarray] = _spec_view(weights) if isinstance(weights, WeightReader) else weights
    selected = select(view, include, exclude)
    if lazy:  # tied tensors of the file, as its reader found them (one storage, two names)
        chosen = set(selected)
        aliases = {a: c for a, c in getattr(weights, "aliases", {}).items() if a in chosen and c in chosen}
    else:
        aliases = group_aliases(weights, selected)
    rates = _layer_rates(selected, aliases, layer_sparsity)
    canonical = [n for n in selected if n not in aliases]
    sizes = {n: int(view[n].size) for n in canonical}
    layer_k = {
        n: min(round(rates[n] * sizes[n]), _removable(sizes[n], floor)) for n in canonical if n in rates
    }
    pool = [n for n in canonical if n not in rates]
    k_left = round(s * sum(sizes[n] for n in pool))
    # The floor: a tensor the cut takes below its floor stops there, and the cut is recomputed over
    # the others with what is left of k (the cut only rises, so a stopped tensor stays stopped).
    while True:
        cut = _global_cut(weights, view, pool, k_left, lazy)
        over = [n for n in pool if cut[5][n] > _removable(sizes[n], floor)]
        if not over:
            break
        for n in over:
            layer_k[n] = _removable(sizes[n], floor)
            k_left -= layer_k[n]
            pool.remove(n)
        if k_left >= sum(sizes[n] for n in pool):  # every other tensor would go: all stop at floor
            for n in pool:
                layer_k[n] = _removable(sizes[n], floor)
            pool, k_left = [], 0
    v, removed_at_value, work, equal, per_block, removed_pool = cut
    removed = {n: layer_k[n] if n in layer_k else removed_pool[n] for n in canonical}
    gone = {n for n in canonical if sizes[n] and removed[n] == sizes[n]}
    empty = tuple(n for n in selected if aliases.get(n, n) in gone)
    return GlobalThreshold(
        float(v), removed_at_value, sum(removed.values()), sum(sizes.values()), work.name,
        {n: layer_k[n] for n in canonical if n in layer_k}, removed, aliases, empty,
        equal, per_block, {n: rates.get(n, s) for n in selected},
    )


def _global_cut(
    weights: Mapping[str, np.ndarray], view: Mapping[str, np.ndarray], names: list[str], k: int, lazy: bool
) -> tuple:
    """The global ranking's cut of ``k`` entries over ``names``: ``(v, removed_at_value, work,
    equal, per_block, removed)``, ``removed`` counting each tensor's entries that go."""
    total = sum(int(view[n].size) for n in names)
    # one comparison dtype for all, so that magnitudes from different dtypes rank exactly
    wide = any(_work_dtype(view[n].dtype).itemsize == 8 for n in names)
    work = np.dtype(np.float64 if wide else np.float32)
    per_block: dict[str, list[int]] = {}
    if lazy:
        v, ties, equal = _stream_select(weights, names, total, k, work)
    else:
        tensors = [weights[n] for n in names]
        # work is float32/float64, so work.type is a NumPy scalar type (the stubs say object)
        v, ties, equal = cast(np.generic, work.type(-np.inf)), 0, [0] * len(names)
        if k > 0 and total >= _blocked.MIN_FAST_ELEMENTS:
            sel = _blocked.run_job(_kth.select_job(tensors, k, work))
            if sel.nonfinite is not None:
                require_finite(names[sel.nonfinite], tensors[sel.nonfinite])
            v, ties = sel.value, sel.ties
            blocks = sel.per_block
            if blocks is None and _fast_tensors(tensors):  # the radix select ran: count per block
                blocks = _blocked.run_jobs([_kernels.count_equal_job(w, v, work) for w in tensors])
            if blocks is not None:
                per_block = dict(zip(names, blocks))
                equal = [sum(b) for b in blocks]
            else:
                equal = [int(np.count_nonzero(_abs_flat(w, work) == v)) for w in tensors]
        else:
            for name in names:
                require_finite(name, weights[name])
            if k > 0:
                v, ties = _kth.kth_smallest_abs_reference(tensors, k, work)
                equal = [int(np.count_nonzero(_abs_flat(w, work) == v)) for w in tensors]
    at_value = _share_ties(names, ties, equal)
    removed = {}
    for name in names:
        below = 0 if k == 0 else _count_below(weights[name], work, v)
        removed[name] = below + at_value[name]
    return v, at_value, work, dict(zip(names, equal)), per_block, removed


def _share_ties(names: Sequence[str], ties: int, equal: Sequence[int]) -> dict[str, int]:
    """How many of each tensor's ``equal`` entries at the cut value go: ``ties`` handed out in
    mapping order."""
    at_value, remaining = {}, ties
    for name, n_equal in zip(names, equal):
        at_value[name] = min(remaining, n_equal)
        remaining -= at_value[name]
    return at_value


def _cut(
    names: Sequence[str],
    v: np.generic,
    ties: int,
    equal: Sequence[int],
    k: int,
    total: int,
    work: np.dtype,
    per_block: dict[str, list[int]] | None = None,
) -> GlobalThreshold:
    """The :class:`GlobalThreshold` of a selection made elsewhere (the shard-wise reduction): ``v``,
    the ``ties`` entries equal to it that go, handed out in mapping order over each tensor's count
    ``equal`` of entries equal to ``v``. No floors, layer sparsities or aliases."""
    return GlobalThreshold(
        float(v), _share_ties(names, ties, equal), k, total, work.name,
        _equal=dict(zip(names, equal)), _per_block=per_block or {},
    )


def _stream_select(
    weights: Mapping[str, np.ndarray], names: Sequence[str], total: int, k: int, work: np.dtype
) -> tuple[np.generic, int, list[int]]:
    """``(v, r, equal)`` over tensors read one at a time (the engine's radix select): the k-th
    smallest magnitude, how many entries equal to it are among the ``k``, and each tensor's count of
    entries equal to it. Raises for the first tensor holding NaN/Inf. ``k == 0``: ``(-inf, 0, zeros)``,
    after checking."""
    if k == 0:
        for name in names:
            require_finite(name, weights[name])
        return work.type(-np.inf), 0, [0] * len(names)

    def load(i: int) -> np.ndarray:
        return np.ascontiguousarray(weights[names[i]]).reshape(-1)

    found = _blocked.run_job(_kth.radix_job(load, len(names), total, k, work, check=True))
    if isinstance(found, int):  # the index of the first tensor holding NaN/Inf: this raises for it
        require_finite(names[found], weights[names[found]])
    return found


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
        Which tensors to prune, see :func:`coreprune.selection.select` (default: the weights,
        :func:`coreprune.selection.is_default_weight`).

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


def _prune_own(w: np.ndarray, k: int, name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(pruned, mask)]``: ``w`` without its ``k`` smallest magnitudes (ties: lower flat index first)."""
    return _prune_own_many({name: w}, {name: k})[name]


def _prune_own_many(
    weights: Mapping[str, np.ndarray], ks: Mapping[str, int]
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Each tensor of ``ks`` without its ``ks[name]`` smallest magnitudes, fast paths in parallel.

    NaN/Inf is reported for the first such tensor in ``ks``'s order.
    """
    fast = [n for n, k in ks.items() if k > 0 and _fast_tensors([weights[n]])]
    jobs = [_prune_smallest_job([weights[n]], ks[n], _work_dtype(weights[n].dtype)) for n in fast]
    results = dict(zip(fast, _blocked.run_jobs(jobs)))
    out = {}
    for name, k in ks.items():
        w = weights[name]
        if name in results:
            if isinstance(results[name], int):  # not finite: the counting pass found it
                require_finite(name, w)
            out[name] = results[name]
            continue
        require_finite(name, w)
        if k == 0:
            keep = np.ones(w.shape, dtype=bool)
        else:
            a = _abs_flat(w, _work_dtype(w.dtype))
            v, ties = _kth_smallest(a, k)
            keep = _keep_mask(a, v, ties)[0].reshape(w.shape)
        out[name] = [(_zero_where_false(w, keep), keep)]
    return out


def prune_magnitude(
    weights: Mapping[str, np.ndarray],
    sparsity: float,
    *,
    scope: str = "layer",
    include: Pattern = None,
    exclude: Pattern = None,
    min_keep: float = 0.0,
    layer_sparsity: Mapping[str, float] | None = None,
) -> PruneResult:
    """Remove exactly ``k = round(sparsity * n)`` entries of smallest magnitude.

    ``scope="layer"``: for each selected tensor of size ``n``, the ``round(sparsity * n)`` entries
    with the smallest ``|w|`` become 0. ``scope="global"``: one ranking over all selected tensors
    together (total size ``N``), the ``round(sparsity * N)`` smallest go, so layers with small
    weights lose more. ``round`` is Python's (half to even), as in ``torch.nn.utils.prune``.
    Ties in ``|w|`` are broken by position: earlier tensor (mapping order), then lower flat
    C-order index, is removed first. Hence pruning is idempotent and the kept set shrinks
    monotonically as ``sparsity`` grows.

    Per-layer control: ``layer_sparsity`` gives a tensor its own sparsity (in global scope it
    then leaves the global ranking), and ``min_keep`` is a floor: every selected tensor keeps
    at least ``ceil(min_keep * n)`` entries (in global scope the cut is recomputed over the
    other tensors, see :func:`global_magnitude_threshold`). A tensor left with no entry at all
    is listed in the result's ``empty`` and, unless its sparsity was 1, warned about with
    :class:`~coreprune.errors.EmptyLayerWarning`.

    Tied weights -- one array under several names, the same object or views of the same memory
    (:func:`coreprune.aliases.group_aliases`) -- are counted once and every name gets the same
    pruned array and mask (the tie survives). Arrays that overlap otherwise are refused.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Name to array. Not modified.
    sparsity : float
        Fraction to remove, in ``[0, 1]``.
    scope : {"layer", "global"}
    include, exclude : glob, list of globs, predicate, or None
        Which tensors to prune, see :func:`coreprune.selection.select`.
    min_keep : float
        Fraction of each selected tensor always kept, in ``[0, 1]`` (default 0: no floor).
    layer_sparsity : Mapping[str, float] or None
        Name or glob -> sparsity for the tensors it covers (exact name first, then the first
        matching glob in the map's order); every key must cover a selected tensor.

    Returns
    -------
    PruneResult
        Unpacks as ``(pruned, masks)``:

        pruned : dict[str, numpy.ndarray]
            Same names, order, shapes and dtypes as ``weights``; removed entries are exactly ``+0``.
            Tensors not selected are the input objects.
        masks : dict[str, numpy.ndarray]
            Bool array per selected name, tensor's shape, True where kept.

        and records ``empty`` (layers left with nothing) and ``aliases`` (tied names).

    Raises
    ------
    CompressionError
        ``sparsity``, ``min_keep`` or a ``layer_sparsity`` value outside ``[0, 1]`` or NaN; unknown
        ``scope``; a ``layer_sparsity`` key covering no selected tensor; NaN/Inf in a selected
        tensor; tensors overlapping in memory without being the same tensor.

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
    >>> prune_magnitude(w, 0.5, layer_sparsity={"b": 0.0}).masks["b"].tolist()
    [[True, True]]
    """
    s = _check_sparsity(sparsity)
    if scope not in _SCOPES:
        raise CompressionError(f"scope must be 'layer' or 'global', got {scope!r}")
    floor = _check_sparsity(min_keep, "min_keep")
    names = select(weights, include, exclude)
    done: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # canonical name -> (pruned, mask)
    if scope == "layer":
        aliases = group_aliases(weights, names)
        rates = _layer_rates(names, aliases, layer_sparsity)
        ks = {
            n: min(round(rates.get(n, s) * weights[n].size), _removable(weights[n].size, floor))
            for n in names if n not in aliases
        }
        pool: list[str] = []
    else:
        cut = global_magnitude_threshold(
            weights, s, include=include, exclude=exclude, min_keep=floor, layer_sparsity=layer_sparsity
        )
        aliases, rates, ks = cut.aliases, cut._rates, cut.layer_k
        pool = list(cut.removed_at_value)
    for name, results in _prune_own_many(weights, ks).items():
        (done[name],) = results
    if pool:
        fast = [n for n in pool if _kernels.eligible(weights[n])]
        done.update(zip(fast, _blocked.run_jobs([cut._prune_job(n, weights[n]) for n in fast])))
        for name in pool:
            if name not in done:
                done[name] = cut._prune_reference(name, weights[name])
    pruned = dict(weights)
    masks: dict[str, np.ndarray] = {}
    for name in names:
        pruned[name], masks[name] = done[aliases.get(name, name)]
    empty = tuple(n for n in names if masks[n].size and not masks[n].any())
    warned = [n for n in empty if rates.get(n, s) < 1.0]
    if warned:
        shown = ", ".join(warned[:10]) + (f", ... ({len(warned)} in all)" if len(warned) > 10 else "")
        warnings.warn(
            f"prune_magnitude removed every weight of {len(warned)} layer(s): {shown}; pass min_keep=... "
            "(a fraction each layer keeps) or layer_sparsity={...} to keep them",
            EmptyLayerWarning,
            stacklevel=2,
        )
    return PruneResult(pruned, masks, empty, aliases)


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
        Name to bool array of exactly that tensor's shape; every name must be in ``weights``
        (the rule of :func:`coreprune.masks.check_masks`).

    Returns
    -------
    dict[str, numpy.ndarray]
        Same names and order as ``weights``; masked tensors are new arrays of the same dtype,
        the others are the input objects.

    Raises
    ------
    CompressionError
        Masks naming no tensor, of another shape, or not of dtype bool (all listed in one
        message); a non-array value.

    Examples
    --------
    >>> import numpy as np
    >>> w = {"w": np.array([[1.0, -2.0], [3.0, 4.0]]), "b": np.ones(2)}
    >>> out = apply_masks(w, {"w": np.array([[True, False], [False, True]])})
    >>> out["w"].tolist()
    [[1.0, 0.0], [0.0, 4.0]]
    """
    check_weights(weights)
    # The one mask rule, shared with coreprune.torch / coreprune.mxnet attach_masks.
    masks = check_masks(masks, {name: array.shape for name, array in weights.items()}, verb="apply_masks")
    out = dict(weights)
    fast = [name for name in masks if _kernels.eligible(weights[name], dtypes=None)]
    out.update(zip(fast, _blocked.run_jobs([_kernels.zero_job(weights[n], masks[n]) for n in fast])))
    for name, mask in masks.items():
        if name not in fast:
            out[name] = _zero_where_false_reference(weights[name], mask)
    return out
