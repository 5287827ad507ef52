"""Structured channel pruning of PyTorch modules: trace to the core's graph, rebuild smaller modules.

What it does
------------
* :func:`trace_graph` runs ``torch.fx.symbolic_trace`` (the project's :class:`ChannelShuffle` kept
  as a leaf) and shape propagation on a deep copy of the model and translates every operation into
  a :class:`coreprune.structured.Node`, with the ``state_dict`` names of its tensors.
* :func:`prune_channels` traces, lets :mod:`coreprune.structured` couple, score, select and shrink
  the weight dict, and returns a **new** module: a deep copy whose convolutions, linears, batch
  norms and embeddings are replaced by smaller ones holding the shrunk tensors. The input model is
  not modified; the model's inputs and outputs keep their shapes.
* :func:`load_pruned` rebuilds a pruned model from a fresh instance of the original architecture
  and a pruned ``state_dict`` (a checkpoint), taking every shape from the checkpoint.

Supported layers
----------------
``nn.Conv1d/2d/3d`` (plain, grouped, depthwise), ``nn.Linear``, ``nn.BatchNorm1d/2d/3d``,
``nn.LayerNorm`` (last axis; its channels are kept), ``nn.Embedding``, the element-wise activations,
dropouts, pooling layers, ``nn.Flatten``, ``nn.Identity`` and the project's
:class:`~coreprune.torch.ChannelShuffle`; the functions and methods ``+ - * /`` (``add``, ``sub``,
``mul``, ``div``), ``cat``, ``split``/``chunk``, ``flatten``, ``view``/``reshape`` that flatten to
``(N, C * S)`` or keep the channel axis, ``mean``/``sum``/``amax`` over non-channel axes, the
activations of ``torch`` and ``torch.nn.functional``, pooling, ``softmax`` (channels kept). Anything
else raises :class:`~coreprune.errors.CompressionError` naming the layer.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

import torch
import torch.nn.functional as F
from coreprune.errors import CompressionError
from coreprune.structured import Graph, Importance, Node, prune_graph
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .blocks import ChannelShuffle
from .convert import to_numpy

__all__ = ["trace_graph", "prune_channels", "load_pruned"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Upsample,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
)
_ELEMENTWISE_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.softplus,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.interpolate,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.exp,
    torch.abs,
    torch.neg,
    torch.clamp,
    torch.nn.functional.sigmoid,
    torch.nn.functional.tanh,
    operator.neg,
}
_ELEMENTWISE_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "tanh",
    "exp",
    "abs",
    "neg",
    "clamp",
    "clamp_",
    "contiguous",
    "clone",
    "float",
    "to",
    "type_as",
    "detach",
}
# Zero padding adds border zeros that a convolution's own padding would add: bias correction
# ignores both alike (coreprune.bias_correction).
_COPY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)
_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveAvgPool3d)
_COPY_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d}
_POOL_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                   F.adaptive_avg_pool3d}
_COPY_METHODS = {"contiguous", "clone", "float", "to", "type_as", "detach"}
# element-wise activations whose Gaussian statistics coreprune.channel_statistics knows
_SMOOTH_MODULES = ((nn.Sigmoid, "sigmoid"), (nn.Tanh, "tanh"), (nn.SiLU, "silu"), (nn.Hardswish, "hardswish"))
_SMOOTH_FUNCTIONS = {torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh",
                     F.gelu: "gelu", F.silu: "silu", F.hardswish: "hardswish"}
_SMOOTH_METHODS = {"sigmoid": "sigmoid", "tanh": "tanh"}
_INF = float("inf")


def _number(value: Any, default: float) -> float | None:
    """A clip bound given to a traced call: a plain number, None (no bound) or unknown (None out)."""
    if value is None:
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _clip(lo: float | None, hi: float | None) -> dict[str, Any]:
    """Statistics attrs of ``clamp(x, lo, hi)`` (see coreprune.structured.graph), {} if not numbers."""
    if lo is None or hi is None or not lo < hi:
        return {}
    return {"fn": "clip", "lo": lo, "hi": hi}


def _module_statistics(module: nn.Module) -> dict[str, Any]:
    """How an element-wise module changes per-channel statistics, where bias correction can use it."""
    if isinstance(module, nn.ReLU):
        return _clip(0.0, _INF)
    if isinstance(module, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
        return _clip(float(module.min_val), float(module.max_val))
    if isinstance(module, _COPY_MODULES):
        return {"fn": "copy"}
    if isinstance(module, _POOL_MODULES):
        return {"fn": "pool"}
    if isinstance(module, nn.GELU):  # the tanh approximation is within 1e-3 of the erf form
        return {"fn": "gelu"}
    for kind, name in _SMOOTH_MODULES:
        if isinstance(module, kind):
            return {"fn": name}
    return {}


def _call_statistics(fn: Any, is_method: bool, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """How an element-wise function or method changes per-channel statistics (see above)."""
    if is_method:
        if fn in _COPY_METHODS:
            return {"fn": "copy"}
        if fn in ("relu", "relu_"):
            return _clip(0.0, _INF)
        if fn in ("clamp", "clamp_"):
            return _clip(_number(args[1] if len(args) > 1 else kwargs.get("min"), -_INF),
                         _number(args[2] if len(args) > 2 else kwargs.get("max"), _INF))
        if fn in _SMOOTH_METHODS:
            return {"fn": _SMOOTH_METHODS[fn]}
        return {}
    if fn in (F.relu, torch.relu):
        return _clip(0.0, _INF)
    if fn is F.relu6:
        return _clip(0.0, 6.0)
    if fn is F.hardtanh:
        return _clip(_number(args[1] if len(args) > 1 else kwargs.get("min_val", -1.0), -_INF),
                     _number(args[2] if len(args) > 2 else kwargs.get("max_val", 1.0), _INF))
    if fn is torch.clamp:
        return _clip(_number(args[1] if len(args) > 1 else kwargs.get("min"), -_INF),
                     _number(args[2] if len(args) > 2 else kwargs.get("max"), _INF))
    if fn in _COPY_FUNCTIONS:
        return {"fn": "copy"}
    if fn in _POOL_FUNCTIONS:
        return {"fn": "pool"}
    if fn in _SMOOTH_FUNCTIONS:
        return {"fn": _SMOOTH_FUNCTIONS[fn]}
    return {}


_BINARY = {
    operator.add: "add",
    operator.iadd: "add",
    torch.add: "add",
    operator.sub: "add",
    torch.sub: "add",
    operator.mul: "mul",
    operator.imul: "mul",
    torch.mul: "mul",
    operator.truediv: "mul",
    torch.div: "mul",
}
_BINARY_METHODS = {"add": "add", "add_": "add", "sub": "add", "mul": "mul", "mul_": "mul", "div": "mul"}
_REDUCE_FUNCTIONS = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax"}
_REDUCE_METHODS = {"mean", "sum", "amax"}


def _padded_conv(m: nn.Module) -> bool:
    """A convolution subclass whose only sub-modules pad (TensorFlow-style 'SAME' convolutions, as in
    the EfficientNet ports): still one convolution of its own weight, so one leaf of the trace."""
    # At least one such child: a subclass without any (weight standardisation, say) changes what
    # its weight means and is traced into, as before.
    children = list(m.children())
    return isinstance(m, _CONV) and type(m) not in _CONV and bool(children) and all(
        isinstance(c, (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)) or type(c).__name__ == "Identity"
        and not any(True for _ in c.parameters())
        for c in children
    )


class _Tracer(fx.Tracer):
    # ChannelShuffle's forward branches on the channel count, which a symbolic trace cannot follow.
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, ChannelShuffle) or _padded_conv(m) or super().is_leaf_module(m, qualname)


def _refuse(node: fx.Node, what: str) -> CompressionError:
    return CompressionError(
        f"structured pruning cannot handle layer {node.name!r} ({node.format_node()}): {what}"
    )


class _Translator:
    """fx graph -> core graph; one core node per tensor-producing fx node, with its channel axis."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.nodes: list[Node] = []
        self.axis: dict[fx.Node, int] = {}
        self.splits: dict[fx.Node, tuple[int, list[int]]] = {}
        self.used_modules: set[str] = set()
        self.outputs: list[str] = []
        self.names: dict[fx.Node, str] = {}

    @staticmethod
    def shape_or_none(node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    @staticmethod
    def shape(node: fx.Node) -> tuple[int, ...]:
        """The shape of a node known to be a traced tensor (one in ``axis``)."""
        shape = _Translator.shape_or_none(node)
        assert shape is not None, node
        return shape

    def tensor_args(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node) and a in self.axis]

    def channels(self, node: fx.Node, axis: int) -> int:
        return self.shape(node)[axis]

    def emit(self, fx_node: fx.Node, op: str, inputs: Sequence[fx.Node], axis: int, **kw: Any) -> None:
        shape = self.shape(fx_node)
        axis = axis % len(shape)
        self.axis[fx_node] = axis
        self.names[fx_node] = self.name(fx_node, op)
        node = Node(self.names[fx_node], op, tuple(self.names[i] for i in inputs), shape[axis], **kw)
        self.nodes.append(node)

    @staticmethod
    def name(fx_node: fx.Node, op: str) -> str:
        # Layers with weights (never shared: refused) go by their module path, as the user wrote it;
        # everything else by its unique fx name (dot-free, so the two never collide).
        if fx_node.op == "call_module" and op in ("conv", "linear", "batchnorm", "layernorm", "embedding"):
            return str(fx_node.target)
        return fx_node.name

    def passthrough(self, node: fx.Node, src: fx.Node, stats: Mapping[str, Any] | None = None) -> None:
        """An op that keeps channel i at position i on an axis we can follow; ``stats``: its
        statistics attrs (see coreprune.structured.graph), where known."""
        in_shape, out_shape, ax = self.shape(src), self.shape(node), self.axis[src]
        if out_shape is None:
            raise _refuse(node, "its result is not a tensor")
        if len(out_shape) == len(in_shape) and out_shape[ax] == in_shape[ax]:
            self.emit(node, "identity", [src], ax, attrs=dict(stats or {}))
        else:
            raise _refuse(node, f"it changes the channel axis {ax} of shape {in_shape} to {out_shape}")

    def param_keys(self, target: str, module: nn.Module, roles: Sequence[str]) -> dict[str, str]:
        state = dict(module.state_dict(keep_vars=True))
        return {r: f"{target}.{r}" for r in roles if state.get(r) is not None}

    def module_call(self, node: fx.Node) -> None:
        target = str(node.target)
        module = self.modules[target]
        src = node.args[0]
        if not isinstance(src, fx.Node) or src not in self.axis:
            raise _refuse(node, "its input is not a traced tensor")
        in_shape, ax = self.shape(src), self.axis[src]
        if isinstance(module, (*_CONV, nn.Linear, *_BN, nn.LayerNorm, nn.Embedding)):
            if target in self.used_modules:
                raise _refuse(node, f"module {target!r} is called more than once (shared weights)")
            self.used_modules.add(target)
        if isinstance(module, _CONV):
            if ax != 1:
                raise _refuse(node, f"its input's channels are on axis {ax}, not 1")
            params = self.param_keys(target, module, ("weight", "bias"))
            self.emit(node, "conv", [src], 1, params=params, attrs={"groups": module.groups})
        elif isinstance(module, nn.Linear):
            if ax != len(in_shape) - 1:
                raise _refuse(node, f"its input's channels are on axis {ax}, not the last axis")
            self.emit(node, "linear", [src], -1, params=self.param_keys(target, module, ("weight", "bias")))
        elif isinstance(module, _BN):
            if ax != 1:
                raise _refuse(node, f"its input's channels are on axis {ax}, not 1")
            roles = ("weight", "bias", "running_mean", "running_var")
            # its own epsilon (1e-3 in TensorFlow ports such as EfficientNet), for the statistics
            self.emit(node, "batchnorm", [src], 1, params=self.param_keys(target, module, roles),
                      attrs={"eps": float(module.eps)})
        elif isinstance(module, nn.LayerNorm):
            if len(module.normalized_shape) != 1 or ax != len(in_shape) - 1:
                raise _refuse(node, "only a LayerNorm over the channel (last) axis is supported")
            self.emit(
                node, "layernorm", [src], -1, params=self.param_keys(target, module, ("weight", "bias"))
            )
        elif isinstance(module, nn.Embedding):
            # The indices carry no channels: give them a placeholder channel axis of their own.
            self.emit(node, "embedding", [src], -1, params={"weight": f"{target}.weight"})
        elif isinstance(module, ChannelShuffle):
            if ax != 1:
                raise _refuse(node, f"its input's channels are on axis {ax}, not 1")
            self.emit(node, "shuffle", [src], 1, attrs={"groups": module.groups})
        elif isinstance(module, nn.Flatten):
            self.flatten(node, src, module.start_dim, module.end_dim)
        elif isinstance(module, (nn.Softmax, nn.LogSoftmax)):
            self.softmax(node, src, module.dim)
        elif isinstance(module, _ELEMENTWISE_MODULES):
            self.passthrough(node, src, _module_statistics(module))
        else:
            raise _refuse(node, f"module type {type(module).__name__} is not supported")

    def flatten(self, node: fx.Node, src: fx.Node, start: int = 0, end: int = -1) -> None:
        in_shape, out_shape, ax = self.shape(src), self.shape(node), self.axis[src]
        ndim = len(in_shape)
        start, end = start % ndim, end % ndim
        if end < ax or start > ax or start == end:
            # The channel axis is outside the flattened range (or nothing is flattened).
            self.emit(node, "identity", [src], ax - (0 if start > ax or start == end else end - start))
        elif start == ax and out_shape[ax] == math.prod(in_shape[ax : end + 1]):
            self.emit(node, "flatten", [src], ax)
        else:
            raise _refuse(node, f"it merges the channel axis {ax} with an axis before it")

    def reshape(self, node: fx.Node, src: fx.Node) -> None:
        in_shape, out_shape, ax = self.shape(src), self.shape(node), self.axis[src]
        if out_shape is None:
            raise _refuse(node, "its result is not a tensor")
        if out_shape[: ax + 1] == in_shape[: ax + 1]:
            self.emit(node, "identity", [src], ax, attrs={"fn": "copy"})
        elif out_shape[:ax] == in_shape[:ax] and len(out_shape) == ax + 1:
            self.flatten(node, src, ax, -1)
        else:
            raise _refuse(node, f"it reshapes the channel axis {ax}: {in_shape} -> {out_shape}")

    def softmax(self, node: fx.Node, src: fx.Node, dim: int | None) -> None:
        ax = self.axis[src]
        if dim is not None and dim % len(self.shape(src)) == ax:
            self.emit(node, "normalize", [src], ax)
        else:
            self.passthrough(node, src)

    def reduce(self, node: fx.Node, src: fx.Node, dims: Any, keepdim: bool, mean: bool = False) -> None:
        ndim, ax = len(self.shape(src)), self.axis[src]
        if dims is None:
            raise _refuse(node, "it reduces over every axis, the channels included")
        dims = {d % ndim for d in ((dims,) if isinstance(dims, int) else dims)}
        if ax in dims:
            raise _refuse(node, f"it reduces over the channel axis {ax}")
        self.emit(node, "identity", [src], ax if keepdim else ax - sum(d < ax for d in dims),
                  attrs={"fn": "pool"} if mean else {})

    def binary(self, node: fx.Node, op: str) -> None:
        out_shape = self.shape(node)
        operands = self.tensor_args(node)
        if not operands:
            raise _refuse(node, "no traced tensor operand")
        ax = self.axis[operands[0]]
        c = out_shape[ax]
        # Operands broadcast along the channel axis (size 1 there) do not tie channels.
        tied = [a for a in operands if len(self.shape(a)) > 0 and self.shape(a)[self.axis[a]] == c]
        if any(self.axis[a] - len(self.shape(a)) != ax - len(out_shape) for a in tied):
            raise _refuse(node, "its operands have their channels on different axes")
        if len(tied) == 1:
            self.emit(node, "identity", tied, ax)
        elif tied:
            # a plain sum of the tensors alone (not a difference, no scaled or broadcast term)
            plain = (node.target in (operator.add, operator.iadd, torch.add, "add", "add_")
                     and "alpha" not in node.kwargs and len(tied) == len(node.args) + len(node.kwargs))
            self.emit(node, op, tied, ax, attrs={"fn": "sum"} if plain else {})
        else:
            raise _refuse(node, "no operand has the output's channels")

    def cat(self, node: fx.Node) -> None:
        args: tuple[Any, ...] = node.args  # as in call()
        kwargs: Mapping[str, Any] = node.kwargs
        tensors = args[0] if args else kwargs["tensors"]
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        srcs = list(tensors)
        ax = self.axis[srcs[0]]
        ndim = len(self.shape(srcs[0]))
        if any(self.axis[s] != ax for s in srcs):
            raise _refuse(node, "its inputs have their channels on different axes")
        if dim % ndim == ax:
            self.emit(node, "concat", srcs, ax)
        elif len(srcs) == 1:
            self.emit(node, "identity", srcs, ax)
        else:
            # Concatenating along another axis puts channel i of every input at channel i.
            self.emit(node, "add", srcs, ax)

    def split(self, node: fx.Node, src: fx.Node, dim: int) -> None:
        ndim, ax = len(self.shape(src)), self.axis[src]
        sizes = [tuple(m.shape) for m in node.meta["tensor_meta"]]
        self.splits[node] = (dim % ndim == ax, [s[dim % ndim] for s in sizes])

    def getitem(self, node: fx.Node) -> None:
        args: tuple[Any, ...] = node.args  # as in call()
        src, index = args
        if src not in self.splits and src not in self.axis:
            return  # indexing a size or a shape: no tensor, nothing to prune
        if src not in self.splits or not isinstance(index, int):
            raise _refuse(node, "indexing a tensor is not supported (only the pieces of split/chunk)")
        on_channels, sizes = self.splits[src]
        inner = src.args[0]
        ax = self.axis[inner]
        if not on_channels:
            self.emit(node, "identity", [inner], ax)
            return
        start = sum(sizes[:index])
        self.emit(node, "slice", [inner], ax, attrs={"start": start, "stop": start + sizes[index]})

    def run(self) -> Graph:
        for node in self.gm.graph.nodes:
            self.translate(node)
        return Graph(self.nodes, self.outputs)

    def translate(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            placeholder_shape = self.shape_or_none(node)
            if placeholder_shape is None:
                return
            self.emit(node, "input", [], 1 if len(placeholder_shape) >= 2 else 0)
        elif node.op == "output":
            outs: list[fx.Node] = []
            fx.node.map_arg(node.args[0], outs.append)
            for out in outs:
                if out not in self.axis:
                    raise _refuse(out, "a model output that is not a traced tensor")
                self.outputs.append(self.names[out])
        elif node.op == "call_module":
            self.module_call(node)
        elif node.op == "get_attr":
            raise _refuse(node, "a parameter or buffer used outside its module")
        elif node.op in ("call_function", "call_method"):
            self.call(node)

    def call(self, node: fx.Node) -> None:
        # The arguments are whatever the traced code passed (fx's Argument union): read as Any, each
        # op checks the ones it uses. The target is a callable, or a method's name for call_method.
        fn: Any = node.target
        is_method = node.op == "call_method"
        args: tuple[Any, ...] = node.args
        kwargs: Mapping[str, Any] = node.kwargs
        src = args[0] if args and isinstance(args[0], fx.Node) and args[0] in self.axis else None

        def source() -> fx.Node:
            if src is None:
                raise _refuse(node, "its input is not a traced tensor")
            return src
        if fn is operator.getitem:
            self.getitem(node)
        elif self.shape_or_none(node) is None and not isinstance(node.meta.get("tensor_meta"), (tuple, list)):
            # Sizes and shapes (x.size(0), x.shape): not tensors, nothing to prune. A later use of such
            # a value as a tensor is refused, since it is not in self.axis.
            return
        elif (not is_method and fn in _BINARY) or (is_method and fn in _BINARY_METHODS):
            self.binary(node, _BINARY[fn] if not is_method else _BINARY_METHODS[fn])
        elif fn in (torch.cat, torch.concat):
            self.cat(node)
        elif (fn in (torch.split, torch.chunk)) or (is_method and fn in ("split", "chunk")):
            dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
            self.split(node, source(), dim)
        elif fn is torch.flatten or (is_method and fn == "flatten"):
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            self.flatten(node, source(), start, end)
        elif (is_method and fn in ("view", "reshape")) or fn is torch.reshape:
            self.reshape(node, source())
        elif (not is_method and fn in _REDUCE_FUNCTIONS) or (is_method and fn in _REDUCE_METHODS):
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
            self.reduce(node, source(), dims, keepdim, mean=fn in (torch.mean, "mean"))
        elif fn in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax) or (
            is_method and fn in ("softmax", "log_softmax")
        ):
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            self.softmax(node, source(), dim)
        elif (not is_method and fn in _ELEMENTWISE_FUNCTIONS) or (is_method and fn in _ELEMENTWISE_METHODS):
            if src is None:
                raise _refuse(node, "its input is not a traced tensor")
            self.passthrough(node, src, _call_statistics(fn, is_method, args, kwargs))
        else:
            raise _refuse(node, "this function is not supported")


