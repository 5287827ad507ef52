"""A symbol-API MXNet checkpoint's graph, read with NumPy and the pure-Python graph builder (MXNet
is not needed): ``coreprune inspect PARAMS --groups SYMBOL.json`` prints its coupling groups,
``coreprune quantize PARAMS --symbol SYMBOL.json`` corrects the biases from it."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ..errors import CompressionError
from ..io import open_weights
from ..structured import (
    Graph,
    Group,
    coupling_groups,
    graph_from_mxnet_json,
    group_importance,
    mxnet_variable_names,
)
from .common import CliError, _print

# a symbol JSON is a few MB even for very large models; more is not a symbol
_MAX_JSON_BYTES = 256 << 20
_HOSTILE = (ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError, RecursionError)


def _input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``data=1x3x224x224`` -> ``("data", (1, 3, 224, 224))``."""
    name, sep, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.replace(",", "x").split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=1x3x224x224, got {text!r}")
    return name, shape


def _read_params(path: str) -> dict[str, np.ndarray]:
    """The checkpoint's arrays, named as the symbol's variables (``arg:``/``aux:`` prefixes dropped)."""
    out: dict[str, np.ndarray] = {}
    with open_weights(path) as reader:
        with _named(path):
            variables = mxnet_variable_names(reader)
        for name in reader:
            out[variables[name]] = np.asarray(reader[name])
    return out


