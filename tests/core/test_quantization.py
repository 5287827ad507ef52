"""n-bit quantization: conventions, layouts, edge cases, validation; cross-checked against references."""

from __future__ import annotations

import copy
import dataclasses
import math

import ml_dtypes
import numpy as np
import pytest

import coreprune
from coreprune import CompressionError, QuantizedArray, dequantize, quantize
from coreprune.packing import pack_bits
from coreprune.quantization import SCALE_FLOOR, code_dtype

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]


def ref_symmetric(w, bits):
    """Element by element, Python scalars: the contract's formula for one per-tensor scale."""
    qmax = 2 ** (bits - 1) - 1
    x = w.astype(np.float32).ravel().tolist()
    peak = max((abs(v) for v in x), default=0.0)
    scale = np.float32(peak / qmax) if peak > 0 else np.float32(1.0)
    codes = [min(max(round(float(np.float32(v) / scale)), -qmax), qmax) for v in x]  # round: half even
    return np.array(codes).reshape(w.shape), scale


def ref_affine(w, bits):
    qmax = 2**bits - 1
    x = w.astype(np.float32).ravel().tolist()
    lo, hi = min(min(x, default=0.0), 0.0), max(max(x, default=0.0), 0.0)
    scale = np.float32((hi - lo) / qmax) if hi > lo else np.float32(1.0)
    zp = min(max(round(-lo / float(scale)), 0), qmax)
    codes = [min(max(round(float(np.float32(v) / scale)) + zp, 0), qmax) for v in x]
    return np.array(codes).reshape(w.shape), scale, zp


@pytest.fixture
def model():
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(4).astype(np.float32),
        "bn.num_batches_tracked": np.array(5, np.int64),
        "fc.weight": (0.1 * rng.standard_normal((3, 8))).astype(np.float32),
        "table": np.arange(6, dtype=np.int32).reshape(2, 3),
    }


# ----------------------------------------------------------------- formulas


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8, 9, 12, 16])
def test_symmetric_per_tensor_matches_scalar_reference(bits):
    w = np.random.default_rng(bits).standard_normal((7, 5)).astype(np.float32)
    q = quantize({"w": w}, bits, group_size=None)["w"]
    codes, scale = ref_symmetric(w, bits)
    assert q.scale.dtype == np.float32 and q.scale.shape == () and q.scale == scale
    assert q.codes.dtype == code_dtype(bits, True)
    np.testing.assert_array_equal(q.codes, codes)
    assert np.abs(q.codes).max() == 2 ** (bits - 1) - 1  # the peak uses the full range
    assert q.zero_point is None


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 11, 16])
def test_affine_per_tensor_matches_scalar_reference(bits):
    w = (np.random.default_rng(bits).standard_normal((6, 9)) + 0.7).astype(np.float32)
    q = quantize({"w": w}, bits, symmetric=False, group_size=None)["w"]
    codes, scale, zp = ref_affine(w, bits)
    assert q.scale == scale and int(q.zero_point) == zp
    assert q.zero_point.dtype == q.codes.dtype == code_dtype(bits, False)
    np.testing.assert_array_equal(q.codes, codes)


def test_rounding_is_half_to_even():
    # with a scale of exactly 1 (peak 127 at 8 bits), w / scale is w itself
    w = np.array([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 127.0]], np.float32)
    q = quantize({"w": w}, 8, group_size=None)["w"]
    assert float(q.scale) == 1.0
    assert q.codes.tolist() == [[0, 2, 2, 0, -2, -2, 127]]