def _as_tuple(example_inputs: Any) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def trace_graph(model: nn.Module, example_inputs: Any) -> tuple[Graph, dict[str, np.ndarray]]:
    """The core graph of ``model`` and its weights as ``dict[str, numpy.ndarray]`` (copies).

    Parameters
    ----------
    model : torch.nn.Module
        Not modified (a deep copy is traced and run).
    example_inputs : torch.Tensor or tuple of tensors
        Inputs for one forward pass, giving every tensor's shape.

    Returns
    -------
    (Graph, dict of str to numpy.ndarray)
        Layers with weights are named by module path (``layer1.0.conv1``), the rest by ``torch.fx``
        name (``add_1``); parameter keys are ``state_dict`` names.

    Raises
    ------
    CompressionError
        If ``torch.fx`` cannot trace the model or a layer is not supported, naming it.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    >>> graph, weights = trace_graph(net, torch.zeros(1, 3, 8, 8))
    >>> [(n.name, n.op, n.channels) for n in graph]
    [('input_1', 'input', 3), ('0', 'conv', 8), ('_1', 'identity', 8), ('2', 'conv', 4)]
    """
    work = copy.deepcopy(model).eval()
    try:
        gm = fx.GraphModule(work, _Tracer().trace(work))
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...) for untraceable code
        raise CompressionError(f"torch.fx cannot trace {type(model).__name__}: {exc}") from exc
    with torch.no_grad():
        ShapeProp(gm).propagate(*_as_tuple(example_inputs))
    graph = _Translator(gm).run()
    weights = {k: np.array(v, copy=True) for k, v in to_numpy(work).items()}
    return graph, weights


