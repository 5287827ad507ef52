"""GPTQ rounding (coreprune.gptq, quantize(..., hessians=)) against a plain NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

from coreprune import CompressionError, dequantize, load_compressed, quantize, save_compressed
from coreprune.gptq import DAMPING, InputMoments, gptq_codes


def gptq_reference(w, step, lo, hi, h):
    """Optimal Brain Quantization, one column at a time, with the explicit inverse updated by
    eliminating each rounded column (no Cholesky factor, no blocks): the same maths as the
    blocked Cholesky form of gptq_codes."""
    w = w.astype(np.float64).copy()
    n = w.shape[1]
    diag = np.diag(h).copy()
    h = h.astype(np.float64).copy()
    dead = diag <= 0
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1
    h[np.diag_indices(n)] += DAMPING * diag.mean()
    order = np.argsort(-diag, kind="stable")
    hinv = np.linalg.inv(h)
    codes = np.zeros(w.shape, np.int64)
    left = list(order)
    pruned = w == 0
    for j in order:
        c = np.where(pruned[:, j], 0, np.clip(np.rint(w[:, j] / step[:, j]), lo, hi))
        codes[:, j] = c
        err = (w[:, j] - c * step[:, j]) / hinv[j, j]
        left.remove(j)
        w[:, left] -= np.outer(err, hinv[j, left])
        hinv[np.ix_(left, left)] -= np.outer(hinv[left, j], hinv[j, left]) / hinv[j, j]
    return codes


def correlated(rng, rows, n, fan_in):
    """Inputs ``(rows, fan_in)`` with strongly correlated features, as real activations have."""
    mix = rng.normal(size=(fan_in, fan_in)) / np.sqrt(fan_in)
    return (rng.normal(size=(rows, fan_in)) @ mix + 0.3 * rng.normal(size=(rows, fan_in))).astype(np.float32)


def output_error(w, dq, x):
    return float(np.sum(((dq - w).reshape(w.shape[0], -1) @ x.T.astype(np.float64)) ** 2))


@pytest.mark.parametrize("shape", [(6, 40), (3, 300)])
def test_equals_the_reference(shape):
    rng = np.random.default_rng(1)
    out, n = shape
    w = rng.normal(size=shape)
    x = correlated(rng, 500, 1, n)
    h = x.T.astype(np.float64) @ x / len(x)
    h[:, 7] = h[7, :] = 0  # an input never seen
    w[rng.random(shape) < 0.3] = 0  # pruned weights
    step = np.abs(w).max(1, keepdims=True) / 7 * np.ones(shape)
    got = gptq_codes(w, step, None, -7, 7, h)
    ref = gptq_reference(w, step, -7, 7, h)
    # float sums in another order can flip a code at an exact tie; a wrong update flips most
    assert np.mean(got != ref) < 1e-3
    assert np.array_equal(got[:, 7], np.clip(np.rint(w[:, 7] / step[:, 7]), -7, 7))


def test_lowers_the_output_error_on_correlated_inputs():
    rng = np.random.default_rng(0)
    w = {"fc.weight": rng.normal(size=(32, 64)).astype(np.float32)}
    x = correlated(rng, 2000, 1, 64)
    moments = InputMoments()
    moments.add("fc.weight", x[:1000])
    plain = dequantize(quantize(w, bits=4))["fc.weight"]
    gptq = dequantize(quantize(w, bits=4, hessians=moments.hessians()))["fc.weight"]
    held_out = x[1000:]
    # 0.63 measured
    assert output_error(w["fc.weight"], gptq, held_out) < 0.75 * output_error(w["fc.weight"], plain, held_out)
    # the price: a larger error of the weights themselves
    assert np.sum((gptq - w["fc.weight"]) ** 2) > np.sum((plain - w["fc.weight"]) ** 2)


def test_diagonal_hessian_is_round_to_nearest():
    rng = np.random.default_rng(2)
    w = {"a.weight": rng.normal(size=(8, 16, 3, 3)).astype(np.float32),
         "b.weight": rng.normal(size=(10, 200)).astype(np.float32)}
    h = {"a.weight": np.diag(rng.uniform(0.5, 2, 144)), "b.weight": np.diag(rng.uniform(0.5, 2, 200))}
    for kw in (dict(bits=4), dict(bits=3, symmetric=False), dict(bits=4, group_size=32, flatten=True)):
        plain = quantize(w, rounding="half_even", **kw)
        gptq = quantize(w, hessians=h, **kw)
        for n in w:
            assert np.array_equal(gptq[n].codes, plain[n].codes), (kw, n)


@pytest.mark.parametrize("kw", [dict(bits=4), dict(bits=4, symmetric=False), dict(bits=3, axis=0),
                                dict(bits=4, group_size=20, flatten=True), dict(bits=4, method="clip"),
                                dict(budget=4.5), dict(bits=8), dict(bits=4, full_range=True)])
def test_layouts_keep_their_scales_and_only_codes_change(kw, tmp_path):
    rng = np.random.default_rng(3)
    w = {"conv.weight": rng.normal(size=(12, 8, 3, 3)).astype(np.float32),
         "fc.weight": rng.normal(size=(5, 72)).astype(np.float32),
         "fc.bias": rng.normal(size=5).astype(np.float32)}
    x = correlated(rng, 400, 1, 72)
    m = InputMoments()
    m.add("conv.weight", x)
    m.add("fc.weight", x)
    h = m.hessians()
    before = {k: v.copy() for k, v in h.items()}
    copies = {k: v.copy() for k, v in w.items()}
    plain = quantize(w, **kw)
    gptq = quantize(w, hessians=h, **kw)
    for n in ("conv.weight", "fc.weight"):
        assert gptq[n].layout == plain[n].layout and gptq[n].bits == plain[n].bits
        assert np.array_equal(gptq[n].scale, plain[n].scale)
        assert (gptq[n].zero_point is None) == (plain[n].zero_point is None)
        assert not np.array_equal(gptq[n].codes, plain[n].codes)
        assert output_error(w[n], dequantize(gptq)[n], x) < output_error(w[n], dequantize(plain)[n], x)
    assert gptq["fc.bias"] is w["fc.bias"]
    for k in w:  # inputs untouched
        assert np.array_equal(w[k], copies[k])
    for k in h:
        assert np.array_equal(h[k], before[k])
    save_compressed(gptq, tmp_path / "g.cpz")
    back = load_compressed(tmp_path / "g.cpz")
    for n in ("conv.weight", "fc.weight"):
        assert np.array_equal(back[n].codes, gptq[n].codes) and np.array_equal(back[n].scale, gptq[n].scale)


def test_float16_and_bfloat16_weights():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(4)
    x = correlated(rng, 300, 1, 48)
    h = {"w": x.T.astype(np.float64) @ x / 300}
    for dtype in (np.float16, ml_dtypes.bfloat16):
        w = {"w": rng.normal(size=(6, 48)).astype(dtype)}
        q = quantize(w, bits=4, hessians=h)["w"]
        assert q.dtype == np.dtype(dtype)
        assert dequantize({"w": q})["w"].dtype == np.dtype(dtype)


def test_unselected_names_are_ignored_and_unknown_names_refused():
    rng = np.random.default_rng(5)
    w = {"a.weight": rng.normal(size=(4, 6)).astype(np.float32),
         "b.weight": rng.normal(size=(4, 6)).astype(np.float32)}
    h = {"a.weight": np.eye(6), "b.weight": np.ones((6, 6))}
    q = quantize(w, bits=4, hessians=h, exclude="b.*")
    assert q["b.weight"] is w["b.weight"]
    with pytest.raises(CompressionError, match="'module.a.weight', which is not among the weights"):
        quantize(w, bits=4, hessians={"module.a.weight": np.eye(6)})


@pytest.mark.parametrize("bad, match", [
    (np.eye(5), r"must be a \(6, 6\) float array"),
    (np.full((6, 6), np.nan), "NaN or Inf"),
    (np.triu(np.ones((6, 6))), "not symmetric"),
    (-np.eye(6), "negative diagonal"),
    (np.array([[1.0, 3.0], [3.0, 1.0]]).repeat(3, 0).repeat(3, 1), "positive semi-definite"),
    (np.array([["a"] * 6] * 6), r"must be a \(6, 6\) float array"),
])
def test_bad_hessians_are_one_error_naming_the_tensor(bad, match):
    w = {"a.weight": np.random.default_rng(6).normal(size=(4, 6)).astype(np.float32)}
    with pytest.raises(CompressionError, match=match) as info:
        quantize(w, bits=4, hessians={"a.weight": bad})
    assert "'a.weight'" in str(info.value)


def test_hessians_need_a_matrix_weight_and_two_bits():
    w = {"a.weight": np.ones((4, 6), np.float32), "v": np.ones(6, np.float32)}
    with pytest.raises(CompressionError, match="bits >= 2"):
        quantize(w, bits=1, hessians={"a.weight": np.eye(6)})
    with pytest.raises(CompressionError, match="ndim >= 2"):
        quantize(w, bits=4, include="v", hessians={"v": np.eye(1)})
    with pytest.raises(CompressionError, match="mapping"):
        quantize(w, bits=4, hessians=[np.eye(6)])


def test_input_moments():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(50, 5))
    m = InputMoments()
    m.add("w", x[:20].astype(np.float32))
    m.add("w", x[20:])
    assert m.rows("w") == 50 and m.rows("other") == 0
    expected = np.concatenate([x[:20].astype(np.float32).astype(np.float64), x[20:]])
    np.testing.assert_allclose(m.hessians()["w"], expected.T @ expected / 50, rtol=1e-12)
    with pytest.raises(CompressionError, match="4 features, earlier rows 5"):
        m.add("w", x[:, :4])
    with pytest.raises(CompressionError, match="2-D"):
        m.add("w", x[0])
    with pytest.raises(CompressionError, match="NaN"):
        m.add("w", np.full((2, 5), np.inf))


@pytest.mark.parametrize("symmetric", [True, False])
def test_pruned_weights_stay_zero(symmetric):
    rng = np.random.default_rng(8)
    w = {"conv.weight": rng.normal(size=(16, 8, 3, 3)).astype(np.float32)}
    w["conv.weight"][rng.random(w["conv.weight"].shape) < 0.6] = 0
    x = correlated(rng, 500, 1, 72)
    m = InputMoments()
    m.add("conv.weight", x)
    q = quantize(w, bits=4, symmetric=symmetric, hessians=m.hessians())
    dq = dequantize(q)["conv.weight"]
    assert np.all(dq[w["conv.weight"] == 0] == 0)
    plain = dequantize(quantize(w, bits=4, symmetric=symmetric))["conv.weight"]
    assert output_error(w["conv.weight"], dq, x) < output_error(w["conv.weight"], plain, x)


def test_input_moments_in_chunks_equal_one_product(monkeypatch):
    import coreprune.gptq as gptq_module

    rng = np.random.default_rng(9)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    whole = InputMoments()
    whole.add("w", x)
    monkeypatch.setattr(gptq_module, "_CHUNK", 7)  # 8 chunks, the last one short
    chunked = InputMoments()
    chunked.add("w", x)
    np.testing.assert_allclose(chunked.hessians()["w"], whole.hessians()["w"], rtol=1e-12)
    assert chunked.rows("w") == 50


def test_kernels_that_gptq_recodes_are_not_balanced_first(monkeypatch):
    """The default balances conv kernels' codes; GPTQ replaces a tensor's codes from its scales and
    weights alone, so balancing a kernel that has a hessian would be thrown away: it is skipped,
    and the codes are those of nearest rounding's scales, whatever the rounding asked."""
    import coreprune.quantization as quantization

    rng = np.random.default_rng(5)
    w = {"conv.weight": rng.normal(size=(64, 8, 3, 3)).astype(np.float32),
         "other.weight": rng.normal(size=(64, 8, 3, 3)).astype(np.float32)}
    x = correlated(rng, 400, 1, 72)
    h = {"conv.weight": x.T.astype(np.float64) @ x / len(x)}
    calls = []
    real = quantization.balance_codes

    def counted(codes, *rest):
        calls.append(codes.shape)
        return real(codes, *rest)

    monkeypatch.setattr(quantization, "balance_codes", counted)
    auto = quantize(w, bits=4, hessians=h)
    assert calls == [(64, 72)]  # the kernel without a hessian only
    nearest = quantize(w, bits=4, hessians=h, rounding="half_even")
    balanced = quantize(w, bits=4, hessians=h, rounding="balanced")
    for q in (nearest, balanced):
        np.testing.assert_array_equal(q["conv.weight"].codes, auto["conv.weight"].codes)
        np.testing.assert_array_equal(q["conv.weight"].scale, auto["conv.weight"].scale)
    assert not np.array_equal(nearest["other.weight"].codes, auto["other.weight"].codes)


@pytest.mark.parametrize("hessians", [
    "not a mapping", {"nope.weight": np.eye(4)}, {"fc.weight": np.eye(3)},
    {"fc.weight": np.full((4, 4), np.nan)}, {"fc.weight": -np.eye(4)},
])
def test_hessian_problems_are_hessian_errors(hessians):
    """The command line tells the moments' faults from the weights' by this class."""
    from coreprune import HessianError

    w = {"fc.weight": np.ones((2, 4), np.float32)}
    with pytest.raises(HessianError, match="hessian") as caught:
        quantize(w, bits=4, hessians=hessians)
    assert isinstance(caught.value, CompressionError) and isinstance(caught.value, ValueError)
    with pytest.raises(CompressionError) as caught:  # the weights' own faults are not
        quantize({"fc.weight": np.full((2, 4), np.nan, np.float32)}, bits=4,
                 hessians={"fc.weight": np.eye(4)})
    assert not isinstance(caught.value, HessianError)