def test_affine_represents_zero_exactly():
    rng = np.random.default_rng(5)
    for w in (rng.standard_normal((5, 5)) + 0.3, rng.random((4, 4)) + 1.0, -rng.random((4, 4)) - 1.0):
        w = w.astype(np.float32)
        w[0, 0] = 0.0
        q = quantize({"w": w}, 4, symmetric=False, group_size=None)["w"]
        assert q.dequantize()[0, 0] == 0.0
        assert q.codes[0, 0] == q.zero_point
    per_tensor = dict(symmetric=False, group_size=None)
    assert int(quantize({"w": rng.random((3, 3)) + 1}, 4, **per_tensor)["w"].zero_point) == 0
    assert int(quantize({"w": -rng.random((3, 3)) - 1}, 4, **per_tensor)["w"].zero_point) == 15


@pytest.mark.parametrize("layout", [{}, {"axis": 0}, {"axis": 2}, {"group_size": 3}])
def test_binarization(layout):
    w = np.random.default_rng(6).standard_normal((4, 5, 6)).astype(np.float32)
    w[0, 0, 0] = 0.0
    q = quantize({"w": w}, 1, **(layout or {"group_size": None}), scale_dtype="float32")["w"]
    assert q.codes.dtype == np.uint8 and set(np.unique(q.codes).tolist()) <= {0, 1}
    np.testing.assert_array_equal(q.codes, (w >= 0).astype(np.uint8))
    if "axis" in layout:
        others = tuple(i for i in range(3) if i != layout["axis"])
        expected = np.abs(w.astype(np.float64)).mean(axis=others)
        magnitude = np.expand_dims(expected, others)
    elif "group_size" in layout:
        expected = np.abs(w.astype(np.float64)).reshape(4, 5, 2, 3).mean(axis=-1)
        magnitude = np.repeat(expected, 3, axis=-1)
    else:
        expected = magnitude = np.abs(w.astype(np.float64)).mean()
    np.testing.assert_array_equal(q.scale, np.asarray(expected).astype(np.float32))
    d = q.dequantize()
    np.testing.assert_array_equal(np.abs(d), np.broadcast_to(magnitude, w.shape).astype(np.float32))
    assert (np.sign(d) == np.where(w >= 0, 1, -1)).all()


