"""coreprune.mxnet.distill against the NumPy reference coreprune.distill: value, gradient, training."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet", reason="needs MXNet")
# Without MXNet installed, "mxnet" could resolve to the tests/mxnet folder (a namespace package,
# tests/ being on sys.path): only a real installation has mxnet.gluon.
pytest.importorskip("mxnet.gluon", reason="needs MXNet")

from coreprune.mxnet.distill import KDLoss, distill_student  # noqa: E402

from coreprune import CompressionError  # noqa: E402
from coreprune.distill import kd_loss, kd_loss_and_grad  # noqa: E402


def _batch(seed, b=6, c=5, scale=3.0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=scale, size=(b, c)), rng.normal(scale=scale, size=(b, c)), rng.integers(0, c, b)


def _run(loss_fn, s, t, y, dtype="float64", reduce="mean"):
    student = mx.nd.array(s, dtype=dtype)
    teacher = mx.nd.array(t, dtype=dtype)
    student.attach_grad()
    teacher.attach_grad()
    with mx.autograd.record():
        per_sample = loss_fn(student, teacher, mx.nd.array(y, dtype=dtype))
        loss = per_sample.mean() if reduce == "mean" else per_sample.sum()
    loss.backward()
    return per_sample, loss, student.grad.asnumpy(), teacher.grad.asnumpy()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 30.0])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.9, 1.0])
@pytest.mark.parametrize("hybridize", [False, True])
def test_value_and_gradient_match_numpy_reference_float64(temperature, alpha, hybridize):
    s, t, y = _batch(0)
    loss_fn = KDLoss(temperature, alpha)
    if hybridize:
        loss_fn.hybridize()
    per_sample, loss, grad, teacher_grad = _run(loss_fn, s, t, y)
    ref_loss, ref_grad = kd_loss_and_grad(s, t, y, temperature=temperature, alpha=alpha)
    assert per_sample.shape == (6,) and loss.dtype == np.float64
    assert abs(float(loss.asscalar()) - ref_loss) <= 1e-6 * max(1.0, abs(ref_loss))
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-9)
    assert not teacher_grad.any()  # BlockGrad: the teacher is a fixed target


def test_sum_reduction_and_per_sample_values():
    s, t, y = _batch(1)
    per_sample, loss, grad, _ = _run(KDLoss(2.0, 0.6), s, t, y, reduce="sum")
    ref_loss, ref_grad = kd_loss_and_grad(s, t, y, temperature=2.0, alpha=0.6, reduction="sum")
    assert float(loss.asscalar()) == pytest.approx(ref_loss, rel=1e-9)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-9)
    singles = [
        kd_loss(s[i : i + 1], t[i : i + 1], y[i : i + 1], temperature=2.0, alpha=0.6) for i in range(6)
    ]
    np.testing.assert_allclose(per_sample.asnumpy(), singles, rtol=1e-9)


def test_weights_follow_the_gluon_convention():
    s, t, y = _batch(2)
    plain = KDLoss(3.0, 0.5)(mx.nd.array(s), mx.nd.array(t), mx.nd.array(y)).asnumpy()
    w = np.arange(1.0, 7.0)
    weighted = KDLoss(3.0, 0.5, weight=0.5)(
        mx.nd.array(s), mx.nd.array(t), mx.nd.array(y), mx.nd.array(w)
    ).asnumpy()
    np.testing.assert_allclose(weighted, 0.5 * w * plain, rtol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 100.0])
def test_large_logits_stay_finite_and_match(temperature):
    s, t, y = _batch(3, b=4, c=10, scale=1e4)
    _, loss, grad, _ = _run(KDLoss(temperature, 0.5), s, t, y)
    ref_loss, ref_grad = kd_loss_and_grad(s, t, y, temperature=temperature, alpha=0.5)
    assert np.isfinite(loss.asscalar()) and np.isfinite(grad).all()
    assert float(loss.asscalar()) == pytest.approx(ref_loss, rel=1e-9)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-9)


def test_float32_tolerance():
    s, t, y = _batch(4)
    _, loss, grad, _ = _run(KDLoss(3.0, 0.7), s, t, y, dtype="float32")
    ref_loss, ref_grad = kd_loss_and_grad(s, t, y, temperature=3.0, alpha=0.7)
    assert loss.dtype == np.float32
    assert float(loss.asscalar()) == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "build, args, match",
    [
        (lambda: KDLoss(0.0, 0.5), None, "temperature"),
        (lambda: KDLoss(1.0, -0.5), None, "alpha"),
        (lambda: KDLoss(1.0, 0.5), dict(t=mx.nd.zeros((3, 5))), "teacher logits have shape"),
        (lambda: KDLoss(1.0, 0.5), dict(y=mx.nd.array([0, 1, 4])), r"integers in \[0, 4\)"),
        (lambda: KDLoss(1.0, 0.5), dict(y=mx.nd.array([0, 1.5, 2])), "integers"),
        (lambda: KDLoss(1.0, 0.5), dict(y=mx.nd.array([0, 1])), r"shape \(3,\)"),
        (lambda: KDLoss(1.0, 0.5), dict(s=mx.nd.zeros(4)), r"shape \(B, C\)"),
    ],
)
def test_rejects_bad_input(build, args, match):
    with pytest.raises(CompressionError, match=match):
        loss_fn = build()
        batch = dict(s=mx.nd.zeros((3, 4)), t=mx.nd.zeros((3, 4)), y=mx.nd.array([0, 1, 3]))
        batch.update(args)
        loss_fn(batch["s"], batch["t"], batch["y"])


def _models():
    mx.random.seed(0)
    teacher = mx.gluon.nn.HybridSequential()
    teacher.add(
        mx.gluon.nn.Dense(32, in_units=8),
        mx.gluon.nn.BatchNorm(in_channels=32),
        mx.gluon.nn.Activation("relu"),
        mx.gluon.nn.Dense(4, in_units=32),
    )
    teacher.initialize(mx.init.Xavier())
    student = mx.gluon.nn.Dense(4, in_units=8)
    student.initialize(mx.init.Xavier())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    with mx.autograd.record():  # training mode: give the teacher non-trivial running statistics
        teacher(mx.nd.array(x * 2 + 1))
    return teacher, student, x, rng.integers(0, 4, 256)


def _kd_on(student, teacher, x, y, temperature, alpha):
    xs = mx.nd.array(x)
    return kd_loss(student(xs).asnumpy(), teacher(xs).asnumpy(), y, temperature=temperature, alpha=alpha)


def test_distillation_lowers_the_kd_loss_and_leaves_the_teacher_alone():
    teacher, student, x, y = _models()
    before_state = {k: p.data().asnumpy().copy() for k, p in teacher.collect_params().items()}
    before = _kd_on(student, teacher, x, y, 4.0, 0.9)
    history = distill_student(
        student, teacher, (x, y), temperature=4.0, alpha=0.9, epochs=8, lr=0.02, batch_size=32
    )
    for k, p in teacher.collect_params().items():
        np.testing.assert_array_equal(p.data().asnumpy(), before_state[k])
    assert len(history) == 8 and history[-1] < history[0]
    assert _kd_on(student, teacher, x, y, 4.0, 0.9) < 0.5 * before


def test_distill_accepts_a_dataloader_and_is_reproducible():
    teacher, student, x, y = _models()
    dataset = mx.gluon.data.ArrayDataset(x, y.astype(np.float32))
    loader = mx.gluon.data.DataLoader(dataset, batch_size=64)
    before = _kd_on(student, teacher, x, y, 2.0, 0.5)
    history = distill_student(student, teacher, loader, temperature=2.0, alpha=0.5, epochs=3, lr=0.05)
    assert len(history) == 3 and _kd_on(student, teacher, x, y, 2.0, 0.5) < before
    runs = []
    for _ in range(2):
        teacher, student, x, y = _models()
        runs.append(
            distill_student(student, teacher, (mx.nd.array(x), y), epochs=2, lr=0.01, batch_size=50, seed=3)
        )
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epochs=0), "epochs"),
        (dict(lr=float("nan")), "lr"),
        (dict(batch_size=0), "batch_size"),
        (dict(alpha=1.1), "alpha"),
    ],
)
def test_distill_rejects_bad_arguments(kwargs, match):
    teacher, student, x, y = _models()
    with pytest.raises(CompressionError, match=match):
        distill_student(student, teacher, (x, y), **kwargs)
    with pytest.raises(CompressionError, match="same length"):
        distill_student(student, teacher, (x, y[:10]))
