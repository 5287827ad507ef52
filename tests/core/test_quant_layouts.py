"""Group layouts along any axis and over flattened fan-ins, default layouts, error-minimising scales
and mixed precision under a budget: each checked against a plain slice-by-slice reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coreprune import CompressionError, dequantize, quantize
from coreprune.bit_budget import allocate_bits, noise_to_signal
from coreprune.quant_layout import (
    SMALL_FAN_IN,
    SMALL_TENSOR,
    default_bits,
    default_layout,
    from_rows,
    param_shape,
    to_rows,
)
from coreprune.quantization import _quantize_tensor
from coreprune.scale_search import clip_params, hqq_params, reconstruct, row_sq_error, rtn_params


def per_tensor(values, bits, symmetric, **kw):
    """The per-tensor quantizer on one slice: the reference every group must match."""
    q = quantize({"s": np.ascontiguousarray(values)}, bits, symmetric=symmetric, group_size=None,
                 include="s", **kw)["s"]
    return q


def group_slices(shape, axis, g, flatten):
    """Index tuples of every group of a layout, in no particular order, with the group's scale index."""
    if flatten:
        fan = math.prod(shape[1:])
        for c in range(shape[0]):
            for j, start in enumerate(range(0, fan, g)):
                yield ("flat", c, start, min(start + g, fan)), (c, j)
        return
    k = len(shape) - 1 if axis is None else axis
    rest = [range(n) for i, n in enumerate(shape) if i != k]
    for idx in np.ndindex(*[len(r) for r in rest]):
        for j, start in enumerate(range(0, shape[k], g)):
            sl = list(idx)
            sl.insert(k, slice(start, min(start + g, shape[k])))
            scale_idx = list(idx)
            scale_idx.insert(k, j)
            yield tuple(sl), tuple(scale_idx)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(
    "shape, axis, g, flatten",
    [
        ((5, 7), None, 3, False),  # odd group, a shorter last group of 1
        ((4, 6, 5), 1, 4, False),  # groups along a middle axis, last group of 2
        ((3, 5, 2), 0, 2, False),  # along axis 0
        ((6, 3, 3, 3), None, 7, True),  # conv kernel, fan-in 27 = 3 * 7 + 6
        ((6, 1, 3, 3), None, 9, True),  # depthwise kernel, one group per channel
        ((4, 5), None, 1, False),  # tiny groups of one value
        ((2, 4, 3), None, 100, True),  # one group longer than the fan-in
    ],
)
@pytest.mark.parametrize("method", ["rtn", "clip", "hqq"])
@pytest.mark.parametrize("scale_dtype", ["float32", "float16"])
def test_every_group_equals_the_per_tensor_quantizer_on_its_slice(shape, axis, g, flatten, symmetric,
                                                                   method, scale_dtype):
    w = np.random.default_rng(len(shape) + g).standard_normal(shape).astype(np.float32)
    q = quantize({"w": w}, 3, symmetric=symmetric, axis=axis, group_size=g, flatten=flatten,
                 method=method, scale_dtype=scale_dtype)["w"]
    assert q.scale.dtype == scale_dtype
    assert q.scale.shape == param_shape(w.shape, *q.layout)
    d = q.dequantize()
    assert d.shape == w.shape and d.dtype == w.dtype
    flat_w, flat_d = w.reshape(shape[0], -1), d.reshape(shape[0], -1)
    flat_codes = q.codes.reshape(shape[0], -1)
    for sl, sidx in group_slices(shape, axis, g, flatten):
        if sl[0] == "flat":
            _, c, s0, s1 = sl
            part, got_d, got_c = flat_w[c, s0:s1], flat_d[c, s0:s1], flat_codes[c, s0:s1]
        else:
            part, got_d, got_c = w[sl], d[sl], q.codes[sl]
        ref = per_tensor(part, 3, symmetric, method=method, scale_dtype=scale_dtype)
        assert q.scale[sidx] == ref.scale
        if not symmetric:
            assert q.zero_point[sidx] == ref.zero_point
        np.testing.assert_array_equal(got_c, ref.codes)
        np.testing.assert_array_equal(got_d, ref.dequantize())