# ----------------------------------------------------------------- layouts


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_per_axis_equals_per_tensor_on_each_slice(symmetric, axis):
    w = np.random.default_rng(7).standard_normal((3, 4, 5)).astype(np.float32)
    q = quantize({"w": w}, 4, symmetric=symmetric, axis=axis, scale_dtype="float32")["w"]
    ax = axis % 3
    assert q.axis == ax and q.scale.shape == (w.shape[ax],) and q.codes.shape == w.shape
    for i in range(w.shape[ax]):
        part = np.take(w, i, axis=ax)
        qi = quantize({"p": part}, 4, symmetric=symmetric, include="p", group_size=None)["p"]
        np.testing.assert_array_equal(np.take(q.codes, i, axis=ax), qi.codes)
        assert q.scale[i] == qi.scale
        if not symmetric:
            assert q.zero_point[i] == qi.zero_point
        np.testing.assert_array_equal(np.take(q.dequantize(), i, axis=ax), qi.dequantize())


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("g", [1, 2, 3, 6])
def test_groups_equal_per_tensor_on_each_group(symmetric, g):
    w = np.random.default_rng(8).standard_normal((2, 3, 6)).astype(np.float32)
    q = quantize({"w": w}, 3, symmetric=symmetric, group_size=g, scale_dtype="float32")["w"]
    assert q.group_size == g and q.axis is None and q.scale.shape == (2, 3, 6 // g)
    deq = q.dequantize()
    for idx in np.ndindex(2, 3, 6 // g):
        sl = (idx[0], idx[1], slice(idx[2] * g, (idx[2] + 1) * g))
        qi = quantize({"p": w[sl]}, 3, symmetric=symmetric, include="p", group_size=None)["p"]
        np.testing.assert_array_equal(q.codes[sl], qi.codes)
        assert q.scale[idx] == qi.scale
        np.testing.assert_array_equal(deq[sl], qi.dequantize())


def test_group_with_the_last_axis_is_redundant():
    w = np.random.default_rng(9).standard_normal((4, 8)).astype(np.float32)
    a = quantize({"w": w}, 4, group_size=4)["w"]
    for axis in (1, -1):
        b = quantize({"w": w}, 4, axis=axis, group_size=4)["w"]
        assert b.axis is None and b.group_size == 4
        np.testing.assert_array_equal(a.codes, b.codes)
        np.testing.assert_array_equal(a.scale, b.scale)


def test_group_covering_the_whole_last_axis_equals_per_row():
    w = np.random.default_rng(10).standard_normal((5, 8)).astype(np.float32)
    a = quantize({"w": w}, 6, group_size=8, scale_dtype="float32")["w"]
    b = quantize({"w": w}, 6, axis=0, scale_dtype="float32")["w"]
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.scale[:, 0], b.scale)


# ----------------------------------------------------------------- dtypes, edge cases


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_dequantize_returns_the_original_dtype_within_half_a_step(dtype, symmetric):
    w = np.random.default_rng(11).standard_normal((16, 12)).astype(dtype)
    q = quantize({"w": w}, 6, symmetric=symmetric, axis=1)["w"]
    assert q.dtype == dtype and q.shape == (16, 12)
    d = q.dequantize()
    assert d.dtype == dtype and d.shape == w.shape
    err = np.abs(d.astype(np.float64) - w.astype(np.float64))
    eps = max(float(ml_dtypes.finfo(dtype).eps), 2.0**-23)
    peak = np.abs(w.astype(np.float64)).max()
    assert (err <= q.scale.astype(np.float64)[None, :] / 2 + 2 * eps * peak).all()


@pytest.mark.parametrize("dtype", [np.dtype(np.float16), BF16])
def test_half_precision_is_computed_in_float32(dtype):
    w = np.random.default_rng(12).standard_normal((8, 8)).astype(dtype)
    a = quantize({"w": w}, 5, axis=0)["w"]
    b = quantize({"w": w.astype(np.float32)}, 5, axis=0)["w"]
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.scale, b.scale)
    np.testing.assert_array_equal(a.dequantize(), b.dequantize().astype(dtype))


def test_float64_codes_follow_the_stored_float32_scale():
    w = np.random.default_rng(13).standard_normal((50, 40))
    for symmetric in (True, False):
        q = quantize({"w": w}, 8, symmetric=symmetric, group_size=None)["w"]
        s = q.scale.astype(np.float64)
        zp = 0 if symmetric else int(q.zero_point)
        lo, hi = (-127, 127) if symmetric else (0, 255)
        np.testing.assert_array_equal(q.codes, np.clip(np.rint(w / s) + zp, lo, hi))
        assert q.dequantize().dtype == np.float64
        np.testing.assert_array_equal(q.dequantize(), s * (q.codes.astype(np.float64) - zp))


@pytest.mark.parametrize("bits", [2, 8, 16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_all_zero_and_constant_tensors(bits, symmetric):
    z = quantize({"w": np.zeros((3, 4), np.float32)}, bits, symmetric=symmetric, axis=0)["w"]
    assert (z.scale == 1.0).all() and (z.dequantize() == 0).all()
    for value in (2.5, -2.5):
        c = quantize({"w": np.full((3, 4), value, np.float32)}, bits, symmetric=symmetric,
                     group_size=None)["w"]
        d = c.dequantize()
        assert np.isfinite(d).all()
        assert np.abs(d - value).max() <= float(c.scale) / 2


def test_binarization_of_zeros_uses_the_scale_floor():
    q = quantize({"w": np.zeros((2, 3), np.float32)}, 1, group_size=None)["w"]
    assert float(q.scale) == SCALE_FLOOR == 2.0**-126
    assert q.codes.tolist() == [[1, 1, 1], [1, 1, 1]]


@pytest.mark.parametrize("layout", [{}, {"axis": 0}, {"axis": 1}, {"group_size": 2}])
@pytest.mark.parametrize("bits, symmetric", [(1, True), (4, True), (4, False)])
@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0, 0)])
def test_empty_tensors(layout, bits, symmetric, shape):
    if "group_size" in layout and shape[-1] % 2:
        pytest.skip("not a valid layout")
    w = np.zeros(shape, np.float32)
    q = quantize({"w": w}, bits, symmetric=symmetric, **layout)["w"]
    assert q.codes.shape == shape and q.dequantize().shape == shape
    assert np.isfinite(q.scale).all() and (q.scale > 0).all()
    assert q.nbytes == q.scale.nbytes + (q.zero_point.nbytes if q.zero_point is not None else 0)