def _new_module(old: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module | None:
    """A module like ``old`` with the shapes of ``state`` (its own keys), or None if unchanged."""
    w = state.get("weight")
    ref: torch.Tensor | None = getattr(old, "weight", None)
    if isinstance(old, _BN):
        if "running_mean" in state:
            n = state["running_mean"].shape[0]
        elif w is not None:
            n = w.shape[0]
        else:
            return None  # neither running statistics nor an affine weight: nothing to resize
        if n == old.num_features:
            return None
        return type(old)(n, old.eps, old.momentum, old.affine, old.track_running_stats)
    if w is None or ref is None or tuple(w.shape) == tuple(ref.shape):
        return None
    kw: dict[str, Any] = {"device": ref.device, "dtype": ref.dtype}
    if isinstance(old, _CONV):
        out = w.shape[0]
        depthwise = old.groups > 1 and old.groups == old.in_channels == old.out_channels
        groups = out if depthwise else old.groups
        # torch's stubs type ConvNd.kernel_size/stride/padding/dilation as tuple[int, ...] while each
        # of Conv1d/2d/3d wants its own arity: the values come from a module of that same class
        return type(old)(
            w.shape[1] * groups,
            out,
            old.kernel_size,  # type: ignore[arg-type]
            old.stride,  # type: ignore[arg-type]
            old.padding,  # type: ignore[arg-type]
            old.dilation,  # type: ignore[arg-type]
            groups,
            old.bias is not None,
            old.padding_mode,
            **kw,
        )
    if isinstance(old, nn.Linear):
        return nn.Linear(w.shape[1], w.shape[0], old.bias is not None, **kw)
    if isinstance(old, nn.Embedding):
        return nn.Embedding(
            w.shape[0],
            w.shape[1],
            old.padding_idx,
            old.max_norm,
            old.norm_type,
            old.scale_grad_by_freq,
            old.sparse,
            **kw,
        )
    raise CompressionError(f"cannot resize a {type(old).__name__} to the checkpoint's shape {tuple(w.shape)}")


def load_pruned(model: nn.Module, state_dict: Mapping[str, Any]) -> nn.Module:
    """A copy of ``model`` with its layers resized to the shapes of ``state_dict`` and loaded from it.

    Use it to load a checkpoint of a model pruned by :func:`prune_channels` into a freshly built
    instance of the original architecture.

    Parameters
    ----------
    model : torch.nn.Module
        The original (unpruned) architecture; not modified.
    state_dict : mapping of str to torch.Tensor or numpy.ndarray
        The pruned model's ``state_dict`` (``torch.load`` of what ``torch.save(pruned.state_dict())``
        wrote), or its :func:`coreprune.torch.to_numpy` dict.

    Returns
    -------
    torch.nn.Module
        Loaded strictly (every key must match).

    Raises
    ------
    CompressionError
        If a key is missing or unexpected, or a layer cannot take the checkpoint's shape.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Linear(4, 1))
    >>> small = prune_channels(net, torch.zeros(1, 2), 0.5)
    >>> load_pruned(net, small.state_dict())[0].out_features
    2
    """
    state = {
        k: (torch.from_numpy(np.array(v, copy=True)) if isinstance(v, np.ndarray) else v)
        for k, v in state_dict.items()
    }
    new = copy.deepcopy(model)
    for name, module in list(new.named_modules()):
        if not isinstance(module, (*_CONV, nn.Linear, *_BN, nn.Embedding)):
            continue
        prefix = f"{name}." if name else ""
        own = {
            k[len(prefix) :]: v
            for k, v in state.items()
            if k.startswith(prefix) and "." not in k[len(prefix) :]
        }
        replacement = _new_module(module, own)
        if replacement is None:
            continue
        if not name:
            new = replacement
        else:
            parent_name, _, leaf = name.rpartition(".")
            setattr(new.get_submodule(parent_name) if parent_name else new, leaf, replacement)
    result = new.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CompressionError(
            f"the checkpoint does not fit {type(model).__name__}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return new


def _shapes(out: Any) -> list[tuple[int, ...]]:
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [s for item in out for s in _shapes(item)]
    return []


def prune_channels(
    model: nn.Module,
    example_inputs: Any,
    amount: float,
    *,
    importance: Importance = "l2",
    scope: str = "layer",
    round_to: int = 1,
    min_keep: float = 0.0,
) -> nn.Module:
    """A new, physically smaller copy of ``model`` with ``amount`` of the channels of every group removed.

    Parameters
    ----------
    model : torch.nn.Module
        Not modified. Traced with ``torch.fx``; see the module docstring for the supported layers.
    example_inputs : torch.Tensor or tuple of tensors
        One forward pass's inputs (any batch size).
    amount : float
        Fraction of the units of each coupling group removed, in ``[0, 1)``.
    importance, scope, round_to, min_keep
        As for :func:`coreprune.structured.select_units` (``"l2"``, ``"l1"``, ``"bn_scale"`` or
        ``f(group, weights)``; ``"layer"`` or ``"global"``; kept counts multiples of ``round_to``;
        per-group floor).

    Returns
    -------
    torch.nn.Module
        A deep copy with resized layers, in ``model``'s training mode; inputs and outputs keep
        their shapes. Save it with ``torch.save(pruned.state_dict(), path)`` and load it back with
        :func:`load_pruned`.

    Raises
    ------
    CompressionError
        If a layer cannot be traced or is not supported (named), on a bad argument, or if the
        rebuilt model does not run or changes an output's shape (a ``forward`` that hard-codes a
        channel count).

    Examples
    --------
    >>> import torch
    >>> from coreprune.torch import mobilenet_student
    >>> small = prune_channels(mobilenet_student(), torch.zeros(1, 1, 28, 28), 0.5)
    >>> small.blocks[2].pointwise.out_channels, small(torch.zeros(2, 1, 28, 28)).shape
    (64, torch.Size([2, 10]))
    """
    graph, weights = trace_graph(model, example_inputs)
    shrunk = prune_graph(
        graph, weights, amount, importance=importance, scope=scope, round_to=round_to, min_keep=min_keep
    )
    new = load_pruned(model, shrunk.weights)
    new.train(model.training)
    inputs = _as_tuple(example_inputs)
    with torch.no_grad():
        was = (model.training, new.training)
        model.eval()
        new.eval()
        try:
            before = model(*inputs)
            after = new(*inputs)
        except Exception as exc:  # the user's forward may raise anything on the new shapes
            raise CompressionError(
                f"the pruned {type(model).__name__} does not run ({exc}); "
                "does its forward hard-code a channel count?"
            ) from exc
        finally:
            model.train(was[0])
            new.train(was[1])
    shapes_before, shapes_after = _shapes(before), _shapes(after)
    if shapes_before != shapes_after:
        raise CompressionError(f"pruning changed the output shapes {shapes_before} -> {shapes_after}")
    return new
