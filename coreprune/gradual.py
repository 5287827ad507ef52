"""Iterative and gradual magnitude pruning: sparsity schedules and a pruning step that only tightens.

Deep Compression prunes, retrains, and prunes again; Zhu & Gupta ("To prune, or not to prune",
2017) raise the sparsity along a cubic curve while training. Both need two pieces:

* :func:`sparsity_schedule`: the target sparsity after each of ``steps`` pruning steps, from
  ``initial`` to ``final`` (``"cubic"``, ``"linear"`` or ``"one-shot"``);
* :func:`prune_iterative`: one pruning step on a dict, given the masks of the previous steps.
  Pruned entries stay pruned (the new mask is a subset of the old), and among the surviving
  entries the smallest magnitudes go.

Two ways to read an amount (``mode``):

* ``"total"``: ``sparsity`` is the fraction of the *whole* tensor pruned after the step
  (``round(s * n)`` entries), as the schedules give it;
* ``"remaining"``: ``sparsity`` is the fraction of the *still alive* entries to prune now
  (``round(a * alive)``), the semantics of ``torch.nn.utils.prune``'s ``PruningContainer`` when
  ``l1_unstructured`` is applied again to a pruned tensor. :func:`remaining_amounts` converts a
  total schedule into these amounts.

Ranking and ties follow :mod:`coreprune.pruning`: ``(|w|, flat C-order index)``, so the result is
a pure function of the data. ``sparsity`` can be one float for every selected tensor or a float
per name (per-layer targets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .errors import CompressionError
from .selection import Pattern, check_weights, require_finite, select

__all__ = ["sparsity_schedule", "remaining_amounts", "prune_iterative"]

_KINDS = ("cubic", "linear", "one-shot")
_MODES = ("total", "remaining")


def _fraction(value: object, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CompressionError(f"{what} must be a number in [0, 1], got {value!r}")
    out = float(value)
    if not 0.0 <= out <= 1.0:  # NaN fails too
        raise CompressionError(f"{what} must be in [0, 1], got {value!r}")
    return out


def sparsity_schedule(final: float, steps: int, *, initial: float = 0.0, kind: str = "cubic") -> list[float]:
    """Target sparsity after each of ``steps`` pruning steps, ending exactly at ``final``.

    With ``t = 1 .. steps`` and ``n = steps``:

    * ``"cubic"`` (Zhu & Gupta): ``s_t = final + (initial - final) * (1 - t / n) ** 3``, fast
      pruning first while many redundant weights remain, slower near the end;
    * ``"linear"``: ``s_t = initial + (final - initial) * t / n``;
    * ``"one-shot"``: ``final`` at every step (everything pruned at once, then retrained).

    Parameters
    ----------
    final, initial : float
        Fractions in ``[0, 1]``, ``initial <= final``.
    steps : int
        At least 1.
    kind : {"cubic", "linear", "one-shot"}

    Returns
    -------
    list of float
        Non-decreasing, length ``steps``, last value ``final``.

    Examples
    --------
    >>> [round(s, 4) for s in sparsity_schedule(0.9, 4)]
    [0.5203, 0.7875, 0.8859, 0.9]
    >>> [round(s, 4) for s in sparsity_schedule(0.8, 4, initial=0.4, kind="linear")]
    [0.5, 0.6, 0.7, 0.8]
    >>> sparsity_schedule(0.9, 2, kind="one-shot")
    [0.9, 0.9]
    """
    final = _fraction(final, "final")
    initial = _fraction(initial, "initial")
    if initial > final:
        raise CompressionError(f"initial sparsity {initial} exceeds the final one {final}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise CompressionError(f"steps must be an int >= 1, got {steps!r}")
    n = int(steps)
    if kind == "cubic":
        out = [final + (initial - final) * (1 - t / n) ** 3 for t in range(1, n + 1)]
    elif kind == "linear":
        out = [initial + (final - initial) * t / n for t in range(1, n + 1)]
    elif kind == "one-shot":
        out = [final] * n
    else:
        raise CompressionError(f"kind must be one of {_KINDS}, got {kind!r}")
    out[-1] = final  # exact, whatever the rounding of the formula
    return out


def remaining_amounts(schedule: Sequence[float]) -> list[float]:
    """Convert total sparsities ``s_1 <= s_2 <= ...`` into amounts of the weights still alive.

    ``a_t = (s_t - s_{t-1}) / (1 - s_{t-1})`` with ``s_0 = 0``: pruning the fraction ``a_t`` of the
    survivors at every step (``mode="remaining"``, torch's ``PruningContainer``) reaches ``s_t``
    up to the rounding of each step's count. A step after full sparsity has amount 0.

    Examples
    --------
    >>> [round(a, 4) for a in remaining_amounts([0.5, 0.75, 0.875])]
    [0.5, 0.5, 0.5]
    """
    out, prev = [], 0.0
    for i, s in enumerate(schedule):
        s = _fraction(s, f"schedule[{i}]")
        if s < prev:
            raise CompressionError(f"schedule must be non-decreasing; step {i} goes from {prev} to {s}")
        out.append(0.0 if prev >= 1.0 else (s - prev) / (1.0 - prev))
        prev = s
    return out


def _step_mask(w: np.ndarray, alive: np.ndarray, sparsity: float, mode: str) -> np.ndarray:
    """New keep-mask of one tensor: ``alive`` minus its smallest surviving magnitudes."""
    n_alive = int(np.count_nonzero(alive))
    if mode == "total":
        remove = max(0, int(round(sparsity * w.size)) - (w.size - n_alive))
    else:
        remove = int(round(sparsity * n_alive))
    keep = alive.reshape(-1).copy()
    if remove == 0:
        return keep.reshape(w.shape)
    idx = np.flatnonzero(keep)
    mags = np.abs(w.reshape(-1)[idx].astype(np.float64))
    # stable sort on magnitude: equal magnitudes keep C order, the lowest index goes first
    order = np.argsort(mags, kind="stable")
    keep[idx[order[:remove]]] = False
    return keep.reshape(w.shape)


def prune_iterative(
    weights: Mapping[str, np.ndarray],
    sparsity: float | Mapping[str, float],
    *,
    masks: Mapping[str, np.ndarray] | None = None,
    mode: str = "total",
    include: Pattern = None,
    exclude: Pattern = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One step of iterative magnitude pruning: tighten each selected tensor's mask.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        The current (fine-tuned) weights.
    sparsity : float or Mapping[str, float]
        One target for every selected tensor, or a target per name (only those names are pruned;
        ``include`` / ``exclude`` then do not apply). Read according to ``mode``.
    masks : Mapping[str, numpy.ndarray], optional
        Bool keep-masks of the previous steps; a tensor without one starts fully alive. Entries
        outside the mask stay pruned whatever their current value.
    mode : {"total", "remaining"}
        ``"total"``: after the step, ``round(s * n)`` entries of the tensor are pruned (never fewer
        than before: a target below the current sparsity keeps the mask). ``"remaining"``:
        ``round(s * alive)`` more entries are pruned, as torch's ``PruningContainer`` does.
    include, exclude : glob, sequence of globs, predicate, or None
        As :func:`coreprune.select`.

    Returns
    -------
    (pruned, masks) : (dict[str, numpy.ndarray], dict[str, numpy.ndarray])
        ``pruned``: every tensor of ``weights`` (new arrays), the pruned ones with ``+0.0`` outside
        their mask. ``masks``: the new bool mask of every pruned tensor.

    Raises
    ------
    CompressionError
        Unknown names, fractions outside ``[0, 1]``, masks of the wrong shape or dtype, non-finite
        weights.

    Examples
    --------
    >>> import numpy as np
    >>> w = {"fc.weight": np.array([[0.1, -0.4, 0.3, 0.2]], np.float32)}
    >>> p, m = prune_iterative(w, 0.25)
    >>> p["fc.weight"].tolist()
    [[0.0, -0.4000000059604645, 0.30000001192092896, 0.20000000298023224]]
    >>> p, m = prune_iterative(p, 0.5, masks=m, mode="remaining")   # half of the 3 survivors: 2
    >>> m["fc.weight"].tolist()
    [[False, True, False, False]]
    """
    check_weights(weights)
    if mode not in _MODES:
        raise CompressionError(f"mode must be one of {_MODES}, got {mode!r}")
    if isinstance(sparsity, Mapping):
        unknown = [n for n in sparsity if n not in weights]
        if unknown:
            raise CompressionError(f"prune_iterative: no tensor named {unknown}")
        targets = {n: _fraction(s, f"sparsity[{n!r}]") for n, s in sparsity.items()}
    else:
        s = _fraction(sparsity, "sparsity")
        targets = {n: s for n in select(weights, include, exclude)}
    masks = {} if masks is None else masks
    pruned: dict[str, np.ndarray] = {}
    new_masks: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        if name not in targets:
            pruned[name] = w.copy()
            continue
        require_finite(name, w)
        alive = masks.get(name)
        if alive is None:
            alive = np.ones(w.shape, dtype=bool)
        elif not isinstance(alive, np.ndarray) or alive.dtype != np.bool_ or alive.shape != w.shape:
            raise CompressionError(f"mask {name!r} must be a bool array of shape {w.shape}")
        keep = _step_mask(w, alive, targets[name], mode)
        new_masks[name] = keep
        pruned[name] = np.where(keep, w, np.zeros((), dtype=w.dtype))
    return pruned, new_masks

