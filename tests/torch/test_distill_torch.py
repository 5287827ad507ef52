"""coreprune.torch.distill against the NumPy reference coreprune.distill: value, gradient, training."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")
# Without torch installed, "torch" could resolve to the tests/torch folder (a namespace package,
# tests/ being on sys.path): only a real installation has torch.nn.
pytest.importorskip("torch.nn", reason="needs PyTorch")

from coreprune.torch import distill_student, kd_loss  # noqa: E402

from coreprune import CompressionError  # noqa: E402
from coreprune.distill import kd_loss_and_grad  # noqa: E402


def _batch(seed, b=6, c=5, scale=3.0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=scale, size=(b, c)), rng.normal(scale=scale, size=(b, c)), rng.integers(0, c, b)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 30.0])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.9, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_value_and_gradient_match_numpy_reference(temperature, alpha, reduction):
    s, t, y = _batch(0)
    ref_loss, ref_grad = kd_loss_and_grad(s, t, y, temperature=temperature, alpha=alpha, reduction=reduction)
    student = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    loss = kd_loss(
        student, torch.tensor(t), torch.tensor(y), temperature=temperature, alpha=alpha, reduction=reduction
    )
    loss.backward()
    assert loss.dtype == torch.float64 and loss.dim() == 0
    assert abs(loss.item() - ref_loss) <= 1e-6 * max(1.0, abs(ref_loss))
    np.testing.assert_allclose(student.grad.numpy(), ref_grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("temperature", [1.0, 100.0])
def test_large_logits_stay_finite_and_match(temperature):
    s, t, y = _batch(1, b=4, c=10, scale=1e4)
    ref_loss, ref_grad = kd_loss_and_grad(s, t, y, temperature=temperature, alpha=0.5)
    student = torch.tensor(s, requires_grad=True)
    loss = kd_loss(student, torch.tensor(t), torch.tensor(y), temperature=temperature, alpha=0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert loss.item() == pytest.approx(ref_loss, rel=1e-9)
    np.testing.assert_allclose(student.grad.numpy(), ref_grad, rtol=1e-6, atol=1e-9)


def test_float32_is_close_and_teacher_gets_no_gradient():
    s, t, y = _batch(2)
    ref_loss, ref_grad = kd_loss_and_grad(s, t, y, temperature=3.0, alpha=0.7)
    student = torch.tensor(s, dtype=torch.float32, requires_grad=True)
    teacher = torch.tensor(t, dtype=torch.float32, requires_grad=True)
    loss = kd_loss(student, teacher, torch.tensor(y, dtype=torch.int32), temperature=3.0, alpha=0.7)
    loss.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(student.grad.numpy(), ref_grad, rtol=1e-4, atol=1e-6)
    assert teacher.grad is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(alpha=2.0), "alpha"),
        (dict(reduction="none"), "reduction"),
        (dict(t=torch.zeros(3, 5)), "teacher_logits has shape"),
        (dict(y=torch.tensor([0, 1, 4])), r"labels must lie in \[0, 4\)"),
        (dict(y=torch.tensor([0.0, 1.0, 2.0])), "integer"),
        (dict(y=torch.tensor([0, 1])), r"shape \(3,\)"),
        (dict(s=torch.zeros(4)), r"shape \(B, C\)"),
        (dict(s=np.zeros((3, 4))), "torch.Tensor"),
    ],
)
def test_rejects_bad_input(kwargs, match):
    args = dict(
        s=torch.zeros(3, 4), t=torch.zeros(3, 4), y=torch.tensor([0, 1, 3]), temperature=2.0, alpha=0.5
    )
    args.update(kwargs)
    extra = {"reduction": args["reduction"]} if "reduction" in args else {}
    with pytest.raises(CompressionError, match=match):
        kd_loss(
            args["s"], args["t"], args["y"], temperature=args["temperature"], alpha=args["alpha"], **extra
        )


def _models():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
    )
    student = torch.nn.Linear(8, 4)
    x = torch.randn(256, 8)
    with torch.no_grad():  # give the teacher non-trivial running statistics
        teacher.train()
        teacher(x * 2 + 1)
    return teacher, student, x, torch.randint(0, 4, (256,))


def _kd_on(student, teacher, x, y, temperature, alpha):
    teacher.eval()
    with torch.no_grad():
        return kd_loss(student(x), teacher(x), y, temperature=temperature, alpha=alpha).item()


def test_distillation_lowers_the_kd_loss_and_leaves_the_teacher_alone():
    teacher, student, x, y = _models()
    teacher.train()
    before_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student.eval()
    before = _kd_on(student, teacher, x, y, 4.0, 0.9)
    teacher.train()
    history = distill_student(
        student, teacher, (x, y), temperature=4.0, alpha=0.9, epochs=8, lr=0.02, batch_size=32
    )
    assert teacher.training and not student.training  # modes restored
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before_state[k], rtol=0, atol=0)
    after = _kd_on(student, teacher, x, y, 4.0, 0.9)
    assert len(history) == 8
    assert after < 0.5 * before
    assert history[-1] < history[0]


def test_distill_accepts_a_dataloader_and_numpy_arrays():
    teacher, student, x, y = _models()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    before = _kd_on(student, teacher, x, y, 2.0, 0.5)
    history = distill_student(student, teacher, loader, temperature=2.0, alpha=0.5, epochs=3, lr=0.05)
    assert len(history) == 3 and _kd_on(student, teacher, x, y, 2.0, 0.5) < before
    h2 = distill_student(
        student, teacher, (x.numpy(), y.numpy()), temperature=2.0, alpha=0.5, epochs=1, lr=0.01
    )
    assert len(h2) == 1 and np.isfinite(h2[0])


def test_distill_is_reproducible_with_a_seed():
    runs = []
    for _ in range(2):
        teacher, student, x, y = _models()
        runs.append(distill_student(student, teacher, (x, y), epochs=2, lr=0.01, batch_size=50, seed=3))
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epochs=0), "epochs"),
        (dict(lr=-1.0), "lr"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(temperature=-1.0), "temperature"),
    ],
)
def test_distill_rejects_bad_arguments(kwargs, match):
    teacher, student, x, y = _models()
    with pytest.raises(CompressionError, match=match):
        distill_student(student, teacher, (x, y), **kwargs)
    with pytest.raises(CompressionError, match="same length"):
        distill_student(student, teacher, (x, y[:10]))


def test_distill_steps_a_scheduler_once_per_batch():
    teacher, student, x, y = _models()
    optimizer = torch.optim.Adam(student.parameters(), lr=0.01)
    steps = 3 * 6  # 256 samples in batches of 50: 6 per epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    distill_student(
        student, teacher, (x, y), epochs=3, batch_size=50, optimizer=optimizer, scheduler=scheduler
    )
    assert scheduler.last_epoch == steps
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # decayed to the end
