"""Data-free input moments (coreprune.estimate_hessians): against Monte-Carlo moments of networks
whose batch norms hold the statistics of the simulated data, exact where the rules are exact
(linear paths, depthwise kernels on inputs uncorrelated between positions), close through ReLU6."""

from __future__ import annotations

import numpy as np
import pytest

import coreprune as cp
from coreprune.structured import Graph, Node

ROLES = ("weight", "bias", "running_mean", "running_var")
N = 200_000


def _bn(name: str, src: str, c: int) -> Node:
    return Node(name, "batchnorm", (src,), c, {r: f"{name}.{r}" for r in ROLES}, {"eps": 1e-5})


def _bn_apply(w: dict, name: str, y: np.ndarray, rng, axis: int = 1) -> np.ndarray:
    """A batch norm whose running statistics are those of ``y`` (as training leaves them)."""
    other = tuple(a for a in range(y.ndim) if a != axis)
    c = y.shape[axis]
    mean, var = y.mean(other), y.var(other)
    gamma = rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c)
    beta = rng.normal(0.0, 1.0, c)
    w.update({f"{name}.weight": gamma, f"{name}.bias": beta, f"{name}.running_mean": mean,
              f"{name}.running_var": var})
    shape = [1] * y.ndim
    shape[axis] = c
    r = lambda v: v.reshape(shape)  # noqa: E731
    return r(gamma) * (y - r(mean)) / np.sqrt(r(var) + 1e-5) + r(beta)


def _moment(rows: np.ndarray) -> np.ndarray:
    return rows.T @ rows / rows.shape[0]


def _linear_chain(clip: bool | str):
    """input -> bn0 -> fc1 -> bn1 [-> relu6] -> fc2, simulated on N samples."""
    rng = np.random.default_rng(0)
    w: dict[str, np.ndarray] = {"fc1.weight": rng.normal(size=(6, 4)), "fc2.weight": rng.normal(size=(3, 6))}
    x = rng.normal(size=(N, 4))
    a = _bn_apply(w, "bn0", x, rng)
    b = _bn_apply(w, "bn1", a @ w["fc1.weight"].T, rng)
    nodes = [Node("x", "input", (), 4), _bn("bn0", "x", 4),
             Node("fc1", "linear", ("bn0",), 6, {"weight": "fc1.weight"}), _bn("bn1", "fc1", 6)]
    last = "bn1"
    if clip is True:
        b = np.clip(b, 0.0, 6.0)
        nodes.append(Node("act", "identity", ("bn1",), 6, attrs={"fn": "clip", "lo": 0.0, "hi": 6.0}))
        last = "act"
    elif clip:  # a smooth activation by name
        from coreprune.bias_correction import activation

        b = activation(clip, b)
        nodes.append(Node("act", "identity", ("bn1",), 6, attrs={"fn": clip}))
        last = "act"
    nodes.append(Node("fc2", "linear", (last,), 3, {"weight": "fc2.weight"}))
    return Graph(nodes, ["fc2"]), {k: v.astype(np.float32) for k, v in w.items()}, b


def test_a_linear_path_is_exact():
    graph, w, rows = _linear_chain(clip=False)
    h = cp.estimate_hessians(graph, w)
    assert sorted(h) == ["fc1.weight", "fc2.weight"]
    np.testing.assert_allclose(h["fc2.weight"], _moment(rows), atol=0.03 * np.abs(_moment(rows)).max())
    np.testing.assert_allclose(h["fc1.weight"], np.diag(np.diag(h["fc1.weight"])) + np.outer(
        w["bn0.bias"], w["bn0.bias"]) - np.diag(w["bn0.bias"] ** 2), atol=1e-9)


@pytest.mark.parametrize("act", [True, "silu", "hardswish", "gelu", "tanh", "sigmoid"],
                         ids=["relu6", "silu", "hardswish", "gelu", "tanh", "sigmoid"])
