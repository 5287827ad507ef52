"""Hypothesis property tests: the invariants of pruning, quantization and packing on random tensors.

Tensors have random shapes (0-d and empty included) and dtypes (float16, bfloat16, float32, float64),
with values drawn from the whole range of the dtype (subnormals, huge magnitudes), small integers
(many ties), all zeros, a constant, or random signs times a random power of ten.
"""

from __future__ import annotations

import copy
from functools import partial

import ml_dtypes
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from coreprune import prune_magnitude, prune_threshold, quantize
from coreprune._fast.kth import kth_smallest_abs_reference as _kth_smallest_abs_reference
from coreprune._fast.kth import radix_select
from coreprune.packing import pack_bits, unpack_bits

_kth_smallest_abs = partial(radix_select, budget=0)  # the engine's radix select, every pass

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]
# float64 values stay within float32's range: a larger one has no float32 scale (tested elsewhere)
_F32_3E38 = float(np.float32(3e38))
_LIMIT = {"float16": 65504.0, "bfloat16": _F32_3E38, "float32": _F32_3E38, "float64": _F32_3E38}
_EXPONENTS = {"float16": (-8, 4), "bfloat16": (-44, 37), "float32": (-44, 37), "float64": (-300, 37)}


@st.composite
def tensors(draw, min_dims=0, max_dims=3, max_side=6):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=max_side))
    kind = draw(st.sampled_from(["full-range", "integers", "zeros", "constant", "scaled"]))
    limit = _LIMIT[dtype.name]
    if kind == "full-range":
        width = 16 if dtype == np.float16 else 64 if dtype == np.float64 else 32
        elements = st.floats(-limit, limit, width=width, allow_nan=False, allow_infinity=False)
        values = draw(hnp.arrays(np.dtype(f"f{width // 8}"), shape, elements=elements))
    elif kind == "integers":
        values = draw(hnp.arrays(np.int64, shape, elements=st.integers(-4, 4))).astype(np.float64)
    elif kind == "zeros":
        values = np.zeros(shape)
    elif kind == "constant":
        values = np.full(shape, draw(st.floats(-limit, limit, width=16 if dtype == np.float16 else 32)))
    else:
        lo, hi = _EXPONENTS[dtype.name]
        unit = draw(hnp.arrays(np.float64, shape, elements=st.floats(-1, 1)))
        values = unit * 10.0 ** draw(st.integers(lo, hi))
    return np.asarray(values).astype(dtype)  # hypothesis gives 0-d draws as scalars


@st.composite
def weight_dicts(draw, max_tensors=3):
    n = draw(st.integers(1, max_tensors))
    return {f"t{i}": draw(tensors()) for i in range(n)}


def snapshot(weights):
    return {n: (a.dtype, a.shape, a.tobytes()) for n, a in weights.items()}


def f64(a):
    return np.asarray(a).astype(np.float64)


# ----------------------------------------------------------------- quantization


def layout_strategy(shape):
    options = [st.just({})]
    if len(shape) > 0:
        options.append(st.integers(-len(shape), len(shape) - 1).map(lambda a: {"axis": a}))
        last = shape[-1]
        divisors = [g for g in range(1, 7) if last % g == 0]
        options.append(st.sampled_from(divisors).map(lambda g: {"group_size": g}))
    return st.one_of(options)


