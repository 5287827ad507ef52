"""Structured channel pruning of MXNet models: symbol JSON in, smaller symbol and parameters out.

What it does
------------
* :func:`prune_symbol` prunes a symbol (its JSON) with its ``arg``/``aux`` parameters: the
  framework-free :func:`coreprune.structured.graph_from_mxnet_json` reads the graph,
  :mod:`coreprune.structured` couples, scores, selects and shrinks, and
  :func:`coreprune.structured.rewrite_mxnet_json` writes the new channel counts into the JSON.
* :func:`prune_checkpoint` does it to a symbol-API checkpoint on disk (``prefix-symbol.json`` +
  ``prefix-EPOCH.params``), writing a new checkpoint.
* :func:`prune_channels` does it to a Gluon ``HybridBlock`` (traced by calling it on a symbol, which
  leaves the block as it was) and returns a new ``gluon.SymbolBlock`` holding the smaller model.
* :func:`trace_graph` returns the framework-free graph and the weights of a Gluon block, or of a
  symbol with its ``(arg_params, aux_params)``, keyed as :func:`coreprune.mxnet.to_numpy` keys them
  (for :func:`coreprune.quantize`'s bias correction, ``graph=``).

The supported operators are listed in :mod:`coreprune.structured.mxnet_json`; anything else raises
:class:`~coreprune.errors.CompressionError` naming the node.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

import mxnet as mx
from coreprune.errors import CompressionError
from coreprune.structured import (
    Graph,
    Importance,
    graph_from_mxnet_checkpoint,
    graph_from_mxnet_json,
    mxnet_variable_names,
    prune_graph,
    rewrite_mxnet_json,
)
from mxnet import gluon

from .convert import to_numpy

__all__ = ["prune_symbol", "prune_checkpoint", "prune_channels", "block_symbol", "trace_graph"]


def _numpy(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: (v.asnumpy() if isinstance(v, mx.nd.NDArray) else np.asarray(v)) for k, v in params.items()}


def prune_symbol(
    symbol_json: str,
    arg_params: Mapping[str, Any],
    aux_params: Mapping[str, Any],
    amount: float,
    input_shapes: Mapping[str, tuple[int, ...]],
    *,
    importance: Importance = "l2",
    scope: str = "layer",
    round_to: int = 1,
    min_keep: float = 0.0,
) -> tuple[str, dict[str, mx.nd.NDArray], dict[str, mx.nd.NDArray]]:
    """Prune the channels of a symbol and its parameters.

    Parameters
    ----------
    symbol_json : str
        ``Symbol.tojson()`` or the text of ``prefix-symbol.json``.
    arg_params, aux_params : mapping of str to NDArray or numpy.ndarray
        As ``mx.model.load_checkpoint`` returns them (names without ``arg:``/``aux:``); not modified.
    amount : float
        Fraction of each coupling group's channels removed, in ``[0, 1)``.
    input_shapes : mapping of str to tuple of int
        Shape of every data input, e.g. ``{"data": (1, 3, 224, 224)}``.
    importance, scope, round_to, min_keep
        As for :func:`coreprune.structured.select_units`.

    Returns
    -------
    (str, dict, dict)
        The new JSON and new ``arg`` and ``aux`` NDArray dicts (CPU, original dtypes).

    Raises
    ------
    CompressionError
        On an unsupported operator (named) or a bad argument.

    Examples
    --------
    >>> import mxnet as mx
    >>> from coreprune.mxnet import mobilenet_student
    >>> net = mobilenet_student(0.5); net.initialize()
    >>> sym = net(mx.sym.var("data"))
    >>> params = {p.name: p.data() for p in net.collect_params().values()}
    >>> aux_names = set(sym.list_auxiliary_states())
    >>> arg = {k: v for k, v in params.items() if k not in aux_names}
    >>> aux = {k: v for k, v in params.items() if k in aux_names}
    >>> js, arg2, aux2 = prune_symbol(sym.tojson(), arg, aux, 0.5, {"data": (1, 1, 28, 28)})
    >>> mx.sym.load_json(js).infer_shape(data=(2, 1, 28, 28))[1]
    [(2, 10)]
    """
    arg, aux = _numpy(arg_params), _numpy(aux_params)
    overlap = set(arg) & set(aux)
    if overlap:
        raise CompressionError(f"names in both arg and aux params: {sorted(overlap)[:5]}")
    weights = {**arg, **aux}
    graph = graph_from_mxnet_json(symbol_json, weights, input_shapes)
    shrunk = prune_graph(
        graph, weights, amount, importance=importance, scope=scope, round_to=round_to, min_keep=min_keep
    )
    new_json = rewrite_mxnet_json(symbol_json, shrunk)
    to_nd = lambda names: {k: mx.nd.array(shrunk.weights[k], dtype=shrunk.weights[k].dtype) for k in names}
    return new_json, to_nd(arg), to_nd(aux)


def prune_checkpoint(
    prefix: str,
    epoch: int,
    new_prefix: str,
    amount: float,
    input_shapes: Mapping[str, tuple[int, ...]],
    **kw: Any,
) -> None:
    """Prune a symbol-API checkpoint on disk into a new checkpoint ``new_prefix`` (same epoch).

    Parameters
    ----------
    prefix, epoch : str, int
        Read ``prefix-symbol.json`` and ``prefix-%04d.params`` (``mx.model.load_checkpoint``).
    new_prefix : str
        Written with ``mx.model.save_checkpoint``; must differ from ``prefix``.
    amount, input_shapes, **kw
        As for :func:`prune_symbol`.

    Raises
    ------
    CompressionError
        If ``new_prefix`` is ``prefix``, or as :func:`prune_symbol`.

    Examples
    --------
    >>> import mxnet as mx, os, tempfile
    >>> from coreprune.mxnet import squeezenet_student
    >>> net = squeezenet_student(); net.initialize(); net.hybridize(); _ = net(mx.nd.zeros((1, 1, 28, 28)))
    >>> d = tempfile.mkdtemp(); net.export(os.path.join(d, "sq"))
    >>> prune_checkpoint(os.path.join(d, "sq"), 0, os.path.join(d, "small"), 0.5, {"data": (1, 1, 28, 28)})
    >>> sym, arg, aux = mx.model.load_checkpoint(os.path.join(d, "small"), 0)
    >>> sym.infer_shape(data=(3, 1, 28, 28))[1]
    [(3, 10)]
    """
    if os.path.abspath(prefix) == os.path.abspath(new_prefix):
        raise CompressionError(f"new_prefix must differ from prefix {prefix!r}: inputs are never overwritten")
    try:
        sym, arg, aux = mx.model.load_checkpoint(prefix, epoch)
    except mx.base.MXNetError as exc:
        raise CompressionError(f"cannot read the checkpoint {prefix!r} epoch {epoch}: {exc}") from exc
    js, arg2, aux2 = prune_symbol(sym.tojson(), arg, aux, amount, input_shapes, **kw)
    mx.model.save_checkpoint(new_prefix, epoch, mx.sym.load_json(js), arg2, aux2)


def block_symbol(block: gluon.HybridBlock) -> tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The symbol JSON of a Gluon block and its parameters split into ``arg`` and ``aux`` (copies).

    The block is called on ``mx.sym.var("data")``, which neither hybridizes it nor runs it.

    Returns
    -------
    (str, dict, dict)
        JSON text; ``arg`` and ``aux`` arrays named by the parameters' ``name`` (``conv0_weight``).

    Examples
    --------
    >>> from coreprune.mxnet import Fire
    >>> fire = Fire(8, 2, 4, 4); fire.initialize()
    >>> js, arg, aux = block_symbol(fire)
    >>> [n.split("_", 1)[1] for n in sorted(arg)[:2]]   # after Gluon's per-process block prefix
    ['conv0_bias', 'conv0_weight']
    """
    sym = block(mx.sym.var("data"))
    if isinstance(sym, (list, tuple)):
        sym = mx.sym.Group(list(sym))
    aux_names = set(sym.list_auxiliary_states())
    used = set(sym.list_arguments()) | aux_names
    params = {p.name: p.data().asnumpy() for p in block.collect_params().values() if p.name in used}
    arg = {k: v for k, v in params.items() if k not in aux_names}
    aux = {k: v for k, v in params.items() if k in aux_names}
    return sym.tojson(), arg, aux


