"""Balanced rounding (balance_codes, quantize(rounding=...)) against a loop reference."""

from __future__ import annotations

import numpy as np
import pytest

from coreprune import QuantizedArray, dequantize, quantize
from coreprune.rounding import balance_codes


def balance_reference(codes: np.ndarray, exact: np.ndarray, step: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """One row at a time, one code at a time: the greedy the docstring describes."""
    out = codes.astype(np.int64).copy()
    for r in range(codes.shape[0]):
        res = codes[r].astype(np.float64) - exact[r]
        error = float(np.sum(res * step[r]))
        sign = int(np.sign(error))
        if sign == 0:
            continue
        cands = [j for j in range(codes.shape[1])
                 if np.sign(res[j]) == sign and lo <= int(codes[r, j]) - sign <= hi]
        cands.sort(key=lambda j: (-abs(res[j]), j))
        done = 0.0
        for j in cands:
            if not step[r, j] < 2 * (abs(error) - done):
                break
            out[r, j] -= sign
            done += step[r, j]
    return out.astype(codes.dtype)


def row_error(codes: np.ndarray, exact: np.ndarray, step: np.ndarray) -> np.ndarray:
    return np.sum((codes.astype(np.float64) - exact) * step, axis=1)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (16, 64), (5, 300)])
def test_equals_the_loop_reference(seed, shape):
    rng = np.random.default_rng(seed)
    exact = rng.normal(0, 3, shape)
    step = rng.uniform(0.5, 2.0, shape) if seed % 2 else np.ones(shape)
    codes = np.clip(np.rint(exact), -7, 7).astype(np.int8)
    got = balance_codes(codes, exact, step, -7, 7)
    assert got.dtype == codes.dtype
    np.testing.assert_array_equal(got, balance_reference(codes, exact, step, -7, 7))
    # every move is one code, towards the other side of the exact value, within range
    moved = got != codes
    assert np.all(np.abs(got.astype(int) - codes) <= 1)
    assert np.all((got >= -7) & (got <= 7))
    assert np.all(np.sign(codes[moved] - exact[moved]) != np.sign(got[moved] - exact[moved]))
    # the error sum of no row grows; with one step per row it ends within half a step of zero
    before, after = np.abs(row_error(codes, exact, step)), np.abs(row_error(got, exact, step))
    assert np.all(after <= before + 1e-12)
    if seed % 2 == 0 and shape[1] >= 64:
        assert np.all(after <= 0.5 + 1e-9)


def test_edge_cases():
    # exact codes: nothing moves; all residuals on one side but the range stops the moves
    exact = np.array([[1.0, 2.0, -3.0]])
    codes = exact.astype(np.int8)
    np.testing.assert_array_equal(balance_codes(codes, exact, np.ones((1, 3)), -7, 7), codes)
    exact = np.array([[6.6, 6.7, 6.8]])  # nearest 7, 7, 7: error +0.9; 6.6 is the cheapest to move
    codes = np.rint(exact).astype(np.int8)
    assert balance_codes(codes, exact, np.ones((1, 3)), -7, 7).tolist() == [[6, 7, 7]]
    exact = np.array([[-7.4, -7.3]])               # error +0.7 would move down, below the range
    codes = np.array([[-7, -7]], np.int8)
    assert balance_codes(codes, exact, np.ones((1, 2)), -7, 7).tolist() == [[-7, -7]]
    empty = np.zeros((0, 4), np.int8)
    assert balance_codes(empty, empty.astype(float), np.ones((0, 4)), 0, 15).shape == (0, 4)
    codes = np.array([[0, 1]], np.int8)
    before = codes.copy()
    balance_codes(codes, np.array([[0.4, 0.6]]), np.ones((1, 2)), -7, 7)
    np.testing.assert_array_equal(codes, before)  # input not modified


