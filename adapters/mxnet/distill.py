"""Knowledge distillation in MXNet Gluon: a ``gluon.loss.Loss`` and a small training loop.

:class:`KDLoss` is the Gluon twin of :func:`coreprune.distill.kd_loss`
(``alpha T^2 KL(p^T(teacher) || p^T(student)) + (1 - alpha) CE(student, labels)``);
the test-suite checks that both agree to 1e-6 in value and gradient (float64).
Like every Gluon loss it returns one value per sample, so ``KDLoss(...)(s, t, y).mean()``
is the reference's ``reduction="mean"`` and ``.sum()`` its ``reduction="sum"``.
The maths is documented in :mod:`coreprune.distill` and ``docs/distillation.md``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, Union

import numpy as np

import mxnet as mx
from coreprune.distill import check_hyperparameters
from coreprune.errors import CompressionError
from mxnet import autograd, gluon

__all__ = ["KDLoss", "distill_student"]

Batches = Union[tuple[Any, Any], Iterable[tuple[Any, Any]]]


class KDLoss(gluon.loss.Loss):
    """Distillation loss per sample: ``alpha T^2 KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) CE(s, y)``.

    Both softmaxes are computed as ``log_softmax`` (stable for large logits); the KL
    term is ``sum_c p_c (log p_c - log q_c)`` with ``p = exp(log_softmax(t/T))``, so a
    teacher probability that underflows contributes 0. The teacher goes through
    ``BlockGrad``: no gradient reaches it. The gradient of ``loss.mean()`` with respect
    to the student logits is
    ``[alpha T (softmax(s/T) - softmax(t/T)) + (1 - alpha)(softmax(s) - onehot(y))] / B``.

    Parameters
    ----------
    temperature : float
        ``T > 0``.
    alpha : float
        Weight of the soft term, in ``[0, 1]``.
    weight : float, optional
        Global scalar weight of the loss (Gluon convention).
    batch_axis : int
        The batch axis (Gluon convention); the class axis is the last one.

    Inputs
    ------
    student : NDArray of float, shape (B, C)
    teacher : NDArray of float, shape (B, C)
    label : NDArray, shape (B,)
        Class indices in ``[0, C)``, any dtype (MXNet labels are usually float). Called on
        NDArrays, the loss checks the shapes and that the labels are integers in range;
        inside a symbolic graph it cannot, and ``pick`` would clip a bad label.
    sample_weight : NDArray, optional, broadcastable to (B,)

    Outputs
    -------
    NDArray, shape (B,)
        Per-sample losses, in the dtype of the logits.

    Raises
    ------
    CompressionError
        If ``temperature`` or ``alpha`` is out of range; on NDArray inputs, if the shapes
        mismatch or a label is not an integer in ``[0, C)``.

    Examples
    --------
    >>> import mxnet as mx
    >>> loss = KDLoss(temperature=1.0, alpha=0.0)
    >>> s = mx.nd.array([[2.0, 0.0, -1.0]]); t = mx.nd.array([[3.0, 1.0, -2.0]])
    >>> round(float(loss(s, t, mx.nd.array([0])).asscalar()), 4)   # float32
    0.1698
    """

    def __init__(
        self,
        temperature: float,
        alpha: float,
        weight: float | None = None,
        batch_axis: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(weight, batch_axis, **kwargs)
        self._temperature, self._alpha = check_hyperparameters(temperature, alpha)

    @property
    def temperature(self) -> float:
        """The temperature ``T``."""
        return self._temperature

    @property
    def alpha(self) -> float:
        """The weight of the soft term."""
        return self._alpha

    def forward(self, student, teacher, label, sample_weight=None):
        if isinstance(student, mx.nd.NDArray):  # imperative call: check what a symbol cannot
            _check_batch(student, teacher, label)
        args = (student, teacher, label) + (() if sample_weight is None else (sample_weight,))
        return super().forward(*args)

    def hybrid_forward(self, F, student, teacher, label, sample_weight=None):
        t, a = self._temperature, self._alpha
        log_student_soft = F.log_softmax(student / t, axis=-1)
        log_teacher_soft = F.log_softmax(F.BlockGrad(teacher) / t, axis=-1)
        kl = F.sum(F.exp(log_teacher_soft) * (log_teacher_soft - log_student_soft), axis=-1)
        ce = -F.pick(F.log_softmax(student, axis=-1), label, axis=-1)
        loss = (a * t * t) * kl + (1.0 - a) * ce
        if sample_weight is not None:  # the weighting rule of Gluon's built-in losses
            loss = F.broadcast_mul(loss, sample_weight)
        return loss if self._weight is None else loss * self._weight

    def __repr__(self) -> str:
        return f"KDLoss(temperature={self._temperature}, alpha={self._alpha})"


def _check_batch(student: mx.nd.NDArray, teacher: mx.nd.NDArray, label: mx.nd.NDArray) -> None:
    if student.ndim != 2 or student.shape[0] == 0 or student.shape[1] == 0:
        raise CompressionError(f"student logits must have shape (B, C) with B, C >= 1, got {student.shape}")
    if not isinstance(teacher, mx.nd.NDArray) or teacher.shape != student.shape:
        shape = getattr(teacher, "shape", type(teacher).__name__)
        raise CompressionError(
            f"teacher logits have shape {shape} but student logits have shape {student.shape}; "
            "they must match"
        )
    if not isinstance(label, mx.nd.NDArray) or label.shape != (student.shape[0],):
        shape = getattr(label, "shape", type(label).__name__)
        raise CompressionError(
            f"labels must have shape ({student.shape[0]},) to match the logits, got {shape}"
        )
    values = label.asnumpy()
    n_classes = student.shape[1]
    if not ((values == np.round(values)) & (values >= 0) & (values < n_classes)).all():
        raise CompressionError(f"labels must be integers in [0, {n_classes})")


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
        inputs, labels = (d.asnumpy() if isinstance(d, mx.nd.NDArray) else d for d in data)
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
    trainer: gluon.Trainer | None = None,
    seed: int = 0,
    ctx: mx.Context | None = None,
) -> list[float]:
    """Train ``student`` to imitate ``teacher`` with :class:`KDLoss`; returns the mean loss of each epoch.

    The teacher runs outside ``autograd.record()``, hence in inference mode (batch
    norms use their running statistics, which stay untouched) and without recording
    a graph; the student runs inside ``autograd.record()`` in training mode. Each step
    calls ``loss.backward()`` on the per-sample losses and ``trainer.step(B)``, which
    averages the gradients over the batch, as ``reduction="mean"`` does.

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
        As in :class:`KDLoss`.
    epochs : int
        Passes over ``data``.
    lr : float
        Learning rate of the default Adam trainer (ignored when ``trainer`` is given).
    batch_size : int
        Used only when ``data`` is a pair of arrays.
    trainer : gluon.Trainer, optional
        Over the student's parameters; default ``Trainer(student.collect_params(), "adam", lr)``.
    seed : int
        Seed of the shuffling generator.
    ctx : mx.Context, optional
        Where batches go; default ``mx.cpu()``.

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
    ctx = ctx if ctx is not None else mx.cpu()
    if trainer is None:
        trainable = {k: p for k, p in student.collect_params().items() if p.grad_req != "null"}
        if not trainable:
            raise CompressionError("the student has no trainable parameters")
        trainer = gluon.Trainer(trainable, "adam", {"learning_rate": lr})
    loss_fn = KDLoss(temperature, alpha)
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
                losses = loss_fn(student(x), teacher_logits, y)
            losses.backward()
            trainer.step(x.shape[0])
            total += float(losses.sum().asscalar())
            count += x.shape[0]
        if count == 0:
            raise CompressionError("data yielded no batch")
        history.append(total / count)
    return history