@pytest.mark.parametrize("peak", [1e-45, 1e-40, 1e-38, 2e-38])
@pytest.mark.parametrize("bits, symmetric", [(2, True), (8, True), (16, True), (2, False), (16, False)])
def test_tiny_scales_are_floored_not_zero(peak, bits, symmetric):
    w = np.array([[peak, -peak / 3, 0.0]], np.float32)
    q = quantize({"w": w}, bits, symmetric=symmetric, group_size=None)["w"]
    assert float(q.scale) >= SCALE_FLOOR and np.isfinite(q.scale)
    d = q.dequantize()
    assert np.isfinite(d).all()
    assert (np.abs(d.astype(np.float64) - w.astype(np.float64)) <= float(q.scale) / 2 * (1 + 1e-6)).all()


def test_float64_tiny_and_huge():
    q = quantize({"w": np.array([[1e-300, -2e-300]])}, 8, group_size=None)["w"]
    assert float(q.scale) == SCALE_FLOOR and q.codes.tolist() == [[0, 0]]
    q = quantize({"w": np.array([[1e39, -2e39]])}, 8, group_size=None)["w"]  # max/127 still fits a float32
    assert np.isfinite(q.scale) and q.codes.tolist() == [[64, -127]]
    with pytest.raises(CompressionError, match=r"tensor 'w': the quantization scale .* exceeds the float32"):
        quantize({"w": np.array([[1e300, 1.0]])}, 8, group_size=None)
    with pytest.raises(CompressionError, match="'w'.*float32 range"):
        quantize({"w": np.array([[1e300, 1.0]])}, 1, group_size=None)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_extremes_of_the_dtype_stay_finite(dtype):
    big = float(ml_dtypes.finfo(dtype).max)
    w = np.array([[-big, big, 1.0]], dtype)
    for bits, symmetric in ((2, False), (2, True), (8, False), (16, False)):
        d = quantize({"w": w}, bits, symmetric=symmetric, group_size=None)["w"].dequantize()
        assert np.isfinite(d).all(), (bits, symmetric, d)


def test_zero_dim_tensors_need_include_and_no_axis():
    w = {"t": np.array(-3.0, np.float32), "m": np.ones((2, 2), np.float32)}
    assert quantize(w, 8, group_size=None)["t"] is w["t"]
    for bits, symmetric in ((1, True), (8, True), (8, False)):
        q = quantize(w, bits, symmetric=symmetric, include="t", group_size=None)["t"]
        assert q.shape == () and q.codes.shape == () and q.scale.shape == ()
        assert q.dequantize().shape == () and float(q.dequantize()) == -3.0
    with pytest.raises(CompressionError, match=r"tensor 't'.*axis 0 is out of range for ndim=0"):
        quantize(w, 8, axis=0, include="*")
    with pytest.raises(CompressionError, match=r"tensor 't'.*group_size needs a tensor with ndim >= 1"):
        quantize(w, 8, group_size=1, include="*")


# ----------------------------------------------------------------- the dict API


