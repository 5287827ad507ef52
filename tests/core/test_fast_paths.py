"""Every fast path (coreprune._fast: kernels, kth, bitpack) against its plain NumPy reference.

The public functions take the blocked, threaded fast paths for C-contiguous tensors of at least
``_blocked.MIN_FAST_ELEMENTS`` values and the simple whole-array NumPy code otherwise. Here both
run on the same inputs: :func:`fast` lowers the size limit to 1 value and the block to a few dozen
values (so that small tensors span many blocks, uneven last blocks and both threads), and
:func:`reference` raises the limit so that nothing is fast. The results must be bit-identical:
same dtypes, shapes and bytes, same masks, codes, scales and zero points, same errors. Each
comparison also checks that the fast path really ran (tasks went through the pool) and that the
reference did not.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
from functools import partial

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coreprune import (
    CompressionError,
    QuantizedArray,
    apply_masks,
    dequantize,
    prune_magnitude,
    prune_threshold,
    quantize,
)
from coreprune._fast import bitpack as _bitpack
from coreprune._fast import blocked as _blocked
from coreprune._fast import kernels as _kernels
from coreprune._fast import kth as _select
from coreprune._fast.kth import kth_smallest_abs_reference as _kth_smallest_abs_reference
from coreprune._fast.kth import radix_select
from coreprune.packing import pack_bits, unpack_bits

_kth_smallest_abs = partial(radix_select, budget=0)  # the engine's radix select, every pass

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]
KINDS = ["normal", "ties", "zeros", "constant", "wide", "subnormal", "extremes"]

_tasks = threading.local()


@contextlib.contextmanager
def _paths(min_fast: int, block: int, threads: int):
    saved = _blocked.MIN_FAST_ELEMENTS, _blocked.BLOCK_ELEMENTS, _blocked._call
    previous = _blocked.set_num_threads(threads)
    counter = {"tasks": 0}

    def counting_call(task):
        counter["tasks"] += 1
        return saved[2](task)

    _blocked.MIN_FAST_ELEMENTS, _blocked.BLOCK_ELEMENTS, _blocked._call = min_fast, block, counting_call
    try:
        yield counter
    finally:
        _blocked.MIN_FAST_ELEMENTS, _blocked.BLOCK_ELEMENTS, _blocked._call = saved
        _blocked.set_num_threads(previous)


def fast(block: int = 24, threads: int = 2):
    """Fast paths for every non-empty C-contiguous input, in blocks of ``block`` values."""
    return _paths(1, block, threads)


def reference():
    """The plain NumPy paths only."""
    return _paths(1 << 62, _blocked.BLOCK_ELEMENTS, 1)


def both(fn, *args, block: int = 24, expect_fast: bool | None = True, **kwargs):
    """``(reference result or exception, fast result or exception)``; checks which path ran
    (``expect_fast=None``: only that the reference context ran nothing in the pool)."""
    out = []
    for ctx, should_run in ((reference(), False), (fast(block), expect_fast)):
        with ctx as counter:
            try:
                out.append(fn(*args, **kwargs))
            except CompressionError as exc:
                out.append(exc)
        if should_run is not None:
            ran = counter["tasks"] > 0
            assert ran == should_run, "the fast path did not run" if should_run else "a fast path ran"
    return out


def make(rng: np.random.Generator, dtype: np.dtype, shape: tuple, kind: str) -> np.ndarray:
    """Values of one kind, exactly representable in ``dtype`` (so every dtype sees the kind)."""
    size = int(np.prod(shape))
    if dtype.kind in "iub":
        low, high = (-3, 4) if dtype.kind == "i" else (0, 2) if dtype.kind == "b" else (0, 4)
        return rng.integers(low, high, shape).astype(dtype)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.integers(-1, 2, shape)).astype(dtype)
    info = ml_dtypes.finfo(dtype)
    if kind == "normal":
        v = rng.standard_normal(size)
    elif kind == "ties":
        v = rng.integers(-3, 4, size).astype(np.float64)
    elif kind == "zeros":
        v = np.zeros(size) * rng.choice([1.0, -1.0], size)  # +0 and -0
    elif kind == "constant":
        v = np.full(size, rng.choice([-2.5, 0.75, 3.0]))
    elif kind == "wide":
        lo, hi = np.log10(float(info.tiny)), np.log10(float(info.max) / 4)
        v = rng.choice([1.0, -1.0], size) * 10.0 ** rng.uniform(lo, hi, size)
    elif kind == "subnormal":
        tiny = float(info.smallest_subnormal)
        v = rng.integers(-40, 41, size) * tiny
    else:  # extremes of the dtype, zeros of both signs, subnormals and ordinary values
        big, tiny, sub = float(info.max), float(info.tiny), float(info.smallest_subnormal)
        pool = [big, -big, tiny, -tiny, sub, 0.0, -0.0, 1.0, -1.0, 0.5]
        v = rng.choice(pool, size)
    return np.asarray(v).astype(dtype).reshape(shape)


@st.composite
def weight_dicts(draw, max_tensors: int = 3, dtypes=FLOATS):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(draw(st.integers(1, max_tensors))):
        dtype = draw(st.sampled_from(dtypes))
        shape = tuple(draw(st.lists(st.integers(1, 40), min_size=2, max_size=3)))
        out[f"t{i}"] = make(rng, dtype, shape, draw(st.sampled_from(KINDS)))
    return out


def assert_same_array(a: np.ndarray, b: np.ndarray) -> None:
    assert type(a) is type(b) is np.ndarray
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def assert_same(ref, got) -> None:
    """Bit-identical results: arrays, QuantizedArrays, dicts and tuples of them, or equal errors."""
    if isinstance(ref, Exception):
        assert type(got) is type(ref) and str(got) == str(ref)
    elif isinstance(ref, dict):
        assert isinstance(got, dict) and list(got) == list(ref)
        for k in ref:
            assert_same(ref[k], got[k])
    elif isinstance(ref, tuple):
        assert isinstance(got, tuple) and len(got) == len(ref)
        for a, b in zip(ref, got):
            assert_same(a, b)
    elif isinstance(ref, QuantizedArray):
        assert isinstance(got, QuantizedArray)
        for field in ("bits", "symmetric", "axis", "group_size", "shape", "dtype"):
            assert getattr(got, field) == getattr(ref, field)
        assert_same_array(ref.codes, got.codes)
        assert_same_array(ref.scale, got.scale)
        assert (ref.zero_point is None) == (got.zero_point is None)
        if ref.zero_point is not None:
            assert_same_array(ref.zero_point, got.zero_point)
    else:
        assert_same_array(ref, got)


def snapshot(weights):
    return {n: (a.dtype, a.shape, a.tobytes()) for n, a in weights.items()}


# ------------------------------------------------------------------------------ infrastructure


def test_run_parallel_keeps_order_and_uses_every_thread():
    seen = set()

    def task(i):
        seen.add(threading.current_thread().name)
        return i * i

    with fast(threads=2):
        assert _blocked.run_parallel(range(200), task) == [i * i for i in range(200)]
    assert len(seen) >= 1  # the pool may not get a core, but the results are complete and ordered


def test_run_parallel_reraises_and_nested_calls_run_inline():
    def boom(i):
        if i == 7:
            raise KeyError("seven")
        return i

    with fast(threads=2):
        with pytest.raises(KeyError, match="seven"):
            _blocked.run_parallel(range(50), boom)
        # a call from inside a worker must not wait on the pool it runs in
        def inner(i):
            return sum(_blocked.run_parallel(range(i + 3), lambda j: j))

        nested = _blocked.run_parallel(range(4), inner)
    assert nested == [3, 6, 10, 15]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_a_working_pool():
    w = {"w": np.random.default_rng(2).standard_normal((40, 40)).astype(np.float32)}
    with fast(threads=2):
        expected = prune_threshold(w, 0.5)[0]["w"]  # the parent's pool now exists
        pid = os.fork()
        if pid == 0:  # the child: the inherited executor has no threads
            ok = False
            try:
                ok = prune_threshold(w, 0.5)[0]["w"].tobytes() == expected.tobytes()
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_set_num_threads_validates_and_returns_the_previous_value():
    previous = _blocked.set_num_threads(3)
    try:
        assert _blocked.num_threads() == 3
        for bad in (0, -1, 1.5, True, "2"):
            with pytest.raises(CompressionError, match="int >= 1"):
                _blocked.set_num_threads(bad)
    finally:
        assert _blocked.set_num_threads(previous) == 3


def test_jobs_with_different_numbers_of_phases_run_side_by_side():
    log = []

    def job(name, phases):
        total = 0
        for p in range(phases):
            results = yield [lambda p=p, i=i: (p, i) for i in range(3)]
            log.append((name, p))
            total += sum(i for _, i in results)
        return name, total

    with fast(threads=2):
        assert _blocked.run_jobs([job("a", 1), job("b", 3), job("c", 0)]) == [("a", 3), ("b", 9), ("c", 0)]
    assert sorted(log) == [("a", 0), ("b", 0), ("b", 1), ("b", 2)]


@pytest.mark.parametrize("n, block, align", [(0, 8, 1), (1, 8, 8), (17, 8, 8), (100, 24, 8), (100, 7, 8)])
def test_block_ranges_cover_everything_once(n, block, align):
    ranges = _blocked.block_ranges(n, block, align)
    covered = [i for s, e in ranges for i in range(s, e)]
    assert covered == list(range(n))
    assert all(s % align == 0 for s, _ in ranges)


# ------------------------------------------------------------------------------------- pruning


@given(weight_dicts(), st.sampled_from([0.0, 1e-40, 5e-8, 0.5, 1.0, 2.5, 1e10, 1e39, float("inf")]))
@settings(max_examples=40)
def test_threshold_fast_equals_reference(weights, t):
    before = snapshot(weights)
    ref, got = both(prune_threshold, weights, t)
    assert_same(ref, got)
    assert snapshot(weights) == before


@given(weight_dicts(), st.sampled_from([0.0, 0.1, 0.5, 0.73, 0.9, 1.0]), st.sampled_from(["layer", "global"]))
@settings(max_examples=50)
def test_magnitude_fast_equals_reference(weights, s, scope):
    before = snapshot(weights)
    ref, got = both(prune_magnitude, weights, s, scope=scope)  # s = 0: the blocked copy
    assert_same(ref, got)
    assert snapshot(weights) == before


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("s", [0.3, 0.5, 0.9])
def test_magnitude_ties_across_blocks_and_tensors(scope, s):
    # long runs of equal magnitudes: the tie at the cut spans several blocks and both tensors
    w = {"a": np.ones((40, 25), np.float32), "b": -np.ones((10, 30), np.float32), "c": np.full((6, 6), 2.0)}
    w["a"][::7] = 0.5
    ref, got = both(prune_magnitude, w, s, scope=scope, block=16)
    assert_same(ref, got)


@pytest.mark.parametrize("make_bad", ["nan", "inf"])
@pytest.mark.parametrize("call", ["threshold", "layer", "global", "quantize", "quantize-rows"])
def test_nonfinite_values_raise_the_reference_error_for_the_first_bad_tensor(make_bad, call):
    bad = np.nan if make_bad == "nan" else -np.inf
    w = {"ok": np.ones((8, 8), np.float32), "first": np.ones((8, 8), np.float32), "second": np.ones((9, 8))}
    w["first"][3, 4] = bad
    w["second"][0, 0] = bad
    fn = {
        "threshold": lambda: prune_threshold(w, 0.5),
        "layer": lambda: prune_magnitude(w, 0.5),
        "global": lambda: prune_magnitude(w, 0.5, scope="global"),
        "quantize": lambda: quantize(w, 4, axis=0),
        "quantize-rows": lambda: quantize(w, 8),  # one row per tensor: the two-phase path
    }[call]
    ref, got = both(fn)
    assert isinstance(ref, CompressionError) and "'first'" in str(ref)
    assert_same(ref, got)


@given(weight_dicts(max_tensors=4), st.integers(1, 10**6), st.sampled_from(["float32", "float64"]))
@settings(max_examples=50)
def test_selection_equals_concatenate_and_partition(weights, seed, work):
    tensors = list(weights.values())
    work = np.dtype(work)
    if work == np.float32 and any(t.dtype == np.float64 for t in tensors):
        work = np.dtype(np.float64)  # float64 magnitudes do not fit float32 exactly
    total = sum(t.size for t in tensors)
    k = 1 + seed % total
    with fast():
        sel = _select.kth_smallest_abs(tensors, k, work)
    v, r = _kth_smallest_abs_reference(tensors, k, work)
    assert sel.nonfinite is None
    assert sel.value.dtype == work and sel.value == v and sel.ties == r
    magnitudes = np.sort(np.concatenate([np.abs(t.astype(work)).reshape(-1) for t in tensors]))
    assert magnitudes[k - 1] == v  # the sorting definition
    assert sel.equal == int(np.count_nonzero(magnitudes == v))
    if sel.per_block is not None:
        for t, counts in zip(tensors, sel.per_block):
            flat = np.abs(t.astype(work)).reshape(-1)
            with fast():
                ranges = _blocked.block_ranges(flat.size)
            assert counts == [int(np.count_nonzero(flat[s:e] == v)) for s, e in ranges]


@pytest.mark.parametrize("miss", ["below", "above", "overflow"])
@pytest.mark.parametrize("work", ["float32", "float64"])
def test_selection_falls_back_to_the_radix_select(monkeypatch, miss, work):
    """A bracket that misses the k-th value (an unfair sample), or too many candidates."""
    rng = np.random.default_rng(3)
    work = np.dtype(work)
    tensors = [rng.standard_normal((30, 20)).astype(work), rng.integers(-4, 5, (17, 13)).astype(work)]
    total = sum(t.size for t in tensors)
    if miss == "below":  # every value lies below the bracket
        monkeypatch.setattr(_select, "_bracket", lambda sample, k, n: (work.type(1e30), None))
    elif miss == "above":  # every value lies above it
        monkeypatch.setattr(_select, "_bracket", lambda sample, k, n: (None, work.type(-1)))
    else:
        monkeypatch.setattr(_select, "CANDIDATE_MIN", 0)
        monkeypatch.setattr(_select, "_bracket", lambda sample, k, n: (None, None))
    for k in (1, 2, total // 3, total // 2 + 1, total - 1, total):
        with fast():
            sel = _select.kth_smallest_abs(tensors, k, work)
        v, r = _kth_smallest_abs_reference(tensors, k, work)
        assert sel.per_block is None  # the radix path ran
        assert sel.value == v and sel.ties == r
        flat = np.concatenate([np.abs(t).reshape(-1) for t in tensors])
        assert sel.equal == int(np.count_nonzero(flat == v))
    # and the pruning built on it still equals the reference
    w = {"a": tensors[0], "b": tensors[1]}
    ref, got = both(prune_magnitude, w, 0.6, scope="global")
    assert_same(ref, got)


def test_selection_agrees_with_the_unblocked_radix_select_on_huge_and_subnormal_values():
    rng = np.random.default_rng(11)
    tensors = [
        (rng.standard_normal(500) * 1e-42).astype(np.float32),  # subnormal float32
        (rng.standard_normal(300) * 1e38).astype(np.float32),
        rng.standard_normal((20, 20)).astype(np.float16).astype(np.float32),
    ]
    f32 = np.dtype(np.float32)
    total = sum(t.size for t in tensors)
    for k in (1, 250, 600, total - 5, total):
        with fast():
            sel = _select.kth_smallest_abs(tensors, k, f32)
        assert (sel.value, sel.ties) == _kth_smallest_abs(tensors, k, f32) == _kth_smallest_abs_reference(
            tensors, k, f32
        )


@given(weight_dicts(dtypes=FLOATS + [np.dtype(np.int32), np.dtype(np.bool_), np.dtype(np.complex64)]),
       st.integers(0, 2**32 - 1))
@settings(max_examples=40)
def test_apply_masks_fast_equals_np_where(weights, seed):
    rng = np.random.default_rng(seed)
    weights = {n: (a != 0) if a.dtype == np.bool_ else a for n, a in weights.items()}
    masks = {n: rng.random(a.shape) < 0.5 for n, a in weights.items()}
    ref, got = both(apply_masks, weights, masks)
    assert_same(ref, got)
    for n in weights:
        assert_same_array(got[n], np.where(masks[n], weights[n], np.zeros((), weights[n].dtype)))


def test_non_contiguous_and_small_tensors_take_the_reference_path():
    w = {"f": np.asfortranarray(np.arange(-12.0, 12.0).reshape(4, 6)), "v": np.ones((6, 8))[:, 1:]}
    with fast() as counter:
        pruned, masks = prune_threshold(w, 3.0)
    assert counter["tasks"] == 0
    np.testing.assert_array_equal(masks["f"], np.abs(w["f"]) > 3.0)
    assert pruned["f"].flags.f_contiguous  # np.where keeps the input's layout
    with fast():
        assert not _kernels.eligible(np.ones((4, 6)).T) and _kernels.eligible(np.ones((4, 6)))
        assert not _kernels.eligible(np.ones((4, 6), np.int8))
        assert _kernels.eligible(np.ones(3, np.int8), dtypes=None)
    assert not _kernels.eligible(np.ones((4, 6)))  # below MIN_FAST_ELEMENTS


# -------------------------------------------------------------------------------- quantization

LAYOUTS = [("tensor", None, None), ("axis0", 0, None), ("axis-last", -1, None), ("group", None, "g")]


@given(weight_dicts(), st.integers(2, 16), st.booleans(), st.sampled_from(LAYOUTS), st.integers(0, 10**6))
@settings(max_examples=80)
def test_quantize_fast_equals_reference(weights, bits, symmetric, layout, seed):
    name, axis, group = layout
    if group:
        last = min(w.shape[-1] for w in weights.values())
        divisors = [d for d in range(1, last + 1) if all(w.shape[-1] % d == 0 for w in weights.values())]
        group = divisors[seed % len(divisors)]
    before = snapshot(weights)
    # one scale per column takes the reference path (only the range check of the codes is blocked)
    expect_fast = None if name == "axis-last" else True
    ref, got = both(quantize, weights, bits, symmetric=symmetric, axis=axis, group_size=group,
                    expect_fast=expect_fast)
    assert_same(ref, got)
    assert snapshot(weights) == before
    if not isinstance(ref, Exception):
        # and the fast dequantization of either equals the reference dequantization
        deq_ref, deq_fast = both(dequantize, ref, expect_fast=expect_fast)
        assert_same(deq_ref, deq_fast)


@pytest.mark.parametrize("block", [16, 40, 1000])
@pytest.mark.parametrize("bits, symmetric", [(2, True), (4, True), (8, True), (16, True), (4, False), (9, 0)])
def test_quantize_rows_longer_than_a_block_take_two_phases(block, bits, symmetric):
    symmetric = bool(symmetric)
    rng = np.random.default_rng(bits)
    w = {
        "w": rng.standard_normal((3, 7, 50)).astype(np.float32),
        "h": rng.standard_normal((5, 60)).astype(BF16),
        "d": rng.standard_normal((2, 70)),
    }
    for axis in (None, 0):
        ref, got = both(quantize, w, bits, symmetric=symmetric, axis=axis, block=block)
        assert_same(ref, got)


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 12, 16])
@pytest.mark.parametrize("dtype", FLOATS)
def test_symmetric_codes_never_need_the_clip(bits, dtype):
    """The fast path leaves out the reference's clip to [-qmax, qmax]; rows whose peak makes the
    float32 scale round down (codes just above qmax before rounding) still give the same codes."""
    rng = np.random.default_rng(bits)
    qmax = (1 << (bits - 1)) - 1
    info = ml_dtypes.finfo(dtype)
    top = min(float(info.max), float(np.finfo(np.float32).max))  # larger float64 scales are refused
    peaks = np.concatenate([rng.uniform(0.5, 2, 200), 10.0 ** rng.uniform(-30, 30, 200), [top],
                            [float(info.tiny)], [float(info.smallest_subnormal)]])
    peaks = peaks[(peaks <= top) & (peaks >= float(info.smallest_subnormal))]
    rows = np.stack([np.linspace(-1, 1, 64) * p for p in peaks]).astype(dtype)
    rows[:, 0] = (-peaks).astype(dtype)
    rows[:, -1] = peaks.astype(dtype)
    ref, got = both(quantize, {"w": rows}, bits, axis=0)
    assert_same(ref, got)
    codes = got["w"].codes
    assert int(codes.max()) <= qmax and int(codes.min()) >= -qmax


def test_quantize_scale_overflow_raises_the_reference_error():
    w = {"ok": np.ones((4, 8)), "big": np.full((4, 8), 1e300)}
    ref, got = both(quantize, w, 8, axis=0)
    assert isinstance(ref, CompressionError) and "exceeds the float32 range" in str(ref)
    assert_same(ref, got)


def test_quantize_layout_errors_keep_their_order():
    w = {"nan": np.full((4, 8), np.nan, np.float32), "bad": np.ones((4, 6), np.float32)}
    ref, got = both(quantize, w, 4, group_size=4, expect_fast=True)
    assert isinstance(ref, CompressionError) and "'nan'" in str(ref)  # the NaN comes first
    assert_same(ref, got)
    w = {"bad": np.ones((4, 6), np.float32), "nan": np.full((4, 8), np.nan, np.float32)}
    ref, got = both(quantize, w, 4, group_size=4, expect_fast=False)
    assert isinstance(ref, CompressionError) and "does not divide" in str(ref)
    assert_same(ref, got)


@given(st.integers(0, 2**32 - 1), st.sampled_from(FLOATS), st.sampled_from(LAYOUTS[:2] + LAYOUTS[3:]))
@settings(max_examples=30)
def test_dequantize_fast_equals_reference_for_any_valid_codes(seed, dtype, layout):
    """Codes over the whole range of their kind (not only what quantize produces), bits 1..16."""
    rng = np.random.default_rng(seed)
    _, axis, group = layout
    shape = (int(rng.integers(1, 9)), 4 * int(rng.integers(1, 9)))
    group = 4 if group else None
    bits = int(rng.integers(1, 17))
    symmetric = bool(bits == 1 or rng.integers(0, 2))
    if bits == 1:
        lo, hi, code_dtype = 0, 1, np.uint8
    elif symmetric:
        lo, hi, code_dtype = -(1 << (bits - 1)), (1 << (bits - 1)) - 1, np.int8 if bits <= 8 else np.int16
    else:
        lo, hi, code_dtype = 0, (1 << bits) - 1, np.uint8 if bits <= 8 else np.uint16
    scale_shape = (shape[0],) if axis == 0 else () if group is None else (shape[0], shape[1] // group)
    scale = (10.0 ** rng.uniform(-40, 38, scale_shape)).astype(np.float32)
    scale = np.asarray(np.maximum(scale, np.float32(np.finfo(np.float32).tiny)))
    zp = None if symmetric else rng.integers(0, hi + 1, scale_shape).astype(code_dtype)
    q = QuantizedArray(codes=rng.integers(lo, hi + 1, shape).astype(code_dtype), scale=scale, zero_point=zp,
                       bits=bits, symmetric=symmetric, axis=axis, group_size=group, shape=shape, dtype=dtype)
    ref, got = both(q.dequantize)
    assert_same(ref, got)


def test_quantized_array_validation_uses_the_blocked_range_check():
    codes = np.zeros((10, 10), np.int8)
    codes[9, 9] = 8
    kwargs = dict(scale=np.ones((), np.float32), zero_point=None, symmetric=True, axis=None, group_size=None,
                  shape=(10, 10), dtype=np.dtype(np.float32))
    ref, got = both(lambda: QuantizedArray(codes=codes, bits=4, **kwargs))
    assert isinstance(ref, CompressionError) and "codes outside [-8, 7]" in str(ref)
    assert_same(ref, got)
    with fast() as counter:
        QuantizedArray(codes=codes, bits=5, **kwargs)
    assert counter["tasks"] > 0


# ------------------------------------------------------------------------------------- packing

INT_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]


@pytest.mark.parametrize("bits", range(1, 17))
def test_pack_and_unpack_fast_equal_reference(bits):
    rng = np.random.default_rng(bits)
    for dtype in INT_DTYPES:
        dtype = np.dtype(dtype)
        if 8 * dtype.itemsize < bits and dtype.kind == "u":
            continue
        signed = dtype.kind == "i"
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        lo, hi = max(lo, int(np.iinfo(dtype).min)), min(hi, int(np.iinfo(dtype).max))
        for n in (1, 7, 8, 9, 23, 24, 25, 64, 100, 257):
            codes = rng.integers(lo, hi + 1, n, endpoint=False).astype(dtype)
            codes[: min(n, 2)] = [lo, hi][: min(n, 2)]
            ref, got = both(pack_bits, codes, bits)
            assert_same(ref, got)
            if 8 * dtype.itemsize >= bits:
                back_ref, back = both(unpack_bits, ref, bits, n, dtype)
                assert_same(back_ref, back)
                assert_same_array(back, codes)


@pytest.mark.parametrize("bits", [1, 3, 4, 8, 11, 16])
def test_pack_range_errors_equal_reference(bits):
    codes = np.zeros((5, 9), np.int32)
    codes[4, 8] = 1 << bits  # one past the unsigned range, and past the signed one
    codes[0, 0] = -(1 << bits)
    ref, got = both(pack_bits, codes, bits)
    assert isinstance(ref, CompressionError) and "codes out of range" in str(ref)
    assert_same(ref, got)


def test_pack_fast_kernel_matches_a_pure_python_bit_stream():
    rng = np.random.default_rng(5)
    for bits in (3, 5, 9, 13):
        values = rng.integers(0, 1 << bits, 37)
        stream = 0
        for i, v in enumerate(values.tolist()):
            stream |= v << (i * bits)
        expected = stream.to_bytes(-(-37 * bits // 8), "little")
        with fast(block=16):
            packed, extremes = _bitpack.pack(values.astype(np.uint16), bits)
        assert packed.tobytes() == expected
        assert extremes == (int(values.min()), int(values.max()))


def test_kernel_inputs_are_not_modified():
    w = {"a": np.random.default_rng(1).standard_normal((30, 30)).astype(np.float32)}
    before = snapshot(w)
    with fast():
        q = quantize(w, 4, group_size=5)
        codes_before = q["a"].codes.copy()
        dequantize(q)
        pack_bits(q["a"].codes, 4)
        prune_magnitude(w, 0.5, scope="global")
        apply_masks(w, {"a": np.ones((30, 30), bool)})
    assert snapshot(w) == before
    np.testing.assert_array_equal(q["a"].codes, codes_before)
    assert copy.deepcopy(before) == snapshot(w)