def trace_graph(
    model: gluon.HybridBlock | mx.sym.Symbol,
    example_inputs: Any,
    *,
    params: tuple[Mapping[str, mx.nd.NDArray], Mapping[str, mx.nd.NDArray]]
    | Mapping[str, mx.nd.NDArray]
    | None = None,
) -> tuple[Graph, dict[str, np.ndarray]]:
    """The core graph of a Gluon block or a symbol, and its weights as ``dict[str, numpy.ndarray]`` (copies).

    The MXNet twin of :func:`coreprune.torch.trace_graph`; either way
    :func:`coreprune.structured.graph_from_mxnet_json` reads the graph, and the graph's parameter
    keys are the keys of the weight dict, which are those of :func:`coreprune.mxnet.to_numpy`:

    * a Gluon block is called on a symbol (neither hybridized nor run); keys are the block's
      structural names, as ``to_numpy(block)`` gives them (``features.0.weight``,
      ``features.1.running_mean``);
    * a symbol (``mx.model.load_checkpoint``, the Module API, ``mx.sym``) holds no weights: they come
      with ``params``, and the keys are those of ``to_numpy(params)``, ``arg:conv0_weight`` and
      ``aux:bn0_moving_mean`` for an ``(arg_params, aux_params)`` pair
      (:func:`coreprune.structured.graph_from_mxnet_checkpoint`).

    Parameters
    ----------
    model : mxnet.gluon.HybridBlock or mxnet.sym.Symbol
        An initialised block, or a symbol; not modified. One data input: a symbol's is its free
        variable named ``data``, or its only one; other free variables may only be labels read by a
        loss head (``SoftmaxOutput``'s ``softmax_label``).
    example_inputs : mxnet.nd.NDArray or a 1-tuple of it
        An input batch; only its shape is read.
    params : (arg_params, aux_params) or mapping of str to NDArray, optional
        A symbol's parameters: the pair ``mx.model.load_checkpoint`` and ``Module.get_params()``
        return, or the dict ``mx.nd.load`` reads from its ``.params`` file (``arg:``/``aux:`` keys).
        Required for a symbol; refused for a block, which holds its own.

    Returns
    -------
    (Graph, dict of str to numpy.ndarray)
        Nodes named as the symbol's nodes (``mobilenetstudent0_conv0_fwd``); parameter keys and the
        weight dict's keys as above.

    Raises
    ------
    CompressionError
        On an unsupported operator (named), more than one data input, a symbol without ``params`` or
        a block with them.

    Examples
    --------
    >>> import mxnet as mx
    >>> net = mx.gluon.nn.HybridSequential()
    >>> net.add(mx.gluon.nn.Conv2D(8, 3, in_channels=3), mx.gluon.nn.BatchNorm(in_channels=8))
    >>> net.initialize()
    >>> graph, weights = trace_graph(net, mx.nd.zeros((1, 3, 8, 8)))
    >>> [(n.op, dict(n.params)) for n in graph][1]
    ('conv', {'weight': '0.weight', 'bias': '0.bias'})

    A symbol-API checkpoint (here a symbol and its parameters from the Module API):

    >>> sym = mx.sym.BatchNorm(mx.sym.Convolution(mx.sym.var("data"), num_filter=4, kernel=(1, 1),
    ...                                           name="c"), name="bn")
    >>> mod = mx.mod.Module(sym, label_names=None)
    >>> mod.bind([("data", (1, 3, 8, 8))]); mod.init_params()
    >>> graph, weights = trace_graph(sym, mx.nd.zeros((1, 3, 8, 8)), params=mod.get_params())
    >>> dict(graph.nodes["bn"].params)["running_mean"], sorted(weights)[0]
    ('aux:bn_moving_mean', 'arg:bn_beta')
    """
    if isinstance(example_inputs, (tuple, list)):
        if len(example_inputs) != 1:
            raise CompressionError(f"one data input is supported, got {len(example_inputs)}")
        example_inputs = example_inputs[0]
    shape = tuple(example_inputs.shape)
    if isinstance(model, mx.sym.Symbol):
        if params is None:
            raise CompressionError("trace_graph: a symbol holds no weights; give them as params=(arg_params, "
                                   "aux_params), as mx.model.load_checkpoint returns them")
        weights = to_numpy(params)
        graph = graph_from_mxnet_checkpoint(model.tojson(), weights, _symbol_inputs(model, weights, shape))
        return graph, weights
    if params is not None:
        raise CompressionError("trace_graph: params= is for a symbol; a Gluon block holds its own parameters")
    js, arg, aux = block_symbol(model)
    graph = graph_from_mxnet_json(js, {**arg, **aux}, {"data": shape})
    structural = {p.name: key for key, p in model._collect_params_with_prefix().items()}
    nodes = [
        dataclasses.replace(n, params={role: structural.get(k, k) for role, k in n.params.items()})
        for n in graph
    ]
    weights = {structural.get(k, k): v for k, v in {**arg, **aux}.items()}
    return Graph(nodes, graph.outputs), weights


