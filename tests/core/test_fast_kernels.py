"""The bit-level kernels of coreprune._fast.kernels against plain NumPy references.

``tests/core/test_fast_paths.py`` compares the public functions with their reference paths; here
the building blocks are checked on their own, on the values where bit tricks go wrong: both
zeros, subnormals, the dtype's extremes, infinities, NaN, ties of the rounding, odd sizes and
rows of one value.
"""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coreprune import CompressionError, quantize
from coreprune._fast import blocked as _blocked
from coreprune._fast import kernels as _kernels

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]


def special_values(dtype: np.dtype) -> np.ndarray:
    info = ml_dtypes.finfo(dtype)
    big, tiny, sub = float(info.max), float(info.tiny), float(info.smallest_subnormal)
    return np.array([0.0, -0.0, sub, -sub, 3 * sub, tiny, -tiny, 1.0, -1.0, 0.5, big, -big], dtype=dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("cols", [1, 2, 3, 7, 128, 129, 1024, 1500])
def test_row_peaks_equals_max_of_abs(dtype, cols):
    rng = np.random.default_rng(cols)
    pool = special_values(dtype)
    rows = 5
    x = np.concatenate([rng.choice(pool, (rows, cols)),
                        rng.standard_normal((rows, cols)).astype(dtype)]).astype(dtype)
    x[0] = -0.0  # a row of negative zeros: its peak is +0
    expected = np.max(np.abs(x.astype(np.float64)), axis=1)
    got = _kernels.row_peaks(x)
    assert got.dtype == dtype and got.shape == (2 * rows,)
    np.testing.assert_array_equal(got.astype(np.float64), expected)
    assert not np.signbit(got).any()


@pytest.mark.parametrize("dtype", FLOATS)
def test_row_peaks_marks_rows_with_nan_or_inf(dtype):
    x = np.ones((4, 9), dtype)
    x[1, 8] = np.nan
    x[2, 0] = -np.inf
    x[3, 4] = np.inf
    peaks = _kernels.row_peaks(x).astype(np.float64)
    assert peaks[0] == 1.0
    assert np.isnan(peaks[1])
    assert peaks[2] == np.inf and peaks[3] == np.inf
    # a NaN whose payload is smaller than the other values' bit patterns is still found
    x = np.full((1, 3), -float(ml_dtypes.finfo(dtype).max), dtype)
    u = np.dtype(f"u{dtype.itemsize}")
    nan_bits = np.array(np.inf, dtype).view(u) + 1  # the smallest NaN pattern (a signalling NaN)
    x.view(u)[0, 1] = nan_bits
    assert _kernels.row_peaks(x).view(u)[0] == nan_bits


@pytest.mark.parametrize("dtype", FLOATS)
def test_quantize_refuses_a_signalling_nan_without_a_stray_warning(dtype):
    u = np.dtype(f"u{dtype.itemsize}")
    w = np.ones((256, 512), dtype)  # big enough for the fast path
    w.view(u)[7, 9] = np.array(np.inf, dtype).view(u) + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CompressionError, match="NaN"):
            quantize({"w": w}, 4, group_size=128)


@given(st.sampled_from([np.float32, np.float64]), st.sampled_from([np.int8, np.uint8, np.int16, np.uint16]),
       st.integers(1, 300), st.integers(0, 2**32 - 1))
@settings(max_examples=60)
def test_round_to_codes_equals_rint_and_cast(work, code, n, seed):
    rng = np.random.default_rng(seed)
    info = np.iinfo(code)
    lo, hi = max(int(info.min), -(1 << 20)), min(int(info.max), 1 << 20)
    halves = rng.integers(2 * lo, 2 * hi + 1, n) / 2  # every tie of rint
    noise = rng.uniform(lo - 0.5, hi + 0.5, n)
    q = np.where(rng.integers(0, 2, n).astype(bool), halves, noise).astype(work)
    q[: min(n, 4)] = np.array([-0.0, 0.0, -0.49, 0.5], work)[: min(n, 4)]
    q = np.clip(q, lo, hi)  # values the codes hold
    expected = np.rint(q).astype(code)
    codes = np.empty(n, code)
    _kernels.round_to_codes(q.copy(), codes)
    np.testing.assert_array_equal(codes, expected)


def test_round_to_codes_on_subnormals_and_the_largest_allowed_values():
    for work in (np.float32, np.float64):
        sub = np.finfo(work).smallest_subnormal
        q = np.array([sub, -sub, 2.0**21 - 0.5, -(2.0**21) + 0.5, 32767.4, -32767.5, 127.5, -128.0], work)
        codes = np.empty(q.size, np.int16)
        _kernels.round_to_codes(q.copy(), codes)
        np.testing.assert_array_equal(codes, np.rint(q).astype(np.int64).astype(np.int16))


@pytest.mark.parametrize("dtype", FLOATS)
def test_prune_job_into_given_outputs_equals_new_outputs(dtype):
    rng = np.random.default_rng(3)
    w = np.concatenate([rng.choice(special_values(dtype), 500), rng.standard_normal(537)]).astype(dtype)
    work = np.dtype(np.float64 if dtype.itemsize > 4 else np.float32)
    cut = work.type(0.7)
    saved = _blocked.BLOCK_ELEMENTS
    _blocked.BLOCK_ELEMENTS = 100  # many blocks and an uneven last one
    try:
        pruned, keep, finite = _blocked.run_job(_kernels.prune_job(w, cut, work))
        given_out = (np.full_like(w, 9), np.zeros(w.shape, np.bool_))
        result = _blocked.run_job(_kernels.prune_job(w, cut, work, out=given_out))
    finally:
        _blocked.BLOCK_ELEMENTS = saved
    assert result[0] is given_out[0] and result[1] is given_out[1] and result[2] == finite
    assert pruned.tobytes() == given_out[0].tobytes()
    np.testing.assert_array_equal(keep, given_out[1])
    np.testing.assert_array_equal(keep, np.abs(w.astype(work)) > cut)
    assert finite
