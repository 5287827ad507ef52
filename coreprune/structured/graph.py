"""A small framework-free graph of the layers that structured pruning has to understand.

Each adapter (:mod:`coreprune.torch`, :mod:`coreprune.mxnet`) translates its framework's own graph
(``torch.fx``, an MXNet symbol's JSON) into this one; users with another framework can build it by
hand. A node is one operation producing one tensor; what matters about the tensor is the size of its
**channel axis** (axis 1 of ``(N, C, ...)`` feature maps, the last axis of ``(N, F)`` or ``(N, L, F)``
features), because that is the axis channel pruning shortens.

Operations (:data:`OPS`)
------------------------
``input``
    A model input; its channels are never pruned.
``conv``
    Convolution, params ``weight`` of shape ``(out, in / groups, *kernel)`` and optional ``bias``
    ``(out,)``; attr ``groups`` (1, depthwise ``== in == out``, or grouped in between).
``linear``
    Dense layer, params ``weight`` ``(out, in)`` and optional ``bias``.
``batchnorm``
    Per-channel affine + statistics, params among ``weight``, ``bias``, ``running_mean``,
    ``running_var`` (each ``(C,)``).
``layernorm``
    Normalises across the channel axis; params ``weight``, ``bias``. Its channels are kept (removing
    one, even an all-zero one, changes the mean and variance of the others).
``normalize``
    A parameter-free normalisation across the channel axis (softmax over channels); channels kept.
``embedding``
    Params ``weight`` ``(vocabulary, dim)``; its output channels are the columns.
``add``, ``mul``
    Element-wise on inputs of equal channel count (broadcast over other axes): ties their channels.
``concat``
    Along the channel axis, inputs in order.
``slice``
    Channels ``[start, stop)`` of its input (how ``split`` and ``chunk`` appear here).
``flatten``
    ``(N, C, *spatial) -> (N, C * S)``: feature ``c * S + s`` comes from channel ``c``.
``shuffle``
    ShuffleNet channel shuffle, attr ``groups``.
``identity``
    Anything that keeps channel ``i`` at position ``i``: activations, pooling, dropout, spatial
    means, scalar arithmetic, reshapes that do not touch the channel axis.

Statistics (optional attrs, read by :func:`coreprune.channel_statistics`)
--------------------------------------------------------------------------
Pruning needs only the channels; bias correction also needs to know how each node changes the
per-channel mean of the values it passes on. Adapters say so where they know it, and a node
without it stops the statistics (its consumers get none):

``identity`` with ``fn="copy"``
    Values unchanged, only moved along other axes (dropout at inference, reshapes, casts).
``identity`` with ``fn="pool"``
    Averages along other axes (average pooling, spatial means): the mean is kept, not the spread.
``identity`` with ``fn="clip"``, ``lo``, ``hi``
    ``min(max(x, lo), hi)`` element-wise, ``lo``/``hi`` floats (``±inf`` allowed): ReLU is
    ``(0, inf)``, ReLU6 ``(0, 6)``.
``identity`` with ``fn`` one of :data:`SMOOTH_ACTIVATIONS`
    ``"sigmoid"``, ``"tanh"``, ``"gelu"`` (``x Phi(x)``, the erf form), ``"silu"`` (``x sigmoid(x)``,
    also called swish) or ``"hardswish"`` (``x relu6(x + 3) / 6``), element-wise.
``add`` with ``fn="sum"``
    A plain sum of its inputs (not a difference, not a concatenation along another axis).
``batchnorm`` with ``fix_gamma=1``
    The scale is taken as 1 whatever its stored value (MXNet's ``fix_gamma``).
``batchnorm`` with ``eps``
    The epsilon added to the running variance (a finite number >= 0): PyTorch's ``module.eps``
    (1e-5 by default, 1e-3 in EfficientNet and other TensorFlow ports), MXNet's ``eps`` (1e-5 in
    Gluon, 1e-3 in the symbol API). Without it, 1e-5 is assumed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..errors import CompressionError

__all__ = ["OPS", "SMOOTH_ACTIVATIONS", "Node", "Graph"]

#: The operations a :class:`Node` may have, with the parameter roles each accepts.
OPS: dict[str, frozenset[str]] = {
    "input": frozenset(),
    "conv": frozenset({"weight", "bias"}),
    "linear": frozenset({"weight", "bias"}),
    "batchnorm": frozenset({"weight", "bias", "running_mean", "running_var"}),
    "layernorm": frozenset({"weight", "bias"}),
    "normalize": frozenset(),
    "embedding": frozenset({"weight"}),
    "add": frozenset(),
    "mul": frozenset(),
    "concat": frozenset(),
    "slice": frozenset(),
    "flatten": frozenset(),
    "shuffle": frozenset(),
    "identity": frozenset(),
}

#: The element-wise activations an ``identity`` node may name with its ``fn`` attr besides ``clip``:
#: their per-channel statistics are Gaussian expectations (coreprune.channel_statistics).
SMOOTH_ACTIVATIONS = ("sigmoid", "tanh", "gelu", "silu", "hardswish")

_ARITY = {"input": (0, 0), "add": (2, None), "mul": (2, None), "concat": (1, None)}


@dataclass(frozen=True)
class Node:
    """One operation of a :class:`Graph`.

    Attributes
    ----------
    name : str
        Unique name; adapters use the framework's layer name (``layer1.0.conv1``) so that errors
        name the layer the user wrote.
    op : str
        One of :data:`OPS`.
    inputs : tuple of str
        Names of the nodes whose outputs this node reads, in order.
    channels : int
        Size of the channel axis of this node's output.
    params : mapping of str to str
        Parameter role (``"weight"``, ``"bias"``, ...) -> key of the tensor in the weight dict.
    attrs : mapping of str to int, float or str
        ``groups`` for ``conv`` and ``shuffle``; ``start``/``stop`` for ``slice``; the optional
        statistics attrs of the module docstring (``fn``, ``lo``, ``hi``, ``fix_gamma``, ``eps``).

    Examples
    --------
    >>> Node("fc", "linear", ("x",), 10, {"weight": "fc.weight"}).params["weight"]
    'fc.weight'
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    channels: int
    params: Mapping[str, str] = field(default_factory=dict)
    attrs: Mapping[str, int | float | str] = field(default_factory=dict)


