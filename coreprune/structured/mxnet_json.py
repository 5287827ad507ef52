"""MXNet symbol JSON <-> the structured-pruning graph, in pure Python (MXNet itself is not needed).

:func:`graph_from_mxnet_json` reads the JSON that ``HybridBlock.export``, ``Symbol.tojson`` and
``mx.model.save_checkpoint`` (``prefix-symbol.json``) write, with the checkpoint's parameters (the
``arg:``/``aux:`` arrays, names without the prefix), and builds a
:class:`~coreprune.structured.Graph`; :func:`rewrite_mxnet_json` writes the shrunk channel counts
back into the JSON (``num_filter``, ``num_group``, ``num_hidden``, ``output_dim``), so that the new
symbol and the shrunk parameters form a loadable checkpoint. :func:`graph_from_mxnet_checkpoint`
takes the arrays as the checkpoint file names them (``arg:conv0_weight``; the renaming is
:func:`mxnet_variable_names`) and keys the graph's parameters by those names.

Supported operators (NCHW): ``Convolution`` (plain, grouped, depthwise), ``FullyConnected``
(``flatten`` true, or false on a channels-last input), ``BatchNorm`` (axis 1; its ``eps``, MXNet's
default 1e-3 where the node has none, goes into the graph), ``LayerNorm`` (last axis),
``Embedding``, ``Activation``/``relu``/``sigmoid``/``tanh``/``LeakyReLU`` (not ``prelu``), ``Dropout``,
``Pooling``, ``clip``, ``BlockGrad``, ``_copy``, scalar arithmetic, element-wise and
broadcast ``add``/``sub``/``mul``/``div``, ``Concat``, ``SliceChannel``/``split``, ``Flatten``,
``Reshape`` to ``(0, -1)``, the channel-shuffle pattern ``Reshape((0, -4, g, -1, -2))`` ->
``SwapAxis(1, 2)`` -> ``Reshape((0, -3, -2))``, ``mean``/``sum``/``max`` over non-channel axes,
``softmax``/``log_softmax``/``SoftmaxOutput`` (channels kept). Anything else raises
:class:`~coreprune.errors.CompressionError` naming the operator's node.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import CompressionError
from .graph import Graph, Node
from .slicing import Shrunk

__all__ = ["graph_from_mxnet_json", "graph_from_mxnet_checkpoint", "mxnet_variable_names",
           "rewrite_mxnet_json"]

#: The prefixes ``mx.model.save_checkpoint`` and ``HybridBlock.export`` give arguments and aux states.
_CHECKPOINT_PREFIXES = ("arg:", "aux:")

_UNARY = {
    "Activation",
    "relu",
    "sigmoid",
    "tanh",
    "Dropout",
    "Pooling",
    "clip",
    "BlockGrad",
    "_copy",
    "identity",
    "_plus_scalar",
    "_minus_scalar",
    "_rminus_scalar",
    "_mul_scalar",
    "_div_scalar",
    "_rdiv_scalar",
    "_PlusScalar",
    "_MinusScalar",
    "_MulScalar",
    "_DivScalar",
    "exp",
    "abs",
    "negative",
    "square",
    "sqrt",
    "hard_sigmoid",
    "softsign",
    "erf",
    "Cast",
    "cast",
    "stop_gradient",
}
_ADD = {
    "elemwise_add",
    "_Plus",
    "_plus",
    "broadcast_add",
    "elemwise_sub",
    "_minus",
    "_Minus",
    "broadcast_sub",
}
_MUL = {"elemwise_mul", "_mul", "_Mul", "broadcast_mul", "elemwise_div", "_div", "broadcast_div"}
_SOFTMAX = {"softmax", "log_softmax", "SoftmaxOutput", "SoftmaxActivation"}
_REDUCE = {"mean", "sum", "max", "min"}
_COPY = {"Dropout", "BlockGrad", "_copy", "identity", "Cast", "cast", "stop_gradient"}
_SUM = {"elemwise_add", "_Plus", "_plus", "broadcast_add"}
_INF = float("inf")
#: ``BatchNorm``'s default ``eps`` in MXNet 1.9.1 (``mx.sym.BatchNorm``: ``default=0.0010000000474974513``,
#: the float ``1e-3f`` widened to a double), used where a symbol's node has no ``eps`` attr. Gluon's
#: ``nn.BatchNorm`` (``epsilon=1e-5``) always writes its own.
_MX_BN_EPS = float(np.float32(1e-3))


def _statistics(op: str, a: Mapping[str, str]) -> dict[str, Any]:
    """How an element-wise operator changes per-channel statistics (see coreprune.structured.graph)."""
    if op in _COPY:
        return {"fn": "copy"}
    if op == "relu" or (op == "Activation" and a.get("act_type") == "relu"):
        return {"fn": "clip", "lo": 0.0, "hi": _INF}
    if op == "clip":
        lo, hi = _literal(a.get("a_min"), None), _literal(a.get("a_max"), None)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) and lo < hi:
            return {"fn": "clip", "lo": float(lo), "hi": float(hi)}
    if op == "Pooling" and a.get("pool_type", "max") == "avg":
        return {"fn": "pool"}
    if op in ("sigmoid", "tanh"):
        return {"fn": op}
    if op == "Activation" and a.get("act_type") in ("sigmoid", "tanh"):
        return {"fn": a["act_type"]}
    if op == "LeakyReLU" and a.get("act_type") == "gelu":  # Gluon's nn.GELU, the erf form
        return {"fn": "gelu"}
    return {}


def _eps(a: Mapping[str, str]) -> Any:
    """A ``BatchNorm``'s epsilon: its ``eps`` attr (Gluon always writes one), else the operator's default.

    What is not a number is passed on as it is, for :class:`~coreprune.structured.Graph` to refuse.
    """
    eps = _literal(a.get("eps"), _MX_BN_EPS)
    return float(eps) if isinstance(eps, (int, float)) and not isinstance(eps, bool) else eps


def _attrs(node: Mapping[str, Any]) -> dict[str, str]:
    return dict(node.get("attrs") or node.get("attr") or node.get("param") or {})


def _literal(text: str | None, default: Any = None) -> Any:
    if text is None:
        return default
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {"true": True, "false": False, "none": None}.get(text.strip().lower(), text)


def _load(symbol_json: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(symbol_json, Mapping):
        return dict(symbol_json)
    try:
        data = json.loads(symbol_json)
    except (TypeError, ValueError, RecursionError) as exc:
        raise CompressionError(f"not an MXNet symbol JSON: {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or "heads" not in data:
        raise CompressionError("not an MXNet symbol JSON: no 'nodes' list and 'heads'")
    return data


class _Builder:
    def __init__(
        self, data: dict, weights: Mapping[str, np.ndarray], input_shapes: Mapping[str, tuple]
    ) -> None:
        self.data = data
        self.weights = weights
        self.input_shapes = input_shapes
        self.raw = data["nodes"]
        self.nodes: list[Node] = []
        self.channels: dict[str, int] = {}
        self.axis: dict[str, int] = {}  # channel axis, non-negative
        self.rank: dict[str, int] = {}
        self.out_name: dict[tuple[int, int], str] = {}
        self.params: set[int] = set()
        self.shuffles: dict[int, tuple[str, int] | None] = {}
        self.pooled: set[str] = set()
        self.consumers: dict[int, list[int]] = {}
        for i, n in enumerate(self.raw):
            for src in n.get("inputs", []):
                self.consumers.setdefault(src[0], []).append(i)

    def refuse(self, i: int, what: str) -> CompressionError:
        n = self.raw[i]
        return CompressionError(f"structured pruning cannot handle layer {n['name']!r} ({n['op']}): {what}")

    def src(self, i: int, k: int = 0) -> str:
        ref = self.raw[i]["inputs"][k]
        key = (ref[0], ref[1] if len(ref) > 1 else 0)
        if key not in self.out_name:
            raise self.refuse(i, f"input {self.raw[ref[0]]['name']!r} is not a traced tensor")
        return self.out_name[key]

    def param(self, i: int, k: int) -> str:
        ref = self.raw[i]["inputs"][k]
        name = self.raw[ref[0]]["name"]
        if ref[0] not in self.params:
            raise self.refuse(i, f"its parameter {name!r} is not in the weight dict")
        return name

    def emit(
        self, i: int, op: str, inputs: list[str], channels: int, axis: int, rank: int, **kw: Any
    ) -> None:
        name = self.raw[i]["name"]
        self.add(name, op, inputs, channels, axis, rank, **kw)
        self.out_name[(i, 0)] = name

    def add(
        self, name: str, op: str, inputs: list[str], channels: int, axis: int, rank: int, **kw: Any
    ) -> None:
        self.nodes.append(Node(name, op, tuple(inputs), int(channels), **kw))
        self.channels[name], self.axis[name], self.rank[name] = int(channels), axis % rank, rank

    def same(
        self, i: int, src: str, op: str = "identity", rank: int | None = None, axis: int | None = None,
        stats: Mapping[str, Any] | None = None,
    ) -> None:
        r = self.rank[src] if rank is None else rank
        self.emit(i, op, [src], self.channels[src], self.axis[src] if axis is None else axis, r,
                  attrs=dict(stats or {}))

    def flatten_features(self, i: int) -> int:
        """Features of a flatten: the in_features of the dense layer that reads it."""
        todo, seen = list(self.consumers.get(i, [])), set()
        while todo:
            j = todo.pop()
            if j in seen:
                continue
            seen.add(j)
            op = self.raw[j]["op"]
            if op == "FullyConnected":
                weight = self.raw[self.raw[j]["inputs"][1][0]]["name"]
                if weight not in self.weights:
                    raise self.refuse(j, f"its parameter {weight!r} is not in the weight dict")
                return int(np.shape(self.weights[weight])[1])
            if op in _UNARY:
                todo.extend(self.consumers.get(j, []))
        raise self.refuse(
            i, "a flatten that does not feed a dense layer (its size is unknown without shapes)"
        )

    def run(self) -> Graph:
        for i, n in enumerate(self.raw):
            self.node(i, n)
        heads = []
        for ref in self.data["heads"]:
            key = (ref[0], ref[1] if len(ref) > 1 else 0)
            if key not in self.out_name:
                raise self.refuse(ref[0], "a model output that is not a traced tensor")
            heads.append(self.out_name[key])
        return Graph(self.nodes, heads)

    def node(self, i: int, n: Mapping[str, Any]) -> None:
        op, name, a = n["op"], n["name"], _attrs(n)
        if i in self.shuffles:  # the swap and the closing reshape of a channel shuffle
            shuffle = self.shuffles[i]
            if shuffle is not None:
                src, groups = shuffle
                self.emit(
                    i, "shuffle", [src], self.channels[src], 1, self.rank[src], attrs={"groups": groups}
                )
            return
        if op == "null":
            if name in self.weights:
                self.params.add(i)
            elif name in self.input_shapes:
                shape = tuple(self.input_shapes[name])
                self.add(
                    name,
                    "input",
                    [],
                    shape[1] if len(shape) > 1 else shape[0],
                    1 if len(shape) > 1 else 0,
                    max(len(shape), 1),
                )
                self.out_name[(i, 0)] = name
            else:
                raise CompressionError(f"variable {name!r} is neither in the weight dict nor a given input")
            return
        if op == "Convolution":
            src = self.src(i)
            if self.axis[src] != 1 or not str(a.get("layout", "NCHW")).startswith("NC"):
                raise self.refuse(i, "only channels-first (NC...) convolutions are supported")
            params = {"weight": self.param(i, 1)}
            if not _literal(a.get("no_bias"), False):
                params["bias"] = self.param(i, 2)
            attrs = {"groups": int(_literal(a.get("num_group"), 1))}
            self.emit(i, "conv", [src], int(a["num_filter"]), 1, self.rank[src], params=params, attrs=attrs)
        elif op == "FullyConnected":
            src = self.src(i)
            params = {"weight": self.param(i, 1)}
            if not _literal(a.get("no_bias"), False):
                params["bias"] = self.param(i, 2)
            if _literal(a.get("flatten"), True):
                if self.rank[src] > 2:
                    if self.axis[src] != 1:
                        raise self.refuse(i, "flattening a channels-last input")
                    flat = f"{name}/flatten"
                    feats = int(np.shape(self.weights[params["weight"]])[1])
                    self.add(flat, "flatten", [src], feats, 1, 2)
                    src = flat
                self.emit(i, "linear", [src], int(a["num_hidden"]), 1, 2, params=params)
            else:
                if self.axis[src] != self.rank[src] - 1:
                    raise self.refuse(i, "its input's channels are not on the last axis")
                self.emit(i, "linear", [src], int(a["num_hidden"]), -1, self.rank[src], params=params)
        elif op == "BatchNorm":
            src = self.src(i)
            if int(_literal(a.get("axis"), 1)) % self.rank[src] != self.axis[src]:
                raise self.refuse(i, "it normalises an axis that is not the channel axis")
            roles = ("weight", "bias", "running_mean", "running_var")
            params = {r: self.param(i, k + 1) for k, r in enumerate(roles)}
            fixed = {"fix_gamma": 1} if _literal(a.get("fix_gamma"), True) else {}  # MXNet's default
            self.emit(
                i, "batchnorm", [src], self.channels[src], self.axis[src], self.rank[src], params=params,
                attrs={**fixed, "eps": _eps(a)},
            )
        elif op == "LayerNorm":
            src = self.src(i)
            if int(_literal(a.get("axis"), -1)) % self.rank[src] != self.axis[src]:
                raise self.refuse(i, "it normalises an axis that is not the channel axis")
            params = {"weight": self.param(i, 1), "bias": self.param(i, 2)}
            self.emit(
                i, "layernorm", [src], self.channels[src], self.axis[src], self.rank[src], params=params
            )
        elif op == "Embedding":
            src = self.src(i)
            r = self.rank[src] + 1
            self.emit(
                i, "embedding", [src], int(a["output_dim"]), r - 1, r, params={"weight": self.param(i, 1)}
            )
        elif op == "LeakyReLU" and a.get("act_type", "leaky") in ("prelu",):
            raise self.refuse(i, "PReLU's per-channel slope is not supported")
        elif op in _UNARY or op == "LeakyReLU":
            src = self.src(i)
            self.same(i, src, stats=_statistics(op, a))
            # Global pooling leaves 1 x 1 maps, which is all a later flatten needs to know.
            if src in self.pooled or (op == "Pooling" and _literal(a.get("global_pool"), False)):
                self.pooled.add(name)
        elif op in _ADD or op in _MUL:
            srcs = [self.src(i, k) for k in range(len(n["inputs"]))]
            c = max(self.channels[s] for s in srcs)
            tied = [s for s in srcs if self.channels[s] == c]
            ax = self.axis[tied[0]]
            if len(tied) == 1:
                self.same(i, tied[0])
            else:
                plain = op in _SUM and len(tied) == len(srcs)
                self.emit(i, "add" if op in _ADD else "mul", tied, c, ax, self.rank[tied[0]],
                          attrs={"fn": "sum"} if plain else {})
        elif op in ("Concat", "concat"):
            srcs = [self.src(i, k) for k in range(len(n["inputs"]))]
            dim = int(_literal(a.get("dim"), 1)) % self.rank[srcs[0]]
            ax = self.axis[srcs[0]]
            if dim == ax:
                self.emit(i, "concat", srcs, sum(self.channels[s] for s in srcs), ax, self.rank[srcs[0]])
            else:
                self.emit(
                    i,
                    "add" if len(srcs) > 1 else "identity",
                    srcs,
                    self.channels[srcs[0]],
                    ax,
                    self.rank[srcs[0]],
                )
        elif op in ("SliceChannel", "split"):
            src = self.src(i)
            k = int(a["num_outputs"])
            axis = int(_literal(a.get("axis"), 1)) % self.rank[src]
            squeeze = _literal(a.get("squeeze_axis"), False)
            c = self.channels[src]
            for j in range(k):
                piece = f"{name}/output{j}"
                if axis == self.axis[src]:
                    if squeeze or c % k:
                        raise self.refuse(i, "an uneven or squeezing split of the channel axis")
                    self.add(
                        piece,
                        "slice",
                        [src],
                        c // k,
                        axis,
                        self.rank[src],
                        attrs={"start": j * c // k, "stop": (j + 1) * c // k},
                    )
                else:
                    self.add(piece, "identity", [src], c, self.axis[src], self.rank[src])
                self.out_name[(i, j)] = piece
        elif op in ("Flatten", "flatten"):
            src = self.src(i)
            if self.rank[src] <= 2:
                self.same(i, src, stats={"fn": "copy"})
            elif self.axis[src] == 1:
                feats = self.channels[src] if src in self.pooled else self.flatten_features(i)
                self.emit(i, "flatten", [src], feats, 1, 2)
            else:
                raise self.refuse(i, "flattening a channels-last input")
        elif op == "Reshape":
            self.reshape(i, _literal(a.get("shape"), ()))
        elif op in ("SwapAxis", "swapaxes"):
            raise self.refuse(i, "a transpose that is not part of a channel shuffle")
        elif op in _REDUCE:
            src = self.src(i)
            axes = _literal(a.get("axis"), None)
            if axes is None or _literal(a.get("exclude"), False):
                raise self.refuse(i, "it reduces over the channel axis")
            axes = {x % self.rank[src] for x in ((axes,) if isinstance(axes, int) else axes)}
            if self.axis[src] in axes:
                raise self.refuse(i, "it reduces over the channel axis")
            keep = _literal(a.get("keepdims"), False)
            ax = self.axis[src] - (0 if keep else sum(x < self.axis[src] for x in axes))
            self.same(i, src, rank=self.rank[src] - (0 if keep else len(axes)), axis=ax,
                      stats={"fn": "pool"} if op == "mean" else None)
        elif op in _SOFTMAX:
            src = self.src(i)
            axis = int(_literal(a.get("axis"), -1)) % self.rank[src] if op != "SoftmaxOutput" else 1
            self.same(i, src, "normalize" if axis == self.axis[src] else "identity")
        else:
            raise self.refuse(i, "this operator is not supported")

    def reshape(self, i: int, shape: tuple) -> None:
        src = self.src(i)
        shape = tuple(shape)
        ax, r = self.axis[src], self.rank[src]
        if shape[:1] == (0,) and shape[1:3] and shape[1] == -4 and len(shape) >= 4:
            # First step of a channel shuffle: (N, C, ...) -> (N, g, C/g, ...); resolved at the third.
            swap = [j for j in self.consumers.get(i, []) if self.raw[j]["op"] in ("SwapAxis", "swapaxes")]
            if ax != 1 or len(swap) != 1 or len(self.consumers[i]) != 1:
                raise self.refuse(i, "a reshape of the channel axis that is not a channel shuffle")
            s = swap[0]
            dims = {int(_literal(_attrs(self.raw[s]).get(k), 0)) for k in ("dim1", "dim2")}
            back = self.consumers.get(s, [])
            if dims != {1, 2} or len(back) != 1 or self.raw[back[0]]["op"] != "Reshape":
                raise self.refuse(i, "a reshape of the channel axis that is not a channel shuffle")
            if tuple(_literal(_attrs(self.raw[back[0]]).get("shape"), ()))[:2] != (0, -3):
                raise self.refuse(back[0], "a reshape of the channel axis that is not a channel shuffle")
            groups = int(shape[2]) if shape[2] > 0 else self.channels[src] // int(shape[3])
            self.shuffles[s] = None
            self.shuffles[back[0]] = (src, groups)
            return
        if ax == 1 and shape in ((0, -1), (-1, self.channels[src]) if r == 2 else ((0, -1),)):
            if r <= 2:
                self.same(i, src, stats={"fn": "copy"})
            else:
                self.emit(i, "flatten", [src], self.flatten_features(i), 1, 2)
            return
        raise self.refuse(i, f"a reshape to {shape} that changes the channel axis")


def graph_from_mxnet_json(
    symbol_json: str | Mapping[str, Any],
    weights: Mapping[str, np.ndarray],
    input_shapes: Mapping[str, tuple[int, ...]],
) -> Graph:
    """The structured-pruning graph of an MXNet symbol.

    Parameters
    ----------
    symbol_json : str or dict
        The symbol's JSON text (``prefix-symbol.json``, ``Symbol.tojson()``) or its parsed dict.
    weights : mapping of str to numpy.ndarray
        Every parameter and auxiliary state, named as the symbol's variables (a checkpoint's
        ``arg:``/``aux:`` arrays without the prefix). Only shapes are read.
    input_shapes : mapping of str to tuple of int
        Shape of every data input (``{"data": (1, 3, 224, 224)}``); only the channel axis matters.

    Returns
    -------
    Graph
        Node names are the symbol's node names; a ``SliceChannel``'s pieces are ``name/output<k>``,
        the implicit flatten of a ``FullyConnected`` is ``name/flatten``.

    Raises
    ------
    CompressionError
        On text that is not a symbol JSON, or an operator or layout that is not supported, naming the
        node.

    Examples
    --------
    >>> import numpy as np
    >>> js = '''{"nodes": [{"op": "null", "name": "data", "inputs": []},
    ...   {"op": "null", "name": "c_weight", "inputs": []},
    ...   {"op": "Convolution", "name": "c",
    ...    "attrs": {"num_filter": "4", "kernel": "(1, 1)", "no_bias": "True"},
    ...    "inputs": [[0, 0, 0], [1, 0, 0]]},
    ...   {"op": "Activation", "name": "r", "attrs": {"act_type": "relu"}, "inputs": [[2, 0, 0]]},
    ...   {"op": "null", "name": "fc_weight", "inputs": []},
    ...   {"op": "FullyConnected", "name": "fc", "attrs": {"num_hidden": "2", "no_bias": "True"},
    ...    "inputs": [[3, 0, 0], [4, 0, 0]]}], "heads": [[5, 0, 0]]}'''
    >>> w = {"c_weight": np.zeros((4, 3, 1, 1)), "fc_weight": np.zeros((2, 36))}
    >>> [(n.name, n.op, n.channels) for n in graph_from_mxnet_json(js, w, {"data": (1, 3, 3, 3)})]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('data', 'input', 3), ('c', 'conv', 4), ('r', 'identity', 4), ('fc/flatten', 'flatten', 36),
     ('fc', 'linear', 2)]
    """
    data = _load(symbol_json)
    try:
        return _Builder(data, weights, input_shapes).run()
    except CompressionError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as exc:  # noqa: E501
        # a hand-made or damaged JSON (a node without "op", an input index out of range, an
        # attribute that is not a number): one error of the project's family, not a traceback
        raise CompressionError(f"malformed MXNet symbol JSON: {type(exc).__name__}: {exc}") from exc


def mxnet_variable_names(names: Iterable[str]) -> dict[str, str]:
    """Checkpoint name -> symbol variable name: the ``arg:``/``aux:`` prefix dropped.

    A symbol-API checkpoint (``prefix-0000.params`` from ``mx.model.save_checkpoint`` or
    ``HybridBlock.export``, :func:`coreprune.io.load` of it, ``coreprune.mxnet.to_numpy`` of an
    ``(arg_params, aux_params)`` pair) names its arrays ``arg:conv0_weight``, ``aux:bn0_moving_mean``;
    the symbol names its variables ``conv0_weight``, ``bn0_moving_mean``. Names without a prefix are
    kept as they are.

    Parameters
    ----------
    names : iterable of str
        The checkpoint's array names.

    Returns
    -------
    dict of str to str
        Every name -> its variable name, in input order.

    Raises
    ------
    CompressionError
        If two names are the same variable (``arg:x`` and ``aux:x``, or ``x`` and ``arg:x``): which
        array the symbol reads would be a guess.

    Examples
    --------
    >>> mxnet_variable_names(["arg:conv0_weight", "aux:bn0_moving_mean", "data_mean"])
    {'arg:conv0_weight': 'conv0_weight', 'aux:bn0_moving_mean': 'bn0_moving_mean', 'data_mean': 'data_mean'}
    """
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name in names:
        var = name[len("arg:") :] if name.startswith(_CHECKPOINT_PREFIXES) else name
        if var in seen:
            raise CompressionError(
                f"checkpoint names {seen[var]!r} and {name!r} are the same symbol variable {var!r}"
            )
        seen[var] = out[name] = var
    return out


def graph_from_mxnet_checkpoint(
    symbol_json: str | Mapping[str, Any],
    weights: Mapping[str, np.ndarray],
    input_shapes: Mapping[str, tuple[int, ...]],
) -> Graph:
    """:func:`graph_from_mxnet_json` for arrays named as in the checkpoint file (``arg:``/``aux:``).

    The graph's parameter keys are the names of ``weights`` (``arg:conv0_weight``), so that the graph
    and the checkpoint's arrays go to :func:`coreprune.quantize` (``graph=``) or
    :func:`coreprune.correct_bias` together, with no renaming by hand.

    Parameters
    ----------
    symbol_json : str or dict
        The symbol's JSON text (``prefix-symbol.json``, ``Symbol.tojson()``) or its parsed dict.
    weights : mapping of str to numpy.ndarray
        The checkpoint's arrays, named as in the file (:func:`coreprune.io.load`, or
        ``coreprune.mxnet.to_numpy((arg_params, aux_params))``); see :func:`mxnet_variable_names`.
        Only shapes are read.
    input_shapes : mapping of str to tuple of int
        Shape of every data input, by variable name (``{"data": (1, 3, 224, 224)}``).

    Returns
    -------
    Graph
        As :func:`graph_from_mxnet_json`'s, with parameter keys the names of ``weights``.

    Raises
    ------
    CompressionError
        As :func:`graph_from_mxnet_json` and :func:`mxnet_variable_names`.

    Examples
    --------
    >>> import numpy as np
    >>> js = {"nodes": [{"op": "null", "name": "data", "inputs": []},
    ...   {"op": "null", "name": "fc_weight", "inputs": []},
    ...   {"op": "FullyConnected", "name": "fc", "attrs": {"num_hidden": "2", "no_bias": "True"},
    ...    "inputs": [[0, 0, 0], [1, 0, 0]]}], "heads": [[2, 0, 0]]}
    >>> graph = graph_from_mxnet_checkpoint(js, {"arg:fc_weight": np.zeros((2, 3))}, {"data": (1, 3)})
    >>> dict(graph.nodes["fc"].params)
    {'weight': 'arg:fc_weight'}
    """
    names = mxnet_variable_names(weights)
    graph = graph_from_mxnet_json(symbol_json, {names[k]: v for k, v in weights.items()}, input_shapes)
    key = {var: name for name, var in names.items()}
    nodes = [
        dataclasses.replace(n, params={role: key.get(k, k) for role, k in n.params.items()}) for n in graph
    ]
    return Graph(nodes, graph.outputs)


def rewrite_mxnet_json(symbol_json: str | Mapping[str, Any], shrunk: Shrunk) -> str:
    """The symbol JSON with the channel counts of :func:`~coreprune.structured.shrink`'s result.

    Updates ``num_filter`` and ``num_group`` of convolutions, ``num_hidden`` of dense layers and
    ``output_dim`` of embeddings, and the ``__shape__`` hints of parameter variables; returns new
    JSON text (the input is not modified).

    Parameters
    ----------
    symbol_json : str or dict
    shrunk : Shrunk
        The result of shrinking the graph :func:`graph_from_mxnet_json` built from this JSON.

    Returns
    -------
    str

    Examples
    --------
    >>> import numpy as np
    >>> from coreprune.structured import prune_graph
    >>> js = {"nodes": [{"op": "null", "name": "data", "inputs": []},
    ...   {"op": "null", "name": "a_weight", "inputs": []},
    ...   {"op": "FullyConnected", "name": "a", "attrs": {"num_hidden": "4", "no_bias": "True"},
    ...    "inputs": [[0, 0, 0], [1, 0, 0]]},
    ...   {"op": "null", "name": "b_weight", "inputs": []},
    ...   {"op": "FullyConnected", "name": "b", "attrs": {"num_hidden": "1", "no_bias": "True"},
    ...    "inputs": [[2, 0, 0], [3, 0, 0]]}], "heads": [[4, 0, 0]]}
    >>> w = {"a_weight": np.arange(8.0).reshape(4, 2), "b_weight": np.ones((1, 4))}
    >>> shrunk = prune_graph(graph_from_mxnet_json(js, w, {"data": (1, 2)}), w, 0.5)
    >>> json.loads(rewrite_mxnet_json(js, shrunk))["nodes"][2]["attrs"]["num_hidden"]
    '2'
    """
    data = json.loads(json.dumps(_load(symbol_json)))
    for n in data["nodes"]:
        key = "attrs" if "attrs" in n else ("attr" if "attr" in n else "param")
        attrs = n.get(key)
        name = n["name"]
        if n["op"] == "null":
            if attrs and "__shape__" in attrs and name in shrunk.weights:
                attrs["__shape__"] = str(tuple(shrunk.weights[name].shape))
            continue
        if name not in shrunk.channels or attrs is None:
            continue
        if n["op"] == "Convolution":
            attrs["num_filter"] = str(shrunk.channels[name])
            if name in shrunk.groups:
                attrs["num_group"] = str(shrunk.groups[name])
        elif n["op"] == "FullyConnected":
            attrs["num_hidden"] = str(shrunk.channels[name])
        elif n["op"] == "Embedding":
            attrs["output_dim"] = str(shrunk.channels[name])
    return json.dumps(data, indent=2)
