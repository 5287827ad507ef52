"""Data-free bias correction (coreprune.bias_correction): statistics propagated through the core
graph, and the shift each changed layer's output gets, against sampled and direct references."""

from __future__ import annotations

import numpy as np
import pytest

import coreprune as cp
from coreprune.arch import channel_shuffle
from coreprune.structured import Graph, Node

INF = float("inf")


def _bn(name: str, src: str, c: int) -> Node:
    roles = ("weight", "bias", "running_mean", "running_var")
    return Node(name, "batchnorm", (src,), c, {r: f"{name}.{r}" for r in roles})


def _bn_weights(name: str, gamma, beta, var=None) -> dict[str, np.ndarray]:
    gamma = np.asarray(gamma, np.float32)
    return {f"{name}.weight": gamma, f"{name}.bias": np.asarray(beta, np.float32),
            f"{name}.running_mean": np.zeros_like(gamma),
            f"{name}.running_var": np.ones_like(gamma) if var is None else np.asarray(var, np.float32)}


@pytest.mark.parametrize("lo, hi", [(0.0, INF), (0.0, 6.0), (-1.0, 1.0), (-INF, 0.5)])
def test_clipped_moments_match_sampling(lo, hi):
    gamma, beta = [0.5, 1.0, 2.0, 3.0, 1e-9], [-1.0, 0.3, 5.5, 2.0, 4.0]
    g = Graph([Node("x", "input", (), 5), _bn("bn", "x", 5),
               Node("act", "identity", ("bn",), 5, attrs={"fn": "clip", "lo": lo, "hi": hi})], ["act"])
    mean, var = cp.channel_statistics(g, _bn_weights("bn", gamma, beta))["act"]
    z = np.random.default_rng(0).standard_normal((400_000, 1)) * np.array(gamma) + np.array(beta)
    # the batch norm's own output variance is gamma^2 var / (var + 1e-5)
    z = (z - np.array(beta)) * np.sqrt(1 / (1 + 1e-5)) + np.array(beta)
    sampled = np.clip(z, lo, hi)
    np.testing.assert_allclose(mean, sampled.mean(0), atol=0.01)
    np.testing.assert_allclose(var, sampled.var(0), atol=0.03, rtol=0.02)


@pytest.mark.parametrize("fn", ["sigmoid", "tanh", "gelu", "silu", "hardswish"])
def test_smooth_activation_moments_match_sampling(fn):
    from coreprune.bias_correction import activation

    gamma, beta = [0.5, 1.0, 2.0, 3.0, 1e-9], [-1.0, 0.3, 2.5, -2.0, 4.0]
    g = Graph([Node("x", "input", (), 5), _bn("bn", "x", 5),
               Node("act", "identity", ("bn",), 5, attrs={"fn": fn})], ["act"])
    mean, var = cp.channel_statistics(g, _bn_weights("bn", gamma, beta))["act"]
    z = np.random.default_rng(1).standard_normal((400_000, 1)) * np.array(gamma) + np.array(beta)
    z = (z - np.array(beta)) * np.sqrt(1 / (1 + 1e-5)) + np.array(beta)
    sampled = activation(fn, z)
    np.testing.assert_allclose(mean, sampled.mean(0), atol=0.01)
    np.testing.assert_allclose(var, sampled.var(0), atol=0.02, rtol=0.02)


def test_an_unknown_activation_name_is_refused():
    with pytest.raises(cp.CompressionError, match="fn 'mish'"):
        Graph([Node("x", "input", (), 2), Node("a", "identity", ("x",), 2, attrs={"fn": "mish"})], ["a"])