class Graph:
    """A validated, topologically ordered set of :class:`Node` s and the names of the model outputs.

    Parameters
    ----------
    nodes : iterable of Node
        In an order where every node comes after its inputs.
    outputs : iterable of str
        The nodes whose tensors the model returns; their channels are never pruned.

    Raises
    ------
    CompressionError
        On an unknown op, a duplicate name, an input used before it is defined, a parameter role
        the op does not take, an arity or a channel count that does not add up.

    Examples
    --------
    >>> g = Graph([Node("x", "input", (), 3),
    ...            Node("conv", "conv", ("x",), 8, {"weight": "conv.weight"}, {"groups": 1}),
    ...            Node("relu", "identity", ("conv",), 8),
    ...            Node("fc", "linear", ("relu",), 2, {"weight": "fc.weight"})], outputs=["fc"])
    >>> [n.name for n in g.consumers("conv")]
    ['relu']
    """

    def __init__(self, nodes: Iterable[Node], outputs: Iterable[str]) -> None:
        self.nodes: dict[str, Node] = {}
        self._consumers: dict[str, list[Node]] = {}
        for node in nodes:
            self._check(node)
            self.nodes[node.name] = node
            self._consumers[node.name] = []
            for src in node.inputs:
                self._consumers[src].append(node)
        self.outputs: tuple[str, ...] = tuple(outputs)
        for name in self.outputs:
            if name not in self.nodes:
                raise CompressionError(f"graph output {name!r} is not a node")

    def _check(self, node: Node) -> None:
        where = f"layer {node.name!r} ({node.op})"
        if node.op not in OPS:
            raise CompressionError(f"layer {node.name!r}: unknown op {node.op!r}; known: {sorted(OPS)}")
        if node.name in self.nodes:
            raise CompressionError(f"{where}: duplicate node name")
        extra = set(node.params) - OPS[node.op]
        if extra:
            raise CompressionError(f"{where}: parameter roles {sorted(extra)} not taken by {node.op}")
        lo, hi = _ARITY.get(node.op, (1, 1))
        if len(node.inputs) < lo or (hi is not None and len(node.inputs) > hi):
            raise CompressionError(f"{where}: takes {lo}..{hi or 'n'} inputs, got {len(node.inputs)}")
        for src in node.inputs:
            if src not in self.nodes:
                raise CompressionError(f"{where}: input {src!r} is not defined before it")
        if isinstance(node.channels, bool) or not isinstance(node.channels, int) or node.channels < 1:
            raise CompressionError(f"{where}: channels must be a positive int, got {node.channels!r}")
        ins = [self.nodes[s].channels for s in node.inputs]
        if node.op in ("add", "mul") and len(set(ins + [node.channels])) != 1:
            raise CompressionError(f"{where}: channel counts differ: inputs {ins}, output {node.channels}")
        if node.op == "concat" and sum(ins) != node.channels:
            raise CompressionError(f"{where}: inputs have {ins} channels, output {node.channels}")
        if (
            node.op in ("identity", "batchnorm", "layernorm", "normalize", "shuffle")
            and ins[0] != node.channels
        ):
            raise CompressionError(f"{where}: changes the channels {ins[0]} -> {node.channels}")
        if node.op == "flatten" and node.channels % ins[0]:
            raise CompressionError(f"{where}: {node.channels} features are not a multiple of {ins[0]}")
        if node.op == "slice":
            start, stop = node.attrs.get("start"), node.attrs.get("stop")
            if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= ins[0]):
                raise CompressionError(f"{where}: bad channel range [{start}, {stop}) of {ins[0]}")
            if stop - start != node.channels:
                raise CompressionError(f"{where}: range [{start}, {stop}) is not {node.channels} channels")
        if node.op in ("conv", "shuffle"):
            g = node.attrs.get("groups", 1)
            c_in = ins[0]
            if not isinstance(g, int) or g < 1 or c_in % g or node.channels % g:
                raise CompressionError(f"{where}: groups {g!r} must divide {c_in} and {node.channels}")
        if node.op in ("conv", "linear", "embedding") and "weight" not in node.params:
            raise CompressionError(f"{where}: needs a 'weight' parameter")
        self._check_statistics(node, where)

    @staticmethod
    def _check_statistics(node: Node, where: str) -> None:
        fn = node.attrs.get("fn")
        allowed = {"identity": ("copy", "pool", "clip", *SMOOTH_ACTIVATIONS),
                   "add": ("sum",)}.get(node.op, ())
        if fn is not None and fn not in allowed:
            raise CompressionError(f"{where}: fn {fn!r} is not one of {list(allowed)}")
        if fn == "clip":
            lo, hi = node.attrs.get("lo"), node.attrs.get("hi")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) or \
                    not float(lo) < float(hi):  # type: ignore[arg-type]
                raise CompressionError(f"{where}: clip needs numbers lo < hi, got {lo!r}, {hi!r}")
        if node.attrs.get("fix_gamma", 0) not in (0, 1):
            raise CompressionError(f"{where}: fix_gamma must be 0 or 1")
        if "eps" in node.attrs:
            eps = node.attrs["eps"]
            # a string ("1e-3") or a bool is a mistake of whoever built the node, never a number
            # 0 is legal (torch accepts BatchNorm2d(eps=0)); a channel of zero variance is then unknown
            if isinstance(eps, bool) or not isinstance(eps, (int, float)) or \
                    not (math.isfinite(eps) and eps >= 0):
                raise CompressionError(f"{where}: eps must be a finite number >= 0, got {eps!r}")

    def consumers(self, name: str) -> list[Node]:
        """The nodes that read node ``name``'s output, in graph order.

        Examples
        --------
        >>> g = Graph([Node("x", "input", (), 3), Node("r", "identity", ("x",), 3)], ["r"])
        >>> [n.name for n in g.consumers("x")]
        ['r']
        """
        return list(self._consumers[name])

    def __iter__(self):
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)
