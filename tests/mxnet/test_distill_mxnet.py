"""coreprune.mxnet.distill against the NumPy reference coreprune.distill: value, gradient, training."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet", reason="needs MXNet")
# Without MXNet installed, "mxnet" could resolve to the tests/mxnet folder (a namespace package,
# tests/ being on sys.path): only a real installation has mxnet.gluon.
pytest.importorskip("mxnet.gluon", reason="needs MXNet")

from coreprune.mxnet import distill_student, kd_loss  # noqa: E402

from coreprune import CompressionError  # noqa: E402
from coreprune.distill import kd_loss as reference_kd_loss  # noqa: E402
from coreprune.distill import kd_loss_and_grad  # noqa: E402


def _batch(seed, b=6, c=5, scale=3.0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=scale, size=(b, c)), rng.normal(scale=scale, size=(b, c)), rng.integers(0, c, b)


def _run(s, t, y, dtype="float64", **hyper):
    student = mx.nd.array(s, dtype=dtype)
    teacher = mx.nd.array(t, dtype=dtype)
    student.attach_grad()
    teacher.attach_grad()
    with mx.autograd.record():
        loss = kd_loss(student, teacher, mx.nd.array(y, dtype=dtype), **hyper)
    loss.backward()
    return loss, student.grad.asnumpy(), teacher.grad.asnumpy()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 30.0])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.9, 1.0])
def test_value_and_gradient_match_numpy_reference_float64(temperature, alpha):
    s, t, y = _batch(0)
    loss, grad, teacher_grad = _run(s, t, y, temperature=temperature, alpha=alpha)
    ref_loss, ref_grad = kd_loss_and_grad(s, t, y, temperature=temperature, alpha=alpha)
    assert loss.shape == (1,) and loss.dtype == np.float64
    assert abs(float(loss.asscalar()) - ref_loss) <= 1e-6 * max(1.0, abs(ref_loss))
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-9)
    assert not teacher_grad.any()  # BlockGrad: the teacher is a fixed target


def test_sum_reduction_is_the_sum_of_single_sample_losses():
    s, t, y = _batch(1)
    loss, grad, _ = _run(s, t, y, temperature=2.0, alpha=0.6, reduction="sum")
    ref_loss, ref_grad = kd_loss_and_grad(s, t, y, temperature=2.0, alpha=0.6, reduction="sum")
    assert float(loss.asscalar()) == pytest.approx(ref_loss, rel=1e-9)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-9)
    singles = [
        reference_kd_loss(s[i : i + 1], t[i : i + 1], y[i : i + 1], temperature=2.0, alpha=0.6)
        for i in range(6)
    ]
    assert float(loss.asscalar()) == pytest.approx(sum(singles), rel=1e-9)


@pytest.mark.parametrize("temperature", [1.0, 100.0])
def test_large_logits_stay_finite_and_match(temperature):
    s, t, y = _batch(3, b=4, c=10, scale=1e4)
    loss, grad, _ = _run(s, t, y, temperature=temperature, alpha=0.5)
    ref_loss, ref_grad = kd_loss_and_grad(s, t, y, temperature=temperature, alpha=0.5)
    assert np.isfinite(loss.asscalar()) and np.isfinite(grad).all()
    assert float(loss.asscalar()) == pytest.approx(ref_loss, rel=1e-9)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-9)


def test_float32_tolerance():
    s, t, y = _batch(4)
    loss, grad, _ = _run(s, t, y, dtype="float32", temperature=3.0, alpha=0.7)
    ref_loss, ref_grad = kd_loss_and_grad(s, t, y, temperature=3.0, alpha=0.7)
    assert loss.dtype == np.float32
    assert float(loss.asscalar()) == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "args, match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(alpha=-0.5), "alpha"),
        (dict(reduction="none"), "reduction must be 'mean' or 'sum'"),
        (dict(t=mx.nd.zeros((3, 5))), "teacher_logits has shape"),
        (dict(y=mx.nd.array([0, 1, 4])), r"labels must lie in \[0, 4\)"),
        (dict(y=mx.nd.array([0, 1.5, 2])), "labels must be integers"),
        (dict(y=mx.nd.array([0, 1])), r"shape \(3,\)"),
        (dict(s=mx.nd.zeros(4)), r"shape \(B, C\)"),
        (dict(s=np.zeros((3, 4))), "student_logits must be an mx.nd.NDArray"),
        (dict(s=mx.nd.zeros((3, 4), dtype="int32")), "floating point"),
    ],
)
def test_rejects_bad_input(args, match):
    batch = dict(s=mx.nd.zeros((3, 4)), t=mx.nd.zeros((3, 4)), y=mx.nd.array([0, 1, 3]))
    hyper = dict(temperature=1.0, alpha=0.5)
    for key in list(args):
        (batch if key in batch else hyper)[key] = args[key]
    with pytest.raises(CompressionError, match=match):
        kd_loss(batch["s"], batch["t"], batch["y"], **hyper)


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
    return reference_kd_loss(
        student(xs).asnumpy(), teacher(xs).asnumpy(), y, temperature=temperature, alpha=alpha
    )


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


def test_optimizer_and_scheduler_are_used_per_batch():
    teacher, student, x, y = _models()
    trainer = mx.gluon.Trainer(student.collect_params(), "sgd", {"learning_rate": 0.5})
    schedule = mx.lr_scheduler.FactorScheduler(step=1, factor=0.5, base_lr=0.1)
    distill_student(student, teacher, (x, y), epochs=1, batch_size=64, optimizer=trainer, scheduler=schedule)
    # 256 samples in batches of 64: four updates; FactorScheduler halves the rate for every update
    # past the first, so update k ran at 0.1 * 0.5**(k - 1), not at the trainer's 0.5.
    assert trainer.optimizer.num_update == 4
    assert trainer.learning_rate == pytest.approx(0.1 * 0.5**3)


def test_a_second_scheduler_is_refused():
    teacher, student, x, y = _models()
    first = mx.lr_scheduler.FactorScheduler(step=1, factor=0.5, base_lr=0.1)
    trainer = mx.gluon.Trainer(student.collect_params(), "sgd", {"learning_rate": 0.1, "lr_scheduler": first})
    second = mx.lr_scheduler.FactorScheduler(step=1, factor=0.9, base_lr=0.1)
    with pytest.raises(CompressionError, match="already has an lr_scheduler"):
        distill_student(student, teacher, (x, y), optimizer=trainer, scheduler=second)


def test_one_step_equals_a_hand_written_step_with_the_numpy_gradient():
    """distill_student's update (mean loss, step(1)) is plain SGD on the reference gradient."""
    teacher, student, x, y = _models()
    w0, b0 = (p.data().asnumpy().astype(np.float64) for p in (student.weight, student.bias))
    trainer = mx.gluon.Trainer(student.collect_params(), "sgd", {"learning_rate": 0.1})
    distill_student(student, teacher, (x[:32], y[:32]), batch_size=32, optimizer=trainer, temperature=2.0)
    logits = x[:32].astype(np.float64) @ w0.T + b0
    t_logits = teacher(mx.nd.array(x[:32])).asnumpy().astype(np.float64)
    _, grad = kd_loss_and_grad(logits, t_logits, y[:32], temperature=2.0, alpha=0.9)
    expected_weight = w0 - 0.1 * grad.T @ x[:32]
    np.testing.assert_allclose(student.weight.data().asnumpy(), expected_weight, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(student.bias.data().asnumpy(), b0 - 0.1 * grad.sum(0), rtol=1e-4, atol=1e-6)
