"""Knowledge distillation: a NumPy reference of the loss and of its gradient.

Hinton, Vinyals & Dean (2015) train a small *student* to match the softened output
distribution of a large *teacher*. With student logits ``s``, teacher logits ``t``
(both of shape ``(B, C)``), integer labels ``y`` and a temperature ``T > 0``, the
temperature softmax is

.. math::  p^T_c(z) = \\frac{\\exp(z_c / T)}{\\sum_k \\exp(z_k / T)}

and the distillation loss of one sample is

.. math::

    \\ell = \\alpha \\, T^2 \\, \\mathrm{KL}\\big(p^T(t) \\,\\|\\, p^T(s)\\big)
          + (1 - \\alpha) \\, \\mathrm{CE}\\big(p^1(s), y\\big),

    \\mathrm{KL}(p \\| q) = \\sum_c p_c (\\log p_c - \\log q_c), \\qquad
    \\mathrm{CE}(q, y) = -\\log q_y .

The loss of a batch is the mean over the ``B`` samples (``reduction="mean"``) or
their sum (``reduction="sum"``).

Why ``T^2``
    The gradient of the KL term with respect to ``s`` carries a factor ``1/T`` from
    the chain rule through ``s / T``, and the soft-target differences themselves
    shrink like ``1/T`` for large ``T``; multiplying by ``T^2`` keeps the soft term's
    gradient on the same scale as the hard term's when ``T`` changes, so ``alpha``
    means the same thing at every temperature.

Gradient
    With ``q^T = p^T(s)`` and ``p^T = p^T(t)``,
    ``d KL / d s_j = (1/T) (q^T_j - p^T_j)`` (because ``sum_c p^T_c = 1``), and
    ``d CE / d s_j = p^1_j(s) - [j = y]``. Hence, for the mean over a batch,

    .. math::

        \\frac{\\partial L}{\\partial s} = \\frac{\\alpha T}{B}\\big(p^T(s) - p^T(t)\\big)
          + \\frac{1 - \\alpha}{B}\\big(p^1(s) - \\mathrm{onehot}(y)\\big),

    (drop the ``1/B`` for ``reduction="sum"``). The teacher is a fixed target: no
    gradient flows to ``t``.

Numerical stability
    Everything is computed in float64 from log-probabilities: ``log_softmax``
    subtracts the row maximum before exponentiating, so logits of ``1e4`` and
    temperatures up to ``100`` (or down to ``1e-3``) neither overflow nor produce
    NaN. The KL term is evaluated as ``sum p (log p - log q)`` with ``p`` obtained by
    exponentiating a log-probability, so a teacher probability that underflows to 0
    contributes exactly 0 (never ``0 * -inf``). Exact KL is non-negative; the
    per-sample value is clipped at 0 to remove rounding residues of order 1e-17.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from .errors import CompressionError
from .selection import is_floating, require_finite

__all__ = ["softmax", "log_softmax", "kd_loss", "kd_loss_and_grad", "check_hyperparameters"]

Reduction = Literal["mean", "sum"]


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)):
        raise CompressionError(f"temperature must be a positive number, got {temperature!r}")
    t = float(temperature)
    if not (math.isfinite(t) and t > 0.0):
        raise CompressionError(f"temperature must be finite and > 0, got {temperature!r}")
    return t


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise CompressionError(f"alpha must be a number in [0, 1], got {alpha!r}")
    a = float(alpha)
    if not (0.0 <= a <= 1.0):  # also rejects NaN
        raise CompressionError(f"alpha must be in [0, 1], got {alpha!r}")
    return a


def check_hyperparameters(temperature: float, alpha: float) -> tuple[float, float]:
    """Validate the distillation temperature and weight; the framework adapters call this too.

    Parameters
    ----------
    temperature : float
        Must be finite and ``> 0``.
    alpha : float
        Must lie in ``[0, 1]``.

    Returns
    -------
    (float, float)
        ``(temperature, alpha)`` as Python floats.

    Raises
    ------
    CompressionError
        If either is out of range, NaN, a bool or not a number.

    Examples
    --------
    >>> check_hyperparameters(4, 0.5)
    (4.0, 0.5)
    >>> check_hyperparameters(0.0, 0.5)
    Traceback (most recent call last):
    ...
    coreprune.errors.CompressionError: temperature must be finite and > 0, got 0.0
    """
    return _check_temperature(temperature), _check_alpha(alpha)


def _as_logits(name: str, logits: ArrayLike) -> np.ndarray:
    array = np.asarray(logits)
    if not (is_floating(array.dtype) or np.issubdtype(array.dtype, np.integer)) or array.dtype == bool:
        raise CompressionError(f"{name} must hold real numbers, got dtype {array.dtype}")
    require_finite(name, array)
    return array.astype(np.float64)


def log_softmax(logits: ArrayLike, temperature: float = 1.0, axis: int = -1) -> np.ndarray:
    """Logarithm of the temperature softmax, ``log softmax(logits / T)``, computed stably.

    ``log p_c = z_c / T - max_k(z_k / T) - log sum_k exp(z_k / T - max_k(z_k / T))``:
    the shift by the maximum makes every exponent ``<= 0``, so nothing overflows.

    Parameters
    ----------
    logits : array_like of float, any shape
        Unnormalised scores; must be finite.
    temperature : float
        ``T > 0``. ``T > 1`` flattens the distribution, ``T < 1`` sharpens it.
    axis : int
        The class axis.

    Returns
    -------
    numpy.ndarray of float64, same shape as ``logits``
        Log-probabilities (``<= 0``) that log-sum-exp to 0 along ``axis``.

    Raises
    ------
    CompressionError
        If ``temperature`` is not a finite positive number, or ``logits`` are not finite reals.

    Examples
    --------
    >>> import numpy as np
    >>> out = log_softmax(np.array([[1e4, 0.0]]))
    >>> [round(v, 6) for v in out[0].tolist()]
    [0.0, -10000.0]
    """
    t = _check_temperature(temperature)
    z = _as_logits("logits", logits)
    if z.ndim == 0:
        raise CompressionError("logits must have at least one axis (the classes)")
    # Shift before dividing: max(z / T) = max(z) / T for T > 0, and z / T alone could overflow for tiny T.
    shifted = (z - z.max(axis=axis, keepdims=True)) / t
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(logits: ArrayLike, temperature: float = 1.0, axis: int = -1) -> np.ndarray:
    """Temperature softmax ``exp(z / T) / sum exp(z / T)`` along ``axis``, computed stably.

    Parameters
    ----------
    logits : array_like of float, any shape
        Unnormalised scores; must be finite.
    temperature : float
        ``T > 0``; as ``T`` grows the output tends to the uniform distribution.
    axis : int
        The class axis.

    Returns
    -------
    numpy.ndarray of float64, same shape as ``logits``
        Probabilities in ``[0, 1]`` that sum to 1 along ``axis``.

    Raises
    ------
    CompressionError
        If ``temperature`` is not a finite positive number, or ``logits`` are not finite reals.

    Examples
    --------
    >>> import numpy as np
    >>> softmax(np.array([0.0, np.log(3.0)])).round(6).tolist()
    [0.25, 0.75]
    >>> softmax(np.array([0.0, np.log(3.0)]), temperature=1e6).round(6).tolist()
    [0.5, 0.5]
    """
    return np.exp(log_softmax(logits, temperature, axis))


def _validated(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    temperature: float,
    alpha: float,
    reduction: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    t, a = check_hyperparameters(temperature, alpha)
    if reduction not in ("mean", "sum"):
        raise CompressionError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    s = _as_logits("student_logits", student_logits)
    q = _as_logits("teacher_logits", teacher_logits)
    y = np.asarray(labels)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise CompressionError(f"student_logits must have shape (B, C) with B, C >= 1, got {s.shape}")
    if q.shape != s.shape:
        raise CompressionError(
            f"teacher_logits has shape {q.shape} but student_logits has shape {s.shape}; they must match"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise CompressionError(f"labels must be an integer array, got dtype {y.dtype}")
    if y.shape != (s.shape[0],):
        raise CompressionError(f"labels must have shape ({s.shape[0]},) to match the logits, got {y.shape}")
    n_classes = s.shape[1]
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise CompressionError(
            f"labels must lie in [0, {n_classes}); {int(bad.sum())} do not (e.g. {int(y[bad][0])})"
        )
    return s, q, y.astype(np.intp), t, a


def _loss_and_grad(
    s: np.ndarray, q: np.ndarray, y: np.ndarray, t: float, a: float, reduction: str
) -> tuple[float, np.ndarray]:
    rows = np.arange(s.shape[0])
    log_q_t = log_softmax(q, t)  # teacher, soft
    log_s_t = log_softmax(s, t)  # student, soft
    log_s_1 = log_softmax(s, 1.0)  # student, hard
    p_t = np.exp(log_q_t)
    kl = np.maximum((p_t * (log_q_t - log_s_t)).sum(axis=1), 0.0)
    ce = -log_s_1[rows, y]
    per_sample = a * t * t * kl + (1.0 - a) * ce
    scale = 1.0 / s.shape[0] if reduction == "mean" else 1.0
    loss = float(per_sample.sum() * scale)
    hard = np.exp(log_s_1)
    hard[rows, y] -= 1.0
    grad = (a * t) * (np.exp(log_s_t) - p_t) + (1.0 - a) * hard
    return loss, grad * scale


def kd_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    temperature: float,
    alpha: float,
    reduction: Reduction = "mean",
) -> float:
    """Distillation loss ``alpha T^2 KL(p^T(t) || p^T(s)) + (1 - alpha) CE(s, y)``, reduced over the batch.

    See the module docstring for the maths and why the ``T^2`` factor is there.

    Parameters
    ----------
    student_logits : array_like of float, shape (B, C)
    teacher_logits : array_like of float, shape (B, C)
        Fixed soft targets.
    labels : array_like of int, shape (B,)
        Hard targets in ``[0, C)``.
    temperature : float
        ``T > 0`` applied to both student and teacher in the KL term (not in the CE term).
    alpha : float
        Weight of the soft term in ``[0, 1]``; ``alpha = 0`` is plain cross-entropy.
    reduction : {"mean", "sum"}
        Mean or sum of the per-sample losses.

    Returns
    -------
    float
        The loss in nats (natural logarithms), computed in float64.

    Raises
    ------
    CompressionError
        On mismatched shapes, labels out of range or not integers, non-finite logits,
        ``temperature <= 0`` or ``alpha`` outside ``[0, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> s = np.array([[2.0, 0.0, -1.0]]); t = np.array([[3.0, 1.0, -2.0]]); y = np.array([0])
    >>> round(kd_loss(s, t, y, temperature=1.0, alpha=0.0), 6)   # plain cross-entropy
    0.169846
    >>> kd_loss(t, t, y, temperature=4.0, alpha=1.0)              # student equals teacher
    0.0
    """
    s, q, y, t, a = _validated(student_logits, teacher_logits, labels, temperature, alpha, reduction)
    return _loss_and_grad(s, q, y, t, a, reduction)[0]


def kd_loss_and_grad(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    temperature: float,
    alpha: float,
    reduction: Reduction = "mean",
) -> tuple[float, np.ndarray]:
    """The distillation loss of :func:`kd_loss` and its analytic gradient with respect to the student logits.

    .. math::

        \\frac{\\partial L}{\\partial s} = \\frac{1}{B}\\Big[\\alpha T \\big(p^T(s) - p^T(t)\\big)
          + (1 - \\alpha)\\big(p^1(s) - \\mathrm{onehot}(y)\\big)\\Big]

    for ``reduction="mean"`` (without the ``1/B`` for ``"sum"``). Each row of the
    gradient sums to 0, because both terms are differences of probability vectors.

    Parameters
    ----------
    student_logits, teacher_logits, labels, temperature, alpha, reduction
        As in :func:`kd_loss`.

    Returns
    -------
    loss : float
    grad : numpy.ndarray of float64, shape (B, C)
        ``dL / d student_logits``.

    Raises
    ------
    CompressionError
        As :func:`kd_loss`.

    Examples
    --------
    >>> import numpy as np
    >>> s = np.array([[2.0, 0.0, -1.0]]); t = np.array([[3.0, 1.0, -2.0]]); y = np.array([0])
    >>> loss, grad = kd_loss_and_grad(s, t, y, temperature=2.0, alpha=0.5)
    >>> grad.shape, abs(float(grad.sum())) < 1e-12
    ((1, 3), True)
    """
    s, q, y, t, a = _validated(student_logits, teacher_logits, labels, temperature, alpha, reduction)
    return _loss_and_grad(s, q, y, t, a, reduction)