def _guess_inputs(data: Mapping[str, Any], weights: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Shapes of the symbol's data inputs, from the first layer that reads each of them.

    Only the channel count and the rank matter to the graph: a convolution's input has
    ``weight.shape[1] * num_group`` channels and ``2 + len(kernel)`` axes, a dense layer's
    ``weight.shape[1]`` features. Variables read only as a later operand (a ``SoftmaxOutput``'s
    label) get shape ``(1,)``.
    """
    nodes = data["nodes"]
    shapes: dict[str, tuple[int, ...]] = {}
    for i, n in enumerate(nodes):
        if n.get("op") != "null" or n.get("name") in weights:
            continue
        first = [j for j, m in enumerate(nodes) if m.get("inputs") and m["inputs"][0][0] == i]
        later = any(i == ref[0] for m in nodes for ref in (m.get("inputs") or [])[1:])
        if not first:
            if later:
                shapes[n["name"]] = (1,)
            continue
        reader = nodes[first[0]]
        attrs = reader.get("attrs") or reader.get("attr") or reader.get("param") or {}
        if reader.get("op") in ("Convolution", "FullyConnected") and len(reader["inputs"]) > 1:
            weight = weights.get(nodes[reader["inputs"][1][0]]["name"])
            if weight is not None and weight.ndim >= 2:
                if reader["op"] == "FullyConnected":
                    shapes[n["name"]] = (1, int(weight.shape[1]))
                else:
                    groups = int(str(attrs.get("num_group", "1")))
                    shapes[n["name"]] = (1, int(weight.shape[1]) * groups) + (1,) * (weight.ndim - 2)
                continue
        raise CliError(
            f"cannot tell the shape of input {n['name']!r} (read first by {reader.get('op')!r}): "
            f"give --input-shape {n['name']}=1x3x224x224"
        )
    return shapes


def _slices(group: Group) -> list[str]:
    """``key[axis k]`` of every tensor the group slices, with the slices per channel when more than one."""
    per: dict[tuple[str, int, str], int] = {}
    for s in group.units[0].slices:
        per[(s.key, s.axis, s.kind)] = per.get((s.key, s.axis, s.kind), 0) + 1
    return [
        f"{key}[axis {axis}]" + (f" x{n}" if n > 1 else "") + f" ({kind})"
        for (key, axis, kind), n in per.items()
    ]


def _format_groups(groups: list[Group], weights: Mapping[str, np.ndarray]) -> list[str]:
    """Lines describing coupling groups: channels, coupled nodes and tensor slices, L2 importance.

    The importance is the group's L2 norm (the square root of the sum of its ``"l2"`` unit
    scores) and the per-channel scores' minimum, median and maximum.

    Examples
    --------
    >>> import numpy as np
    >>> from coreprune.structured import Graph, Node, coupling_groups
    >>> g = Graph([Node("x", "input", (), 3), Node("c", "conv", ("x",), 2, {"weight": "c.w"}, {"groups": 1}),
    ...            Node("f", "linear", ("c",), 1, {"weight": "f.w"})], ["f"])
    >>> w = {"c.w": np.ones((2, 3, 1, 1)), "f.w": np.ones((1, 2))}
    >>> print("\\n".join(_format_groups(coupling_groups(g, w), w)))
    group c: 2 channels, L2 2.828 (per channel min 4, median 4, max 4)
      nodes: c
      tensors: c.w[axis 0] (producer), f.w[axis 1] (consumer)
    """
    lines = []
    for group in groups:
        scores = group_importance(group, weights, "l2")
        assert scores is not None  # "l2" scores every group
        lines.append(
            f"group {group.name}: {len(group)} channels, L2 {float(np.sqrt(scores.sum())):.4g} "
            f"(per channel min {scores.min():.4g}, median {float(np.median(scores)):.4g}, "
            f"max {scores.max():.4g})"
        )
        lines.append(f"  nodes: {', '.join(group.nodes)}")
        lines.append(f"  tensors: {', '.join(_slices(group))}")
    return lines


def symbol_graph(
    symbol_path: str, params_path: str, input_shapes: Mapping[str, tuple[int, ...]]
) -> tuple[Graph, dict[str, np.ndarray]]:
    """The graph of a symbol-API checkpoint and its arrays named as the symbol's variables.

    The JSON is size-checked and parsed here; a hostile one (or one that does not match the
    parameters) becomes one :class:`CliError` naming the symbol file.
    """
    if os.path.getsize(symbol_path) > _MAX_JSON_BYTES:
        raise CliError(f"{symbol_path}: {os.path.getsize(symbol_path)} bytes is too large for a symbol JSON")
    with open(symbol_path, "rb") as f:
        raw = f.read()
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CliError(f"{symbol_path}: not an MXNet symbol JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or "heads" not in data:
        raise CliError(f"{symbol_path}: not an MXNet symbol JSON (no 'nodes' list and 'heads')")
    weights = _read_params(params_path)
    with _named(symbol_path):
        shapes = _guess_inputs(data, weights) | dict(input_shapes)
        return graph_from_mxnet_json(data, weights, shapes), weights


@contextlib.contextmanager
def _named(path: str) -> Iterator[None]:
    """Errors from a symbol's structure as one CliError naming the file."""
    try:
        yield
    except CliError as exc:
        raise CliError(f"{path}: {exc}") from None
    except _HOSTILE as exc:
        # CompressionError is a ValueError; the rest come from a hostile JSON's odd structure
        what = str(exc) if isinstance(exc, CompressionError) else f"{type(exc).__name__}: {exc}"
        raise CliError(f"{path}: {what}") from None


def _print_groups(args: argparse.Namespace) -> int:
    """``inspect FILE --groups SYMBOL.json``: print (or ``--json``) the checkpoint's coupling groups."""
    path = args.groups
    if args.plot is not None:
        raise CliError("inspect: --plot does not go with --groups")
    graph, weights = symbol_graph(path, args.input, dict(args.input_shape or []))
    with _named(path):
        groups = coupling_groups(graph, weights)
        lines = _format_groups(groups, weights)
    if args.json:
        doc = {"symbol": str(path), "params": str(args.input), "groups": [
            {"name": g.name, "channels": len(g), "nodes": list(g.nodes), "tensors": _slices(g),
             "l2": [float(x) for x in group_importance(g, weights, "l2")]} for g in groups]}
        print(json.dumps(doc, indent=1))
        return 0
    # node and tensor names come from the files: _print escapes what a terminal would act on
    _print(f"{path} + {args.input}: {len(groups)} coupling group(s), {sum(map(len, groups))} prunable "
           f"channels, {len(graph)} nodes")
    for line in lines:
        _print(line)
    return 0
