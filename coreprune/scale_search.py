"""Data-free scales that minimise the reconstruction error, vectorised over all groups at once.

Every function here works on a row view (see :mod:`coreprune.quant_layout`): ``x`` of shape
``(R, C)`` in float32 or float64, one scale (and zero point) per row, and an optional bool
``mask`` of the same shape marking the real entries (False at the padding of a short last group).
They return float64 scales and, for affine grids, integer zero points, which
:func:`coreprune.quantization.quantize` then stores and encodes with -- so the codes always follow
the stored float32 scale.

Grids (``lo``..``hi`` are the integer codes):

* symmetric: ``w ~ s * q``, ``q`` in ``[lo, hi]`` (``[-qmax, qmax]``, or ``[-qmax - 1, qmax]`` for
  the full two's-complement range);
* affine: ``w ~ s * (q - z)``, ``q`` in ``[0, 2**b - 1]``, integer ``z`` in the same range.

Methods
-------
``rtn``
    Round to nearest with the min/max range (``max|w| / qmax``, or ``(hi - lo) / (2**b - 1)``).
``clip``
    For each row, the shrink factor ``a`` of the min/max range, from a grid of ``steps`` values in
    ``[min_ratio, 1]``, whose rounded reconstruction has the smallest squared error.
``hqq``
    Half-quadratic optimisation in the spirit of HQQ (Badri & Shaji 2023): the error is split as
    ``w - s (q - z) = e + r`` with a sparse outlier part ``e = shrink_p(w - s (q - z), beta)``
    (the generalised soft threshold of an ``l_p`` norm, ``p < 1``) and a Gaussian part; each
    iteration rounds ``q``, takes ``e``, then solves the quadratic problem for ``s`` (and ``z``) in
    closed form (least squares of ``w - e`` on ``q``); ``beta`` grows by ``kappa``. HQQ itself
    updates only a float zero point; here the scale moves too and the zero point ends integer (a
    final least-squares refit of ``s`` on the integer grid). Each row keeps the best of its RTN
    start and its iterates by squared error, so it is never worse than RTN.
"""

from __future__ import annotations

import numpy as np

__all__ = ["METHODS", "rtn_params", "clip_params", "hqq_params", "reconstruct", "row_sq_error"]

METHODS = ("rtn", "clip", "hqq")


def _masked(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    return x if mask is None else np.where(mask, x, 0)


def reconstruct(
    x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, lo: int, hi: int
) -> np.ndarray:
    """``s * (clip(rint(x / s) [+ z], lo, hi) [- z])`` per row, in ``x``'s dtype.

    ``scale`` is rounded to float32 first, as the stored scale is. Shapes: ``x`` ``(R, C)``,
    ``scale`` and ``zero`` ``(R,)``.

    Examples
    --------
    >>> import numpy as np
    >>> reconstruct(np.array([[0.3, -1.0]], np.float32), np.array([0.5]), None, -1, 1).tolist()
    [[0.5, -0.5]]
    """
    s = scale.astype(np.float32).astype(x.dtype)[:, None]
    q = np.rint(x / s)
    if zero is not None:
        q += zero.astype(x.dtype)[:, None]
        np.clip(q, lo, hi, out=q)
        q -= zero.astype(x.dtype)[:, None]
    else:
        np.clip(q, lo, hi, out=q)
    return q * s


def row_sq_error(x: np.ndarray, approx: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Per-row sum of squared differences over the real entries, float64 ``(R,)``."""
    d = _masked(x - approx, mask).astype(np.float64)
    return np.einsum("ij,ij->i", d, d)


def rtn_params(
    x: np.ndarray, symmetric: bool, lo: int, hi: int, ratio: np.ndarray | float = 1.0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Min/max scales (and zero points) per row, the range shrunk by ``ratio`` (scalar or ``(R,)``).

    Symmetric: ``s = ratio * max|x| / (-lo - 0.5 if the range is full else hi)``; a zero range
    gives 1.0. Affine: ``lo_w = ratio * min(x, 0)``, ``hi_w = ratio * max(x, 0)``,
    ``s = (hi_w - lo_w) / hi``, ``z = clip(rint(-lo_w / s), 0, hi)``. Padding zeros never change
    these (the ranges include 0).

    Examples
    --------
    >>> import numpy as np
    >>> s, z = rtn_params(np.array([[1.0, -3.0]]), True, -7, 7)
    >>> float(s[0] * 7), z
    (3.0, None)
    """
    if symmetric:
        peak = np.max(np.abs(x), axis=1, initial=0).astype(np.float64) * ratio
        denom = hi if -lo == hi else hi + 0.5  # the full range puts -max|w| on code lo
        return np.where(peak > 0, peak / denom, 1.0), None
    wlo = np.min(x, axis=1, initial=0).astype(np.float64) * ratio
    whi = np.max(x, axis=1, initial=0).astype(np.float64) * ratio
    span = whi - wlo
    scale = np.where(span > 0, span / hi, 1.0)
    zero = np.clip(np.rint(-wlo / scale.astype(np.float32).astype(np.float64)), 0, hi)
    return scale, zero


def clip_params(
    x: np.ndarray,
    mask: np.ndarray | None,
    symmetric: bool,
    lo: int,
    hi: int,
    steps: int = 20,
    min_ratio: float = 0.5,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per row, the min/max range shrunk by the ratio in ``linspace(min_ratio, 1, steps)`` of least error.

    Returns the float64 scales ``(R,)`` and the zero points (affine) of the best ratio of each row;
    ties go to the widest range.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.1, 0.2, -0.15, 0.12, 3.0]])  # one outlier: a narrower range wins
    >>> s_rtn, _ = rtn_params(x, True, -1, 1)
    >>> s_clip, _ = clip_params(x, None, True, -1, 1)
    >>> bool(s_clip[0] <= s_rtn[0])
    True
    """
    best_scale, best_zero = rtn_params(x, symmetric, lo, hi)
    best_err = row_sq_error(x, reconstruct(x, best_scale, best_zero, lo, hi), mask)
    for ratio in np.linspace(1.0, min_ratio, steps)[1:]:
        scale, zero = rtn_params(x, symmetric, lo, hi, ratio)
        err = row_sq_error(x, reconstruct(x, scale, zero, lo, hi), mask)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        if zero is not None and best_zero is not None:  # affine: both are arrays; symmetric: both None
            best_zero = np.where(better, zero, best_zero)
    return best_scale, best_zero


def _shrink_lp(r: np.ndarray, beta: float, p: float) -> np.ndarray:
    """Generalised soft threshold of the ``l_p`` proximal step: ``sign(r) relu(|r| - |r|**(p-1) / beta)``."""
    a = np.abs(r)
    with np.errstate(divide="ignore"):
        thresh = np.where(a > 0, a ** (p - 1), np.inf) / beta
    return np.sign(r) * np.maximum(a - thresh, 0)


def _lsq(
    q: np.ndarray, t: np.ndarray, mask: np.ndarray | None, symmetric: bool, count: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Least squares per row of ``t ~ s q`` (symmetric) or ``t ~ s (q - z)`` (affine), float64."""
    q = _masked(q, mask).astype(np.float64)
    t = _masked(t, mask).astype(np.float64)
    if symmetric:
        qq = np.einsum("ij,ij->i", q, q)
        qt = np.einsum("ij,ij->i", q, t)
        return np.where(qq > 0, qt / np.where(qq > 0, qq, 1), np.nan), None
    mq, mt = q.sum(1) / count, t.sum(1) / count
    var = np.einsum("ij,ij->i", q, q) / count - mq * mq
    cov = np.einsum("ij,ij->i", q, t) / count - mq * mt
    ok = var > 1e-12
    s = np.where(ok, cov / np.where(ok, var, 1), np.nan)
    z = np.where(ok & (s > 0), mq - mt / np.where(s > 0, s, 1), np.nan)
    return s, z