def test_through_an_activation_the_moments_are_close(act):
    graph, w, rows = _linear_chain(clip=act)
    h, ref = cp.estimate_hessians(graph, w)["fc2.weight"], _moment(rows)
    np.testing.assert_allclose(np.diag(h), np.diag(ref), rtol=0.03)  # Gaussian moments: exact
    mean = rows.mean(0)
    cov_ref = ref - np.outer(mean, mean)
    cov_h = h - np.outer(mean, mean)
    sd = np.sqrt(np.diag(cov_ref))
    # first order in the correlation (Stein): it underestimates the strong ones
    off = ~np.eye(6, dtype=bool)
    ours, sampled = (cov_h / np.outer(sd, sd))[off], (cov_ref / np.outer(sd, sd))[off]
    np.testing.assert_allclose(ours, sampled, atol=0.2)  # first order: GELU is off by up to 0.18
    strong = np.abs(sampled) > 0.05
    assert np.array_equal(np.sign(ours[strong]), np.sign(sampled[strong]))


def test_depthwise_and_pointwise_convolutions():
    """bn0 -> 1x1 conv -> bn1 -> depthwise 3x3 (valid) -> bn2 -> 1x1 conv, on feature maps whose
    positions are independent: the depthwise rule is exact there, so is the whole estimate."""
    rng = np.random.default_rng(1)
    w: dict[str, np.ndarray] = {
        "pw.weight": rng.normal(size=(5, 4, 1, 1)), "dw.weight": rng.normal(size=(5, 1, 3, 3)),
        "out.weight": rng.normal(size=(2, 5, 1, 1)), "k3.weight": rng.normal(size=(2, 5, 3, 3))}
    x = rng.normal(size=(N // 4, 4, 3, 3))
    a = _bn_apply(w, "bn0", x, rng)
    b = _bn_apply(w, "bn1", np.einsum("oi,nihw->nohw", w["pw.weight"][:, :, 0, 0], a), rng)
    d = np.einsum("ck,nck->nc", w["dw.weight"].reshape(5, 9), b.reshape(-1, 5, 9))[:, :, None, None]
    e = _bn_apply(w, "bn2", d, rng)
    graph = Graph([Node("x", "input", (), 4), _bn("bn0", "x", 4),
                   Node("pw", "conv", ("bn0",), 5, {"weight": "pw.weight"}, {"groups": 1}),
                   _bn("bn1", "pw", 5),
                   Node("dw", "conv", ("bn1",), 5, {"weight": "dw.weight"}, {"groups": 5}),
                   _bn("bn2", "dw", 5),
                   Node("out", "conv", ("bn2",), 2, {"weight": "out.weight"}, {"groups": 1}),
                   Node("k3", "conv", ("bn1",), 2, {"weight": "k3.weight"}, {"groups": 1})], ["out", "k3"])
    h = cp.estimate_hessians(graph, {k: v.astype(np.float32) for k, v in w.items()})
    ref = _moment(e.reshape(-1, 5))
    np.testing.assert_allclose(h["out.weight"], ref, atol=0.03 * np.abs(ref).max())
    # a 3x3 kernel's patches in (C, kh, kw) order: taps uncorrelated but for the mean
    patches = b.reshape(-1, 5 * 9)  # every sample is one 3x3 patch
    ref3 = _moment(patches)
    got3 = h["k3.weight"]
    assert got3.shape == (45, 45)
    same_tap = np.equal.outer(np.arange(45) % 9, np.arange(45) % 9)
    np.testing.assert_allclose(got3[same_tap], ref3[same_tap], atol=0.03 * np.abs(ref3).max())
    mean = b.mean((0, 2, 3)).repeat(9)
    np.testing.assert_allclose(got3[~same_tap], np.outer(mean, mean)[~same_tap], atol=1e-6)


def test_grouped_convolution_sums_and_channel_moves():
    rng = np.random.default_rng(2)
    w: dict[str, np.ndarray] = {"g.weight": rng.normal(size=(6, 2, 1, 1)),
                                "fc.weight": rng.normal(size=(2, 6)), "cat.weight": rng.normal(size=(2, 5))}
    x = rng.normal(size=(N, 4))
    a = _bn_apply(w, "bn0", x, rng)
    # groups=2: outputs 0-2 read inputs 0-1, outputs 3-5 read inputs 2-3
    g = np.concatenate([a[:, :2] @ w["g.weight"][:3, :, 0, 0].T, a[:, 2:] @ w["g.weight"][3:, :, 0, 0].T], 1)
    b = _bn_apply(w, "bn1", g, rng)
    s = b + _bn_apply(w, "bn2", rng.normal(size=(N, 6)), rng)  # a residual sum of independent inputs
    shuffled = s[:, np.arange(6).reshape(2, 3).T.reshape(-1)]
    cat = np.concatenate([shuffled[:, 1:4], b[:, :2]], 1)
    graph = Graph([Node("x", "input", (), 4), _bn("bn0", "x", 4),
                   Node("g", "conv", ("bn0",), 6, {"weight": "g.weight"}, {"groups": 2}), _bn("bn1", "g", 6),
                   Node("y", "input", (), 6), _bn("bn2", "y", 6),
                   Node("sum", "add", ("bn1", "bn2"), 6, attrs={"fn": "sum"}),
                   Node("sh", "shuffle", ("sum",), 6, attrs={"groups": 2}),
                   Node("fc", "linear", ("sh",), 2, {"weight": "fc.weight"}),
                   Node("sl", "slice", ("sh",), 3, attrs={"start": 1, "stop": 4}),
                   Node("sl2", "slice", ("bn1",), 2, attrs={"start": 0, "stop": 2}),
                   Node("cat", "concat", ("sl", "sl2"), 5),
                   Node("catfc", "linear", ("cat",), 2, {"weight": "cat.weight"})], ["fc", "catfc"])
    h = cp.estimate_hessians(graph, {k: v.astype(np.float32) for k, v in w.items()})
    for key, rows in (("fc.weight", shuffled), ("cat.weight", cat)):
        ref = _moment(rows)
        got = h[key]
        if key == "cat.weight":  # concatenated inputs are taken as uncorrelated: compare the blocks
            ref = ref.copy()
            mean = rows.mean(0)
            ref[:3, 3:] = np.outer(mean[:3], mean[3:])
            ref[3:, :3] = ref[:3, 3:].T
        np.testing.assert_allclose(got, ref, atol=0.03 * np.abs(ref).max(), err_msg=key)


def test_what_gets_no_estimate():
    rng = np.random.default_rng(3)
    w = {"first.weight": rng.normal(size=(4, 3)).astype(np.float32),
         "fc.weight": rng.normal(size=(2, 4)).astype(np.float32),
         "ln.weight": np.ones(4, np.float32), "ln.bias": np.zeros(4, np.float32),
         "after_ln.weight": rng.normal(size=(2, 4)).astype(np.float32),
         "after_pool.weight": rng.normal(size=(2, 4)).astype(np.float32),
         "after_swish.weight": rng.normal(size=(2, 4)).astype(np.float32),
         "ok.weight": rng.normal(size=(2, 4)).astype(np.float32)}
    for r in ROLES:
        w[f"bn.{r}"] = np.ones(4, np.float32) if r != "running_mean" else np.zeros(4, np.float32)
    graph = Graph([Node("x", "input", (), 3),
                   Node("first", "linear", ("x",), 4, {"weight": "first.weight"}),
                   _bn("bn", "first", 4),
                   Node("ln", "layernorm", ("bn",), 4, {"weight": "ln.weight", "bias": "ln.bias"}),
                   Node("after_ln", "linear", ("ln",), 2, {"weight": "after_ln.weight"}),
                   Node("pool", "identity", ("bn",), 4, attrs={"fn": "pool"}),
                   Node("after_pool", "linear", ("pool",), 2, {"weight": "after_pool.weight"}),
                   Node("swish", "identity", ("bn",), 4),
                   Node("after_swish", "linear", ("swish",), 2, {"weight": "after_swish.weight"}),
                   Node("ok", "linear", ("bn",), 2, {"weight": "ok.weight"})],
                  ["after_ln", "after_pool", "after_swish", "ok"])
    before = {k: v.copy() for k, v in w.items()}
    h = cp.estimate_hessians(graph, w)
    assert sorted(h) == ["ok.weight"]
    assert h["ok.weight"].dtype == np.float64 and np.array_equal(h["ok.weight"], h["ok.weight"].T)
    assert np.linalg.eigvalsh(h["ok.weight"]).min() > -1e-9
    assert all(np.array_equal(w[k], before[k]) for k in w)


def test_a_weight_read_twice_gets_the_mean_of_its_estimates():
    rng = np.random.default_rng(4)
    w = {"tied.weight": rng.normal(size=(3, 3)).astype(np.float32)}
    for name, beta in (("a", [0.0, 1.0, 2.0]), ("b", [2.0, -1.0, 0.5])):
        w.update({f"{name}.weight": np.ones(3, np.float32), f"{name}.bias": np.array(beta, np.float32),
                  f"{name}.running_mean": np.zeros(3, np.float32),
                  f"{name}.running_var": np.ones(3, np.float32)})
    graph = Graph([Node("x", "input", (), 3), _bn("a", "x", 3), _bn("b", "x", 3),
                   Node("u1", "linear", ("a",), 3, {"weight": "tied.weight"}),
                   Node("u2", "linear", ("b",), 3, {"weight": "tied.weight"})], ["u1", "u2"])
    h = cp.estimate_hessians(graph, w)["tied.weight"]
    var = 1 / (1 + 1e-5)
    ma, mb = np.array([0.0, 1.0, 2.0]), np.array([2.0, -1.0, 0.5])
    expected = var * np.eye(3) + (np.outer(ma, ma) + np.outer(mb, mb)) / 2
    np.testing.assert_allclose(h, expected, rtol=1e-6)


def test_gptq_with_estimated_moments_lowers_the_output_error():
    """On a simulated network whose batch norms hold its data's statistics, GPTQ from the
    estimate (no data) beats round to nearest on the next layer's output, as GPTQ from data does."""
    rng = np.random.default_rng(5)
    c_in, c = 48, 96
    w: dict[str, np.ndarray] = {"fc1.weight": rng.normal(size=(c, c_in)),
                                "fc2.weight": rng.normal(size=(64, c)) / np.sqrt(c)}
    x = rng.normal(size=(20_000, c_in))
    a = _bn_apply(w, "bn0", x, rng)
    b = np.clip(_bn_apply(w, "bn1", a @ w["fc1.weight"].T, rng), 0, 6)
    graph = Graph([Node("x", "input", (), c_in), _bn("bn0", "x", c_in),
                   Node("fc1", "linear", ("bn0",), c, {"weight": "fc1.weight"}), _bn("bn1", "fc1", c),
                   Node("act", "identity", ("bn1",), c, attrs={"fn": "clip", "lo": 0.0, "hi": 6.0}),
                   Node("fc2", "linear", ("act",), 64, {"weight": "fc2.weight"})], ["fc2"])
    w32 = {k: v.astype(np.float32) for k, v in w.items()}
    h = cp.estimate_hessians(graph, w32)

    def err(q) -> float:
        d = cp.dequantize(q)["fc2.weight"].astype(np.float64) - w32["fc2.weight"]
        return float(((b @ d.T) ** 2).mean())

    rtn = err(cp.quantize(w32, bits=3, include="fc2.weight"))
    estimated = err(cp.quantize(w32, bits=3, include="fc2.weight", hessians=h))
    measured = err(cp.quantize(w32, bits=3, include="fc2.weight", hessians={"fc2.weight": _moment(b)}))
    assert measured < estimated < 0.8 * rtn, (measured, estimated, rtn)


@pytest.mark.parametrize("cut", ["gamma", "var"])
def test_statistics_it_cannot_use_give_no_estimate(cut):
    graph, w, _ = _linear_chain(clip=True)
    w = dict(w)
    if cut == "gamma":
        w["bn1.weight"] = np.full_like(w["bn1.weight"], np.nan)
    else:
        w["bn1.running_var"] = -np.abs(w["bn1.running_var"])
    assert "fc2.weight" not in cp.estimate_hessians(graph, w)


def test_wide_layers_are_bounded(monkeypatch):
    """Past MAX_CHANNELS a node's correlation is not formed (its readers see independent channels);
    past MAX_FAN_IN a layer gets no estimate: memory stays bounded on vocabulary-sized layers."""
    import coreprune.graph_moments as gm

    monkeypatch.setattr(gm, "MAX_CHANNELS", 4)
    monkeypatch.setattr(gm, "MAX_FAN_IN", 5)
    graph, w, _ = _linear_chain(clip=False)  # fc1 has 6 outputs, fc2 a fan-in of 6
    assert sorted(cp.estimate_hessians(graph, w)) == ["fc1.weight"]
    monkeypatch.setattr(gm, "MAX_FAN_IN", 6)
    h = cp.estimate_hessians(graph, w)["fc2.weight"]
    beta = w["bn1.bias"].astype(np.float64)
    var = w["bn1.weight"].astype(np.float64) ** 2 * w["bn1.running_var"] / (w["bn1.running_var"] + 1e-5)
    np.testing.assert_allclose(h, np.diag(var) + np.outer(beta, beta), rtol=1e-6)


def test_weights_that_do_not_fit_the_graph_give_no_error_and_no_nonsense():
    """A graph and weights that disagree (a layer's weight of the wrong shape, NaN or infinite
    weights, a weight that is not an array) never raise: those layers and what they feed get no
    correlation, and every estimate returned is finite, symmetric and positive semi-definite."""
    graph, w, _ = _linear_chain(clip=True)
    cases = [
        dict(w, **{"fc1.weight": np.ones((5, 4), np.float32)}),  # 5 outputs, the graph says 6
        dict(w, **{"fc1.weight": np.full((6, 4), np.nan, np.float32)}),
        dict(w, **{"fc1.weight": np.full((6, 4), np.inf, np.float32)}),
        dict(w, **{"fc1.weight": "not an array"}),
        dict(w, **{"fc1.weight": np.array([["a"] * 4] * 6)}),  # strings
        dict(w, **{"fc1.weight": np.ones((6, 4), np.complex64)}),
        dict(w, **{"fc2.weight": np.ones((3, 7), np.float32)}),  # fan-in 7 for 6 channels
    ]
    for weights in cases:
        for h in cp.estimate_hessians(graph, weights).values():
            assert np.all(np.isfinite(h)) and np.array_equal(h, h.T)
            assert np.linalg.eigvalsh(h).min() >= -1e-9 * np.abs(h).max()
    assert "fc2.weight" not in cp.estimate_hessians(graph, cases[-1])
    # with the misfit fc1, fc2 still gets the batch norms' means and variances, channels independent
    h = cp.estimate_hessians(graph, cases[0])["fc2.weight"]
    stats = cp.channel_statistics(graph, cases[0])["act"]
    np.testing.assert_allclose(h, np.diag(stats[1]) + np.outer(stats[0], stats[0]), rtol=1e-12)


def test_a_wide_flatten_allocates_nothing_of_its_square():
    """A classifier reading a flattened feature map (VGG's 25 088 features) gets no estimate, and
    no matrix of that width is formed on the way (20 000^2 float64 would be 3.2 GB)."""
    import tracemalloc

    c, per = 50, 400
    roles = {r: f"bn.{r}" for r in ROLES}
    graph = Graph([Node("x", "input", (), c), Node("bn", "batchnorm", ("x",), c, roles),
                   Node("flat", "flatten", ("bn",), c * per),
                   Node("fc", "linear", ("flat",), 10, {"weight": "fc.weight"}),
                   Node("bn2", "batchnorm", ("fc",), 10, {r: f"bn2.{r}" for r in ROLES}),
                   Node("out", "linear", ("bn2",), 3, {"weight": "out.weight"})], ["out"])
    w = {"fc.weight": np.ones((10, c * per), np.float32), "out.weight": np.ones((3, 10), np.float32)}
    for name, n in (("bn", c), ("bn2", 10)):
        w.update({f"{name}.weight": np.ones(n, np.float32), f"{name}.bias": np.ones(n, np.float32),
                  f"{name}.running_mean": np.zeros(n, np.float32),
                  f"{name}.running_var": np.ones(n, np.float32)})
    tracemalloc.start()
    try:
        h = cp.estimate_hessians(graph, w)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sorted(h) == ["out.weight"] and peak < 50e6, peak