def _symbol_inputs(
    sym: mx.sym.Symbol, weights: Mapping[str, np.ndarray], shape: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    """The shapes of a symbol's free variables (neither a parameter nor an aux state): ``shape`` for
    its one data input, ``(1,)`` for labels (variables no operator reads as its first input)."""
    have = set(mxnet_variable_names(weights).values())
    free = [v for v in (*sym.list_arguments(), *sym.list_auxiliary_states()) if v not in have]
    nodes = json.loads(sym.tojson())["nodes"]
    first = {nodes[n["inputs"][0][0]]["name"] for n in nodes if n["op"] != "null" and n.get("inputs")}
    data = [v for v in free if v in first]
    if len(data) != 1 or (data != ["data"] and "data" in free):
        raise CompressionError(
            f"one data input is supported; the symbol reads {data or free}, which params do not hold "
            "(are parameters missing from params?)"
        )
    return {v: shape if v == data[0] else (1,) for v in free}


def prune_channels(
    model: gluon.HybridBlock,
    example_inputs: mx.nd.NDArray,
    amount: float,
    *,
    importance: Importance = "l2",
    scope: str = "layer",
    round_to: int = 1,
    min_keep: float = 0.0,
) -> gluon.SymbolBlock:
    """A new, physically smaller ``SymbolBlock`` with ``amount`` of each coupling group's channels removed.

    Parameters
    ----------
    model : mxnet.gluon.HybridBlock
        Initialised; not modified (not even hybridized). One data input.
    example_inputs : mxnet.nd.NDArray or a 1-tuple of it
        An input batch (its shape is what matters). Named as in :func:`coreprune.torch.prune_channels`.
    amount, importance, scope, round_to, min_keep
        As for :func:`coreprune.structured.select_units`.

    Returns
    -------
    mxnet.gluon.SymbolBlock
        Input ``data``; outputs of the original shapes. Its parameters keep the original parameter
        names (``mobilenetstudent0_conv0_weight``); save it with ``export``.

    Raises
    ------
    CompressionError
        On an unsupported operator (named), a bad argument, or a pruned model whose outputs change shape.

    Examples
    --------
    >>> import mxnet as mx
    >>> from coreprune.mxnet import mobilenet_student
    >>> net = mobilenet_student(); net.initialize()
    >>> small = prune_channels(net, mx.nd.zeros((1, 1, 28, 28)), 0.5)
    >>> small(mx.nd.zeros((2, 1, 28, 28))).shape
    (2, 10)
    """
    if isinstance(example_inputs, (tuple, list)):
        if len(example_inputs) != 1:
            raise CompressionError(f"one data input is supported, got {len(example_inputs)}")
        example_inputs = example_inputs[0]
    block, example_input = model, example_inputs
    js, arg, aux = block_symbol(block)
    shape = tuple(example_input.shape)
    new_js, arg2, aux2 = prune_symbol(
        js,
        arg,
        aux,
        amount,
        {"data": shape},
        importance=importance,
        scope=scope,
        round_to=round_to,
        min_keep=min_keep,
    )
    with tempfile.TemporaryDirectory() as tmp:
        sym_file, params_file = os.path.join(tmp, "net-symbol.json"), os.path.join(tmp, "net-0000.params")
        with open(sym_file, "w") as f:
            f.write(new_js)
        mx.nd.save(
            params_file,
            {**{f"arg:{k}": v for k, v in arg2.items()}, **{f"aux:{k}": v for k, v in aux2.items()}},
        )
        small = gluon.SymbolBlock.imports(sym_file, ["data"], params_file)
    before = block(example_input)
    after = small(example_input)
    shapes = lambda out: [o.shape for o in (out if isinstance(out, (list, tuple)) else [out])]
    if shapes(before) != shapes(after):
        raise CompressionError(f"pruning changed the output shapes {shapes(before)} -> {shapes(after)}")
    return small