def hqq_params(
    x: np.ndarray,
    mask: np.ndarray | None,
    symmetric: bool,
    lo: int,
    hi: int,
    iters: int = 20,
    p: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Half-quadratic optimisation of scale (and zero point) per row; see the module notes.

    The defaults (``p=0.7``, ``beta=10``, ``kappa=1.01``, 20 iterations) are HQQ's published ones,
    with ``beta`` applied to the residual divided by the row's RTN scale so that the threshold is
    in units of quantization steps whatever the magnitude of the weights.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((50, 64))
    >>> def err(params):
    ...     return row_sq_error(x, reconstruct(x, *params, 0, 15), None).sum()
    >>> bool(err(hqq_params(x, None, False, 0, 15)) <= err(rtn_params(x, False, 0, 15)))
    True
    """
    count = np.full(x.shape[0], x.shape[1], np.float64) if mask is None else mask.sum(1).astype(np.float64)
    scale, zero = rtn_params(x, symmetric, lo, hi)
    best_s, best_z = scale.copy(), None if zero is None else zero.copy()
    best_err = row_sq_error(x, reconstruct(x, scale, zero, lo, hi), mask)
    unit = scale.copy()  # the threshold works in units of the starting step
    zf = None if zero is None else zero.astype(np.float64)
    xs = x.astype(np.float64) / unit[:, None]
    s = np.ones_like(scale)
    for _ in range(iters):
        if zf is None:
            q = np.clip(np.rint(xs / s[:, None]), lo, hi)
            r = xs - s[:, None] * q
        else:
            q = np.clip(np.rint(xs / s[:, None] + zf[:, None]), lo, hi)
            r = xs - s[:, None] * (q - zf[:, None])
        e = _shrink_lp(r, beta, p)
        s_new, z_new = _lsq(q, xs - e, mask, zf is None, count)
        good = np.isfinite(s_new) & (s_new > 0)
        if z_new is not None:
            good &= np.isfinite(z_new)
            assert zf is not None  # _lsq fits a zero point only when there is one (affine)
            zf = np.where(good, np.clip(z_new, lo, hi), zf)
        s = np.where(good, s_new, s)
        beta *= kappa
        cand_s = s * unit
        cand_z = None if zf is None else np.clip(np.rint(zf), lo, hi)
        if cand_z is not None:  # the integer zero point: refit the scale on the integer grid
            qi = np.clip(np.rint(x.astype(np.float64) / cand_s[:, None]) + cand_z[:, None], lo, hi)
            s_fit, _ = _lsq(qi - cand_z[:, None], x, mask, True, count)
            cand_s = np.where(np.isfinite(s_fit) & (s_fit > 0), s_fit, cand_s)
        err = row_sq_error(x, reconstruct(x, cand_s, cand_z, lo, hi), mask)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s = np.where(better, cand_s, best_s)
        if cand_z is not None:
            assert best_z is not None  # affine: the best and the candidate both have zero points
            best_z = np.where(better, cand_z, best_z)
    return best_s, best_z