def test_quantize_passes_unselected_through(model):
    q = quantize(model, 4, group_size=None)
    assert list(q) == list(model)
    assert isinstance(q["conv.weight"], QuantizedArray) and isinstance(q["fc.weight"], QuantizedArray)
    for n in ("conv.bias", "bn.num_batches_tracked", "table"):
        assert q[n] is model[n]
    d = dequantize(q)
    assert list(d) == list(model)
    for n in ("conv.bias", "bn.num_batches_tracked", "table"):
        assert d[n] is model[n]
    assert d["fc.weight"].dtype == np.float32 and d["fc.weight"].shape == (3, 8)
    q = quantize(model, 4, include="*.bias", exclude="fc*", group_size=None)
    assert [n for n in q if isinstance(q[n], QuantizedArray)] == ["conv.bias"]


def test_quantize_and_dequantize_never_modify_inputs(model):
    before = copy.deepcopy(model)
    q = quantize(model, 3, symmetric=False, axis=0)
    for n in before:
        np.testing.assert_array_equal(before[n], model[n])
    assert not np.shares_memory(q["fc.weight"].codes, model["fc.weight"])
    codes = q["fc.weight"].codes.copy()
    d = dequantize(q)
    np.testing.assert_array_equal(q["fc.weight"].codes, codes)
    assert not np.shares_memory(d["fc.weight"], q["fc.weight"].codes)


@pytest.mark.parametrize("bits", [0, 17, -1, 8.0, True, "8", None])
def test_quantize_rejects_bad_bits(bits):
    with pytest.raises(CompressionError, match="bits must be an int in 1..16"):
        quantize({"w": np.ones((2, 2))}, bits, group_size=None)


def test_quantize_argument_errors_name_the_tensor(model):
    with pytest.raises(CompressionError, match=r"tensor 'conv.weight': axis 4 is out of range for ndim=4"):
        quantize(model, 8, axis=4)
    with pytest.raises(CompressionError, match=r"tensor 'fc.weight': axis -3 is out of range for ndim=2"):
        quantize(model, 8, axis=-3, exclude="conv*")
    with pytest.raises(CompressionError, match=r"flatten needs an int group_size"):
        quantize(model, 8, flatten=True)
    with pytest.raises(CompressionError, match=r"tensor 'conv.weight' of shape .*: flatten .* takes no axis"):
        quantize(model, 4, axis=1, group_size=4, flatten=True)
    with pytest.raises(CompressionError, match=r"method must be one of rtn, clip, hqq"):
        quantize(model, 4, method="gptq")
    with pytest.raises(CompressionError, match=r"full_range is a symmetric range"):
        quantize(model, 4, symmetric=False, full_range=True)
    with pytest.raises(CompressionError, match=r"give either bits or budget"):
        quantize(model, 4, budget=4.5)
    with pytest.raises(CompressionError, match=r"bits must be an int"):
        quantize(model)
    for g in (0, -2, 2.0, True, "big"):
        with pytest.raises(CompressionError, match="group_size must be an int >= 1"):
            quantize(model, 8, group_size=g)
    with pytest.raises(CompressionError, match="axis must be an int or None"):
        quantize(model, 8, axis=1.0)
    with pytest.raises(CompressionError, match="symmetric must be a bool"):
        quantize(model, 8, symmetric="no", group_size=None)
    with pytest.raises(CompressionError, match="bits=1 is sign binarization"):
        quantize(model, 1, symmetric=False, group_size=None)
    with pytest.raises(CompressionError, match=r"tensor 'w' has 1 NaN/Inf"):
        quantize({"w": np.array([[1.0, np.nan]], np.float16)}, 8, group_size=None)
    with pytest.raises(CompressionError, match=r"weights\['w'\] is a list"):
        quantize({"w": [[1.0]]}, 8, group_size=None)
    with pytest.raises(CompressionError, match=r"qweights\['w'\] is a list"):
        dequantize({"w": [[1.0]]})
    with pytest.raises(CompressionError, match="mapping"):
        dequantize([np.ones(2)])


# ----------------------------------------------------------------- QuantizedArray