LAYOUTS = [dict(), dict(axis=0), dict(group_size=16), dict(group_size=10, flatten=True),
           dict(symmetric=False), dict(method="clip"), dict(full_range=True)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_quantize_balanced_is_nearest_then_balanced(layout, bits):
    rng = np.random.default_rng(bits)
    w = {"conv.weight": rng.normal(0, 0.1, (12, 5, 3, 3)).astype(np.float32),
         "fc.weight": rng.normal(0, 0.1, (6, 40)).astype(np.float32),
         "fc.bias": rng.normal(0, 0.1, 6).astype(np.float32)}
    if "flatten" in layout:
        w.pop("fc.weight")
    near = quantize(w, bits, rounding="half_even", **layout)
    got = quantize(w, bits, rounding="balanced", **layout)
    for name, q in got.items():
        if not isinstance(q, QuantizedArray):
            assert q is w[name]
            continue
        n = near[name]
        assert isinstance(n, QuantizedArray)
        np.testing.assert_array_equal(q.scale, n.scale)
        rows = q.shape[0]
        step = q.expand(q.scale).astype(np.float64).reshape(rows, -1)
        exact = w[name].astype(np.float64).reshape(rows, -1) / step
        if q.zero_point is not None:
            exact += q.expand(q.zero_point).astype(np.float64).reshape(rows, -1)
        qmax = 2 ** (q.bits - 1) - 1  # the tensor's own width: the default holds small ones at 8
        lo, hi = (0, 2**q.bits - 1) if not q.symmetric else (-qmax - int("full_range" in layout), qmax)
        expected = balance_reference(n.codes.reshape(rows, -1), exact, step, lo, hi)
        np.testing.assert_array_equal(q.codes.reshape(rows, -1), expected)
        assert np.all(np.abs(q.codes.astype(int) - n.codes) <= 1)
        if "method" not in layout:  # round to nearest over the whole range: within one step of w
            err = np.abs(dequantize({name: q})[name].astype(np.float64) - w[name])
            assert np.all(err <= q.expand(q.scale) * (1 + 1e-6) + 1e-12)


def test_default_rounding_is_balanced_for_conv_kernels_with_the_default_layout_only():
    rng = np.random.default_rng(0)
    fc = {"fc.weight": rng.normal(0, 0.1, (16, 300)).astype(np.float32)}
    for bits in (4, 8):  # linear layers keep round to nearest
        assert np.array_equal(quantize(fc, bits)["fc.weight"].codes,
                              quantize(fc, bits, rounding="half_even")["fc.weight"].codes)
        assert not np.array_equal(quantize(fc, bits)["fc.weight"].codes,
                                  quantize(fc, bits, rounding="balanced")["fc.weight"].codes)
    w = {"conv.weight": rng.normal(0, 0.1, (16, 8, 3, 3)).astype(np.float32)}
    for bits in (4, 8):
        assert np.array_equal(quantize(w, bits)["conv.weight"].codes,
                              quantize(w, bits, rounding="balanced")["conv.weight"].codes)
        assert not np.array_equal(quantize(w, bits)["conv.weight"].codes,
                                  quantize(w, bits, rounding="half_even")["conv.weight"].codes)
    for layout in (dict(axis=0), dict(group_size=None), dict(group_size=24, flatten=True)):
        assert np.array_equal(quantize(w, 4, **layout)["conv.weight"].codes,
                              quantize(w, 4, rounding="half_even", **layout)["conv.weight"].codes)


def test_balanced_cancels_the_mean_shift_of_a_depthwise_kernel():
    # a depthwise 3x3 kernel reads one channel: with a constant input its output shift is the
    # error sum of its 9 taps, which balanced rounding brings within half a step
    rng = np.random.default_rng(1)
    w = {"dw.weight": rng.normal(0, 0.3, (256, 1, 3, 3)).astype(np.float32)}
    x = 1.7
    shift = {}
    for r in ("half_even", "balanced"):
        q = quantize(w, 4, axis=0, rounding=r)["dw.weight"]
        dq = dequantize({"dw.weight": q})["dw.weight"].astype(np.float64)
        shift[r] = np.abs(((dq - w["dw.weight"]) * x).reshape(256, -1).sum(1))
        steps = q.scale.astype(np.float64)
    assert np.all(shift["balanced"] <= 0.5 * steps * x + 1e-9)
    assert shift["balanced"].mean() < 0.5 * shift["half_even"].mean()


def test_measured_importance_follows_the_loss_and_refuses_bad_losses():
    from coreprune import CompressionError, measured_importance

    rng = np.random.default_rng(3)
    w = {"a.weight": rng.normal(size=(8, 32)).astype(np.float32),
         "b.weight": rng.normal(size=(8, 32)).astype(np.float32),
         "b.bias": np.zeros(8, np.float32)}
    calls = []

    def loss(v):
        calls.append(sorted(n for n in v if not np.array_equal(v[n], w[n])))
        d = v["a.weight"] - w["a.weight"]
        return 1.0 + 3.0 * float(np.sum(d**2)) / float(np.sum(w["a.weight"] ** 2))

    imp = measured_importance(w, loss, bits=3)
    assert list(imp) == ["a.weight", "b.weight"]        # the default selection: no bias
    assert calls == [[], ["a.weight"], ["b.weight"]]      # the float weights, then one tensor each
    assert imp["a.weight"] == pytest.approx(3.0)          # loss - baseline = 3 * NSR
    assert imp["b.weight"] == 0.0
    assert list(measured_importance(w, loss, include="b.weight")) == ["b.weight"]
    for bad in (lambda v: float("nan"), lambda v: "x", lambda v: None):
        with pytest.raises(CompressionError, match="finite number"):
            measured_importance(w, bad)
    with pytest.raises(CompressionError, match="not budget"):
        measured_importance(w, loss, budget=4)
    assert set(w) == {"a.weight", "b.weight", "b.bias"}


@pytest.mark.parametrize("block", [1 << 20, 7, 300])
def test_partition_path_ties_and_row_blocks_equal_the_reference(block, monkeypatch):
    import coreprune.rounding as rounding

    monkeypatch.setattr(rounding, "_BLOCK", block)
    rng = np.random.default_rng(5)
    # quarter-step residuals: many exact ties in |r|, so the partition's cut falls inside a tie
    exact = rng.integers(-24, 25, (40, 500)) / 4.0
    codes = np.clip(np.rint(exact), -7, 7).astype(np.int8)
    for step in (np.ones(exact.shape), rng.choice([0.5, 1.0, 2.0], exact.shape)):
        got = balance_codes(codes, exact, step, -7, 7)
        np.testing.assert_array_equal(got, balance_reference(codes, exact, step, -7, 7))
