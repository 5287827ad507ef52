"""Error-compensating rounding from the layer inputs' second moments (GPTQ).

Round to nearest minimises each weight's own error. What a layer's output loses is
``E||(W_hat - W) x||^2 = sum_r (w_hat_r - w_r)^T H (w_hat_r - w_r)`` with ``H = E[x x^T]``, the
second moment of its inputs over real data: errors on correlated inputs can cancel. GPTQ
(Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", ICLR 2023; after Optimal Brain Quantization) rounds one input column ``j`` at a
time and spreads its error onto the columns not yet rounded, the least-squares update for ``H``::

    e   = (w_j - q(w_j)) / U_jj                     U = chol(H^-1)^T, upper triangular
    w_k = w_k - e U_jk        for every k after j

Weights that are exactly 0 keep the code of 0 (a pruned weight stays pruned, as with round to
nearest); the error that the updates had moved onto them goes on to the later columns. Columns
are taken by decreasing ``H_jj`` (the "act-order" heuristic: the inputs with the most
energy first, while many columns remain to absorb their error), and the scales are fixed before
(those :func:`coreprune.quantize` chose), so the layout and the file format do not change: only
the codes do. ``H`` is damped by ``0.01 * mean(diag H)`` on its diagonal, as in the paper.

:class:`InputMoments` accumulates ``H`` from the rows that each layer sees (the adapters'
``input_hessians`` run a model on a few batches and call it); :func:`coreprune.quantize` takes the
result as ``hessians=``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import CompressionError, HessianError

__all__ = ["InputMoments", "DAMPING", "gptq_codes"]

#: Relative damping of the second moment: ``H + DAMPING * mean(diag H) * I`` (GPTQ's default).
DAMPING = 0.01

#: Columns rounded between two matrix-product updates of the rest (GPTQ's lazy batch).
_BLOCK = 128

#: Rows widened to float64 at a time by :meth:`InputMoments.add`: bounds the copy of a large patch
#: matrix (a 3x3 convolution over a feature map has many rows).
_CHUNK = 1 << 16


class InputMoments:
    """Running second moments ``H = mean over rows of x x^T`` of each layer's input rows.

    A "row" is one input vector of the layer as its weight's flattened fan-in sees it: a token's
    features for a linear layer, one patch ``(channels, kh, kw)`` of a convolution (the order of
    ``weight.reshape(out, -1)``). Sums are kept in float64.

    Examples
    --------
    >>> import numpy as np
    >>> m = InputMoments()
    >>> m.add("fc.weight", np.array([[1.0, 2.0], [3.0, 0.0]], np.float32))
    >>> m.add("fc.weight", np.array([[0.0, 2.0]]))
    >>> m.hessians()["fc.weight"].tolist(), m.rows("fc.weight")
    ([[3.3333333333333335, 0.6666666666666666], [0.6666666666666666, 2.6666666666666665]], 3)
    """

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] = {}
        self._rows: dict[str, int] = {}

    def add(self, name: str, rows: np.ndarray) -> None:
        """Add the rows ``(m, fan_in)`` (any float dtype) seen by the weight ``name``; they are
        widened to float64 and summed ``_CHUNK`` rows at a time.

        Raises
        ------
        CompressionError
            ``rows`` not 2-D, not finite, or of another fan-in than earlier rows of ``name``.
        """
        x = np.asarray(rows)
        if x.ndim != 2 or x.dtype.kind not in "fiu":
            raise CompressionError(f"input rows of {name!r} must be a 2-D numeric array, got "
                                   f"{x.dtype} of shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise CompressionError(f"input rows of {name!r} contain NaN or Inf")
        total = self._sums.get(name)
        if total is not None and total.shape[0] != x.shape[1]:
            raise CompressionError(f"input rows of {name!r} have {x.shape[1]} features, earlier rows "
                                   f"{total.shape[0]}")
        if total is None:
            total = np.zeros((x.shape[1], x.shape[1]))
        for start in range(0, x.shape[0], _CHUNK):
            chunk = x[start : start + _CHUNK].astype(np.float64, copy=False)
            total = total + chunk.T @ chunk
        self._sums[name] = total
        self._rows[name] = self._rows.get(name, 0) + x.shape[0]

    def rows(self, name: str) -> int:
        """How many rows ``name`` has seen (0 if none)."""
        return self._rows.get(name, 0)

    def hessians(self) -> dict[str, np.ndarray]:
        """Name to ``H = sum x x^T / rows``, float64 ``(fan_in, fan_in)``, in the order first seen."""
        return {n: s / max(self._rows[n], 1) for n, s in self._sums.items()}


def check_hessian(name: str, hessian: object, fan_in: int) -> np.ndarray:
    """``hessian`` as a float64 ``(fan_in, fan_in)`` symmetric finite array, or HessianError."""
    h = np.asarray(hessian)
    if h.dtype.kind not in "fiu" or h.shape != (fan_in, fan_in):
        raise HessianError(f"hessian of {name!r} must be a ({fan_in}, {fan_in}) float array (the "
                           f"weight's flattened fan-in), got {h.dtype} of shape {h.shape}")
    h = h.astype(np.float64)
    if not np.all(np.isfinite(h)):
        raise HessianError(f"hessian of {name!r} contains NaN or Inf")
    scale = float(np.abs(h).max(initial=0.0))
    if float(np.abs(h - h.T).max(initial=0.0)) > 1e-6 * scale:
        raise HessianError(f"hessian of {name!r} is not symmetric")
    if np.any(np.diag(h) < 0):
        raise HessianError(f"hessian of {name!r} has a negative diagonal entry (not a second moment)")
    return h


def gptq_codes(
    w: np.ndarray,
    step: np.ndarray,
    zero: np.ndarray | None,
    lo: int,
    hi: int,
    hessian: np.ndarray,
    name: str = "tensor",
) -> np.ndarray:
    """Codes for the fixed scales ``step`` that compensate each rounding error on the inputs ``hessian``.

    Parameters
    ----------
    w : numpy.ndarray
        ``(R, C)`` float weights: one output channel per row, its flattened fan-in along the row.
        Entries that are exactly 0 (pruned) get the code of 0, whatever the updates (their
        error is compensated by the others, as SparseGPT does with a fixed mask).
    step : numpy.ndarray
        ``(R, C)`` float > 0, each entry's scale (the tensor's scales expanded).
    zero : numpy.ndarray or None
        ``(R, C)`` zero points (affine) or None (symmetric).
    lo, hi : int
        The code range.
    hessian : numpy.ndarray
        ``(C, C)``, ``E[x x^T]`` of the layer's inputs (checked by the caller,
        :func:`coreprune.quantize`). Inputs never seen (``H_jj = 0``) keep round to nearest.
    name : str
        For the error message.

    Returns
    -------
    numpy.ndarray
        ``(R, C)`` int64 codes in ``[lo, hi]``. With a diagonal ``hessian`` they are round to
        nearest (half to even) of ``w / step + zero``.

    Raises
    ------
    HessianError
        The damped ``hessian`` is not positive definite (a :class:`~coreprune.CompressionError`).

    Examples
    --------
    >>> import numpy as np
    >>> w = np.array([[0.26, 0.26]])               # two inputs that are always equal
    >>> step = np.full((1, 2), 0.5)
    >>> np.rint(w / step).tolist()                  # round to nearest: output 0.5 x instead of 0.52 x
    [[1.0, 1.0]]
    >>> gptq_codes(w, step, None, -7, 7, np.ones((2, 2))).tolist()   # 0.5 x: error 0.02 x, not 0.48 x
    [[1, 0]]
    """
    rows, n = w.shape
    w64 = np.array(w, dtype=np.float64)
    pruned = w64 == 0  # stays 0: a mask survives quantization, as with round to nearest
    step64 = np.asarray(step, dtype=np.float64)
    zero64 = None if zero is None else np.asarray(zero, dtype=np.float64)
    codes = np.empty((rows, n), np.int64)
    h = np.array(hessian, dtype=np.float64)
    diag = np.diag(h).copy()
    if rows == 0 or n == 0:
        return codes
    if not np.any(diag > 0):  # no input ever reached this layer: nothing to compensate
        exact = w64 / step64 + (0 if zero64 is None else zero64)
        return np.clip(np.rint(exact), lo, hi).astype(np.int64)  # 0 -> the zero code
    dead = diag <= 0
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1.0
    h[np.diag_indices(n)] += DAMPING * float(np.mean(diag))
    order = np.argsort(-diag, kind="stable")
    h = h[np.ix_(order, order)]
    try:
        u = np.linalg.cholesky(np.linalg.inv(h)).T
    except np.linalg.LinAlgError:
        raise HessianError(f"hessian of {name!r} is not positive semi-definite") from None
    if not np.all(np.isfinite(u)):
        raise HessianError(f"hessian of {name!r} is not positive semi-definite")
    w64 = w64[:, order]
    pruned = pruned[:, order]
    step64 = step64[:, order]
    if zero64 is not None:
        zero64 = zero64[:, order]
    for b0 in range(0, n, _BLOCK):
        b1 = min(n, b0 + _BLOCK)
        err = np.empty((rows, b1 - b0))
        for j in range(b0, b1):
            s = step64[:, j]
            z = 0.0 if zero64 is None else zero64[:, j]
            c = np.clip(np.rint(w64[:, j] / s + z), lo, hi)
            c = np.where(pruned[:, j], np.rint(z), c)  # its error goes on to the others
            codes[:, order[j]] = c
            e = (w64[:, j] - (c - z) * s) / u[j, j]
            err[:, j - b0] = e
            w64[:, j + 1 : b1] -= np.outer(e, u[j, j + 1 : b1])
        w64[:, b1:] -= err @ u[b0:b1, b1:]
    return codes


def check_names(hessians: object, weights: Mapping[str, object]) -> dict[str, object]:
    """``hessians`` as a dict whose every name is in ``weights``, or HessianError naming one
    that is not."""
    if not isinstance(hessians, Mapping):
        raise HessianError(f"hessians must be a mapping of weight name to array, "
                           f"got {type(hessians).__name__}")
    missing = [str(n) for n in hessians if n not in weights]
    if missing:
        raise HessianError(f"hessians names {missing[0]!r}, which is not among the weights "
                           f"({len(missing)} such name(s); a prefix such as 'module.' differs?)")
    return dict(hessians)
