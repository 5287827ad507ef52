"""Knowledge distillation in PyTorch: the loss with autograd, and a small training loop.

:func:`kd_loss` is the PyTorch twin of :func:`coreprune.distill.kd_loss`
(``alpha T^2 KL(p^T(teacher) || p^T(student)) + (1 - alpha) CE(student, labels)``);
the test-suite checks that both agree to 1e-6 in value and in gradient. The maths,
the role of ``T^2`` and the gradient are documented in :mod:`coreprune.distill` and
``docs/distillation.md``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, Literal, Union

import numpy as np

import torch
import torch.nn.functional as F
from coreprune.distill import check_hyperparameters
from coreprune.errors import CompressionError

__all__ = ["kd_loss", "distill_student"]

Batches = Union[tuple[Any, Any], Iterable[tuple[Any, Any]]]


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """Differentiable distillation loss ``alpha T^2 KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) CE(s, y)``.

    The KL term uses ``log_softmax`` of both sides and ``kl_div(..., log_target=True)``,
    so it is stable for large logits; the teacher is detached (a fixed target: no
    gradient reaches it). The gradient with respect to ``student_logits`` is
    ``[alpha T (softmax(s/T) - softmax(t/T)) + (1 - alpha)(softmax(s) - onehot(y))] / B``
    for ``reduction="mean"``.

    Parameters
    ----------
    student_logits : torch.Tensor of float, shape (B, C)
    teacher_logits : torch.Tensor of float, shape (B, C)
    labels : torch.Tensor of int, shape (B,)
        Class indices in ``[0, C)``.
    temperature : float
        ``T > 0``.
    alpha : float
        Weight of the soft term, in ``[0, 1]``.
    reduction : {"mean", "sum"}
        Mean or sum over the batch.

    Returns
    -------
    torch.Tensor
        A scalar with the dtype of ``student_logits``.

    Raises
    ------
    CompressionError
        On a bad ``temperature``/``alpha``/``reduction``, mismatched shapes, or labels
        that are not integers in ``[0, C)``.

    Examples
    --------
    >>> import torch
    >>> s = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    >>> t = torch.tensor([[3.0, 1.0, -2.0]]); y = torch.tensor([0])
    >>> loss = kd_loss(s, t, y, temperature=1.0, alpha=0.0)
    >>> round(loss.item(), 5)
    0.16985
    >>> loss.backward(); s.grad.shape
    torch.Size([1, 3])
    """
    t, a = check_hyperparameters(temperature, alpha)
    if reduction not in ("mean", "sum"):
        raise CompressionError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    _check_batch(student_logits, teacher_logits, labels)
    log_student_soft = F.log_softmax(student_logits / t, dim=1)
    log_teacher_soft = F.log_softmax(teacher_logits.detach().to(student_logits.dtype) / t, dim=1)
    kl = F.kl_div(log_student_soft, log_teacher_soft, reduction="sum", log_target=True)
    ce = F.cross_entropy(student_logits, labels.long(), reduction="sum")
    total = (a * t * t) * kl + (1.0 - a) * ce
    return total / student_logits.shape[0] if reduction == "mean" else total


def _check_batch(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> None:
    for name, value in (("student_logits", student), ("teacher_logits", teacher), ("labels", labels)):
        if not isinstance(value, torch.Tensor):
            raise CompressionError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if student.dim() != 2 or student.shape[0] == 0 or student.shape[1] == 0:
        raise CompressionError(
            f"student_logits must have shape (B, C) with B, C >= 1, got {tuple(student.shape)}"
        )
    if not student.is_floating_point():
        raise CompressionError(f"student_logits must be floating point, got {student.dtype}")
    if teacher.shape != student.shape:
        raise CompressionError(
            f"teacher_logits has shape {tuple(teacher.shape)} but student_logits has shape "
            f"{tuple(student.shape)}; they must match"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise CompressionError(f"labels must be an integer tensor, got {labels.dtype}")
    if tuple(labels.shape) != (student.shape[0],):
        raise CompressionError(
            f"labels must have shape ({student.shape[0]},) to match the logits, got {tuple(labels.shape)}"
        )
    n_classes = student.shape[1]
    if bool(((labels < 0) | (labels >= n_classes)).any()):
        raise CompressionError(f"labels must lie in [0, {n_classes})")


def _positive(name: str, value: object, integer: bool) -> None:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value <= 0:
        raise CompressionError(
            f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}"
        )


def _batches(
    data: Batches, batch_size: int, generator: torch.Generator
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and all(isinstance(d, (np.ndarray, torch.Tensor)) for d in data)
    ):
        inputs, labels = (torch.as_tensor(d) for d in data)
        if inputs.shape[0] != labels.shape[0] or inputs.shape[0] == 0:
            raise CompressionError(
                f"inputs ({inputs.shape[0]} samples) and labels ({labels.shape[0]}) must be non-empty "
                "and of the same length"
            )
        order = torch.randperm(inputs.shape[0], generator=generator)
        return [(inputs[idx], labels[idx]) for idx in order.split(batch_size)]
    return data  # an iterable of (inputs, labels) batches, such as a DataLoader


def distill_student(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    data: Batches,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    seed: int = 0,
) -> list[float]:
    """Train ``student`` to imitate ``teacher`` with :func:`kd_loss`; returns the mean loss of each epoch.

    The teacher runs in ``eval()`` mode under ``torch.no_grad()`` (its batch-norm
    statistics and weights are never touched) and gets its original mode back at
    the end; the student trains in ``train()`` mode and also gets its original mode
    back. Batches go to the device of the student's first parameter.

    Parameters
    ----------
    student, teacher : torch.nn.Module
        Both map a batch of inputs to logits of shape (B, C).
    data : (inputs, labels) or iterable of (inputs, labels)
        Either two arrays or tensors of the whole training set (``inputs`` of shape
        (n, ...) float, ``labels`` of shape (n,) int), shuffled each epoch into
        batches of ``batch_size`` with a generator seeded by ``seed``; or a
        re-iterable of ready batches such as a ``torch.utils.data.DataLoader``.
    temperature, alpha : float
        As in :func:`kd_loss`.
    epochs : int
        Passes over ``data``.
    lr : float
        Learning rate of the default Adam optimizer (ignored when ``optimizer`` is given).
    batch_size : int
        Used only when ``data`` is a pair of arrays.
    optimizer : torch.optim.Optimizer, optional
        Over the student's parameters; default ``Adam(student.parameters(), lr)``.
    scheduler : torch.optim.lr_scheduler.LRScheduler, optional
        Stepped after every optimizer step (per batch, not per epoch), e.g.
        ``CosineAnnealingLR(optimizer, T_max=epochs * batches_per_epoch)``.
    seed : int
        Seed of the shuffling generator.

    Returns
    -------
    list of float
        Sample-weighted mean distillation loss of each epoch (length ``epochs``).

    Raises
    ------
    CompressionError
        On bad hyperparameters or data.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> teacher, student = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> history = distill_student(student, teacher, (x, y), epochs=3, lr=0.05, batch_size=8)
    >>> len(history), history[-1] < history[0]
    (3, True)
    """
    check_hyperparameters(temperature, alpha)
    _positive("epochs", epochs, integer=True)
    _positive("batch_size", batch_size, integer=True)
    _positive("lr", lr, integer=False)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise CompressionError("the student has no trainable parameters")
    device = params[0].device
    opt = optimizer if optimizer is not None else torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(int(seed))
    teacher_was_training, student_was_training = teacher.training, student.training
    history: list[float] = []
    try:
        teacher.eval()
        student.train()
        for _ in range(int(epochs)):
            total, count = 0.0, 0
            for inputs, labels in _batches(data, int(batch_size), generator):
                inputs, labels = torch.as_tensor(inputs).to(device), torch.as_tensor(labels).to(device)
                with torch.no_grad():
                    teacher_logits = teacher(inputs)
                loss = kd_loss(student(inputs), teacher_logits, labels, temperature=temperature, alpha=alpha)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if scheduler is not None:
                    scheduler.step()
                total += loss.item() * labels.shape[0]
                count += labels.shape[0]
            if count == 0:
                raise CompressionError("data yielded no batch")
            history.append(total / count)
    finally:
        teacher.train(teacher_was_training)
        student.train(student_was_training)
    return history
