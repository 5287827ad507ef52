"""Structured (channel) pruning on a framework-free graph: models that are physically smaller.

The pipeline, each step public for users with their own framework:

1. describe the model as a :class:`Graph` of :class:`Node` s (the adapters
   :func:`coreprune.torch.prune_channels` and :func:`coreprune.mxnet.prune_channels` trace it);
2. :func:`coupling_groups` finds which slices of which tensors go together;
3. :func:`select_units` scores the units (:func:`group_importance`) and chooses the kept ones;
4. :func:`shrink` builds the new, smaller arrays (:func:`zero_units` checks a plan on the dense model).

:func:`prune_graph` runs steps 2-4. N:M semi-structured masks: :func:`nm_masks`. MXNet symbol
JSON without MXNet: :func:`graph_from_mxnet_json`, :func:`rewrite_mxnet_json`;
:func:`graph_from_mxnet_checkpoint` and :func:`mxnet_variable_names` for a checkpoint's
``arg:``/``aux:`` names.

Examples
--------
>>> import numpy as np
>>> from coreprune.structured import Graph, Node, prune_graph
>>> g = Graph([Node("x", "input", (), 2),
...            Node("h", "linear", ("x",), 4, {"weight": "h.w", "bias": "h.b"}),
...            Node("act", "identity", ("h",), 4),
...            Node("y", "linear", ("act",), 1, {"weight": "y.w"})], ["y"])
>>> rng = np.random.default_rng(0)
>>> w = {"h.w": rng.normal(size=(4, 2)), "h.b": np.zeros(4), "y.w": rng.normal(size=(1, 4))}
>>> small = prune_graph(g, w, 0.5)
>>> small.weights["h.w"].shape, small.weights["y.w"].shape
((2, 2), (1, 2))
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .graph import OPS, Graph, Node
from .groups import Group, Slice, Unit, coupling_groups
from .importance import IMPORTANCES, Importance, group_importance
from .mxnet_json import (
    graph_from_mxnet_checkpoint,
    graph_from_mxnet_json,
    mxnet_variable_names,
    rewrite_mxnet_json,
)
from .nm import nm_masks
from .plan import select_units
from .slicing import Shrunk, shrink, zero_units

__all__ = [
    "OPS",
    "Node",
    "Graph",
    "Slice",
    "Unit",
    "Group",
    "coupling_groups",
    "IMPORTANCES",
    "group_importance",
    "select_units",
    "Shrunk",
    "shrink",
    "zero_units",
    "prune_graph",
    "nm_masks",
    "graph_from_mxnet_json",
    "graph_from_mxnet_checkpoint",
    "mxnet_variable_names",
    "rewrite_mxnet_json",
]


def prune_graph(
    graph: Graph,
    weights: Mapping[str, np.ndarray],
    amount: float,
    *,
    importance: Importance = "l2",
    scope: str = "layer",
    round_to: int = 1,
    min_keep: float = 0.0,
) -> Shrunk:
    """Couple, score, select and shrink in one call.

    Parameters
    ----------
    graph : Graph
    weights : mapping of str to numpy.ndarray
        Not modified.
    amount, importance, scope, round_to, min_keep
        As for :func:`select_units`.

    Returns
    -------
    Shrunk
        New arrays and the new channel count of every node.

    Examples
    --------
    >>> import numpy as np
    >>> g = Graph([Node("x", "input", (), 1), Node("a", "linear", ("x",), 4, {"weight": "a"}),
    ...            Node("b", "linear", ("a",), 1, {"weight": "b"})], ["b"])
    >>> prune_graph(g, {"a": np.arange(4.0).reshape(4, 1), "b": np.ones((1, 4))}, 0.75).kept["a"].tolist()
    [3]
    """
    groups = coupling_groups(graph, weights)
    keep = select_units(
        groups, weights, amount, importance=importance, scope=scope, round_to=round_to, min_keep=min_keep
    )
    return shrink(graph, weights, groups, keep)
