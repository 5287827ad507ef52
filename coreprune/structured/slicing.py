"""Physical shrinking: new, smaller arrays in a new dict, and the new channel count of every layer.

:func:`shrink` removes the slices of the units a plan does not keep; :func:`zero_units` writes zeros
where pruning would cut the *outputs* of those units (producer rows, biases, batch-norm scale and
shift), which lets a caller check a plan on the unpruned model: a model whose pruned channels are
zero computes exactly what the shrunk model computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import CompressionError
from .graph import Graph
from .groups import Group

__all__ = ["Shrunk", "shrink", "zero_units"]


@dataclass(frozen=True)
class Shrunk:
    """The result of :func:`shrink`.

    Attributes
    ----------
    weights : dict of str to numpy.ndarray
        Every tensor of the input dict, new arrays (sliced ones smaller, the others copied).
    channels : dict of str to int
        Output channel count of every node after shrinking.
    groups : dict of str to int
        New ``groups`` attribute of every ``conv`` node (depthwise convs follow their channels).
    kept : dict of str to numpy.ndarray
        Node name -> sorted int64 indices of its original output channels that remain.
    """

    weights: dict[str, np.ndarray]
    channels: dict[str, int]
    groups: dict[str, int]
    kept: dict[str, np.ndarray]


def _removed(groups: Sequence[Group], keep: Mapping[str, np.ndarray]):
    for g in groups:
        if g.name not in keep:
            raise CompressionError(f"the plan has no entry for group {g.name!r}")
        kept = np.asarray(keep[g.name])
        if kept.ndim != 1 or (kept.size and (kept.min() < 0 or kept.max() >= len(g))) or kept.size == 0:
            raise CompressionError(f"group {g.name!r}: kept indices must be 1..{len(g)} positions in range")
        mask = np.ones(len(g), dtype=bool)
        mask[kept] = False
        for u in np.flatnonzero(mask):
            yield g.units[u]


def shrink(
    graph: Graph, weights: Mapping[str, np.ndarray], groups: Sequence[Group], keep: Mapping[str, np.ndarray]
) -> Shrunk:
    """Remove every unit that ``keep`` does not list, from every tensor it indexes.

    Parameters
    ----------
    graph : Graph
    weights : mapping of str to numpy.ndarray
        Not modified.
    groups : sequence of Group
        From :func:`~coreprune.structured.coupling_groups` on ``graph`` and ``weights``.
    keep : mapping of str to array of int
        Group name -> kept unit indices (:func:`~coreprune.structured.select_units`).

    Returns
    -------
    Shrunk

    Raises
    ------
    CompressionError
        If a group has no entry in ``keep``, or keeps no unit or an index out of range.

    Examples
    --------
    >>> import numpy as np
    >>> from coreprune.structured import Graph, Node, coupling_groups
    >>> g = Graph([Node("x", "input", (), 1), Node("a", "linear", ("x",), 3, {"weight": "a"}),
    ...            Node("b", "linear", ("a",), 1, {"weight": "b"})], ["b"])
    >>> w = {"a": np.array([[1.0], [2.0], [3.0]]), "b": np.array([[4.0, 5.0, 6.0]])}
    >>> out = shrink(g, w, coupling_groups(g, w), {"a": np.array([0, 2])})
    >>> out.weights["a"].ravel().tolist(), out.weights["b"].tolist(), out.channels["a"]
    ([1.0, 3.0], [[4.0, 6.0]], 2)
    """
    drop: dict[tuple[str, int], set[int]] = {}
    gone: dict[str, set[int]] = {}
    for unit in _removed(groups, keep):
        for s in unit.slices:
            drop.setdefault((s.key, s.axis), set()).add(s.index)
        for name, i in unit.channels:
            gone.setdefault(name, set()).add(i)
    out = {}
    by_key: dict[str, list[tuple[int, set[int]]]] = {}
    for (key, axis), idx in drop.items():
        by_key.setdefault(key, []).append((axis, idx))
    for key, value in weights.items():
        arr = np.asarray(value)
        for axis, idx in by_key.get(key, ()):
            arr = np.delete(arr, sorted(idx), axis=axis)
        out[key] = np.array(arr, copy=True)
    kept = {}
    channels = {}
    for node in graph:
        mask = np.ones(node.channels, dtype=bool)
        mask[sorted(gone.get(node.name, ()))] = False
        kept[node.name] = np.flatnonzero(mask).astype(np.int64)
        channels[node.name] = int(mask.sum())
        if channels[node.name] == 0:
            raise CompressionError(f"the plan removes every channel of layer {node.name!r}")
    conv_groups = {}
    for node in graph:
        if node.op == "conv":
            g = node.attrs.get("groups", 1)
            c_in = graph.nodes[node.inputs[0]].channels
            conv_groups[node.name] = channels[node.name] if g > 1 and g == c_in == node.channels else g
    return Shrunk(out, channels, conv_groups, kept)


def zero_units(
    weights: Mapping[str, np.ndarray], groups: Sequence[Group], keep: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """A copy of ``weights`` with the outputs of the units ``keep`` drops set to zero.

    Zeroes each removed unit's producer slices (filters and biases) and its batch norms' ``weight``
    and ``bias``; leaves consumers' input columns and running statistics alone. Running the
    unpruned model on the result gives the outputs the shrunk model gives on the original weights.

    Parameters
    ----------
    weights : mapping of str to numpy.ndarray
        Not modified.
    groups, keep
        As for :func:`shrink`.

    Returns
    -------
    dict of str to numpy.ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from coreprune.structured import Graph, Node, coupling_groups
    >>> g = Graph([Node("x", "input", (), 1), Node("a", "linear", ("x",), 2, {"weight": "a"}),
    ...            Node("b", "linear", ("a",), 1, {"weight": "b"})], ["b"])
    >>> w = {"a": np.array([[1.0], [2.0]]), "b": np.array([[4.0, 5.0]])}
    >>> zero_units(w, coupling_groups(g, w), {"a": np.array([1])})["a"].ravel().tolist()
    [0.0, 2.0]
    """
    out = {k: np.array(v, copy=True) for k, v in weights.items()}
    for unit in _removed(groups, keep):
        for s in unit.slices:
            if s.kind == "producer" or (s.kind == "norm" and s.role in ("weight", "bias")):
                index = [slice(None)] * out[s.key].ndim
                index[s.axis] = s.index
                out[s.key][tuple(index)] = 0
    return out
