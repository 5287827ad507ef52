"""Which units of each coupling group to keep: per-group or global ranking, floors, rounding.

Counts follow Torch-Pruning so that both libraries remove the same number of channels: a group of
``n`` units keeps ``int(n * (1 - amount))`` (per group), rounded **down** to a multiple of
``round_to``, never fewer than the floor ``max(1, ceil(min_keep * n))`` (itself rounded up to a
multiple of ``round_to`` when ``n`` allows). Ties in importance are broken by unit position (the
earlier unit is removed first), so the plan is a pure function of the weights. Every producer keeps
at least one output channel (in a concatenation's group, a producer that would lose them all gets
its best one back in place of the weakest kept unit elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import CompressionError
from .groups import Group
from .importance import Importance, group_importance

__all__ = ["select_units"]

_SCOPES = ("layer", "global")


def _fraction(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CompressionError(f"{what} must be a number in [0, 1), got {value!r}")
    out = float(value)
    if not 0.0 <= out < 1.0:
        raise CompressionError(f"{what} must be in [0, 1), got {out}")
    return out


def _floor(n: int, min_keep: float, round_to: int) -> int:
    floor = max(1, math.ceil(min_keep * n))
    rounded = -(-floor // round_to) * round_to
    return rounded if rounded <= n else floor


def _round(keep: int, n: int, floor: int, round_to: int) -> int:
    keep -= keep % round_to
    return min(n, max(keep, floor))


def select_units(
    groups: Sequence[Group],
    weights: Mapping[str, np.ndarray],
    amount: float,
    *,
    importance: Importance = "l2",
    scope: str = "layer",
    round_to: int = 1,
    min_keep: float = 0.0,
) -> dict[str, np.ndarray]:
    """The units to keep in every group.

    Parameters
    ----------
    groups : sequence of Group
        From :func:`~coreprune.structured.coupling_groups`.
    weights : mapping of str to numpy.ndarray
        The weight dict (read only, for importance).
    amount : float
        Fraction of units removed, in ``[0, 1)``: from each group (``scope="layer"``) or from all
        groups together (``scope="global"``, ranking scores divided by their group's mean so that
        groups of different scale compare).
    importance : str or callable
        See :func:`~coreprune.structured.group_importance`.
    scope : {"layer", "global"}
    round_to : int
        Kept counts are multiples of this (e.g. 8 for vectorised kernels) where the group allows.
    min_keep : float
        Per-group floor: at least this fraction of every group's units (and always one) is kept.

    Returns
    -------
    dict of str to numpy.ndarray
        Group name -> sorted int64 indices of the kept units (all of them for a group left whole).

    Raises
    ------
    CompressionError
        On an amount or floor outside ``[0, 1)``, an unknown scope or a bad ``round_to``.

    Examples
    --------
    >>> import numpy as np
    >>> from coreprune.structured import Graph, Node, coupling_groups
    >>> g = Graph([Node("x", "input", (), 1), Node("a", "linear", ("x",), 4, {"weight": "a"}),
    ...            Node("b", "linear", ("a",), 1, {"weight": "b"})], ["b"])
    >>> w = {"a": np.array([[1.0], [4.0], [2.0], [3.0]]), "b": np.zeros((1, 4))}
    >>> select_units(coupling_groups(g, w), w, 0.5)["a"].tolist()
    [1, 3]
    """
    amount = _fraction(amount, "amount")
    min_keep = _fraction(min_keep, "min_keep")
    if scope not in _SCOPES:
        raise CompressionError(f"scope must be one of {_SCOPES}, got {scope!r}")
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
        raise CompressionError(f"round_to must be a positive integer, got {round_to!r}")
    cache: dict = {}
    scores = {g.name: group_importance(g, weights, importance, _cache=cache) for g in groups}
    keep: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    if scope == "layer":
        for g in groups:
            n = len(g)
            counts[g.name] = _round(int(n * (1 - amount)), n, _floor(n, min_keep, round_to), round_to)
    else:
        ranked = [g for g in groups if scores[g.name] is not None]
        total = sum(len(g) for g in ranked)
        n_remove = total - int(total * (1 - amount))
        normed = []
        for gi, g in enumerate(ranked):
            s = scores[g.name]
            assert s is not None  # ranked holds the groups with scores
            mean = s.mean()
            normed.append((s / mean if mean > 0 else s, np.full(len(g), gi), np.arange(len(g))))
        flat = np.concatenate([x[0] for x in normed]) if normed else np.zeros(0)
        gid = np.concatenate([x[1] for x in normed]) if normed else np.zeros(0, int)
        order = np.lexsort((np.concatenate([x[2] for x in normed]) if normed else flat, gid, flat))
        remaining = {g.name: len(g) for g in ranked}
        floors = {g.name: _floor(len(g), min_keep, round_to) for g in ranked}
        removed = 0
        for idx in order:
            if removed >= n_remove:
                break
            name = ranked[gid[idx]].name
            if remaining[name] > floors[name]:
                remaining[name] -= 1
                removed += 1
        for g in ranked:
            n = len(g)
            counts[g.name] = _round(remaining[g.name], n, floors[g.name], round_to)
    for g in groups:
        s = scores[g.name]
        n = len(g)
        if s is None or counts.get(g.name, n) >= n:
            keep[g.name] = np.arange(n, dtype=np.int64)
            continue
        # Stable: among equal scores the earlier unit sorts first and is removed first.
        order = np.argsort(s, kind="stable")
        keep[g.name] = _cover_producers(g, s, order, order[n - counts[g.name] :])
    return keep


def _cover_producers(group: Group, scores: np.ndarray, order: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``kept``, changed so that every producer of the group keeps at least one output channel.

    A concatenation puts several producers in one group; ranking them together could remove every
    channel of one of them (a layer of width 0). Such a producer gets its best unit back in place of
    the weakest kept unit whose producers all keep another channel.
    """
    producers = [{s.node for s in u.slices if s.kind == "producer"} for u in group.units]
    chosen = set(int(i) for i in kept)
    rank = {int(u): r for r, u in enumerate(order)}
    for node in dict.fromkeys(p for ps in producers for p in ps):
        if any(node in producers[u] for u in chosen):
            continue
        best = max((u for u in range(len(group)) if node in producers[u]), key=rank.__getitem__)
        for victim in sorted(chosen, key=rank.__getitem__):
            others = chosen - {victim}
            if all(any(p in producers[u] for u in others) for p in producers[victim]):
                chosen = others | {best}
                break
        else:
            chosen.add(best)  # nothing can give way: keep one more than asked
    return np.array(sorted(chosen), dtype=np.int64)
