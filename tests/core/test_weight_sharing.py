"""Weight sharing: k-means against references, honest sizes, centroid gradients by finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.cluster.vq import kmeans2

from coreprune import CompressionError
from coreprune.weight_sharing import (
    CodebookArray,
    _kmeans_1d,
    _kmeans_reference,
    centroid_gradients,
    kmeans_codebook,
    lloyd_max_gaussian,
    nf4_codebook,
    quantize_to_codebook,
    share_weights,
)


def _pruned(rng, shape, keep=0.3):
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) > keep] = 0
    return w


@pytest.mark.parametrize("bits", [1, 2, 4, 6])
def test_kmeans_matches_all_pairs_reference(bits):
    rng = np.random.default_rng(bits)
    x = rng.standard_normal(3000)
    init = np.linspace(x.min(), x.max(), 1 << bits)
    fast_c, fast_codes = _kmeans_1d(x, init, iters=15, tol=-1.0)  # tol < 0: run every iteration
    ref_c, ref_codes = _kmeans_reference(x, init, iters=15)
    np.testing.assert_allclose(fast_c, ref_c, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(fast_codes, ref_codes)


def test_kmeans_matches_scipy_kmeans2_with_the_same_initialisation():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-1, 0.2, 800), rng.normal(0.5, 0.1, 400), rng.normal(2, 0.3, 300)])
    init = np.linspace(x.min(), x.max(), 8)
    ours, codes = _kmeans_1d(x, init, iters=20, tol=-1.0)
    theirs, labels = kmeans2(x[:, None], init[:, None].copy(), iter=20, minit="matrix", missing="warn")
    np.testing.assert_allclose(ours, theirs[:, 0], atol=1e-9)
    np.testing.assert_array_equal(codes, labels)


def test_only_surviving_weights_are_clustered_and_the_mask_is_kept():
    rng = np.random.default_rng(1)
    w = _pruned(rng, (64, 32))
    c = kmeans_codebook(w, bits=3)
    assert c.codebook.shape == (8,) and c.codes.dtype == np.uint8
    np.testing.assert_array_equal(c.mask, w != 0)
    out = c.dequantize()
    assert out.dtype == np.float32
    assert np.all(out[w == 0] == 0) and not np.any(np.signbit(out[w == 0]))
    survivors = w[w != 0]
    # linear init over the survivors' range: the extremes are cluster means of survivors only
    assert c.codebook.min() >= survivors.min() and c.codebook.max() <= survivors.max()
    # every surviving weight decodes to its nearest centroid
    nearest = c.codebook[np.argmin(np.abs(survivors[:, None] - c.codebook[None, :]), axis=1)]
    np.testing.assert_allclose(np.abs(out[w != 0] - survivors), np.abs(nearest - survivors), atol=1e-6)


def test_kmeans_lowers_the_error_of_the_linear_initialisation():
    rng = np.random.default_rng(2)
    w = rng.standard_normal(5000).astype(np.float32)
    linear = np.linspace(w.min(), w.max(), 16)
    err_linear = np.mean((linear[np.argmin(np.abs(w[:, None] - linear), 1)] - w) ** 2)
    err = np.mean((kmeans_codebook(w, bits=4).dequantize() - w) ** 2)
    assert err < 0.8 * err_linear


def test_explicit_mask_and_edge_cases():
    w = np.array([0.0, 1.0, 2.0, 3.0], np.float32)
    c = kmeans_codebook(w, bits=1, mask=np.array([True, True, False, False]))
    assert c.dequantize().tolist() == [0.0, 1.0, 0.0, 0.0]
    empty = kmeans_codebook(np.zeros((3, 3), np.float32), bits=2)
    assert empty.nnz == 0 and not empty.dequantize().any()
    one = kmeans_codebook(np.full(5, 0.25, np.float64), bits=2)
    assert one.dequantize().dtype == np.float64 and np.all(one.dequantize() == 0.25)
    assert kmeans_codebook(np.zeros((0, 4), np.float32), bits=2).shape == (0, 4)
    wide = kmeans_codebook(np.arange(1, 600, dtype=np.float32), bits=9)
    assert wide.codes.dtype == np.uint16 and wide.codebook.size == 512


@pytest.mark.parametrize("bad", [0, 17, True, 2.0])
def test_bad_bits_raise_the_project_error(bad):
    with pytest.raises(CompressionError):
        kmeans_codebook(np.ones(4, np.float32), bits=bad)


def test_nonfinite_and_wrong_mask_raise():
    with pytest.raises(CompressionError):
        kmeans_codebook(np.array([1.0, np.nan], np.float32), bits=1)
    with pytest.raises(CompressionError):
        kmeans_codebook(np.ones(4, np.float32), bits=1, mask=np.ones(3, bool))
    with pytest.raises(CompressionError):
        CodebookArray(codes=np.array([4], np.uint8), codebook=np.zeros(4, np.float32), mask=None, bits=2,
                      dtype=np.dtype(np.float32))


def test_nbytes_is_the_packed_size():
    rng = np.random.default_rng(3)
    w = _pruned(rng, (100, 50), keep=0.1)
    c = kmeans_codebook(w, bits=5)
    nnz = int(np.count_nonzero(w))
    assert c.nnz == nnz
    assert c.nbytes == math.ceil(nnz * 5 / 8) + 32 * 4 + math.ceil(5000 / 8)


def test_share_weights_per_layer_bits_and_masks():
    rng = np.random.default_rng(4)
    w = {"conv.weight": _pruned(rng, (8, 3, 3, 3)), "fc.weight": _pruned(rng, (10, 40)),
         "fc.bias": np.ones(10)}
    out = share_weights(w, {"conv.weight": 8, "fc.weight": 5})
    assert out["conv.weight"].codebook.size == 256 and out["fc.weight"].codebook.size == 32
    assert out["fc.bias"] is not w["fc.bias"] and out["fc.bias"].tolist() == [1.0] * 10
    masks = {"fc.weight": np.abs(w["fc.weight"]) > 1.0}
    shared = share_weights(w, 2, masks=masks)
    np.testing.assert_array_equal(shared["fc.weight"].mask, masks["fc.weight"])
    with pytest.raises(CompressionError):
        share_weights(w, {"nope": 4})


def test_centroid_gradients_match_finite_differences():
    rng = np.random.default_rng(5)
    w = _pruned(rng, (20, 30), keep=0.5).astype(np.float64)
    c = kmeans_codebook(w, bits=3)
    a = rng.standard_normal(w.shape)

    def loss(codebook):
        weights = np.where(c.mask, codebook[c.codes], 0.0)
        return float(np.sum(np.sin(weights) * a) + 0.5 * np.sum(weights**2))

    base = c.codebook.astype(np.float64)
    weights = np.where(c.mask, base[c.codes], 0.0)
    dw = np.cos(weights) * a + weights  # dL/dW
    analytic = centroid_gradients(dw, c)
    eps = 1e-6
    numeric = np.array([(loss(base + eps * e) - loss(base - eps * e)) / (2 * eps) for e in np.eye(base.size)])
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-6)


def test_nf4_matches_the_published_table():
    # bitsandbytes' NF4 table (functional.py, get_4bit_type("nf4")), as published with QLoRA
    published = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]
    np.testing.assert_allclose(nf4_codebook(), published, atol=2e-6)


def test_lloyd_max_matches_max_1960():
    # J. Max, "Quantizing for minimum distortion" (1960), Table I, output levels for N(0, 1)
    np.testing.assert_allclose(lloyd_max_gaussian(2)[2:], [0.4528, 1.510], atol=5e-4)
    np.testing.assert_allclose(lloyd_max_gaussian(3)[4:], [0.2451, 0.7560, 1.344, 2.152], atol=5e-4)
    # and it beats uniform quantiles on Gaussian data
    rng = np.random.default_rng(6)
    x = rng.standard_normal(20000).astype(np.float32)
    lm = quantize_to_codebook(x, lloyd_max_gaussian(3), scale="std").dequantize()
    nf = quantize_to_codebook(x, np.linspace(-1, 1, 8), scale="absmax").dequantize()
    assert np.mean((lm - x) ** 2) < np.mean((nf - x) ** 2)


def test_quantize_to_codebook_rounds_to_nearest_and_checks_input():
    w = np.array([[0.0, -0.3, 0.9]], np.float32)
    c = quantize_to_codebook(w, nf4_codebook())
    scaled = nf4_codebook() * 0.9
    assert c.dequantize()[0, 0] == 0 and c.dequantize()[0, 2] == pytest.approx(0.9)
    assert c.dequantize()[0, 1] == scaled[np.argmin(np.abs(scaled + 0.3))]
    with pytest.raises(CompressionError):
        quantize_to_codebook(w, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(CompressionError):
        quantize_to_codebook(w, nf4_codebook(), scale="max")
