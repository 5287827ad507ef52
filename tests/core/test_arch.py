"""coreprune.arch against the closed forms of the SqueezeNet, MobileNet and ShuffleNet papers."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from coreprune import CompressionError, channel_shuffle
from coreprune.arch import (
    MOBILENET_STUDENT_BLOCKS,
    SQUEEZENET_STUDENT_FIRES,
    Cost,
    batchnorm_cost,
    conv2d_cost,
    conv_output_size,
    depthwise_cost,
    depthwise_separable_cost,
    fire_cost,
    linear_cost,
    mobilenet_student_cost,
    pointwise_cost,
    scale_channels,
    scale_resolution,
    shuffle_unit_cost,
    squeezenet_student_cost,
)

_channels = st.integers(1, 256)
_size = st.integers(1, 64)


@given(_channels, _channels, _size, _size)
def test_replacing_3x3_by_1x1_saves_exactly_9x(m, n, h, w):
    big = conv2d_cost(m, n, 3, (h, w))
    small = pointwise_cost(m, n, (h, w))
    assert big.params == 9 * small.params
    assert big.macs == 9 * small.macs
    assert small == Cost(m * n, m * n * h * w)


@given(_channels, _channels, st.integers(1, 7), _size)
def test_depthwise_separable_over_standard_is_one_over_n_plus_one_over_k_squared(m, n, k, d):
    std = conv2d_cost(m, n, k, d)
    ds = depthwise_separable_cost(m, n, k, d)
    expected = Fraction(1, n) + Fraction(1, k * k)
    assert Fraction(ds.macs, std.macs) == expected
    assert Fraction(ds.params, std.params) == expected
    assert ds == depthwise_cost(m, k, d) + pointwise_cost(m, n, d)


@given(st.integers(1, 64), st.integers(1, 64), st.sampled_from([1, 2, 4]), st.integers(1, 16))
def test_width_multiplier_scales_pointwise_by_alpha_squared_and_depthwise_by_alpha(m, n, inv_alpha, d):
    # Channels that alpha divides exactly, so that round(alpha * C) = alpha * C.
    alpha = Fraction(1, inv_alpha)
    big_m, big_n = m * inv_alpha, n * inv_alpha
    base_dw, base_pw = depthwise_cost(big_m, 3, d), pointwise_cost(big_m, big_n, d)
    thin = depthwise_separable_cost(big_m, big_n, 3, d, alpha=float(alpha))
    assert thin.macs == alpha * base_dw.macs + alpha**2 * base_pw.macs
    assert thin.params == alpha * base_dw.params + alpha**2 * base_pw.params
    assert thin.macs >= float(alpha**2) * (base_dw.macs + base_pw.macs)


@given(_channels, _channels, st.integers(1, 16), st.sampled_from([1, 2, 4, 7]))
def test_resolution_multiplier_scales_macs_by_rho_squared_and_keeps_params(m, n, d, inv_rho):
    base = depthwise_separable_cost(m, n, 3, d * inv_rho)
    low = depthwise_separable_cost(m, n, 3, d * inv_rho, rho=1 / inv_rho)
    assert low.params == base.params
    assert low.macs * inv_rho**2 == base.macs


def test_mobilenet_table_3():
    # MobileNet (Howard et al. 2017), Table 3: the 14x14x512 -> 512 layer, in millions.
    rows = [
        (conv2d_cost(512, 512, 3, 14), 462, 2.36),
        (depthwise_separable_cost(512, 512, 3, 14), 52.3, 0.27),
        (depthwise_separable_cost(512, 512, 3, 14, alpha=0.75), 29.6, 0.15),
        (depthwise_separable_cost(512, 512, 3, 14, alpha=0.75, rho=0.714), 15.1, 0.15),
    ]
    for cost, macs_m, params_m in rows:
        assert round(cost.macs / 1e6, 1 if macs_m < 100 else 0) == macs_m
        assert round(cost.params / 1e6, 2) == params_m


def test_squeezenet_table_1_fire_parameters():
    # SqueezeNet (Iandola et al. 2016), Table 1, v1.0 fire2..fire4 (with biases).
    assert fire_cost(96, 16, 64, 64, 55).params == 11920
    assert fire_cost(128, 16, 64, 64, 55).params == 12432
    assert fire_cost(128, 32, 128, 128, 55).params == 45344
    s, e1, e3, m, d = 16, 64, 64, 96, 55
    assert fire_cost(m, s, e1, e3, d).macs == d * d * (m * s + s * e1 + 9 * s * e3)
    assert fire_cost(m, s, e1, e3, d, bias=False).params == m * s + s * e1 + 9 * s * e3


@given(st.integers(1, 8), st.integers(1, 16), st.integers(1, 16), st.integers(1, 3), _size)
def test_grouped_convolution_divides_by_groups(g, m_per_group, n_per_group, k, d):
    m, n = g * m_per_group, g * n_per_group
    grouped = conv2d_cost(m, n, k, d, groups=g)
    dense = conv2d_cost(m, n, k, d)
    assert grouped.params * g == dense.params
    assert grouped.macs * g == dense.macs
    assert conv2d_cost(m, n, k, d, groups=g, bias=True).params == grouped.params + n


def test_shuffle_unit_closed_form_and_parts():
    c, b, g, d = 240, 60, 3, 28
    unit = shuffle_unit_cost(c, b, g, d)
    assert unit.macs == d * d * (2 * c * b // g + 9 * b)
    assert unit.params == 2 * c * b // g + 9 * b + 2 * (2 * b + c)
    with pytest.raises(CompressionError, match="divisible by groups"):
        shuffle_unit_cost(240, 50, 3, 28)


def test_small_layers():
    assert batchnorm_cost(7) == Cost(14, 0)
    assert linear_cost(5, 3) == Cost(18, 15)
    assert linear_cost(5, 3, bias=False) == Cost(15, 15)
    assert conv2d_cost(3, 8, (3, 5), (4, 6), bias=True) == Cost(8 * 3 * 15 + 8, 8 * 3 * 15 * 24)
    assert depthwise_cost(6, 3, 5, bias=True) == Cost(6 * 9 + 6, 6 * 9 * 25)
    with_bn = depthwise_separable_cost(8, 16, 3, 4, batch_norm=True, bias=True)
    assert with_bn.params == 8 * 9 + 8 + 8 * 16 + 16 + 2 * 8 + 2 * 16


def _count_windows(size, k, stride, padding, dilation):
    """Brute force: how many stride positions put the whole dilated kernel inside the padded input."""
    padded = size + 2 * padding
    return sum(1 for start in range(0, padded, stride) if start + dilation * (k - 1) < padded)


@given(st.integers(1, 40), st.integers(1, 5), st.integers(1, 4), st.integers(0, 3), st.integers(1, 3))
def test_conv_output_size_counts_window_positions(size, k, stride, padding, dilation):
    expected = _count_windows(size, k, stride, padding, dilation)
    if expected == 0:
        with pytest.raises(CompressionError, match="does not fit"):
            conv_output_size(size, k, stride, padding, dilation)
    else:
        assert conv_output_size(size, k, stride, padding, dilation) == expected


def test_scale_helpers():
    assert [scale_channels(c, 0.5) for c in (16, 32, 3, 1)] == [8, 16, 2, 1]  # round(1.5) = 2, floor at 1
    assert scale_channels(10, 1.5) == 15
    assert scale_resolution(28, 0.5) == 14
    assert scale_resolution(224, 128 / 224) == 128


def test_student_costs_are_the_sum_of_their_layers():
    # Written out by hand from the layer list in the docstrings (alpha = 1, 28x28 grey digits).
    stem = 1 * 16 * 9 + 2 * 16
    blocks = sum(9 * m + m * n + 2 * m + 2 * n for m, n, _ in MOBILENET_STUDENT_BLOCKS)
    assert mobilenet_student_cost(1.0).params == stem + blocks + 128 * 10 + 10
    macs = 16 * 9 * 28 * 28 + (9 * 16 + 16 * 32) * 28 * 28 + (9 * 32 + 32 * 64) * 14 * 14
    macs += (9 * 64 + 64 * 128) * 7 * 7 + 128 * 10
    assert mobilenet_student_cost(1.0).macs == macs
    # alpha = 0.5 halves every channel count; rho = 0.5 feeds 14x14 images.
    half_blocks = sum(9 * m // 2 + m * n // 4 + m + n for m, n, _ in MOBILENET_STUDENT_BLOCKS)
    assert mobilenet_student_cost(0.5).params == 1 * 8 * 9 + 16 + half_blocks + 64 * 10 + 10
    assert mobilenet_student_cost(1.0, rho=0.5).params == mobilenet_student_cost(1.0).params
    assert mobilenet_student_cost(1.0, rho=0.5).macs < mobilenet_student_cost(1.0).macs / 3.5

    fires = sum(m * s + s + s * e1 + e1 + 9 * s * e3 + e3 for m, s, e1, e3 in SQUEEZENET_STUDENT_FIRES)
    assert squeezenet_student_cost().params == (9 * 32 + 32) + fires + (128 * 10 + 10)
    assert squeezenet_student_cost(num_classes=3, in_channels=3, input_size=32).params == (
        27 * 32 + 32 + fires + 128 * 3 + 3
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: conv2d_cost(0, 4, 3, 5), "in_channels"),
        (lambda: conv2d_cost(4, 4, 3, 5.0), "out_size"),
        (lambda: conv2d_cost(4, 4, (3, 3, 3), 5), "kernel_size"),
        (lambda: conv2d_cost(4, 6, 3, 5, groups=4), "divisible by groups"),
        (lambda: conv2d_cost(True, 4, 3, 5), "in_channels"),
        (lambda: depthwise_separable_cost(4, 4, 3, 5, alpha=0.0), "alpha"),
        (lambda: depthwise_separable_cost(4, 4, 3, 5, rho=float("inf")), "rho"),
        (lambda: fire_cost(4, 0, 4, 4, 5), "squeeze"),
        (lambda: conv_output_size(5, 3, padding=-1), "padding"),
        (lambda: scale_channels(4, "1"), "alpha"),
    ],
)
def test_cost_model_rejects_bad_shapes(call, match):
    with pytest.raises(CompressionError, match=match):
        call()


def test_channel_shuffle_formula_and_views():
    x = np.arange(2 * 12 * 2 * 3).reshape(2, 12, 2, 3)
    keep = x.copy()
    out = channel_shuffle(x, 3)
    k = np.arange(12)
    np.testing.assert_array_equal(out, x[:, (k % 3) * 4 + k // 3])
    np.testing.assert_array_equal(x, keep)
    assert out.dtype == x.dtype and out.shape == x.shape
    # groups = 1 and groups = C are the identity, but still a new array.
    for g in (1, 12):
        same = channel_shuffle(x, g)
        np.testing.assert_array_equal(same, x)
        assert not np.shares_memory(same, x)
    # A single CHW image: axis 0; and a negative axis.
    np.testing.assert_array_equal(channel_shuffle(x[0], 3, axis=0), out[0])
    np.testing.assert_array_equal(channel_shuffle(np.moveaxis(x, 1, -1), 3, axis=-1), np.moveaxis(out, 1, -1))


def test_channel_shuffle_rejects_bad_groups():
    with pytest.raises(CompressionError, match="must divide the 6 channels"):
        channel_shuffle(np.zeros((1, 6, 2, 2)), 4)
    with pytest.raises(CompressionError, match="groups"):
        channel_shuffle(np.zeros((1, 6, 2, 2)), 0)
    with pytest.raises(CompressionError, match="out of range"):
        channel_shuffle(np.zeros((1, 6)), 2, axis=2)


@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 3), st.data())
def test_channel_shuffle_is_a_permutation_undone_by_the_complementary_shuffle(g, per_group, n, data):
    c = g * per_group
    x = data.draw(hnp.arrays(np.float32, (n, c, 2, 2), elements=st.floats(-10, 10, width=32)))
    ids = np.broadcast_to(np.arange(c)[None, :, None, None], (n, c, 2, 2))
    moved = channel_shuffle(ids, g)
    perm = moved[0, :, 0, 0]
    assert sorted(perm.tolist()) == list(range(c))
    np.testing.assert_array_equal(channel_shuffle(x, g), x[:, perm])
    np.testing.assert_array_equal(channel_shuffle(channel_shuffle(x, g), per_group), x)
