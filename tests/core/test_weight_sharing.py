"""Weight sharing: k-means against references, honest sizes, centroid gradients by finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.cluster.vq import kmeans2

from coreprune import CompressionError, load_compressed, save_compressed
from coreprune.bit_budget import allocate_bits, noise_to_signal
from coreprune.weight_sharing import (
    CODEBOOK_WIDTHS,
    CodebookArray,
    _kmeans_1d,
    _kmeans_reference,
    centroid_gradients,
    kmeans_codebook,
    lloyd_max_gaussian,
    nf4_codebook,
    quantize_to_codebook,
    share_weights,
    stored_nbytes,
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


def _mixed_weights(rng):
    """Tensors whose best widths differ: bell-shaped, heavy-tailed, flat, pruned, depthwise."""
    return {
        "a.weight": rng.normal(size=(64, 96)).astype(np.float32),
        "b.weight": rng.laplace(size=(96, 128)).astype(np.float32),
        "c.weight": rng.uniform(-1, 1, size=(128, 80)).astype(np.float32),
        "d.weight": _pruned(rng, (80, 120), keep=0.4),
        "dw.weight": rng.normal(size=(48, 1, 3, 3)).astype(np.float32),
        "a.bias": rng.normal(size=64).astype(np.float32),
    }


def test_stored_nbytes_is_the_entropy_of_the_codes():
    """ANS reaches the codes' Shannon entropy: the stored bytes are n * H / 8 plus the codebook."""
    rng = np.random.default_rng(11)
    for bits in (3, 6):
        c = kmeans_codebook(rng.normal(size=200_000).astype(np.float32), bits=bits)
        p = np.bincount(c.codes.ravel(), minlength=1 << bits) / c.codes.size
        entropy = -(p[p > 0] * np.log2(p[p > 0])).sum()
        ideal = c.codes.size * entropy / 8 + 4 * (1 << bits)
        assert ideal <= stored_nbytes(c) <= 1.01 * ideal + 64
        assert stored_nbytes(c) < c.nbytes  # uneven k-means codes: below plain packing


def test_stored_nbytes_is_what_the_cpz_file_holds(tmp_path):
    rng = np.random.default_rng(12)
    w = _mixed_weights(rng)
    shared = share_weights(w, 5)
    save_compressed(shared, tmp_path / "w.cpz")
    stored = sum(stored_nbytes(v) for v in shared.values() if isinstance(v, CodebookArray))
    rest = sum(v.nbytes for v in shared.values() if not isinstance(v, CodebookArray))
    overhead = (tmp_path / "w.cpz").stat().st_size - stored - rest
    assert 0 < overhead < 1024 * len(w)  # the manifest and the zip headers only
    back = load_compressed(tmp_path / "w.cpz")
    for name, value in shared.items():
        expect = value.dequantize() if isinstance(value, CodebookArray) else value
        got = back[name].dequantize() if isinstance(back[name], CodebookArray) else back[name]
        np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("budget", [3.0, 4.0, 5.5])
def test_budget_fits_and_is_the_allocation_of_the_measured_table(budget):
    rng = np.random.default_rng(13)
    w = _mixed_weights(rng)
    before = {n: v.copy() for n, v in w.items()}
    out = share_weights(w, budget=budget)
    for n, v in w.items():
        np.testing.assert_array_equal(v, before[n])  # inputs never modified
    names = [n for n in w if w[n].ndim >= 2]
    total = sum(w[n].size for n in names)
    assert 8 * sum(stored_nbytes(out[n]) for n in names) / total <= budget
    assert out["a.bias"] is not w["a.bias"] and np.array_equal(out["a.bias"], w["a.bias"])
    # the reference: every width measured one tensor at a time, then the shared allocator
    sizes, errors = {}, {}
    for n in names:
        cands = {b: kmeans_codebook(w[n], b) for b in CODEBOOK_WIDTHS}
        sizes[n] = {b: stored_nbytes(c) for b, c in cands.items()}
        target = np.where(w[n] != 0, w[n], 0)
        errors[n] = {b: noise_to_signal(target, c.dequantize()) for b, c in cands.items()}
    expect = allocate_bits(sizes, errors, {n: w[n].size for n in names}, budget, wide_only={"dw.weight"})
    assert {n: out[n].bits for n in names} == expect
    for n in names:  # the chosen codebooks are the plain ones, bit for bit
        ref = kmeans_codebook(w[n], expect[n])
        np.testing.assert_array_equal(out[n].codes, ref.codes)
        np.testing.assert_array_equal(out[n].codebook, ref.codebook)
    # never worse than the best single width that fits
    cost = sum(errors[n][expect[n]] for n in names)
    for b in CODEBOOK_WIDTHS:
        if sum(sizes[n][b] for n in names) * 8 <= budget * total:
            assert cost <= sum(errors[n][b] for n in names) + 1e-12


def test_budget_holds_small_tensors_at_8_bits_and_follows_importance():
    rng = np.random.default_rng(14)
    w = _mixed_weights(rng)
    out = share_weights(w, budget=4.0)
    assert out["dw.weight"].bits == 8  # a fan-in of 9: the default layout's floor
    plain = {n: out[n].bits for n in out if isinstance(out[n], CodebookArray)}
    favoured = share_weights(w, budget=4.0, importance={"c.weight": 1000.0})
    assert favoured["c.weight"].bits > plain["c.weight"]
    narrow = share_weights(w, budget=3.0, bit_choices=(2, 3, 4), include="*.weight")
    assert {v.bits for v in narrow.values() if isinstance(v, CodebookArray)} <= {2, 3, 4}


@pytest.mark.parametrize("kwargs", [
    dict(), dict(bits=4, budget=4.0), dict(budget=0.5), dict(budget=-1.0), dict(budget=float("nan")),
    dict(budget="4.5"), dict(budget=True), dict(budget=float("inf")),
    dict(budget=4.0, bit_choices=(1, 4)), dict(budget=4.0, bit_choices=()),
])
def test_budget_refusals_are_the_project_error(kwargs):
    w = _mixed_weights(np.random.default_rng(15))
    with pytest.raises(CompressionError):
        share_weights(w, **kwargs)


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
