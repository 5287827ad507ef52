"""Coupling groups: which slices of which tensors must be removed together (DepGraph-style).

Every channel of every tensor of a :class:`~coreprune.structured.graph.Graph` is a variable; the
operations tie variables together (a union-find over channels):

* batch norm, activations, pooling (``identity``), depthwise convolutions: input channel ``i`` is
  output channel ``i``;
* ``add`` / ``mul``: channel ``i`` of every operand and of the result (residual connections tie the
  channels of every block that feeds the same sum);
* ``concat``: output channel ``offset_k + i`` is channel ``i`` of input ``k``;
* ``flatten``: output features ``c * S .. c * S + S - 1`` are channel ``c``;
* ``shuffle`` with ``g`` groups of ``C / g``: output ``k`` is input ``(k % g) (C / g) + k // g``, and
  the ``g`` inputs with the same position ``j`` in their group go together (removing position ``j``
  from every group leaves a valid shuffle of ``C - g`` channels).

Each resulting class of tied channels is one prunable **unit**; it owns the slices of the weight
dict that index those channels: a producer's output rows (``conv``/``linear`` weight and bias
axis 0, ``embedding`` weight axis 1), the following norms' vectors, and every consumer's input
columns (``conv``/``linear`` weight axis 1). A **group** is a set of units that reach the same
tensors (one per residual stage, one per plain conv, one per Fire expand pair); pruning removes
units from a group.

A unit is **locked** (never pruned) when it touches a model input or output, a layer norm, the
input of an embedding, a channel softmax (``normalize``), a ``slice`` (split/chunk), or either side
of a grouped (non-depthwise) convolution or of a depthwise convolution with a channel multiplier:
removing those channels would change the model's interface, the normalisation of the other
channels, or how the framework splits the tensor, which a change of shapes alone cannot express.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import CompressionError
from .graph import Graph, Node

__all__ = ["Slice", "Unit", "Group", "coupling_groups"]


@dataclass(frozen=True)
class Slice:
    """One index of one axis of one tensor of the weight dict.

    Attributes
    ----------
    key : str
        Tensor name in the weight dict.
    axis : int
        The axis the index is on.
    index : int
        Position along ``axis``.
    kind : str
        ``"producer"`` (output rows/columns of a conv, linear or embedding, and its bias),
        ``"norm"`` (a batch norm's vectors) or ``"consumer"`` (input columns of a conv or linear).
    role : str
        The parameter role in its node (``"weight"``, ``"bias"``, ``"running_mean"``, ...).
    node : str
        The node the tensor belongs to.

    Examples
    --------
    >>> Slice("fc.weight", 1, 3, "consumer", "weight", "fc").axis
    1
    """

    key: str
    axis: int
    index: int
    kind: str
    role: str
    node: str


@dataclass(frozen=True)
class Unit:
    """A set of tied channels, removed all together or not at all.

    Attributes
    ----------
    channels : tuple of (str, int)
        ``(node, channel index)`` of every tensor channel in the unit, graph order.
    slices : tuple of Slice
        Every weight-dict slice indexed by those channels.
    """

    channels: tuple[tuple[str, int], ...]
    slices: tuple[Slice, ...]


@dataclass(frozen=True)
class Group:
    """Prunable units that reach the same tensors; selection removes a fraction of them.

    Attributes
    ----------
    name : str
        The first producer node of the group in graph order (``layer1.0.conv1``).
    nodes : tuple of str
        Every node whose output channels the group's units belong to.
    units : tuple of Unit
        In order of the first producer's output channels.
    """

    name: str
    nodes: tuple[str, ...]
    units: tuple[Unit, ...]

    def __len__(self) -> int:
        return len(self.units)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _shape(weights: Mapping[str, np.ndarray], node: Node, role: str) -> tuple[int, ...]:
    key = node.params[role]
    if key not in weights:
        raise CompressionError(f"layer {node.name!r}: parameter {key!r} is not in the weight dict")
    return tuple(np.shape(weights[key]))


def _check_params(graph: Graph, node: Node, weights: Mapping[str, np.ndarray]) -> None:
    where = f"layer {node.name!r} ({node.op})"
    c_out = node.channels
    c_in = graph.nodes[node.inputs[0]].channels if node.inputs else 0
    for role in node.params:
        shape = _shape(weights, node, role)
        if node.op in ("conv", "linear") and role == "weight":
            g = node.attrs.get("groups", 1)
            ok = len(shape) >= 2 and shape[0] == c_out and shape[1] * g == c_in
            if node.op == "linear":
                ok = ok and len(shape) == 2
            if not ok:
                raise CompressionError(
                    f"{where}: weight shape {shape} does not map {c_in} -> {c_out} channels"
                )
        elif node.op == "embedding":
            if len(shape) != 2 or shape[1] != c_out:
                raise CompressionError(f"{where}: weight shape {shape} is not (vocabulary, {c_out})")
        elif shape != (c_out,):
            raise CompressionError(f"{where}: {role} shape {shape} is not ({c_out},)")


def coupling_groups(graph: Graph, weights: Mapping[str, np.ndarray]) -> list[Group]:
    """The prunable coupling groups of ``graph``, with the weight-dict slices of every unit.

    Parameters
    ----------
    graph : Graph
        The model's layers; see :mod:`coreprune.structured.graph`.
    weights : mapping of str to numpy.ndarray
        Every tensor named by a node's ``params``, with the shapes the graph implies (conv weights
        ``(out, in / groups, *kernel)``, linear ``(out, in)``, norms ``(C,)``, embeddings
        ``(vocabulary, dim)``). Only shapes are read.

    Returns
    -------
    list of Group
        Groups with at least one unlocked unit that owns a producer slice, in graph order of their
        first producer. Locked channels (see the module docstring) appear in no group.

    Raises
    ------
    CompressionError
        If a parameter is missing from ``weights`` or its shape disagrees with the graph, naming the
        layer.

    Examples
    --------
    A residual pair: both convs feed one sum, so their output channels form one group together
    with the classifier's input columns.

    >>> import numpy as np
    >>> from coreprune.structured import Graph, Node
    >>> nodes = [Node("x", "input", (), 3),
    ...          Node("a", "conv", ("x",), 4, {"weight": "a.w"}, {"groups": 1}),
    ...          Node("b", "conv", ("a",), 4, {"weight": "b.w"}, {"groups": 1}),
    ...          Node("sum", "add", ("a", "b"), 4),
    ...          Node("pool", "flatten", ("sum",), 4),
    ...          Node("fc", "linear", ("pool",), 2, {"weight": "fc.w"})]
    >>> w = {"a.w": np.ones((4, 3, 1, 1)), "b.w": np.ones((4, 4, 1, 1)), "fc.w": np.ones((2, 4))}
    >>> [(g.name, len(g), g.nodes) for g in coupling_groups(Graph(nodes, ["fc"]), w)]
    [('a', 4, ('a', 'b', 'sum', 'pool'))]
    >>> sorted({(s.key, s.axis) for s in coupling_groups(Graph(nodes, ["fc"]), w)[0].units[0].slices})
    [('a.w', 0), ('b.w', 0), ('b.w', 1), ('fc.w', 1)]
    """
    base: dict[str, int] = {}
    total = 0
    for node in graph:
        # shapes first: the channel counts of a hostile graph are then bounded by real arrays
        # before anything is allocated per channel
        _check_params(graph, node, weights)
        base[node.name] = total
        total += node.channels
    uf = _UnionFind(total)
    locked = np.zeros(total, dtype=bool)
    owned: list[list[Slice]] = [[] for _ in range(total)]

    def ch(name: str, i: int) -> int:
        return base[name] + i

    def lock(name: str) -> None:
        b = base[name]
        locked[b : b + graph.nodes[name].channels] = True

    for node in graph:
        n, c = node.name, node.channels
        ins = node.inputs
        op = node.op
        if op == "input":
            lock(n)
        elif op in ("conv", "linear"):
            src = ins[0]
            c_in = graph.nodes[src].channels
            g = node.attrs.get("groups", 1) if op == "conv" else 1
            for role in ("weight", "bias"):
                if role in node.params:
                    for i in range(c):
                        owned[ch(n, i)].append(Slice(node.params[role], 0, i, "producer", role, n))
            if g == 1:
                for j in range(c_in):
                    owned[ch(src, j)].append(Slice(node.params["weight"], 1, j, "consumer", "weight", n))
            elif g == c_in == c:
                for i in range(c):
                    uf.union(ch(n, i), ch(src, i))
            else:
                lock(n)
                lock(src)
        elif op in ("batchnorm", "layernorm"):
            for i in range(c):
                uf.union(ch(n, i), ch(ins[0], i))
                for role, key in node.params.items():
                    owned[ch(n, i)].append(Slice(key, 0, i, "norm", role, n))
            if op == "layernorm":
                lock(n)
        elif op == "normalize":
            for i in range(c):
                uf.union(ch(n, i), ch(ins[0], i))
            lock(n)
        elif op == "embedding":
            lock(ins[0])
            for i in range(c):
                owned[ch(n, i)].append(Slice(node.params["weight"], 1, i, "producer", "weight", n))
        elif op in ("add", "mul", "identity"):
            for src in ins:
                for i in range(c):
                    uf.union(ch(n, i), ch(src, i))
        elif op == "concat":
            offset = 0
            for src in ins:
                for i in range(graph.nodes[src].channels):
                    uf.union(ch(n, offset + i), ch(src, i))
                offset += graph.nodes[src].channels
        elif op == "slice":
            lock(ins[0])
            lock(n)
        elif op == "flatten":
            c_in = graph.nodes[ins[0]].channels
            spatial = c // c_in
            for k in range(c):
                uf.union(ch(n, k), ch(ins[0], k // spatial))
        elif op == "shuffle":
            g = node.attrs["groups"]
            per = c // g
            for k in range(c):
                uf.union(ch(n, k), ch(ins[0], (k % g) * per + k // g))
            for j in range(per):
                for a in range(1, g):
                    uf.union(ch(ins[0], j), ch(ins[0], a * per + j))
    for name in graph.outputs:
        lock(name)

    roots = np.fromiter((uf.find(i) for i in range(total)), dtype=np.int64, count=total)
    root_locked = np.zeros(total, dtype=bool)
    np.logical_or.at(root_locked, roots, locked)
    owner = {}
    for name, b in base.items():
        for i in range(graph.nodes[name].channels):
            owner[b + i] = (name, i)
    members: dict[int, list[int]] = {}
    for i in range(total):
        members.setdefault(int(roots[i]), []).append(i)

    # Units reaching the same tensors form one group: a second union-find over nodes.
    order = {name: k for k, name in enumerate(base)}
    node_uf = _UnionFind(len(order))
    units: dict[int, Unit] = {}
    for root, chans in members.items():
        if root_locked[root]:
            continue
        slices = [s for i in chans for s in owned[i]]
        if not any(s.kind == "producer" for s in slices):
            continue
        channels = tuple(owner[i] for i in chans)
        units[root] = Unit(channels, tuple(slices))
        first = order[channels[0][0]]
        for name, _ in channels[1:]:
            node_uf.union(first, order[name])
    by_group: dict[int, list[Unit]] = {}
    for root in sorted(units):
        unit = units[root]
        by_group.setdefault(node_uf.find(order[unit.channels[0][0]]), []).append(unit)
    groups = []
    for unit_list in by_group.values():
        nodes = sorted({name for u in unit_list for name, _ in u.channels}, key=order.__getitem__)
        producers = [s.node for u in unit_list for s in u.slices if s.kind == "producer"]
        name = min(producers, key=order.__getitem__)
        groups.append(Group(name, tuple(nodes), tuple(unit_list)))
    groups.sort(key=lambda grp: order[grp.name])
    return groups
