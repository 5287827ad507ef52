"""The framework-free structured-pruning core: graph checks, coupling, selection, shrinking, N:M masks.

Each coupling rule is checked by executing the graph in plain NumPy (a tiny interpreter below):
zeroing the removed units and running the dense graph must give what the shrunk graph gives.
"""

from __future__ import annotations

import numpy as np
import pytest

from coreprune import apply_masks
from coreprune.arch import channel_shuffle
from coreprune.errors import CompressionError
from coreprune.structured import (
    Graph,
    Node,
    coupling_groups,
    graph_from_mxnet_checkpoint,
    graph_from_mxnet_json,
    group_importance,
    mxnet_variable_names,
    nm_masks,
    prune_graph,
    select_units,
    shrink,
    zero_units,
)


def _run(graph: Graph, weights: dict, x: np.ndarray, groups: dict | None = None) -> np.ndarray:
    """Execute a graph of 1x1 convs / linears on (N, C) features (enough for every channel rule)."""
    vals = {}
    for n in graph:
        ins = [vals[i] for i in n.inputs]
        if n.op == "input":
            vals[n.name] = x
        elif n.op in ("conv", "linear"):
            w = weights[n.params["weight"]].reshape(weights[n.params["weight"]].shape[0], -1)
            g = (groups or {}).get(n.name, n.attrs.get("groups", 1))
            if g == 1:
                y = ins[0] @ w.T
            else:  # depthwise
                y = ins[0] * w[:, 0]
            if "bias" in n.params:
                y = y + weights[n.params["bias"]]
            vals[n.name] = y
        elif n.op == "batchnorm":
            p = {r: weights[k] for r, k in n.params.items()}
            y = (ins[0] - p["running_mean"]) / np.sqrt(p["running_var"] + 1e-5)
            vals[n.name] = y * p["weight"] + p["bias"]
        elif n.op == "identity":
            vals[n.name] = np.tanh(ins[0])
        elif n.op == "add":
            vals[n.name] = ins[0] + ins[1]
        elif n.op == "mul":
            vals[n.name] = ins[0] * ins[1]
        elif n.op == "concat":
            vals[n.name] = np.concatenate(ins, axis=1)
        elif n.op == "shuffle":
            vals[n.name] = channel_shuffle(ins[0], n.attrs["groups"])
        elif n.op == "flatten":
            s = n.channels // graph.nodes[n.inputs[0]].channels
            vals[n.name] = np.repeat(ins[0], s, axis=1) * np.tile(np.arange(1, s + 1), ins[0].shape[1])
    return vals[graph.outputs[0]]


def _shrunk_graph(graph: Graph, shrunk) -> Graph:
    def attrs(n):
        return {"groups": shrunk.groups[n.name]} if n.op == "conv" else n.attrs

    nodes = [Node(n.name, n.op, n.inputs, shrunk.channels[n.name], n.params, attrs(n)) for n in graph]
    return Graph(nodes, graph.outputs)


def _net():
    """stem -> bn -> [a, b] residual pair -> concat with a depthwise branch -> shuffle -> flatten -> fc."""
    nodes = [
        Node("x", "input", (), 3),
        Node("stem", "conv", ("x",), 8, {"weight": "stem.w", "bias": "stem.b"}, {"groups": 1}),
        Node(
            "bn",
            "batchnorm",
            ("stem",),
            8,
            {r: f"bn.{r}" for r in ("weight", "bias", "running_mean", "running_var")},
        ),
        Node("act", "identity", ("bn",), 8),
        Node("a", "conv", ("act",), 8, {"weight": "a.w"}, {"groups": 1}),
        Node("sum", "add", ("a", "act"), 8),
        Node("dw", "conv", ("sum",), 8, {"weight": "dw.w"}, {"groups": 8}),
        Node("b", "conv", ("sum",), 4, {"weight": "b.w", "bias": "b.b"}, {"groups": 1}),
        Node("gate", "mul", ("b", "b"), 4),
        Node("cat", "concat", ("dw", "gate"), 12),
        Node("mix", "conv", ("cat",), 6, {"weight": "mix.w"}, {"groups": 1}),
        Node("shuf", "shuffle", ("mix",), 6, attrs={"groups": 2}),
        Node("c", "conv", ("shuf",), 6, {"weight": "c.w"}, {"groups": 1}),
        Node("flat", "flatten", ("c",), 12),
        Node("fc", "linear", ("flat",), 2, {"weight": "fc.w", "bias": "fc.b"}),
    ]
    rng = np.random.default_rng(0)
    w = {
        "stem.w": rng.normal(size=(8, 3, 1, 1)),
        "stem.b": rng.normal(size=8),
        "bn.weight": rng.uniform(0.5, 1.5, 8),
        "bn.bias": rng.normal(size=8),
        "bn.running_mean": rng.normal(size=8),
        "bn.running_var": rng.uniform(0.5, 1.5, 8),
        "a.w": rng.normal(size=(8, 8, 1, 1)),
        "dw.w": rng.normal(size=(8, 1, 3, 3)),
        "b.w": rng.normal(size=(4, 8, 1, 1)),
        "b.b": rng.normal(size=4),
        "mix.w": rng.normal(size=(6, 12, 1, 1)),
        "c.w": rng.normal(size=(6, 6, 1, 1)),
        "fc.w": rng.normal(size=(2, 12)),
        "fc.b": rng.normal(size=2),
        "steps": np.array(7),
    }
    return Graph(nodes, ["fc"]), w