@pytest.mark.parametrize("layout", [(None, None, False), (2, None, False), (1, 3, False), (None, 5, True),
                                    (None, 4, False), (0, 2, False)])
def test_row_views_round_trip(layout):
    x = np.arange(2 * 3 * 7, dtype=np.float64).reshape(2, 3, 7)
    rows, mask = to_rows(x, *layout)
    assert rows.shape[0] == math.prod(param_shape(x.shape, *layout))
    np.testing.assert_array_equal(from_rows(rows, x.shape, *layout), x)
    real = rows[mask] if mask is not None else rows.reshape(-1)
    assert sorted(real.tolist()) == x.reshape(-1).tolist()  # every value once, padding excluded


@pytest.mark.parametrize("method", ["rtn", "clip", "hqq"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_constant_and_zero_groups_are_exact(method, symmetric):
    w = np.zeros((4, 10), np.float32)
    w[1] = 0.75
    w[2, :5] = -2.5
    q = quantize({"w": w}, 4, symmetric=symmetric, group_size=5, method=method, scale_dtype="float32")["w"]
    np.testing.assert_allclose(q.dequantize(), w, rtol=1e-6, atol=0)
    assert (q.scale[0] == 1.0).all()  # an all-zero group keeps scale 1 and codes of zero
    # float16 scales (the 4-bit groups' default): a constant is off by the scale's rounding up only
    q16 = quantize({"w": w}, 4, symmetric=symmetric, group_size=5, method=method)["w"]
    assert q16.scale.dtype == np.float16 and (q16.scale[0] == 1.0).all()
    np.testing.assert_allclose(q16.dequantize(), w, rtol=2.0**-10, atol=0)
    assert not np.array_equal(q16.dequantize(), w)  # not exact: the scale moved up to float16


@pytest.mark.parametrize("method", ["rtn", "clip", "hqq"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_by_every_method_and_layout(method, bad):
    w = np.ones((4, 3, 3, 3), np.float32)
    w[2, 1, 0, 0] = bad
    for kw in (dict(group_size=7, flatten=True), dict(axis=1, group_size=2), dict()):
        with pytest.raises(CompressionError, match=r"tensor 'conv' has 1 NaN/Inf"):
            quantize({"conv": w}, 4, method=method, **kw)


def test_fast_path_equals_the_reference_for_flattened_groups():
    w = np.random.default_rng(3).standard_normal((64, 32, 3, 3)).astype(np.float32)  # fan-in 288
    for symmetric, storage in ((True, "float32"), (False, "float32"), (True, "try16"), (False, "float16")):
        scale_dtype = {"try16": "auto"}.get(storage, storage)
        fast = quantize({"w": w}, 4, symmetric=symmetric, group_size=96, flatten=True,
                        scale_dtype=scale_dtype)["w"]
        ref = _quantize_tensor("w", w, 4, symmetric, (None, 96, True), storage=storage)
        assert fast.scale.dtype == (np.float32 if storage == "float32" else np.float16)
        np.testing.assert_array_equal(fast.codes, ref.codes)
        np.testing.assert_array_equal(fast.scale, ref.scale)
        np.testing.assert_array_equal(fast.dequantize(), ref.dequantize())
        if not symmetric:
            np.testing.assert_array_equal(fast.zero_point, ref.zero_point)


def test_default_layouts_follow_the_tensor():
    rng = np.random.default_rng(0)
    w = {
        "stem.weight": rng.standard_normal((32, 3, 3, 3)).astype(np.float32),  # fan-in 27: per channel
        "dw.weight": rng.standard_normal((96, 1, 3, 3)).astype(np.float32),  # depthwise: per channel
        "pw.weight": rng.standard_normal((40, 144, 1, 1)).astype(np.float32),  # 3 flattened groups of 48
        "emb.weight": rng.standard_normal((2, 384)).astype(np.float32),  # 768 weights: per channel
        "fc.weight": rng.standard_normal((10, 1280)).astype(np.float32),  # 20 groups of 64
        "bn.weight": rng.standard_normal(32).astype(np.float32),  # left alone
    }
    q = quantize(w, bits=4)
    assert q["stem.weight"].layout == (0, None, False)
    assert q["dw.weight"].layout == (0, None, False)
    assert q["pw.weight"].layout == (None, 48, True) and q["pw.weight"].scale.shape == (40, 3)
    assert q["emb.weight"].layout == (0, None, False)
    assert q["fc.weight"].layout == (None, 64, False) and q["fc.weight"].scale.shape == (10, 20)
    assert q["bn.weight"] is w["bn.weight"]
    assert quantize(w, bits=8)["pw.weight"].layout == (0, None, False)
    assert default_layout((4,), 4) == (None, None, False)
    # the 4-bit default costs 4.25 bits per weight on the large tensors (float16 group scales)
    assert 8 * q["fc.weight"].nbytes / w["fc.weight"].size == 4.25
    assert q["fc.weight"].scale.dtype == np.float16 and q["dw.weight"].scale.dtype == np.float16
    # fan-ins of at most SMALL_FAN_IN (stem 27, depthwise 9) and tensors of at most SMALL_TENSOR
    # weights keep 8 bits, the rest the width asked
    assert SMALL_FAN_IN == 32 and SMALL_TENSOR == 4096
    assert {n: q[n].bits for n in w if n != "bn.weight"} == {
        "stem.weight": 8, "dw.weight": 8, "pw.weight": 4, "fc.weight": 4, "emb.weight": 8}
    assert quantize(w, bits=3)["dw.weight"].bits == 8 and quantize(w, bits=3)["pw.weight"].bits == 3
    as_int8 = quantize(w, bits=8, scale_dtype="float16")["dw.weight"]  # the 4-bit call stores float16 scales
    np.testing.assert_array_equal(q["dw.weight"].codes, as_int8.codes)
    # an explicit layout keeps the width asked everywhere, and so do 1 bit and 8 bits and more
    assert {v.bits for n, v in quantize(w, bits=4, axis=0).items() if n != "bn.weight"} == {4}
    assert quantize(w, bits=4, group_size=16)["dw.weight"].bits == 4
    assert quantize(w, bits=1)["dw.weight"].bits == 1 and quantize(w, bits=12)["dw.weight"].bits == 12
    assert default_bits((33, 33), 4) == 8 and default_bits((33, 32), 4) == 8
    assert default_bits((64, 64), 4) == 8 and default_bits((64, 65), 4) == 4
    assert default_bits((4097, 1), 4) == 8
    assert default_bits((2, 2049), 4) == 4


def test_full_range_uses_the_lowest_code_and_a_finer_step():
    w = np.array([[-1.0, 0.5, 1.0, 0.25]], np.float32)
    q = quantize({"w": w}, 8, group_size=None, full_range=True)["w"]
    assert float(q.scale) == np.float32(1.0 / 127.5)
    expected = np.clip(np.rint(w / q.scale), -128, 127)
    np.testing.assert_array_equal(q.codes, expected)
    assert q.codes.tolist() == [[-127, 64, 127, 32]]  # -1 / scale = -127.49999 in float32
    # a value that lands past -127.5 takes the code -128, which the restricted range never uses
    assert quantize({"w": np.array([[-1.0, 0.99]], np.float32)}, 8, group_size=None,
                    full_range=True)["w"].codes.min() >= -128
    assert np.abs(q.dequantize() - w).max() <= float(q.scale) / 2 * (1 + 1e-6)


def test_optimised_scales_never_lose_to_round_to_nearest():
    rng = np.random.default_rng(1)
    x = rng.standard_t(4, size=(300, 64))  # heavy tails, as real weights
    for symmetric, lo, hi in ((True, -7, 7), (True, -8, 7), (False, 0, 15)):
        base = row_sq_error(x, reconstruct(x, *rtn_params(x, symmetric, lo, hi), lo, hi), None)
        clip = row_sq_error(x, reconstruct(x, *clip_params(x, None, symmetric, lo, hi), lo, hi), None)
        hqq = row_sq_error(x, reconstruct(x, *hqq_params(x, None, symmetric, lo, hi), lo, hi), None)
        assert (clip <= base).all() and (hqq <= base).all()
        assert clip.sum() < 0.97 * base.sum() and hqq.sum() < 0.97 * base.sum()  # and gain clearly


def test_budget_meets_the_size_and_orders_the_widths():
    rng = np.random.default_rng(2)
    w = {
        "small.weight": rng.standard_normal((16, 1, 3, 3)).astype(np.float32),
        "big.weight": (0.05 * rng.standard_normal((256, 512))).astype(np.float32),
        "mid.weight": rng.standard_normal((64, 128)).astype(np.float32),
    }
    for budget in (3.0, 4.5, 6.0):
        q = quantize(w, budget=budget)
        total = sum(q[n].nbytes for n in w)
        assert 8 * total / sum(v.size for v in w.values()) <= budget
        assert all(q[n].bits in (2, 3, 4, 6, 8) for n in w)
        assert q["small.weight"].bits == 8  # a depthwise kernel is never below 8 bits by default
    # without a width of 8 or more, the widest choice; an explicit layout: any width
    # (importance 0: nothing but the floor keeps it above the narrowest width)
    careless = {"small.weight": 0.0}
    assert quantize(w, budget=3.0, bit_choices=[2, 3, 4], importance=careless)["small.weight"].bits == 4
    assert quantize(w, budget=3.0, bit_choices=[2, 3, 4], importance=careless,
                    axis=0)["small.weight"].bits == 2
    uniform = quantize(w, bits=4)
    size = 8 * sum(uniform[n].nbytes for n in w) / sum(v.size for v in w.values())  # 4.5 and a bit
    mixed = quantize(w, budget=size)
    err = {k: sum(noise_to_signal(w[n], dq[n]) for n in w)
           for k, dq in (("u", dequantize(uniform)), ("m", dequantize(mixed)))}
    assert err["m"] <= err["u"]
    with pytest.raises(CompressionError, match="budget 1.0 bits per weight is below"):
        quantize(w, budget=1.0)
    with pytest.raises(CompressionError, match="bit_choices must be ints in 2..16"):
        quantize(w, budget=4.0, bit_choices=[1, 4])
    with pytest.raises(CompressionError, match="budget must be a finite number"):
        quantize(w, budget=float("nan"))
    q3 = quantize(w, budget=3.6, bit_choices=[3])  # groups of 64: 3 + 32/64 bits, and a bit more
    assert {q3[n].bits for n in w} == {3}


def test_allocation_prefers_the_largest_gain_per_byte():
    sizes = {"a": {2: 10, 8: 40}, "b": {2: 100, 8: 400}}
    errors = {"a": {2: 1.0, 8: 0.0}, "b": {2: 1.0, 8: 0.0}}
    # the same error gain; a costs a tenth of the bytes
    counts = {"a": 40, "b": 400}
    assert allocate_bits(sizes, errors, counts, budget=(10 + 100 + 30) * 8 / 440) == {"a": 8, "b": 2}
    imp = allocate_bits(sizes, errors, counts, budget=(10 + 400) * 8 / 440, importance={"a": 0.0})
    assert imp == {"a": 2, "b": 8}


@pytest.mark.parametrize("symmetric", [True, False])
def test_every_layout_round_trips_through_cpz(tmp_path, symmetric):
    from coreprune import load_compressed, save_compressed

    rng = np.random.default_rng(9)
    w = {
        "conv.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "dw.weight": rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
        "fc.weight": rng.standard_normal((5, 70)).astype(np.float32),
        "mid.weight": rng.standard_normal((4, 6, 5)).astype(np.float32),
    }
    w["conv.weight"][:, :2] = 0.0  # many zero codes: the sparse layouts with the zero-point fill
    cases = [
        dict(bits=4),  # the defaults
        dict(bits=3, group_size=7, flatten=True, method="hqq"),
        dict(bits=5, axis=1, group_size=4, method="clip"),
        dict(bits=4, group_size=3),
        dict(budget=4.5),
    ]
    for i, kw in enumerate(cases):
        q = quantize(w, symmetric=symmetric, **kw)
        path = tmp_path / f"q{i}.cpz"
        save_compressed(q, path)
        got = load_compressed(path)
        for name in w:
            a, b = q[name], got[name]
            assert (a.layout, a.bits, a.symmetric) == (b.layout, b.bits, b.symmetric)
            np.testing.assert_array_equal(a.codes, b.codes)
            np.testing.assert_array_equal(a.scale, b.scale)
            if not symmetric:
                np.testing.assert_array_equal(a.zero_point, b.zero_point)
            np.testing.assert_array_equal(a.dequantize(), b.dequantize())


def test_bits_mapping_gives_each_tensor_its_width():
    rng = np.random.default_rng(5)
    w = {"dw.weight": rng.standard_normal((16, 1, 3, 3)).astype(np.float32),
         "fc.weight": rng.standard_normal((8, 128)).astype(np.float32),
         "fc.bias": rng.standard_normal(8).astype(np.float32)}
    q = quantize(w, bits={"dw.weight": 4, "fc.weight": 6})
    assert (q["dw.weight"].bits, q["fc.weight"].bits) == (4, 6)  # no 8-bit floor: taken as given
    assert q["fc.bias"] is w["fc.bias"]  # not selected, needs no width
    # each tensor equals quantize at its own width with the same layout (float16 scales both ways)
    for name, b in (("dw.weight", 4), ("fc.weight", 6)):
        alone = quantize({name: w[name]}, b, group_size=q[name].group_size, axis=q[name].axis,
                         flatten=q[name].flatten, scale_dtype="float16", rounding="half_even")[name]
        direct = quantize({name: w[name]}, bits={name: b}, rounding="half_even")[name]
        np.testing.assert_array_equal(direct.codes, alone.codes)
        np.testing.assert_array_equal(direct.scale, alone.scale)
    with pytest.raises(CompressionError, match=r"bits gives no width for the selected tensor 'fc.weight'"):
        quantize(w, bits={"dw.weight": 4})
    with pytest.raises(CompressionError, match="bits must be an int in 1..16, got 17"):
        quantize(w, bits={"dw.weight": 4, "fc.weight": 17})
    with pytest.raises(CompressionError, match="bits=1 is sign binarization"):
        quantize(w, bits={"dw.weight": 1, "fc.weight": 4}, symmetric=False)
    with pytest.raises(CompressionError, match="give either bits or budget"):
        quantize(w, bits={"dw.weight": 4, "fc.weight": 4}, budget=4.0)


@pytest.mark.parametrize("shape", [(4, 10), (2, 3, 5), (0, 0, 0), (3, 0)])
@pytest.mark.parametrize("g", [11, 2**40, 2**63])
def test_a_group_longer_than_its_run_is_one_unpadded_group(shape, g):
    """A group size beyond the run (legal: one short group) gives what the run's own length gives,
    with no row view that grows with the group size (the structure-aware fuzzer bent a .cpz's
    group_size to 2**63: NumPy refused the reshape of an empty tensor; 2**40 on a small one
    allocated a padded row of 2**40 values)."""
    w = np.random.default_rng(9).standard_normal(shape).astype(np.float32)
    run = shape[-1]
    q = quantize({"w": w}, 4, group_size=g)["w"]
    ref = quantize({"w": w}, 4, group_size=max(run, 1))["w"]
    np.testing.assert_array_equal(q.codes, ref.codes)
    np.testing.assert_array_equal(q.scale, ref.scale)
    np.testing.assert_array_equal(q.dequantize(), ref.dequantize())
    rows, mask = to_rows(w, None, g, False)
    assert rows.shape[1] <= max(run, 1) and mask is None