def make(**changes):
    fields = dict(
        codes=np.array([[1, -2], [3, 0]], np.int8),
        scale=np.array([0.5, 0.25], np.float32),
        zero_point=None,
        bits=4,
        symmetric=True,
        axis=0,
        group_size=None,
        shape=(2, 2),
        dtype=np.dtype(np.float32),
    )
    fields.update(changes)
    return QuantizedArray(**fields)


def test_quantized_array_dequantize_by_hand():
    assert make().dequantize().tolist() == [[0.5, -1.0], [0.75, 0.0]]
    affine = make(codes=np.array([[1, 2], [3, 0]], np.uint8), zero_point=np.array([1, 2], np.uint8),
                  symmetric=False)
    assert affine.dequantize().tolist() == [[0.0, 0.5], [0.25, -0.5]]
    binary = make(codes=np.array([[1, 0], [0, 1]], np.uint8), bits=1)
    assert binary.dequantize().tolist() == [[0.5, -0.5], [-0.25, 0.25]]
    grouped = make(scale=np.array([[2.0], [4.0]], np.float32), axis=None, group_size=2, dtype=BF16)
    out = grouped.dequantize()
    assert out.dtype == BF16 and out.astype(np.float32).tolist() == [[2.0, -4.0], [12.0, 0.0]]


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(codes=np.zeros((2, 2), np.int16)), "codes must be a numpy array of dtype int8"),
        (dict(codes=[[1, 2], [3, 4]]), "codes must be a numpy array"),
        (dict(codes=np.zeros((2, 3), np.int8)), r"codes have shape \(2, 3\), expected \(2, 2\)"),
        (dict(codes=np.array([[8, 0], [0, 0]], np.int8)), r"codes outside \[-8, 7\]"),
        (dict(scale=np.array([0.5, 0.25])), "scale must be a float32 or float16 numpy array"),
        (dict(scale=np.array([0.5, np.inf], np.float16)), "scale must be finite and > 0"),
        (dict(scale=np.array([0.5], np.float32)), r"scale has shape \(1,\), expected \(2,\)"),
        (dict(scale=np.array([0.5, 0.0], np.float32)), "scale must be finite and > 0"),
        (dict(scale=np.array([np.inf, 1.0], np.float32)), "scale must be finite and > 0"),
        (dict(scale=np.array([np.nan, 1.0], np.float32)), "scale must be finite and > 0"),
        (dict(zero_point=np.zeros(2, np.int8)), "symmetric quantization has no zero_point"),
        (dict(codes=np.zeros((2, 2), np.uint8), symmetric=False), "zero_point must be a uint8 array"),
        (dict(codes=np.zeros((2, 2), np.uint8), symmetric=False, zero_point=np.zeros(2, np.int8)),
         "zero_point must be a uint8 array of shape"),
        (dict(codes=np.zeros((2, 2), np.uint8), symmetric=False, zero_point=np.array([0, 16], np.uint8)),
         r"zero_point outside \[0, 15\]"),
        (dict(bits=0), "bits must be an int in 1..16"),
        (dict(bits=17), "bits must be an int in 1..16"),
        (dict(bits=4.0), "bits must be an int in 1..16"),
        (dict(codes=np.zeros((2, 2), np.uint8), bits=1, symmetric=False), "bits=1"),
        (dict(codes=np.array([[2, 0], [0, 0]], np.uint8), bits=1), r"codes outside \[0, 1\]"),
        (dict(symmetric=1), "symmetric must be a bool"),
        (dict(axis=2), "axis 2 is out of range for a tensor with ndim=2"),
        (dict(axis=-1), "axis -1 is out of range"),
        (dict(group_size=2), r"scale has shape \(2,\), expected \(1, 2\)"),
        (dict(axis=None, group_size=3), r"scale has shape \(2,\), expected \(2, 1\)"),
        (dict(axis=None, group_size=2, flatten=True, scale=np.ones((2, 2), np.float32)),
         r"scale has shape \(2, 2\), expected \(2, 1\)"),
        (dict(axis=None, flatten=True), "flatten needs a group_size"),
        (dict(axis=0, group_size=1, flatten=True), "takes no axis"),
        (dict(flatten=1), "flatten must be a bool"),
        (dict(axis=None, group_size=0), "group_size must be an int >= 1"),
        (dict(dtype=np.dtype(np.int32)), "dtype must be a floating dtype"),
        (dict(dtype="nonsense"), "is not a numpy dtype"),
        (dict(shape=None), "shape must be a tuple of int"),
    ],
)
def test_quantized_array_validation(changes, message):
    with pytest.raises(CompressionError, match="inconsistent QuantizedArray: .*" + message):
        make(**changes)