def test_statistics_follow_channels_through_the_graph():
    g = Graph([
        Node("x", "input", (), 4), _bn("a", "x", 4), _bn("b", "x", 4),
        Node("sum", "add", ("a", "b"), 4, attrs={"fn": "sum"}),
        Node("diff", "add", ("a", "b"), 4),  # a subtraction or another axis's concat: unknown
        Node("cat", "concat", ("a", "b"), 8),
        Node("sl", "slice", ("cat",), 3, attrs={"start": 2, "stop": 5}),
        Node("sh", "shuffle", ("cat",), 8, attrs={"groups": 2}),
        Node("pool", "identity", ("sum",), 4, attrs={"fn": "pool"}),
        Node("flat", "flatten", ("pool",), 12),
        Node("copy", "identity", ("b",), 4, attrs={"fn": "copy"}),
        Node("other", "identity", ("b",), 4),  # a sigmoid, a scalar product...
        Node("mul", "mul", ("a", "b"), 4),
    ], ["flat", "sl", "sh", "diff", "copy", "other", "mul"])
    w = {**_bn_weights("a", [1, 2, 3, 4], [0.5, 1.5, 2.5, 3.5]),
         **_bn_weights("b", [1, 1, 1, 1], [10, 20, 30, 40], var=[1, 4, 9, 16])}
    st = cp.channel_statistics(g, w)
    a, b = np.array([0.5, 1.5, 2.5, 3.5]), np.array([10.0, 20, 30, 40])
    np.testing.assert_allclose(st["sum"][0], a + b)
    var_a = np.array([1, 4, 9, 16]) * 1 / (1 + 1e-5)  # gamma^2 var / (var + eps), var = 1
    var_b = np.ones(4) * np.array([1, 4, 9, 16]) / (np.array([1, 4, 9, 16]) + 1e-5)
    np.testing.assert_allclose(st["sum"][1], var_a + var_b, rtol=1e-6)
    np.testing.assert_array_equal(st["sl"][0], np.concatenate([a, b])[2:5])
    np.testing.assert_array_equal(st["sh"][0], channel_shuffle(np.concatenate([a, b])[None], 2)[0])
    np.testing.assert_array_equal(st["pool"][0], a + b)
    assert np.isnan(st["pool"][1]).all()  # a spatial average keeps the mean, not the spread
    np.testing.assert_array_equal(st["flat"][0], np.repeat(a + b, 3))
    np.testing.assert_array_equal(st["copy"][0], b)
    for unknown in ("x", "diff", "other", "mul"):
        assert np.isnan(st[unknown][0]).all(), unknown


def test_impossible_statistics_are_unknown_not_guessed():
    g = Graph([Node("x", "input", (), 4), _bn("bn", "x", 4)], ["bn"])
    w = _bn_weights("bn", [1.0, np.inf, 1.0, 1.0], [0.0, 1.0, np.nan, 2.0], var=[-1.0, 1.0, 1.0, 1.0])
    with np.errstate(all="raise"):
        mean, var = cp.channel_statistics(g, w)["bn"]
    assert np.isnan(mean[:3]).all() and np.isnan(var[:3]).all()
    assert mean[3] == 2.0


def test_non_finite_weights_get_no_correction():
    g, w = _conv_net(1, True)
    bad = dict(w, **{"conv.weight": w["conv.weight"].copy()})
    bad["conv.weight"][2, 0, 0, 0] = np.inf
    changed = dict(bad, **{"conv.weight": np.where(np.isinf(bad["conv.weight"]), 0, bad["conv.weight"])})
    with np.errstate(all="raise"):
        fixed = cp.correct_bias(bad, changed, g)
    assert np.isfinite(fixed["conv.bias"]).all() and fixed["conv.bias"][2] == w["conv.bias"][2]


def test_fixed_gamma_and_missing_statistics():
    w = _bn_weights("bn", [3.0, 3.0], [1.0, 2.0])
    fixed = Graph([Node("x", "input", (), 2), Node("bn", "batchnorm", ("x",), 2,
                   {r: f"bn.{r}" for r in ("weight", "bias", "running_mean", "running_var")},
                   {"fix_gamma": 1})], ["bn"])
    np.testing.assert_allclose(cp.channel_statistics(fixed, w)["bn"][1], 1 / (1 + 1e-5))
    no_stats = Graph([Node("x", "input", (), 2), Node("bn", "batchnorm", ("x",), 2,
                      {"weight": "bn.weight", "bias": "bn.bias"})], ["bn"])
    assert np.isnan(cp.channel_statistics(no_stats, w)["bn"][0]).all()