def test_groups_of_the_reference_net():
    graph, w = _net()
    groups = coupling_groups(graph, w)
    names = {g.name: (len(g), g.nodes) for g in groups}
    # stem, bn, the residual sum and the depthwise conv share channels; the concat joins b's (through
    # the gate) to them in one group of 8 + 4 units.
    assert names["stem"][0] == 12 and {"stem", "bn", "a", "sum", "dw", "b", "gate", "cat"} <= set(
        names["stem"][1]
    )
    assert "b" not in names
    assert names["mix"][0] == 3  # 6 channels shuffled in 2 groups: 3 units of 2 channels
    assert names["c"][0] == 6  # flatten into fc: 6 units of 2 features each
    unit = groups[[g.name for g in groups].index("c")].units[1]
    assert sorted((s.key, s.axis, s.index) for s in unit.slices if s.key == "fc.w") == [
        ("fc.w", 1, 2),
        ("fc.w", 1, 3),
    ]
    mix = groups[[g.name for g in groups].index("mix")]
    assert [sorted(i for n, i in u.channels if n == "mix") for u in mix.units] == [[0, 3], [1, 4], [2, 5]]


@pytest.mark.parametrize("amount", [0.25, 0.5, 0.7])
def test_zeroed_dense_graph_equals_shrunk_graph(amount):
    graph, w = _net()
    groups = coupling_groups(graph, w)
    keep = select_units(groups, w, amount)
    shrunk = shrink(graph, w, groups, keep)
    x = np.random.default_rng(1).normal(size=(5, 3))
    dense = _run(graph, zero_units(w, groups, keep), x)
    small = _run(_shrunk_graph(graph, shrunk), shrunk.weights, x, shrunk.groups)
    np.testing.assert_allclose(small, dense, rtol=1e-12, atol=1e-12)
    assert sum(v.size for v in shrunk.weights.values()) < sum(v.size for v in w.values())
    assert shrunk.weights["steps"] == 7
    assert not np.allclose(_run(graph, w, x), dense)


def test_inputs_are_not_modified_and_outputs_are_new_arrays():
    graph, w = _net()
    before = {k: v.copy() for k, v in w.items()}
    out = prune_graph(graph, w, 0.5)
    assert all(np.array_equal(before[k], w[k]) for k in w)
    assert all(not np.shares_memory(out.weights[k], w[k]) for k in w)


def test_l2_importance_matches_a_direct_sum():
    graph, w = _net()
    g = coupling_groups(graph, w)[2]  # c: producer rows, then two fc columns per channel (flatten)
    assert g.name == "c"
    expected = (w["c.w"] ** 2).reshape(6, -1).sum(1) + (w["fc.w"] ** 2).sum(0).reshape(6, 2).sum(1)
    np.testing.assert_allclose(group_importance(g, w, "l2"), expected)
    expected_l1 = np.abs(w["c.w"]).reshape(6, -1).sum(1) + np.abs(w["fc.w"]).sum(0).reshape(6, 2).sum(1)
    np.testing.assert_allclose(group_importance(g, w, "l1"), expected_l1)
    assert group_importance(g, w, "bn_scale") is None
    stem = coupling_groups(graph, w)[0]  # b's 4 units have no batch norm: they score 0
    np.testing.assert_allclose(
        group_importance(stem, w, "bn_scale"), np.r_[np.abs(w["bn.weight"]), np.zeros(4)]
    )


