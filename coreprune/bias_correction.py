"""Data-free bias correction: remove the mean output shift that a weight change causes.

Quantizing (or pruning) a layer's weight ``W`` to ``W + dW`` shifts its output ``y = W x`` by
``dW x``, whose expectation ``E[dW x] = dW E[x]`` is the same for every input: a constant
**bias** on each output channel, which the following layers amplify (a depthwise convolution's
nine taps rounded the same way shift its whole channel). Nagel et al. (2019, "Data-Free
Quantization Through Weight Equalization and Bias Correction") remove it with ``E[x]`` taken from
the batch norm that precedes the layer, without any data: a batch norm's output has, over the
data it was trained on, mean ``beta`` and standard deviation ``|gamma|`` per channel; through a
ReLU or ReLU6 it becomes a clipped normal of known mean (through a sigmoid, tanh, GELU, SiLU or
hardswish, a Gaussian expectation computed by quadrature).

This module propagates those per-channel means (and spreads) through the framework-free graph of
:mod:`coreprune.structured` (traced by the adapters' ``trace_graph``), and moves each changed
layer's expected shift ``s = dW E[x]`` out of its output:

* into its own bias where it has one: ``b' = b - s``;
* else into the ``running_mean`` of the batch norm that alone reads its output:
  ``mu' = mu + s`` (the batch norm subtracts it, so ``E[BN(y + dW x)]`` is unchanged).

For a convolution, ``E[x]`` is per input channel and the same at every tap, so
``s_o = sum_{j, k} dW[o, j, k] E[x_{g(o), j}]`` (``j`` the input channels of output ``o``'s group,
``k`` the kernel taps; zero padding at the borders is not modelled). Channels whose mean is
unknown (the model input, after a sigmoid, a multiplication, a layer norm...) contribute no
correction to the outputs that read them: nothing is corrected on a guess.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy.special import ndtr

from .errors import CompressionError
from .quantization import QuantizedArray
from .structured.graph import SMOOTH_ACTIVATIONS, Graph, Node
from .weight_sharing import CodebookArray

__all__ = ["channel_statistics", "correct_bias"]

_SQRT_2PI = float(np.sqrt(2.0 * np.pi))
#: The batch-norm epsilon of a node without an ``eps`` attr (PyTorch's and Gluon's default).
_DEFAULT_EPS = 1e-5


def _pdf(t: np.ndarray) -> np.ndarray:
    """Standard normal density, 0 at +-inf (a bound that is not there)."""
    finite = np.isfinite(t)
    return np.where(finite, np.exp(-0.5 * np.square(np.where(finite, t, 0.0))), 0.0) / _SQRT_2PI


def _times(bound: float, mass: np.ndarray) -> np.ndarray:
    """``bound * mass`` with ``inf * 0 = 0``: an infinite bound never holds any probability."""
    return np.where(mass > 0, bound * mass, 0.0) if math.isinf(bound) else bound * mass


def _clipped_normal(
    mean: np.ndarray, var: np.ndarray, lo: float, hi: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``clip(z, lo, hi)`` for ``z ~ N(mean, var)``, element-wise (float64).

    With ``a = (lo - mean) / sd``, ``b = (hi - mean) / sd``, ``P = Phi(b) - Phi(a)``::

        E[clip(z)]   = lo Phi(a) + hi (1 - Phi(b)) + mean P + sd (phi(a) - phi(b))
        E[clip(z)^2] = lo^2 Phi(a) + hi^2 (1 - Phi(b)) + (mean^2 + sd^2) P
                       + sd ((lo + mean) phi(a) - (hi + mean) phi(b))
    """
    sd = np.sqrt(np.maximum(var, 0.0))
    point = sd <= 1e-12 * np.maximum(1.0, np.abs(mean))  # no spread: a constant, clipped
    safe = np.where(point, 1.0, sd)
    with np.errstate(invalid="ignore", over="ignore"):
        a, b = (lo - mean) / safe, (hi - mean) / safe
        pa, pb = _pdf(a), _pdf(b)
        below, above = ndtr(a), 1.0 - ndtr(b)
        inside = ndtr(b) - ndtr(a)
        m1 = _times(lo, below) + _times(hi, above) + mean * inside + safe * (pa - pb)
        tails = _times(lo * lo, below) + _times(hi * hi, above)
        edges = np.where(pa > 0, (lo + mean) * pa, 0.0) - np.where(pb > 0, (hi + mean) * pb, 0.0)
        m2 = tails + (mean * mean + safe * safe) * inside + safe * edges
    var_out = np.maximum(m2 - m1 * m1, 0.0)
    return np.where(point, np.clip(mean, lo, hi), m1), np.where(point, 0.0, var_out)