def test_batch_norm_epsilon_is_the_node_s_own():
    roles = {r: f"bn.{r}" for r in ("weight", "bias", "running_mean", "running_var")}
    w = _bn_weights("bn", [2.0, 2.0, 2.0], [0.0, 1.0, 2.0], var=[1e-4, 1e-3, 1.0])
    stats = {eps: cp.channel_statistics(
        Graph([Node("x", "input", (), 3), Node("bn", "batchnorm", ("x",), 3, roles,
                                                 {} if eps is None else {"eps": eps})], ["bn"]), w)["bn"]
        for eps in (None, 1e-5, 1e-3)}
    rv = np.array([1e-4, 1e-3, 1.0])
    np.testing.assert_allclose(stats[1e-3][1], 4 * rv / (rv + 1e-3), rtol=1e-6)
    np.testing.assert_array_equal(stats[None][1], stats[1e-5][1])  # no attr: 1e-5, as before
    # a running variance near the epsilon: 4 * 1e-4 / 1.1e-3 = 0.364 against 4 / 1.1 = 3.64
    np.testing.assert_allclose(stats[1e-5][1][0] / stats[1e-3][1][0], 1.1e-3 / 1.1e-4, rtol=1e-6)
    np.testing.assert_allclose(stats[1e-5][1][2], stats[1e-3][1][2], rtol=2e-3)  # a large one: 0.1%
    np.testing.assert_array_equal(stats[1e-3][0], stats[1e-5][0])  # the means are beta either way


def test_a_zero_epsilon_is_legal_and_a_zero_variance_then_unknown():
    """torch accepts BatchNorm2d(eps=0): tracing such a model must not fail; a channel whose
    running variance is 0 then divides by zero in the framework too, so its statistics are unknown."""
    roles = {r: f"bn.{r}" for r in ("weight", "bias", "running_mean", "running_var")}
    w = _bn_weights("bn", [2.0, 2.0], [0.5, 1.0], var=[0.0, 0.25])
    g = Graph([Node("x", "input", (), 2), Node("bn", "batchnorm", ("x",), 2, roles, {"eps": 0.0})], ["bn"])
    with np.errstate(all="raise"):  # no 0/0 on the way
        mean, var = cp.channel_statistics(g, w)["bn"]
    assert np.isnan(mean[0]) and np.isnan(var[0])
    assert mean[1] == 1.0 and var[1] == 4.0  # gamma**2 * 0.25 / (0.25 + 0)


@pytest.mark.parametrize("eps", [-1e-3, float("nan"), float("inf"), "1e-3", True, None])
def test_graph_refuses_a_bad_batch_norm_epsilon(eps):
    with pytest.raises(cp.CompressionError, match=r"'bn' \(batchnorm\): eps must be a finite number >= 0"):
        Graph([Node("x", "input", (), 2), Node("bn", "batchnorm", ("x",), 2, attrs={"eps": eps})], ["bn"])


@pytest.mark.parametrize("attrs", [{"fn": "sum"}, {"fn": "clip", "lo": 1.0, "hi": 1.0},
                                   {"fn": "clip", "lo": "0", "hi": 6.0}, {"fn": "clip"}])
def test_graph_refuses_bad_statistics_attrs(attrs):
    with pytest.raises(cp.CompressionError, match="identity"):
        Graph([Node("x", "input", (), 2), Node("r", "identity", ("x",), 2, attrs=attrs)], ["r"])