def test_quantized_array_normalises_and_is_frozen():
    q = make(shape=[2, 2], bits=np.int64(4), axis=np.int32(0), dtype=np.float32)
    assert q.shape == (2, 2) and type(q.bits) is int and type(q.axis) is int
    assert q.dtype == np.dtype(np.float32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.bits = 8  # type: ignore[misc]
    assert make(codes=np.array([[-8, 7], [0, 0]], np.int8)).codes.min() == -8  # full two's complement range


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 7, 8, 9, 13, 16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_nbytes_is_the_packed_size(bits, symmetric):
    if bits == 1 and not symmetric:
        return
    w = np.random.default_rng(bits).standard_normal((7, 3, 5)).astype(np.float32)
    for layout in ({}, {"axis": 1}, {"group_size": 5}):
        q = quantize({"w": w}, bits, symmetric=symmetric, **layout)["w"]
        assert q.bits == (8 if layout == {} and 2 <= bits < 8 else bits)  # fan-in 15: 8 bits by default
        expected = math.ceil(w.size * q.bits / 8) + q.scale.nbytes + (0 if symmetric else q.zero_point.nbytes)
        assert q.nbytes == expected
        assert q.nbytes == pack_bits(q.codes, q.bits).nbytes + q.scale.nbytes + (
            0 if q.zero_point is None else q.zero_point.nbytes
        )


def test_repr_is_short_and_informative():
    q = quantize({"w": np.ones((512, 256), np.float32)}, 4, axis=0)["w"]
    text = repr(q)
    assert text == (
        "QuantizedArray(shape=(512, 256), dtype=float32, bits=4, symmetric=True, axis=0, group_size=None, "
        "scale=float16(512,), nbytes=66560)"
    )
    assert "bfloat16" in repr(quantize({"w": np.ones((2, 2), BF16)}, 8, group_size=None)["w"])


@pytest.mark.parametrize("bits", list(range(1, 17)))
def test_code_dtypes(bits):
    w = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)}
    q = quantize(w, bits, group_size=None)["w"]
    assert q.codes.dtype == (np.uint8 if bits == 1 else np.int8 if bits <= 8 else np.int16)
    if bits > 1:
        a = quantize(w, bits, symmetric=False, group_size=None)["w"]
        assert a.codes.dtype == a.zero_point.dtype == (np.uint8 if bits <= 8 else np.uint16)
        # [-1, 1] puts the zero point half way: rounding leaves one end of the range one step short
        assert a.codes.min() == 0 and 2**bits - 2 <= a.codes.max() <= 2**bits - 1


def test_the_nbytes_figures_of_the_algorithms_page():
    """docs/algorithms.md: a 256 x 512 float32 matrix quantized three ways."""
    w = {"w": np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)}
    sizes = [
        coreprune.quantize(w, bits=8, group_size=None, include="w")["w"].nbytes,
        coreprune.quantize(w, bits=4, axis=0, include="w")["w"].nbytes,
        coreprune.quantize(w, bits=4, group_size=64, include="w")["w"].nbytes,
        coreprune.quantize(w, bits=4, group_size=64, include="w", scale_dtype="float32")["w"].nbytes,
    ]
    assert w["w"].nbytes == 524_288 and sizes == [131_076, 66_048, 69_632, 73_728]