#: Gauss-Hermite nodes and weights (probabilists', ``sum w f(x) ~ E[f(z)]`` for ``z ~ N(0, 1)``).
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(96)
_WEIGHTS = _WEIGHTS / _SQRT_2PI


def activation(fn: str, x: np.ndarray) -> np.ndarray:
    """The element-wise activation ``fn`` of :data:`coreprune.structured.graph.SMOOTH_ACTIVATIONS`."""
    if fn == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * x))  # sigmoid without overflow
    if fn == "tanh":
        return np.tanh(x)
    if fn == "gelu":
        return x * ndtr(x)
    if fn == "silu":
        return x * 0.5 * (1.0 + np.tanh(0.5 * x))
    if fn == "hardswish":
        return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
    raise CompressionError(f"unknown activation {fn!r}")


def gaussian_moments(fn: str, mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``E[f(a)]``, ``Var[f(a)]`` and ``E[f'(a)]`` for ``a ~ N(mean, var)``, element-wise (float64).

    Gauss-Hermite quadrature (96 nodes); ``E[f'(a)] = E[f(a) (a - mean)] / var`` (Stein's lemma),
    ``f'(mean)`` where ``var = 0``. NaN in, NaN out.
    """
    sd = np.sqrt(np.maximum(var, 0.0))[..., None]
    points = mean[..., None] + sd * _NODES
    with np.errstate(invalid="ignore", over="ignore"):
        values = activation(fn, points)
        m1 = values @ _WEIGHTS
        m2 = (values * values) @ _WEIGHTS
        spread = sd[..., 0]
        safe = np.where(spread > 0, spread, 1.0)
        slope = np.where(spread > 0, (values * _NODES) @ _WEIGHTS / safe, np.nan)
        h = 1e-6 * np.maximum(1.0, np.abs(mean))  # no spread: the derivative at the point
        at_point = (activation(fn, mean + h) - activation(fn, mean - h)) / (2 * h)
    slope = np.where(spread > 0, slope, at_point)
    return m1, np.maximum(m2 - m1 * m1, 0.0), slope


def _array(weights: Mapping[str, object], node: Node, role: str) -> np.ndarray | None:
    key = node.params.get(role)
    value = weights.get(key) if key is not None else None
    if isinstance(value, np.ndarray) and value.shape == (node.channels,):
        return value.astype(np.float64)
    return None


def channel_statistics(
    graph: Graph, weights: Mapping[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and variance of every node's output, from the batch norms' statistics alone.

    A ``batchnorm`` node with ``running_mean`` and ``running_var`` in ``weights`` outputs mean
    ``beta`` and variance ``gamma**2 * var / (var + eps)`` per channel (over the data its
    statistics were gathered on; ``eps`` is the node's attr, 1e-5 where it has none); the
    statistics attrs of :mod:`coreprune.structured.graph` (``fn="copy"``, ``"pool"``, ``"clip"``,
    ``"sum"``, and the smooth activations ``"sigmoid"``, ``"tanh"``, ``"gelu"``, ``"silu"``,
    ``"hardswish"``, whose Gaussian moments are taken by 96-point Gauss-Hermite quadrature) carry
    them on; concatenation, slices, flattening and channel shuffles move them with
    their channels. Anything else outputs unknown (NaN) statistics. A sum adds the variances as if
    its inputs were independent.

    Parameters
    ----------
    graph : coreprune.structured.Graph
        The model's graph, e.g. from ``coreprune.torch.trace_graph`` or ``coreprune.mxnet.trace_graph``.
    weights : Mapping[str, numpy.ndarray]
        The model's float weights (batch norm parameters and statistics among them).

    Returns
    -------
    dict[str, tuple[numpy.ndarray, numpy.ndarray]]
        Node name -> ``(mean, variance)``, each float64 of shape ``(node.channels,)``; NaN where
        unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from coreprune.structured import Graph, Node
    >>> g = Graph([Node("x", "input", (), 2),
    ...            Node("bn", "batchnorm", ("x",), 2, {"weight": "bn.weight", "bias": "bn.bias",
    ...                 "running_mean": "bn.running_mean", "running_var": "bn.running_var"}),
    ...            Node("relu", "identity", ("bn",), 2, attrs={"fn": "clip", "lo": 0.0, "hi": float("inf")})],
    ...           outputs=["relu"])
    >>> w = {"bn.weight": np.array([1.0, 2.0], np.float32), "bn.bias": np.array([0.0, 5.0], np.float32),
    ...      "bn.running_mean": np.zeros(2, np.float32), "bn.running_var": np.ones(2, np.float32)}
    >>> mean, var = channel_statistics(g, w)["relu"]
    >>> np.round(mean, 4).tolist()  # E[max(z, 0)]: 1/sqrt(2 pi) for N(0, 1); ~5 for N(5, 4)
    [0.3989, 5.004]
    """
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for node in graph.nodes.values():
        c = node.channels
        unknown = (np.full(c, np.nan), np.full(c, np.nan))
        ins = [stats[s] for s in node.inputs]
        fn = node.attrs.get("fn")
        result = unknown
        if node.op == "batchnorm":
            rm, rv = _array(weights, node, "running_mean"), _array(weights, node, "running_var")
            if rm is not None and rv is not None:
                gamma = _array(weights, node, "weight")
                if gamma is None or node.attrs.get("fix_gamma", 0):
                    gamma = np.ones(c)
                beta = _array(weights, node, "bias")
                beta = np.zeros(c) if beta is None else beta
                # a negative or non-finite statistic is no statistic: unknown, not a guess
                # the node's own epsilon: a model with 1e-3 (EfficientNet, MXNet's symbol API) and
                # a running variance near it has a much smaller output spread than 1e-5 gives
                eps = float(node.attrs.get("eps", _DEFAULT_EPS))
                # eps = 0 with a zero variance divides by zero in the framework too: unknown
                ok = (rv >= 0) & np.isfinite(rv) & np.isfinite(gamma) & np.isfinite(beta) & (rv + eps > 0)
                scale, raw = np.where(ok, gamma, 0.0), np.where(ok, rv, 1.0)
                var = scale * scale * raw / (raw + eps)
                result = (np.where(ok, beta, np.nan), np.where(ok, var, np.nan))
        elif node.op == "identity" and fn == "copy":
            result = ins[0]
        elif node.op == "identity" and fn == "pool":
            result = (ins[0][0], unknown[1])
        elif node.op == "identity" and fn in SMOOTH_ACTIVATIONS:
            result = gaussian_moments(str(fn), *ins[0])[:2]
        elif node.op == "identity" and fn == "clip":
            result = _clipped_normal(*ins[0], float(node.attrs["lo"]), float(node.attrs["hi"]))
        elif node.op == "add" and fn == "sum":
            result = (sum(m for m, _ in ins), sum(v for _, v in ins))  # type: ignore[assignment]
        elif node.op == "concat":
            result = (np.concatenate([m for m, _ in ins]), np.concatenate([v for _, v in ins]))
        elif node.op == "slice":
            start, stop = int(node.attrs["start"]), int(node.attrs["stop"])
            result = (ins[0][0][start:stop], ins[0][1][start:stop])
        elif node.op == "flatten":
            per = c // graph.nodes[node.inputs[0]].channels
            result = (np.repeat(ins[0][0], per), np.repeat(ins[0][1], per))
        elif node.op == "shuffle":
            g = int(node.attrs.get("groups", 1))
            order = np.arange(c).reshape(g, c // g).T.reshape(-1)
            result = (ins[0][0][order], ins[0][1][order])
        stats[node.name] = result
    return stats


def _dense(value: object, name: str) -> np.ndarray:
    if isinstance(value, (QuantizedArray, CodebookArray)):
        return value.dequantize()
    if isinstance(value, np.ndarray):
        return value
    raise CompressionError(f"tensor {name!r}: bias correction needs an array, a QuantizedArray or a "
                           f"CodebookArray, got {type(value).__name__}")


def _shift(node: Node, delta: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``dW E[x]`` per output channel (float64, NaN where an input mean it needs is unknown)."""
    out = delta.shape[0]
    if node.op == "linear":
        d = delta.reshape(out, -1)
        groups = 1
    else:  # conv: (out, in / groups, *kernel), the taps summed
        groups = int(node.attrs.get("groups", 1))
        d = delta.reshape(out, delta.shape[1] if delta.ndim > 1 else 1, -1).sum(axis=2)
    if mean.size != groups * d.shape[1]:
        raise CompressionError(f"layer {node.name!r}: weight of shape {delta.shape} does not read "
                               f"{mean.size} input channels in {groups} groups")
    rows = _per_input(node, mean, out)  # the input means each output reads
    used = d != 0
    known = np.where(used, rows, 0.0)
    shift = (d * known).sum(axis=1)
    return np.where((used & np.isnan(rows)).any(axis=1), np.nan, shift)


def correct_bias(
    original: Mapping[str, np.ndarray],
    compressed: Mapping[str, object],
    graph: Graph,
) -> dict[str, object]:
    """``compressed`` with the expected output shift of every changed conv/linear layer removed.

    For each ``conv`` or ``linear`` node of ``graph`` whose weight differs between ``original``
    and ``compressed`` (an array, a :class:`~coreprune.QuantizedArray` or a shared-weight
    ``CodebookArray``), the shift
    ``s = (W' - W) E[x]`` (``E[x]`` from :func:`channel_statistics` of ``original``) is taken out of
    the layer's bias (``b - s``) or, without one, added to the ``running_mean`` of the batch norm
    that is the only reader of its output. Output channels that read an input of unknown mean are
    left as they are, as are layers with neither place for the correction.

    Parameters
    ----------
    original : Mapping[str, numpy.ndarray]
        The float weights before compression.
    compressed : Mapping[str, numpy.ndarray, QuantizedArray or CodebookArray]
        The same names after quantization, weight sharing or pruning (e.g.
        :func:`coreprune.quantize`'s result).
    graph : coreprune.structured.Graph
        The model's graph (``coreprune.torch.trace_graph`` / ``coreprune.mxnet.trace_graph``).

    Returns
    -------
    dict
        A new dict, ``compressed`` with corrected biases / running means (float arrays of their
        original dtype); every other value is the input object.

    Raises
    ------
    CompressionError
        A weight or parameter the graph names is missing, or a shape the graph does not explain.

    Examples
    --------
    >>> import numpy as np
    >>> from coreprune.structured import Graph, Node
    >>> g = Graph([Node("x", "input", (), 2),
    ...            Node("bn", "batchnorm", ("x",), 2, {"weight": "bn.weight", "bias": "bn.bias",
    ...                 "running_mean": "bn.running_mean", "running_var": "bn.running_var"}),
    ...            Node("fc", "linear", ("bn",), 1, {"weight": "fc.weight", "bias": "fc.bias"})],
    ...           outputs=["fc"])
    >>> w = {"bn.weight": np.zeros(2, np.float32), "bn.bias": np.array([1.0, 3.0], np.float32),
    ...      "bn.running_mean": np.zeros(2, np.float32), "bn.running_var": np.ones(2, np.float32),
    ...      "fc.weight": np.array([[0.5, 0.25]], np.float32), "fc.bias": np.zeros(1, np.float32)}
    >>> rounded = dict(w, **{"fc.weight": np.array([[0.5, 0.5]], np.float32)})  # +0.25 on input 2
    >>> correct_bias(w, rounded, g)["fc.bias"].tolist()  # its mean is 3: the output moved by 0.75
    [-0.75]
    """
    stats = channel_statistics(graph, original)
    out: dict[str, object] = dict(compressed)
    for node in graph.nodes.values():
        if node.op not in ("conv", "linear"):
            continue
        key = node.params["weight"]
        if key not in original or key not in compressed:
            raise CompressionError(f"layer {node.name!r}: weight {key!r} is not in the weights")
        before = np.asarray(original[key], np.float64)
        after = _dense(compressed[key], key).astype(np.float64)
        if after.shape != before.shape:
            raise CompressionError(f"tensor {key!r}: shape {after.shape} after, {before.shape} before")
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite weights: no correction
            delta = after - before
            if not delta.any():
                continue
            shift = _shift(node, delta, stats[node.inputs[0]][0])
        shift = np.where(np.isfinite(shift), shift, 0.0)  # unknown inputs (NaN) or non-finite weights
        target, sign = _target(graph, node, compressed)
        if target is not None and shift.any():
            old = np.asarray(compressed[target])
            if old.shape != shift.shape:
                raise CompressionError(f"tensor {target!r}: shape {old.shape}, but layer {node.name!r} has "
                                       f"{shift.size} output channels")
            out[target] = (old.astype(np.float64) + sign * shift).astype(old.dtype)
    return out


def _per_input(node: Node, values: np.ndarray, out: int) -> np.ndarray:
    """Per-channel input values (``(C_in,)``) laid out as each output's inputs: ``(out, C_in / groups)``."""
    groups = int(node.attrs.get("groups", 1)) if node.op == "conv" else 1
    per_group = values.reshape(groups, -1)
    return per_group[np.arange(out) // (out // groups)]


def _target(graph: Graph, node: Node, weights: Mapping[str, object]) -> tuple[str | None, float]:
    """Where the shift of ``node`` goes: its bias (subtracted) or its only reader's running mean."""
    bias = node.params.get("bias")
    if bias is not None and isinstance(weights.get(bias), np.ndarray):
        return bias, -1.0
    readers = graph.consumers(node.name)
    if len(readers) == 1 and readers[0].op == "batchnorm":
        mean = readers[0].params.get("running_mean")
        if mean is not None and isinstance(weights.get(mean), np.ndarray):
            return mean, 1.0
    return None, 0.0
