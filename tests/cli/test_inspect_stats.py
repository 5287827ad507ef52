"""Per-tensor statistics: chunked accumulation against plain NumPy, SQNR, quantized sizes."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import coreprune
from coreprune import CompressionError
from coreprune import stats as inspect_stats
from coreprune.stats import quantized_nbytes, sqnr_db, tensor_stats, totals


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, ml_dtypes.bfloat16])
def test_chunked_moments_equal_numpy_over_many_chunks(monkeypatch, dtype):
    monkeypatch.setattr(inspect_stats, "_CHUNK", 97)  # many uneven chunks
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((40, 33)) * 3 + 5).astype(dtype)
    w[w < 3] = 0
    s = tensor_stats("w", w, threshold=4.0)
    x = w.astype(np.float64)
    assert s.mean == pytest.approx(x.mean(), rel=1e-12) and s.std == pytest.approx(x.std(), rel=1e-10)
    assert (s.min, s.max) == (x.min(), x.max())
    assert s.zeros == int(np.sum(x == 0)) and s.sparsity == pytest.approx(np.mean(x == 0))
    assert s.below_threshold == pytest.approx(np.mean(np.abs(x) <= 4.0))
    assert s.nbytes == w.nbytes and s.dtype == np.dtype(dtype).name


def test_sqnr_matches_the_definition_and_its_limits():
    rng = np.random.default_rng(1)
    w = rng.standard_normal(1000)
    r = w + rng.standard_normal(1000) * 0.01
    assert sqnr_db(w, r) == pytest.approx(10 * np.log10(np.sum(w**2) / np.sum((w - r) ** 2)))
    assert sqnr_db(w, w) == math.inf
    assert sqnr_db(np.zeros(3), np.ones(3)) == -math.inf
    with pytest.raises(CompressionError, match="shapes differ"):
        sqnr_db(w, w[:10])


def test_8bit_sqnr_is_about_6db_per_bit_for_uniform_weights():
    # uniform weights quantized with a per-tensor scale: SQNR = 6.02 b + 10 log10(3 * E[w^2]/max^2) ~ 6.02 b
    w = np.random.default_rng(2).uniform(-1, 1, (64, 512)).astype(np.float32)
    s = tensor_stats("w", w)
    assert s.sqnr_8bit_db == pytest.approx(6.02 * 8, abs=1.0)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 7), min_size=0, max_size=4), bits=st.integers(2, 8))
def test_quantized_nbytes_equals_the_real_quantized_array(shape, bits):
    w = np.ones(shape, np.float32)
    axis = 0 if len(shape) >= 2 else None
    q = coreprune.quantize({"w": w}, bits, axis=axis, include="w")["w"]
    assert quantized_nbytes(tuple(shape), bits) == q.nbytes


def test_non_finite_integer_complex_and_empty_tensors():
    s = tensor_stats("n", np.array([1.0, np.inf, np.nan], np.float32))
    assert s.nonfinite == 2 and math.isnan(s.min) and math.isnan(s.std) and s.sqnr_8bit_db is None
    s = tensor_stats("i", np.array([[0, 3], [-4, 0]], np.int16))
    assert (s.min, s.max, s.zeros, s.below_threshold, s.bytes_8bit) == (-4.0, 3.0, 2, None, None)
    s = tensor_stats("c", np.array([0, 1j, 2], np.complex64))
    assert s.zeros == 1 and s.min is None and s.mean is None
    s = tensor_stats("e", np.zeros((0, 3), np.float32))
    assert s.parameters == 0 and s.sparsity is None and s.std is None and s.bytes_8bit is None
    with pytest.raises(CompressionError, match="threshold"):
        tensor_stats("x", np.ones(2), threshold=float("nan"))


def test_totals_count_unquantizable_tensors_at_their_dense_size():
    a, b = np.ones((4, 8), np.float32), np.arange(10, dtype=np.int64)
    t = totals([tensor_stats("a", a), tensor_stats("b", b)])
    qa = coreprune.quantize({"a": a}, 8, axis=0)["a"]
    assert t["bytes_8bit"] == qa.nbytes + b.nbytes and t["nbytes"] == a.nbytes + b.nbytes
    assert t["parameters"] == 42 and t["sparsity"] == pytest.approx(1 / 42)


def test_inputs_are_not_modified():
    w = np.random.default_rng(3).standard_normal((5, 5)).astype(np.float32)
    before = w.copy()
    tensor_stats("w", w)
    assert np.array_equal(w, before)