def test_selection_counts_rounding_floor_and_ties():
    graph = Graph(
        [
            Node("x", "input", (), 1),
            Node("a", "linear", ("x",), 20, {"weight": "a"}),
            Node("b", "linear", ("a",), 1, {"weight": "b"}),
        ],
        ["b"],
    )
    w = {"a": np.arange(20.0).reshape(20, 1), "b": np.zeros((1, 20))}
    groups = coupling_groups(graph, w)
    assert select_units(groups, w, 0.5)["a"].tolist() == list(range(10, 20))
    assert len(select_units(groups, w, 0.3, round_to=8)["a"]) == 8  # int(14) rounded down to 8
    assert len(select_units(groups, w, 0.9, min_keep=0.5)["a"]) == 10
    tied = {"a": np.ones((20, 1)), "b": np.zeros((1, 20))}
    assert select_units(groups, tied, 0.25)["a"].tolist() == list(range(5, 20))
    with pytest.raises(CompressionError, match="amount"):
        select_units(groups, w, 1.0)
    with pytest.raises(CompressionError, match="scope"):
        select_units(groups, w, 0.5, scope="net")
    with pytest.raises(CompressionError, match="round_to"):
        select_units(groups, w, 0.5, round_to=0)


def test_global_scope_prefers_the_weak_group():
    graph = Graph(
        [
            Node("x", "input", (), 1),
            Node("a", "linear", ("x",), 10, {"weight": "a"}),
            Node("b", "linear", ("a",), 10, {"weight": "b"}),
            Node("c", "linear", ("b",), 1, {"weight": "c"}),
        ],
        ["c"],
    )
    rng = np.random.default_rng(0)
    w = {"a": rng.normal(size=(10, 1)), "b": rng.normal(size=(10, 10)), "c": rng.normal(size=(1, 10))}
    w["a"][:6] *= 1e-3  # six of a's channels are nearly dead (relative to their group's mean)
    w["b"][:, :6] *= 1e-3
    keep = select_units(coupling_groups(graph, w), w, 0.3, scope="global")
    assert len(keep["a"]) == 4 and len(keep["b"]) == 10
    keep = select_units(coupling_groups(graph, w), w, 0.3, scope="global", min_keep=0.8)
    assert len(keep["a"]) == 8


def test_graph_and_shape_errors_name_the_layer():
    x = Node("x", "input", (), 3)
    with pytest.raises(CompressionError, match="'y'.*unknown op"):
        Graph([x, Node("y", "transpose", ("x",), 3)], ["y"])
    with pytest.raises(CompressionError, match="'s'.*channel counts differ"):
        Graph([x, Node("a", "conv", ("x",), 4, {"weight": "a"}), Node("s", "add", ("x", "a"), 3)], ["s"])
    with pytest.raises(CompressionError, match="'c'.*inputs have"):
        Graph([x, Node("c", "concat", ("x", "x"), 5)], ["c"])
    with pytest.raises(CompressionError, match="not defined"):
        Graph([Node("r", "identity", ("x",), 3)], ["r"])
    g = Graph([x, Node("a", "conv", ("x",), 4, {"weight": "a.w"}, {"groups": 1})], ["a"])
    with pytest.raises(CompressionError, match="'a'.*does not map 3 -> 4"):
        coupling_groups(g, {"a.w": np.zeros((4, 2, 1, 1))})
    with pytest.raises(CompressionError, match="'a.w' is not in the weight dict"):
        coupling_groups(g, {})


