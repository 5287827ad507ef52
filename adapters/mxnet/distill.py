"""Knowledge distillation in MXNet Gluon: the loss with autograd, and a small training loop.

:func:`kd_loss` is the MXNet twin of :func:`coreprune.distill.kd_loss`
(``alpha T^2 KL(p^T(teacher) || p^T(student)) + (1 - alpha) CE(student, labels)``), with the
signature of :func:`coreprune.torch.kd_loss`; the test-suite checks that it agrees with the NumPy
reference to 1e-6 in value and gradient (float64). :func:`distill_student` has the signature of
:func:`coreprune.torch.distill_student`. The maths is documented in :mod:`coreprune.distill` and
``docs/distillation.md``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, Literal, Union

import numpy as np

import mxnet as mx
from coreprune.distill import check_hyperparameters
from coreprune.errors import CompressionError
from mxnet import autograd, gluon

__all__ = ["kd_loss", "distill_student"]

Batches = Union[tuple[Any, Any], Iterable[tuple[Any, Any]]]


def kd_loss(
    student_logits: mx.nd.NDArray,
    teacher_logits: mx.nd.NDArray,
    labels: mx.nd.NDArray,
    *,
    temperature: float,
    alpha: float,
    reduction: Literal["mean", "sum"] = "mean",
) -> mx.nd.NDArray:
    """Differentiable distillation loss ``alpha T^2 KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) CE(s, y)``.

    The MXNet twin of :func:`coreprune.torch.kd_loss`, with the same signature. Both softmaxes
    are computed as ``log_softmax`` (stable for large logits); the KL term is
    ``sum_c p_c (log p_c - log q_c)`` with ``p = exp(log_softmax(t/T))``, so a teacher probability
    that underflows contributes 0. The teacher goes through ``BlockGrad``: no gradient reaches it.
    The gradient with respect to ``student_logits`` is
    ``[alpha T (softmax(s/T) - softmax(t/T)) + (1 - alpha)(softmax(s) - onehot(y))] / B``
    for ``reduction="mean"``.

    Parameters
    ----------
    student_logits : mx.nd.NDArray of float, shape (B, C)
    teacher_logits : mx.nd.NDArray of float, shape (B, C)
    labels : mx.nd.NDArray, shape (B,)
        Class indices in ``[0, C)``, of any dtype (MXNet labels are usually float) but integer
        valued.
    temperature : float
        ``T > 0``.
    alpha : float
        Weight of the soft term, in ``[0, 1]``.
    reduction : {"mean", "sum"}
        Mean or sum over the batch.

    Returns
    -------
    mx.nd.NDArray
        The loss, of shape ``(1,)`` (MXNet 1.x has no 0-d NDArray), in the dtype of
        ``student_logits``.

    Raises
    ------
    CompressionError
        On a bad ``temperature``/``alpha``/``reduction``, inputs that are not NDArrays,
        mismatched shapes, or labels that are not integers in ``[0, C)``.

    Examples
    --------
    >>> import mxnet as mx
    >>> s = mx.nd.array([[2.0, 0.0, -1.0]]); s.attach_grad()
    >>> t = mx.nd.array([[3.0, 1.0, -2.0]]); y = mx.nd.array([0])
    >>> with mx.autograd.record():
    ...     loss = kd_loss(s, t, y, temperature=1.0, alpha=0.0)
    >>> round(float(loss.asscalar()), 4)   # float32
    0.1698
    >>> loss.backward(); s.grad.shape
    (1, 3)
    """
    t, a = check_hyperparameters(temperature, alpha)
    if reduction not in ("mean", "sum"):
        raise CompressionError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    _check_batch(student_logits, teacher_logits, labels)
    nd = mx.nd
    log_student_soft = nd.log_softmax(student_logits / t, axis=-1)
    teacher = nd.BlockGrad(teacher_logits).astype(student_logits.dtype, copy=False)
    log_teacher_soft = nd.log_softmax(teacher / t, axis=-1)
    kl = nd.sum(nd.exp(log_teacher_soft) * (log_teacher_soft - log_student_soft))
    ce = -nd.sum(nd.pick(nd.log_softmax(student_logits, axis=-1), labels, axis=-1))
    total = (a * t * t) * kl + (1.0 - a) * ce
    return total / student_logits.shape[0] if reduction == "mean" else total


def _check_batch(student: mx.nd.NDArray, teacher: mx.nd.NDArray, labels: mx.nd.NDArray) -> None:
    """The checks of :func:`coreprune.torch.kd_loss`, with its messages."""
    for name, value in (("student_logits", student), ("teacher_logits", teacher), ("labels", labels)):
        if not isinstance(value, mx.nd.NDArray):
            raise CompressionError(f"{name} must be an mx.nd.NDArray, got {type(value).__name__}")
    if student.ndim != 2 or student.shape[0] == 0 or student.shape[1] == 0:
        raise CompressionError(f"student_logits must have shape (B, C) with B, C >= 1, got {student.shape}")
    if np.dtype(student.dtype).kind != "f":
        raise CompressionError(f"student_logits must be floating point, got {np.dtype(student.dtype)}")
    if teacher.shape != student.shape:
        raise CompressionError(
            f"teacher_logits has shape {teacher.shape} but student_logits has shape {student.shape}; "
            "they must match"
        )
    if labels.shape != (student.shape[0],):
        raise CompressionError(
            f"labels must have shape ({student.shape[0]},) to match the logits, got {labels.shape}"
        )
    values = labels.asnumpy()
    n_classes = student.shape[1]
    if not (values == np.round(values)).all():
        raise CompressionError(f"labels must be integers, got {values[values != np.round(values)][:3]}")
    if not ((values >= 0) & (values < n_classes)).all():
        raise CompressionError(f"labels must lie in [0, {n_classes})")


def _positive(name: str, value: object, integer: bool) -> None:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value <= 0:
        raise CompressionError(
            f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}"
        )


def _batches(data: Batches, batch_size: int, rng: np.random.Generator) -> Iterable[tuple[Any, Any]]:
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and all(isinstance(d, (np.ndarray, mx.nd.NDArray)) for d in data)
    ):
        # np.asarray: the same arrays (checked above), typed as arrays
        inputs, labels = (d.asnumpy() if isinstance(d, mx.nd.NDArray) else np.asarray(d) for d in data)
        if inputs.shape[0] != labels.shape[0] or inputs.shape[0] == 0:
            raise CompressionError(
                f"inputs ({inputs.shape[0]} samples) and labels ({labels.shape[0]}) must be non-empty "
                "and of the same length"
            )
        order = rng.permutation(inputs.shape[0])
        return [
            (inputs[order[i : i + batch_size]], labels[order[i : i + batch_size]])
            for i in range(0, len(order), batch_size)
        ]
    return data  # an iterable of (inputs, labels) batches, such as a gluon.data.DataLoader


def distill_student(
    student: gluon.Block,
    teacher: gluon.Block,
    data: Batches,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: gluon.Trainer | None = None,
    scheduler: mx.lr_scheduler.LRScheduler | None = None,
    seed: int = 0,
) -> list[float]:
    """Train ``student`` to imitate ``teacher`` with :func:`kd_loss`; returns the mean loss of each epoch.

    The signature of :func:`coreprune.torch.distill_student`. The teacher runs outside
    ``autograd.record()``, hence in inference mode (batch norms use their running statistics,
    which stay untouched) and without recording a graph; the student runs inside
    ``autograd.record()`` in training mode. Each step calls ``backward()`` on the batch-mean loss
    and ``optimizer.step(1)``. Batches go to the context of the student's first trainable
    parameter.

    Parameters
    ----------
    student, teacher : gluon.Block
        Initialised; both map a batch of inputs to logits of shape (B, C).
    data : (inputs, labels) or iterable of (inputs, labels)
        Either two NumPy arrays or NDArrays of the whole training set (``inputs`` of
        shape (n, ...) float, ``labels`` of shape (n,)), shuffled each epoch into
        batches of ``batch_size`` by a generator seeded with ``seed``; or a
        re-iterable of ready batches such as a ``gluon.data.DataLoader``.
    temperature, alpha : float
        As in :func:`kd_loss`.
    epochs : int
        Passes over ``data``.
    lr : float
        Learning rate of the default Adam trainer (ignored when ``optimizer`` is given).
    batch_size : int
        Used only when ``data`` is a pair of arrays.
    optimizer : gluon.Trainer, optional
        Over the student's parameters (Gluon's counterpart of a ``torch.optim.Optimizer``);
        default ``Trainer(trainable student parameters, "adam", {"learning_rate": lr})``.
    scheduler : mx.lr_scheduler.LRScheduler, optional
        Set as the trainer's optimizer's ``lr_scheduler``, which MXNet consults at every
        update (per batch, not per epoch), e.g. ``CosineScheduler(max_update=epochs *
        batches_per_epoch, base_lr=lr)``; its own ``base_lr`` is the starting rate. Refused
        when ``optimizer`` already has a scheduler.
    seed : int
        Seed of the shuffling generator.

    Returns
    -------
    list of float
        Sample-weighted mean distillation loss of each epoch (length ``epochs``).

    Raises
    ------
    CompressionError
        On bad hyperparameters or data, a student without trainable parameters, or two
        schedulers.

    Examples
    --------
    >>> import mxnet as mx, numpy as np
    >>> mx.random.seed(0)
    >>> teacher, student = mx.gluon.nn.Dense(3, in_units=4), mx.gluon.nn.Dense(3, in_units=4)
    >>> teacher.initialize(); student.initialize()
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(32, 4)).astype("float32"), rng.integers(0, 3, 32)
    >>> history = distill_student(student, teacher, (x, y), epochs=3, lr=0.05, batch_size=8)
    >>> len(history), history[-1] < history[0]
    (3, True)
    """
    check_hyperparameters(temperature, alpha)
    _positive("epochs", epochs, integer=True)
    _positive("batch_size", batch_size, integer=True)
    _positive("lr", lr, integer=False)
    trainable = {k: p for k, p in student.collect_params().items() if p.grad_req != "null"}
    if not trainable:
        raise CompressionError("the student has no trainable parameters")
    ctx = next(iter(trainable.values())).list_ctx()[0]
    trainer = optimizer if optimizer is not None else gluon.Trainer(trainable, "adam", {"learning_rate": lr})
    if scheduler is not None:
        if trainer.optimizer.lr_scheduler is not None:
            raise CompressionError(
                "the optimizer already has an lr_scheduler; pass the scheduler in one place only"
            )
        trainer.optimizer.lr_scheduler = scheduler
    rng = np.random.default_rng(int(seed))
    history: list[float] = []
    for _ in range(int(epochs)):
        total, count = 0.0, 0
        for inputs, labels in _batches(data, int(batch_size), rng):
            dtype = np.dtype(getattr(inputs, "dtype", np.float32))
            x = mx.nd.array(inputs, ctx=ctx, dtype=dtype if dtype.kind == "f" else np.float32)
            y = mx.nd.array(labels, ctx=ctx, dtype=x.dtype)
            teacher_logits = teacher(x)  # outside record(): inference mode, no graph
            with autograd.record():
                loss = kd_loss(student(x), teacher_logits, y, temperature=temperature, alpha=alpha)
            loss.backward()
            trainer.step(1)  # the loss is already the batch mean
            total += float(loss.asscalar()) * x.shape[0]
            count += x.shape[0]
        if count == 0:
            raise CompressionError("data yielded no batch")
        history.append(total / count)
    return history