def per_element(w, layout, reduce):
    """``reduce(block)`` of each element's scale group, broadcast to ``w``'s shape (float64)."""
    x = f64(w)
    if "group_size" in layout:
        g = layout["group_size"]
        grouped = x.reshape(x.shape[:-1] + (x.shape[-1] // g, g))
        stat = reduce(grouped, (grouped.ndim - 1,))
        return np.broadcast_to(stat, grouped.shape).reshape(x.shape)
    if "axis" in layout:
        ax = layout["axis"] % x.ndim
        return np.broadcast_to(reduce(x, tuple(i for i in range(x.ndim) if i != ax)), x.shape)
    return np.broadcast_to(reduce(x, tuple(range(x.ndim))), x.shape)


def scale_per_element(q, layout):
    s = f64(q.scale)
    if "group_size" in layout:
        return np.repeat(s, layout["group_size"], axis=-1).reshape(q.shape)
    if "axis" in layout:
        shape = [1] * len(q.shape)
        shape[q.axis] = q.shape[q.axis]
        return np.broadcast_to(s.reshape(shape), q.shape)
    return np.broadcast_to(s, q.shape)


@given(w=tensors(), bits=st.integers(2, 16), symmetric=st.booleans(), data=st.data())
def test_dequantized_values_lie_within_half_a_step(w, bits, symmetric, data):
    layout = data.draw(layout_strategy(w.shape))
    before = snapshot({"w": w})
    q = quantize({"w": w}, bits, symmetric=symmetric, include="w", **(layout or {"group_size": None}))["w"]
    assert snapshot({"w": w}) == before
    assert np.isfinite(q.scale).all() and (q.scale >= 2.0**-126).all()
    if q.scale.dtype == np.float16:  # "auto": per channel or group below 8 bits, scales that fit float16
        assert (q.group_size is not None or q.axis is not None) and bits < 8 and (q.scale >= 2.0**-24).all()
    else:
        assert q.scale.dtype == np.float32
    lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    assert q.codes.size == 0 or (lo <= int(q.codes.min()) and int(q.codes.max()) <= hi)
    d = q.dequantize()
    assert d.dtype == w.dtype and d.shape == w.shape and np.isfinite(f64(d)).all()
    info = ml_dtypes.finfo(w.dtype)
    eps = max(float(info.eps), 2.0**-23)  # the float32 scale and arithmetic, or the output dtype
    peak = per_element(w, layout, lambda x, axes: np.max(np.abs(x), axis=axes, keepdims=True, initial=0))
    tolerance = scale_per_element(q, layout) / 2 + 4 * eps * peak + float(info.tiny) * float(info.eps)
    assert (np.abs(f64(d) - f64(w)) <= tolerance).all()
    if not symmetric and w.size:  # zero is exactly representable
        zero = np.zeros_like(w)
        assert not quantize({"w": zero}, bits, symmetric=False, include="w",
                            **(layout or {"group_size": None}))["w"].dequantize().any()


@given(w=tensors(min_dims=1), data=st.data())
def test_binarization_keeps_signs_and_uses_mean_magnitude(w, data):
    layout = data.draw(layout_strategy(w.shape))
    q = quantize({"w": w}, 1, include="w", scale_dtype="float32", **(layout or {"group_size": None}))["w"]
    np.testing.assert_array_equal(q.codes, (f64(w) >= 0).astype(np.uint8))
    mean = per_element(w, layout, lambda x, axes: np.mean(np.abs(x), axis=axes, keepdims=True)
                       if x.size else np.zeros([1] * x.ndim))
    s = scale_per_element(q, layout)
    np.testing.assert_array_equal(s, np.maximum(mean.astype(np.float32), np.float32(2.0**-126)))
    expected = (np.where(f64(w) >= 0, 1.0, -1.0) * s).astype(w.dtype)
    np.testing.assert_array_equal(f64(q.dequantize()), f64(expected))


# ----------------------------------------------------------------- pruning


@given(weights=weight_dicts(), s=st.floats(0, 1), scope=st.sampled_from(["layer", "global"]))
def test_pruning_counts_are_exact_and_idempotent(weights, s, scope):
    before = snapshot(weights)
    pruned, masks = prune_magnitude(weights, s, scope=scope, include="*")
    assert snapshot(weights) == before
    removed = {n: int((~m).sum()) for n, m in masks.items()}
    if scope == "layer":
        assert removed == {n: round(s * weights[n].size) for n in weights}
    else:
        assert sum(removed.values()) == round(s * sum(a.size for a in weights.values()))
    for n, m in masks.items():
        assert m.dtype == np.bool_ and m.shape == weights[n].shape
        assert pruned[n].dtype == weights[n].dtype
        np.testing.assert_array_equal(f64(pruned[n])[m], f64(weights[n])[m])
        assert not f64(pruned[n])[~m].any() and not np.signbit(f64(pruned[n])[~m]).any()
    again, masks_again = prune_magnitude(pruned, s, scope=scope, include="*")
    for n in masks:
        np.testing.assert_array_equal(masks_again[n], masks[n])
        assert again[n].tobytes() == pruned[n].tobytes()


@given(weights=weight_dicts(), s=st.floats(0, 1), scope=st.sampled_from(["layer", "global"]))
def test_every_kept_magnitude_is_at_least_every_removed_one(weights, s, scope):
    _, masks = prune_magnitude(weights, s, scope=scope, include="*")
    groups = [[n] for n in weights] if scope == "layer" else [list(weights)]
    for names in groups:
        kept = np.concatenate([np.abs(f64(weights[n]))[masks[n]] for n in names])
        gone = np.concatenate([np.abs(f64(weights[n]))[~masks[n]] for n in names])
        if kept.size and gone.size:
            assert gone.max() <= kept.min()


SCOPES = st.sampled_from(["layer", "global"])


@given(weights=weight_dicts(), s1=st.floats(0, 1), s2=st.floats(0, 1), scope=SCOPES)
def test_masks_shrink_monotonically(weights, s1, s2, scope):
    lo, hi = sorted((s1, s2))
    _, keep_lo = prune_magnitude(weights, lo, scope=scope, include="*")
    _, keep_hi = prune_magnitude(weights, hi, scope=scope, include="*")
    for n in keep_lo:
        assert not (keep_hi[n] & ~keep_lo[n]).any()


@given(w=tensors(), s=st.floats(0, 1))
def test_global_equals_layer_for_one_tensor(w, s):
    _, layer = prune_magnitude({"w": w}, s, include="w")
    _, whole = prune_magnitude({"w": w}, s, scope="global", include="w")
    np.testing.assert_array_equal(layer["w"], whole["w"])


@given(weights=weight_dicts(), s=st.floats(0, 1))
def test_global_matches_stable_sort_reference(weights, s):
    _, masks = prune_magnitude(weights, s, scope="global", include="*")
    mags = np.concatenate([np.abs(f64(a)).ravel() for a in weights.values()])
    keep = np.ones(mags.size, bool)
    keep[np.argsort(mags, kind="stable")[: round(s * mags.size)]] = False
    np.testing.assert_array_equal(np.concatenate([m.ravel() for m in masks.values()]), keep)


@given(weights=weight_dicts(), k=st.integers(1, 10**6))
def test_radix_select_matches_reference(weights, k):
    tensors_ = list(weights.values())
    total = sum(a.size for a in tensors_)
    if total == 0:
        return
    k = (k - 1) % total + 1
    work = np.dtype(np.float64 if any(a.dtype == np.float64 for a in tensors_) else np.float32)
    v, r = _kth_smallest_abs(tensors_, k, work)
    v_ref, r_ref = _kth_smallest_abs_reference(tensors_, k, work)
    assert (v, r) == (v_ref, r_ref) and v.dtype == work


@given(weights=weight_dicts(), t=st.floats(0, 1e6))
def test_threshold_keeps_exactly_the_larger_magnitudes(weights, t):
    before = copy.deepcopy(snapshot(weights))
    pruned, masks = prune_threshold(weights, t, include="*")
    assert snapshot(weights) == before
    for n, w in weights.items():
        with np.errstate(over="ignore"):
            t_in_dtype = np.array(t).astype(w.dtype)
        np.testing.assert_array_equal(masks[n], np.abs(f64(w)) > f64(t_in_dtype))
        np.testing.assert_array_equal(f64(pruned[n]), np.where(masks[n], f64(w), 0.0))


# ----------------------------------------------------------------- packing


@given(bits=st.integers(1, 16), signed=st.booleans(), data=st.data())
def test_packing_round_trips(bits, signed, data):
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    dtype = np.dtype(("i" if signed else "u") + ("1" if bits <= 8 else "2"))
    codes = data.draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9),
                                 elements=st.integers(lo, hi)))
    packed = pack_bits(codes, bits)
    assert packed.size == -(-codes.size * bits // 8)
    back = unpack_bits(packed, bits, codes.size, dtype)
    np.testing.assert_array_equal(back, codes.ravel())
    stream = int.from_bytes(packed.tobytes(), "little")
    for i, v in enumerate(codes.ravel().tolist()):
        assert (stream >> (i * bits)) & ((1 << bits) - 1) == v & ((1 << bits) - 1)
