"""Mixed precision under a size budget: bits per tensor from a data-free sensitivity proxy.

Given candidate widths (e.g. 2, 3, 4, 6, 8) and a budget in average bits per weight -- counting
everything a quantized tensor stores, codes, scales and zero points, over the quantized tensors
-- :func:`allocate_bits` picks one width per tensor.

The proxy of how much a tensor's quantization hurts is its noise-to-signal ratio
``NSR(b) = ||w - Q_b(w)||^2 / ||w||^2``: a layer's output error relative to its output is about its
weights' relative error, and the relative errors of the layers of a deep network add up roughly,
whatever the layers' sizes -- so a small depthwise or first layer matters as much as a large one.
Optional per-tensor ``importance`` factors (for instance measured on a few real inputs) multiply
it; :func:`measured_importance` measures them with a loss on real inputs that the user supplies.
The allocation minimises ``sum_t importance_t * NSR_t(b_t)`` under the byte budget: the best
of (a) greedy upgrades from the smallest widths, each time the upgrade of largest decrease of the
objective per extra byte that fits, and (b) the Lagrangian choice (each tensor minimising
``importance * NSR + lambda * bytes``) for the smallest ``lambda`` that fits, and (c) each uniform
width that fits, each filled greedily -- so it is never worse than the best uniform width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .errors import CompressionError
from .quant_layout import default_bits

if TYPE_CHECKING:  # quantization imports this module
    from .quantization import QuantizedArray

__all__ = ["DEFAULT_WIDTHS", "allocate_bits", "noise_to_signal", "measure", "measured_importance",
           "small_tensors", "widths_checked"]

#: The candidate widths of ``quantize(budget=...)`` and ``coreprune quantize --budget``.
DEFAULT_WIDTHS = (2, 3, 4, 6, 8)


def small_tensors(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """The tensors the default layout keeps at 8 bits below 8 (``wide_only`` of :func:`allocate_bits`).

    Those of ``ndim >= 2`` whose fan-in ``prod(shape[1:])`` is at most
    :data:`coreprune.quant_layout.SMALL_FAN_IN` or whose size is at most
    :data:`coreprune.quant_layout.SMALL_TENSOR` (:func:`coreprune.quant_layout.default_bits`).

    Examples
    --------
    >>> small_tensors({"dw.weight": (32, 1, 3, 3), "pw.weight": (64, 96, 1, 1), "fc.weight": (10, 64),
    ...                "bias": (64,)})
    ['dw.weight', 'fc.weight']
    """
    return [n for n, shape in shapes.items() if default_bits(tuple(shape), 2) == 8]


def noise_to_signal(w: np.ndarray, approx: np.ndarray) -> float:
    """``||w - approx||^2 / ||w||^2`` in float64 (0.0 for an all-zero ``w`` reproduced exactly).

    Examples
    --------
    >>> import numpy as np
    >>> noise_to_signal(np.array([3.0, 4.0]), np.array([3.0, 3.0]))
    0.04
    """
    w64 = np.asarray(w, np.float64)
    d = w64 - np.asarray(approx, np.float64)
    signal = float(np.vdot(w64, w64))
    noise = float(np.vdot(d, d))
    if signal == 0.0:
        return 0.0 if noise == 0.0 else math.inf
    return noise / signal


def allocate_bits(
    sizes: Mapping[str, Mapping[int, int]],
    errors: Mapping[str, Mapping[int, float]],
    counts: Mapping[str, int],
    budget: float,
    importance: Mapping[str, float] | None = None,
    wide_only: Collection[str] = (),
) -> dict[str, int]:
    """One width per tensor, minimising the weighted sum of errors within ``budget`` bits per weight.

    Parameters
    ----------
    sizes : Mapping[str, Mapping[int, int]]
        Per tensor, per candidate width, the bytes stored (codes + scales + zero points).
    errors : Mapping[str, Mapping[int, float]]
        Per tensor, per width, the error proxy (e.g. :func:`noise_to_signal`), same keys as ``sizes``.
    counts : Mapping[str, int]
        Per tensor, the number of weights.
    budget : float
        Average bits per weight, ``8 * total bytes / total weights``.
    importance : Mapping[str, float] or None
        Optional factor per tensor (default 1.0).
    wide_only : collection of str
        Tensors that only get widths of 8 bits and more (the widest candidate if none is), unless
        that floor alone does not fit the budget -- then every tensor gets any width. The default
        layout passes its small tensors (:func:`coreprune.quant_layout.default_bits`): the weight
        error alone underrates depthwise kernels and stems.

    Returns
    -------
    dict[str, int]
        The width of each tensor, in the order of ``sizes``.

    Raises
    ------
    CompressionError
        The budget is below what the smallest width of every tensor needs.

    Examples
    --------
    >>> sizes = {"a": {2: 25, 4: 50}, "b": {2: 25, 4: 50}}
    >>> errors = {"a": {2: 0.2, 4: 0.01}, "b": {2: 0.05, 4: 0.003}}
    >>> allocate_bits(sizes, errors, {"a": 100, "b": 100}, budget=3.0)
    {'a': 4, 'b': 2}
    >>> sizes = {"a": {2: 25, 8: 100}, "b": {2: 25, 8: 100}}
    >>> errors = {"a": {2: 0.2, 8: 0.0}, "b": {2: 0.05, 8: 0.0}}
    >>> allocate_bits(sizes, errors, {"a": 100, "b": 100}, budget=5.0, wide_only={"b"})
    {'a': 2, 'b': 8}
    """
    total = sum(counts.values())
    limit = budget * total / 8
    if wide_only:
        floored = {n: ({b: s for b, s in v.items() if b >= 8} or {max(v): v[max(v)]}) if n in wide_only
                   else v for n, v in sizes.items()}
        if sum(min(v.values()) for v in floored.values()) <= limit + 1e-9:
            sizes = floored
    choice = {name: min(widths) for name, widths in sizes.items()}
    used = sum(sizes[n][b] for n, b in choice.items())
    if used > limit + 1e-9:
        raise CompressionError(
            f"budget {budget} bits per weight is below the {8 * used / max(total, 1):.3f} that the "
            f"smallest width of every tensor needs"
        )
    factor = {n: (1.0 if importance is None else float(importance.get(n, 1.0))) for n in sizes}

    def cost(c: Mapping[str, int]) -> float:
        return sum(factor[n] * errors[n][b] for n, b in c.items())

    def lagrangian(n: str, lam: float, b: int) -> tuple[float, int]:
        return (factor[n] * errors[n][b] + lam * sizes[n][b], b)

    def nearest(b: int, a: int) -> tuple[int, int]:
        return (abs(a - b), -a)

    best = _fill(sizes, errors, factor, dict(choice), limit)
    # Lagrangian: each tensor on its own minimises factor * error + lam * bytes; the largest lam
    # whose choice fits, then filled greedily, avoids the greedy's trap of cheap large upgrades
    # of small tensors that leave a large tensor without room.
    slopes = sorted({
        factor[n] * (errors[n][a] - errors[n][b]) / (sizes[n][b] - sizes[n][a])
        for n in sizes for a in sizes[n] for b in sizes[n] if sizes[n][b] > sizes[n][a]
    } | {0.0})
    for lam in slopes:
        pick = {n: min(sizes[n], key=partial(lagrangian, n, lam)) for n in sizes}
        if sum(sizes[n][b] for n, b in pick.items()) <= limit + 1e-9:
            filled = _fill(sizes, errors, factor, pick, limit)
            if cost(filled) < cost(best):
                best = filled
            break
    # every uniform width that fits, filled greedily: never worse than the best uniform choice
    # (a tensor without that width, e.g. one held at 8 bits, takes its nearest, the wider on a tie)
    for b in sorted({b for widths in sizes.values() for b in widths}):
        pick = {n: min(sizes[n], key=partial(nearest, b)) for n in sizes}
        if sum(sizes[n][a] for n, a in pick.items()) <= limit + 1e-9:
            filled = _fill(sizes, errors, factor, pick, limit)
            if cost(filled) < cost(best):
                best = filled
    return {n: best[n] for n in sizes}


def _fill(
    sizes: Mapping[str, Mapping[int, int]],
    errors: Mapping[str, Mapping[int, float]],
    factor: Mapping[str, float],
    choice: dict[str, int],
    limit: float,
) -> dict[str, int]:
    """Greedy upgrades of largest error decrease per extra byte while one fits."""
    used = sum(sizes[n][b] for n, b in choice.items())
    while True:
        best: tuple[float, str, int] | None = None
        for name, widths in sizes.items():
            now = choice[name]
            for b in widths:
                extra = widths[b] - widths[now]
                if b <= now or used + extra > limit + 1e-9:
                    continue
                gain = factor[name] * (errors[name][now] - errors[name][b])
                rate = gain / max(extra, 1)
                if gain > 0 and (best is None or rate > best[0]):
                    best = (rate, name, b)
        if best is None:
            return choice
        _, name, b = best
        used += sizes[name][b] - sizes[name][choice[name]]
        choice[name] = b


def widths_checked(widths: Sequence[int]) -> tuple[int, ...]:
    """Candidate widths sorted and checked (ints in 2..16, at least one)."""
    try:
        out = tuple(sorted({int(b) for b in widths}))
    except (TypeError, ValueError):
        raise CompressionError(f"bit_choices must be ints in 2..16, got {widths!r}") from None
    if not out or out[0] < 2 or out[-1] > 16 or any(isinstance(b, bool) for b in widths):
        raise CompressionError(f"bit_choices must be ints in 2..16, got {widths!r}")
    return out


def measure(
    names: Sequence[str],
    weights: Mapping[str, np.ndarray],
    widths: Sequence[int],
    quantize_one: Callable[[str, int], QuantizedArray],
) -> tuple[dict, dict, dict, dict]:
    """Quantize each tensor at each width: sizes, errors, counts, and the quantized arrays themselves."""
    sizes: dict[str, dict[int, int]] = {}
    errors: dict[str, dict[int, float]] = {}
    arrays: dict[str, dict[int, QuantizedArray]] = {}
    for name in names:
        sizes[name], errors[name], arrays[name] = {}, {}, {}
        for b in widths:
            q = quantize_one(name, b)
            arrays[name][b] = q
            sizes[name][b] = q.nbytes
            errors[name][b] = noise_to_signal(weights[name], q.dequantize())
    counts = {n: int(weights[n].size) for n in names}
    return sizes, errors, counts, arrays


def measured_importance(
    weights: Mapping[str, np.ndarray],
    loss: Callable[[dict[str, np.ndarray]], float],
    bits: int = 4,
    **quantize_kwargs: object,
) -> dict[str, float]:
    """Per-tensor ``importance`` for :func:`coreprune.quantize` (``budget=``) from a loss on real inputs.

    For each tensor ``t`` that :func:`coreprune.quantize` selects, only ``t`` is quantized at
    ``bits`` (the others stay float) and ``loss`` is called on those weights::

        importance_t = max(loss(w with t quantized) - loss(w), 0) / NSR_t(bits)

    so that ``importance_t * NSR_t(b)``, the allocation's objective, is the loss that ``t`` alone
    would cost at any width ``b`` (the loss growing with the weights' noise energy). The weights
    alone cannot tell a layer whose error the rest of the network amplifies (a depthwise kernel,
    a linear bottleneck before a residual sum) from one whose error it damps; a few real inputs
    can. One call of ``loss`` per selected tensor, plus one.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Name to array. Not modified.
    loss : callable
        ``loss(weights) -> float``: a finite divergence of the model with these weights from the
        float model on a few real inputs (e.g. the mean KL of the class probabilities, ``1 -``
        the mean cosine of embeddings), written with the user's framework; it receives a new
        dict of NumPy arrays with the original names, shapes and dtypes.
    bits : int
        The width at which each tensor is measured (default 4).
    **quantize_kwargs
        Passed to :func:`coreprune.quantize` (``include``, ``exclude``, the layout, ``method``):
        give the same as to the later ``quantize(..., budget=...)``.

    Returns
    -------
    dict[str, float]
        Tensor name to importance (>= 0), in selection order.

    Raises
    ------
    CompressionError
        ``loss`` returned something that is not a finite number; the errors of
        :func:`coreprune.quantize`.

    Examples
    --------
    >>> import numpy as np, coreprune as cp
    >>> rng = np.random.default_rng(0)
    >>> w = {"a.weight": rng.normal(size=(16, 64)).astype(np.float32),
    ...      "b.weight": rng.normal(size=(16, 64)).astype(np.float32)}
    >>> x = rng.normal(size=(64, 8)).astype(np.float32)
    >>> def loss(v):  # "b" feeds an output ten times as large as "a"'s
    ...     return float(np.mean(((v["a.weight"] - w["a.weight"]) @ x) ** 2)
    ...                  + 100 * np.mean(((v["b.weight"] - w["b.weight"]) @ x) ** 2))
    >>> imp = measured_importance(w, loss, bits=4)
    >>> 50 < imp["b.weight"] / imp["a.weight"] < 200
    True
    >>> q = cp.quantize(w, budget=5.0, importance=imp)
    >>> q["a.weight"].bits < q["b.weight"].bits
    True
    """
    from .quantization import QuantizedArray, quantize
    from .selection import _everything, select

    if "budget" in quantize_kwargs:
        raise CompressionError("measured_importance measures at one width: give bits, not budget")
    include = cast(Any, quantize_kwargs.pop("include", None))
    exclude = cast(Any, quantize_kwargs.pop("exclude", None))
    names = select(weights, include, exclude)

    def checked(value: object, what: str) -> float:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise CompressionError(f"loss returned {value!r} for {what}; it must return a finite number")
        return number

    plain = {n: np.asarray(v) for n, v in weights.items()}
    base = checked(loss(dict(plain)), "the float weights")
    out: dict[str, float] = {}
    for name in names:
        q = quantize({name: plain[name]}, bits, include=_everything, **quantize_kwargs)[name]  # type: ignore[arg-type]
        approx = cast(QuantizedArray, q).dequantize()
        nsr = noise_to_signal(plain[name], approx)
        cost = max(checked(loss({**plain, name: approx}), f"tensor {name!r}") - base, 0.0)
        out[name] = cost / nsr if nsr > 0 else 0.0
    return out
