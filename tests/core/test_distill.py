"""coreprune.distill against scipy's softmax, finite differences and the closed-form limits of the loss."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import special

from coreprune import CompressionError, kd_loss, kd_loss_and_grad
from coreprune.distill import log_softmax, softmax


def _reference(s, t, y, temperature, alpha, reduction="mean"):
    """The loss written straight from its definition with scipy (an independent implementation)."""
    p = special.softmax(t / temperature, axis=1)
    kl = special.rel_entr(p, special.softmax(s / temperature, axis=1)).sum(axis=1)
    ce = -special.log_softmax(s, axis=1)[np.arange(len(y)), y]
    per = alpha * temperature**2 * kl + (1 - alpha) * ce
    return per.mean() if reduction == "mean" else per.sum()


def _batch(rng, b=5, c=7, scale=3.0):
    s = rng.normal(scale=scale, size=(b, c))
    t = rng.normal(scale=scale, size=(b, c))
    y = rng.integers(0, c, size=b)
    return s, t, y


def _finite_difference(s, t, y, temperature, alpha, reduction, h=1e-6):
    grad = np.zeros_like(s)
    for idx in np.ndindex(*s.shape):
        plus, minus = s.copy(), s.copy()
        plus[idx] += h
        minus[idx] -= h
        grad[idx] = (
            kd_loss(plus, t, y, temperature=temperature, alpha=alpha, reduction=reduction)
            - kd_loss(minus, t, y, temperature=temperature, alpha=alpha, reduction=reduction)
        ) / (2 * h)
    return grad


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_value_matches_scipy_reference(temperature, alpha, reduction):
    s, t, y = _batch(np.random.default_rng(0))
    got = kd_loss(s, t, y, temperature=temperature, alpha=alpha, reduction=reduction)
    assert isinstance(got, float)
    assert got == pytest.approx(_reference(s, t, y, temperature, alpha, reduction), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("temperature", [0.7, 1.0, 3.0, 10.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradient_matches_finite_differences(temperature, alpha, reduction):
    s, t, y = _batch(np.random.default_rng(1), b=4, c=5)
    loss, grad = kd_loss_and_grad(s, t, y, temperature=temperature, alpha=alpha, reduction=reduction)
    assert grad.dtype == np.float64 and grad.shape == s.shape
    assert loss == kd_loss(s, t, y, temperature=temperature, alpha=alpha, reduction=reduction)
    np.testing.assert_allclose(
        grad, _finite_difference(s, t, y, temperature, alpha, reduction), rtol=1e-6, atol=1e-8
    )


def test_gradient_is_the_documented_closed_form():
    s, t, y = _batch(np.random.default_rng(2))
    temperature, alpha, b = 3.0, 0.7, s.shape[0]
    onehot = np.eye(s.shape[1])[y]
    expected = (
        alpha * temperature * (special.softmax(s / temperature, 1) - special.softmax(t / temperature, 1))
        + (1 - alpha) * (special.softmax(s, 1) - onehot)
    ) / b
    _, grad = kd_loss_and_grad(s, t, y, temperature=temperature, alpha=alpha)
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15)


def test_alpha_zero_is_cross_entropy_and_ignores_the_teacher():
    s, t, y = _batch(np.random.default_rng(3))
    ce = -special.log_softmax(s, axis=1)[np.arange(len(y)), y].mean()
    assert kd_loss(s, t, y, temperature=5.0, alpha=0.0) == pytest.approx(ce, rel=1e-13)
    assert kd_loss(s, -t, y, temperature=5.0, alpha=0.0) == kd_loss(s, t, y, temperature=5.0, alpha=0.0)


def test_alpha_one_student_equal_teacher_is_zero_with_zero_gradient():
    s, _, y = _batch(np.random.default_rng(4))
    loss, grad = kd_loss_and_grad(s, s.copy(), y, temperature=7.0, alpha=1.0)
    assert loss == 0.0
    assert np.abs(grad).max() == 0.0


def test_high_temperature_limit_matches_logit_matching():
    # Hinton et al.: as T -> inf the soft-term gradient tends to (1/C)((s - mean s) - (t - mean t)).
    s, t, y = _batch(np.random.default_rng(5), scale=1.0)
    c = s.shape[1]
    _, grad = kd_loss_and_grad(s, t, y, temperature=1e4, alpha=1.0, reduction="sum")
    centred = (s - s.mean(1, keepdims=True)) - (t - t.mean(1, keepdims=True))
    np.testing.assert_allclose(grad, centred / c, atol=1e-4)


@pytest.mark.parametrize("temperature", [1e-3, 1.0, 100.0])
def test_stable_for_huge_logits(temperature):
    rng = np.random.default_rng(6)
    s = rng.normal(scale=1e4, size=(6, 10))
    t = rng.normal(scale=1e4, size=(6, 10))
    y = rng.integers(0, 10, size=6)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is harmless
        loss, grad = kd_loss_and_grad(s, t, y, temperature=temperature, alpha=0.5)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    # Shifting each row by a constant changes no probability: the loss and gradient must not move.
    shift = rng.normal(scale=1e4, size=(6, 1))
    loss2, grad2 = kd_loss_and_grad(s + shift, t - shift, y, temperature=temperature, alpha=0.5)
    assert loss2 == pytest.approx(loss, rel=1e-9)
    np.testing.assert_allclose(grad2, grad, atol=1e-9)


def test_huge_logits_have_the_closed_form_value():
    # Student sure of class 0, teacher sure of class 1, T = 1: KL = 1e4 - 0 and CE of label 0 = 0.
    s = np.array([[1e4, 0.0]])
    t = np.array([[0.0, 1e4]])
    y = np.array([0])
    assert kd_loss(s, t, y, temperature=1.0, alpha=1.0) == pytest.approx(1e4, rel=1e-12)
    assert kd_loss(s, t, y, temperature=1.0, alpha=0.0) == pytest.approx(0.0, abs=1e-300)


def test_softmax_and_log_softmax_match_scipy_and_validate():
    z = np.random.default_rng(7).normal(scale=50, size=(3, 4, 5))
    for axis in (0, 1, -1):
        np.testing.assert_allclose(softmax(z, 2.5, axis), special.softmax(z / 2.5, axis=axis), rtol=1e-12)
        expected = special.log_softmax(z / 2.5, axis=axis)
        np.testing.assert_allclose(log_softmax(z, 2.5, axis), expected, rtol=1e-12)
    big = softmax(np.array([1e300, -1e300]), temperature=1e-3)
    assert big.tolist() == [1.0, 0.0]
    for bad in (0.0, -1.0, np.inf, np.nan, True, "2"):
        with pytest.raises(CompressionError, match="temperature"):
            softmax(z, bad)
    with pytest.raises(CompressionError, match="NaN/Inf"):
        softmax(np.array([0.0, np.nan]))
    with pytest.raises(CompressionError, match="at least one axis"):
        softmax(np.float64(1.0))


def test_accepts_lists_float32_and_does_not_modify_inputs():
    s, t, y = _batch(np.random.default_rng(8))
    s32, t32 = s.astype(np.float32), t.astype(np.float32)
    keep = (s32.copy(), t32.copy(), y.copy())
    loss, grad = kd_loss_and_grad(s32, t32, y, temperature=2.0, alpha=0.5)
    assert grad.dtype == np.float64
    assert loss == pytest.approx(_reference(s32.astype(float), t32.astype(float), y, 2.0, 0.5), rel=1e-12)
    for before, after in zip(keep, (s32, t32, y)):
        np.testing.assert_array_equal(before, after)
    assert kd_loss(s.tolist(), t.tolist(), y.tolist(), temperature=2.0, alpha=0.5) == pytest.approx(
        _reference(s, t, y, 2.0, 0.5), rel=1e-12
    )


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-2.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(alpha=-0.1), "alpha"),
        (dict(alpha=1.5), "alpha"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(reduction="none"), "reduction"),
        (dict(t=np.zeros((3, 5))), "teacher_logits has shape"),
        (dict(s=np.zeros(4)), r"shape \(B, C\)"),
        (dict(s=np.zeros((0, 4)), t=np.zeros((0, 4)), y=np.zeros(0, int)), r"shape \(B, C\)"),
        (dict(y=np.array([0, 1, 4])), r"labels must lie in \[0, 4\)"),
        (dict(y=np.array([0, -1, 2])), "labels must lie"),
        (dict(y=np.array([0.0, 1.0, 2.0])), "integer"),
        (dict(y=np.array([0, 1])), r"shape \(3,\)"),
        (dict(s=np.array([[0.0, np.inf, 0, 0]] * 3)), "student_logits"),
        (dict(t=np.array([[0.0, np.nan, 0, 0]] * 3)), "teacher_logits"),
        (dict(s=np.zeros((3, 4), dtype=complex)), "real numbers"),
    ],
)
def test_rejects_bad_input(change, match):
    args = dict(s=np.zeros((3, 4)), t=np.zeros((3, 4)), y=np.array([0, 1, 3]), temperature=2.0, alpha=0.5)
    args.update(change)
    kwargs = {k: args[k] for k in ("temperature", "alpha")}
    if "reduction" in args:
        kwargs["reduction"] = args["reduction"]
    for fn in (kd_loss, kd_loss_and_grad):
        with pytest.raises(CompressionError, match=match):
            fn(args["s"], args["t"], args["y"], **kwargs)


_logits = hnp.arrays(
    np.float64, st.tuples(st.integers(1, 4), st.integers(2, 6)), elements=st.floats(-1e4, 1e4)
)


@given(
    _logits,
    st.data(),
    st.floats(0.05, 100.0),
    st.floats(0.0, 1.0),
)
def test_properties(s, data, temperature, alpha):
    t = data.draw(hnp.arrays(np.float64, s.shape, elements=st.floats(-1e4, 1e4)))
    y = data.draw(hnp.arrays(np.int64, (s.shape[0],), elements=st.integers(0, s.shape[1] - 1)))
    loss, grad = kd_loss_and_grad(s, t, y, temperature=temperature, alpha=alpha)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    # KL >= 0 and CE >= 0, so the loss is non-negative; the soft term alone is non-negative.
    assert loss >= 0.0
    assert kd_loss(s, t, y, temperature=temperature, alpha=1.0) >= 0.0
    # Both terms are differences of probability vectors: each gradient row sums to 0 and is bounded.
    scale = max(np.abs(grad).max(), 1.0)
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-12 * scale * s.shape[1])
    assert np.abs(grad).max() <= (alpha * temperature + (1 - alpha)) / s.shape[0] * 2 + 1e-12
    # The mean is the sum divided by the batch size.
    total = kd_loss(s, t, y, temperature=temperature, alpha=alpha, reduction="sum")
    assert total == pytest.approx(loss * s.shape[0], rel=1e-12, abs=1e-12)


@given(
    hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 5)), elements=st.floats(-1e5, 1e5)),
    st.floats(1e-3, 1e3),
)
def test_softmax_is_a_distribution(z, temperature):
    p = softmax(z, temperature)
    assert ((p >= 0) & (p <= 1)).all()
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-12)
    lp = log_softmax(z, temperature)
    assert (lp <= 0).all() and np.isfinite(lp).all()