def test_checkpoint_names_are_symbol_variables_and_key_the_graph():
    names = mxnet_variable_names(["arg:c_weight", "aux:bn_moving_mean", "plain_weight"])
    assert names == {"arg:c_weight": "c_weight", "aux:bn_moving_mean": "bn_moving_mean",
                     "plain_weight": "plain_weight"}
    for clash in (["arg:x", "aux:x"], ["x", "arg:x"]):
        with pytest.raises(CompressionError, match="same symbol variable 'x'"):
            mxnet_variable_names(clash)
    js = {"nodes": [{"op": "null", "name": "data", "inputs": []},
                    {"op": "null", "name": "c_weight", "inputs": []},
                    {"op": "Convolution", "name": "c", "attrs": {"num_filter": "4", "kernel": "(1, 1)",
                                                                  "no_bias": "True"},
                     "inputs": [[0, 0, 0], [1, 0, 0]]},
                    *[{"op": "null", "name": f"bn_{r}", "inputs": []}
                      for r in ("gamma", "beta", "moving_mean", "moving_var")],
                    {"op": "BatchNorm", "name": "bn", "attrs": {"eps": "0.002"},
                     "inputs": [[2, 0, 0], [3, 0, 0], [4, 0, 0], [5, 0, 1], [6, 0, 1]]}],
          "heads": [[7, 0, 0]]}
    weights = {"arg:c_weight": np.ones((4, 3, 1, 1)), "arg:bn_gamma": np.ones(4), "arg:bn_beta": np.ones(4),
               "aux:bn_moving_mean": np.zeros(4), "aux:bn_moving_var": np.ones(4)}
    graph = graph_from_mxnet_checkpoint(js, weights, {"data": (1, 3, 2, 2)})
    assert dict(graph.nodes["c"].params) == {"weight": "arg:c_weight"}
    assert dict(graph.nodes["bn"].params) == {"weight": "arg:bn_gamma", "bias": "arg:bn_beta",
                                              "running_mean": "aux:bn_moving_mean",
                                              "running_var": "aux:bn_moving_var"}
    assert dict(graph.nodes["bn"].attrs) == {"fix_gamma": 1, "eps": 0.002}  # MXNet's fix_gamma default
    with pytest.raises(CompressionError, match="'c_weight' is neither in the weight dict"):
        graph_from_mxnet_json(js, weights, {"data": (1, 3, 2, 2)})  # the prefixed names, unrenamed


def test_locked_channels_are_not_grouped():
    nodes = [
        Node("x", "input", (), 4),
        Node("g", "conv", ("x",), 4, {"weight": "g"}, {"groups": 2}),
        Node("h", "conv", ("g",), 6, {"weight": "h"}, {"groups": 1}),
        Node("ln", "layernorm", ("h",), 6, {"weight": "ln"}),
        Node("y", "linear", ("ln",), 2, {"weight": "y"}),
    ]
    w = {"g": np.ones((4, 2, 1, 1)), "h": np.ones((6, 4, 1, 1)), "ln": np.ones(6), "y": np.ones((2, 6))}
    assert coupling_groups(Graph(nodes, ["y"]), w) == []


def _nm_reference(w, n, m):
    out = np.zeros(w.shape, dtype=bool)
    for idx in np.ndindex(w.shape[0], *w.shape[2:]):
        row = w[(idx[0], slice(None), *idx[1:])]
        for start in range(0, w.shape[1], m):
            run = np.abs(row[start : start + m])
            best = sorted(range(m), key=lambda i: (-run[i], i))[:n]
            for i in best:
                out[(idx[0], start + i, *idx[1:])] = True
    return out


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (3, 3)])
def test_nm_masks_match_a_loop_reference(n, m):
    rng = np.random.default_rng(n * 10 + m)
    w = {
        "conv": rng.normal(size=(3, 2 * m, 2, 2)).astype(np.float32),
        "fc": rng.normal(size=(4, 3 * m)),
        "bias": np.ones(4),
    }
    w["fc"][0, :m] = 1.0  # ties: earlier positions win
    masks = nm_masks(w, n, m)
    assert sorted(masks) == ["conv", "fc"]
    for k in masks:
        np.testing.assert_array_equal(masks[k], _nm_reference(w[k], n, m))
        runs = np.moveaxis(masks[k], 1, -1).reshape(-1, m)
        assert (runs.sum(1) == n).all()
    pruned = apply_masks(w, masks)
    assert (pruned["fc"] == 0).sum() == w["fc"].size * (m - n) // m


def test_nm_errors():
    with pytest.raises(CompressionError, match="'fc'.*multiple of m=4"):
        nm_masks({"fc": np.ones((2, 6))})
    with pytest.raises(CompressionError, match="exceed"):
        nm_masks({"fc": np.ones((2, 8))}, 5, 4)
    with pytest.raises(CompressionError, match="NaN"):
        nm_masks({"fc": np.full((2, 8), np.nan)})