def _conv_net(groups: int, bias: bool, c_in: int = 6, c_out: int = 6) -> tuple[Graph, dict[str, np.ndarray]]:
    rng = np.random.default_rng(groups)
    conv = {"weight": "conv.weight", **({"bias": "conv.bias"} if bias else {})}
    g = Graph([Node("x", "input", (), c_in), _bn("bn0", "x", c_in),
               Node("act", "identity", ("bn0",), c_in, attrs={"fn": "clip", "lo": 0.0, "hi": 6.0}),
               Node("conv", "conv", ("act",), c_out, conv, {"groups": groups}),
               _bn("bn1", "conv", c_out)], ["bn1"])
    w = {**_bn_weights("bn0", rng.uniform(0.5, 2, c_in), rng.uniform(-1, 3, c_in)),
         **_bn_weights("bn1", np.ones(c_out), np.zeros(c_out)),
         "conv.weight": rng.standard_normal((c_out, c_in // groups, 3, 3)).astype(np.float32)}
    if bias:
        w["conv.bias"] = rng.standard_normal(c_out).astype(np.float32)
    return g, w


def _conv_valid(x: np.ndarray, w: np.ndarray, groups: int) -> np.ndarray:
    """Direct (loop) grouped convolution, no padding: x (C, H, W), w (O, C/g, k, k) -> (O, H-k+1, W-k+1)."""
    out_c, per, k, _ = w.shape
    h, wd = x.shape[1] - k + 1, x.shape[2] - k + 1
    y = np.zeros((out_c, h, wd))
    for o in range(out_c):
        grp = o // (out_c // groups)
        for j in range(per):
            for a in range(k):
                for b in range(k):
                    y[o] += w[o, j, a, b] * x[grp * per + j, a : a + h, b : b + wd]
    return y


@pytest.mark.parametrize("groups", [1, 2, 6])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_shift_is_the_change_of_a_constant_input_s_output(groups, bias):
    g, w = _conv_net(groups, bias)
    q = cp.quantize(w, bits=3, include="conv.weight", group_size=None)
    fixed = cp.correct_bias(w, q, g)
    mean = cp.channel_statistics(g, w)["act"][0]
    # a map whose every value is its channel's mean: its output moves by exactly the shift
    const = np.broadcast_to(mean[:, None, None], (6, 5, 5))
    shift = (_conv_valid(const, cp.dequantize(q)["conv.weight"].astype(np.float64), groups)
             - _conv_valid(const, w["conv.weight"].astype(np.float64), groups))[:, 0, 0]
    assert np.abs(shift).max() > 1e-3  # something to correct
    if bias:
        np.testing.assert_allclose(fixed["conv.bias"], w["conv.bias"] - shift, rtol=1e-5, atol=1e-6)
        assert fixed["bn1.running_mean"] is w["bn1.running_mean"]
    else:
        np.testing.assert_allclose(fixed["bn1.running_mean"], w["bn1.running_mean"] + shift, rtol=1e-5,
                                   atol=1e-6)
    assert fixed["conv.weight"] is q["conv.weight"]
    assert all(fixed[k].dtype == w[k].dtype for k in w if k != "conv.weight")


def test_correction_removes_the_sampled_mean_shift_of_a_linear_layer():
    rng = np.random.default_rng(3)
    gamma, beta = rng.uniform(0.5, 2, 64), rng.uniform(-1, 4, 64)
    g = Graph([Node("x", "input", (), 64), _bn("bn", "x", 64),
               Node("r6", "identity", ("bn",), 64, attrs={"fn": "clip", "lo": 0.0, "hi": 6.0}),
               Node("fc", "linear", ("r6",), 32, {"weight": "fc.weight", "bias": "fc.bias"})], ["fc"])
    w = {**_bn_weights("bn", gamma, beta), "fc.weight": rng.standard_normal((32, 64)).astype(np.float32),
         "fc.bias": np.zeros(32, np.float32)}
    x = np.clip(rng.standard_normal((200_000, 64)) * gamma + beta, 0, 6)  # what the batch norm feeds
    ref = x @ w["fc.weight"].T.astype(np.float64)
    q = cp.quantize(w, bits=3, include="fc.weight", rounding="half_even")

    def mean_shift(values) -> float:
        dq = cp.dequantize(values)
        return float(np.abs((x @ dq["fc.weight"].T.astype(np.float64) + dq["fc.bias"] - ref).mean(0)).mean())

    before, after = mean_shift(q), mean_shift(cp.correct_bias(w, q, g))
    assert before > 0.05
    assert after < 0.1 * before


def test_unknown_inputs_and_no_target_leave_the_weights_alone():
    rng = np.random.default_rng(5)
    g = Graph([Node("x", "input", (), 4),
               Node("fc1", "linear", ("x",), 4, {"weight": "fc1.weight", "bias": "fc1.bias"}),
               _bn("bn", "fc1", 4),
               Node("fc2", "linear", ("bn",), 3, {"weight": "fc2.weight"}),
               Node("r", "identity", ("fc2",), 3)], ["r"])
    w = {"fc1.weight": rng.standard_normal((4, 4)).astype(np.float32),
         "fc1.bias": np.zeros(4, np.float32), **_bn_weights("bn", np.ones(4), np.full(4, 2.0)),
         "fc2.weight": rng.standard_normal((3, 4)).astype(np.float32)}
    snapshot = {k: v.copy() for k, v in w.items()}
    q = cp.quantize(w, bits=2, include="fc*.weight", group_size=None)
    fixed = cp.correct_bias(w, q, g)
    assert fixed["fc1.bias"] is w["fc1.bias"]  # its input's mean is unknown (the model input)
    assert all(fixed[k] is q[k] for k in q)  # fc2 has no bias and no batch norm reads it
    assert all(np.array_equal(w[k], snapshot[k]) for k in w)  # inputs never modified


def test_quantize_with_a_graph_is_quantize_then_correct_bias():
    g, w = _conv_net(1, False)
    plain = cp.quantize(w, bits=4)
    with_graph = cp.quantize(w, bits=4, graph=g)
    expected = cp.correct_bias(w, plain, g)
    assert set(with_graph) == set(expected)
    for k in w:
        a, b = with_graph[k], expected[k]
        if isinstance(a, cp.QuantizedArray):
            np.testing.assert_array_equal(a.codes, b.codes)
        else:
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(with_graph["bn1.running_mean"], w["bn1.running_mean"])
    budget = cp.quantize(w, budget=4.5, graph=g)
    assert not np.array_equal(budget["bn1.running_mean"], w["bn1.running_mean"])
    with pytest.raises(cp.CompressionError, match="graph must be"):
        cp.quantize(w, bits=4, graph={"conv": "bn1"})


def test_a_weight_the_graph_names_must_be_there_with_its_shape():
    g, w = _conv_net(1, True)
    q = cp.quantize(w, bits=3, include="conv.weight")
    with pytest.raises(cp.CompressionError, match="'conv.bias': shape"):
        cp.correct_bias(w, dict(q, **{"conv.bias": np.zeros(5, np.float32)}), g)
    del w["conv.weight"]
    with pytest.raises(cp.CompressionError, match="conv.weight"):
        cp.correct_bias(w, w, g)


def test_any_change_of_the_weights_is_corrected_pruning_and_shared_weights_too():
    from coreprune.weight_sharing import share_weights

    g, w = _conv_net(1, True)
    mean = cp.channel_statistics(g, w)["act"][0]
    pruned, _ = cp.prune_magnitude(w, 0.5, include="conv.weight")
    shared = share_weights(w, bits=2, include="conv.weight")
    for changed in (pruned, shared):
        dense = changed["conv.weight"]
        dense = dense if isinstance(dense, np.ndarray) else dense.dequantize()
        delta = dense.astype(np.float64) - w["conv.weight"]
        expected = w["conv.bias"] - np.einsum("oikl,i->o", delta, mean)
        got = cp.correct_bias(w, changed, g)["conv.bias"]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
