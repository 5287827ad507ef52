"""Data-free estimates of each layer's input second moments, from the batch norms' statistics.

GPTQ (:mod:`coreprune.gptq`) needs, for each layer, ``H = E[x x^T]`` over its input rows. Without
data, :func:`~coreprune.channel_statistics` already gives each channel's mean ``mu_c`` and
variance ``v_c`` wherever a batch norm fixes them (every batch norm's output has mean ``beta`` and
variance ``gamma^2 var / (var + eps)`` over the data it was trained on). What it cannot give is
how the channels move **together**. This module estimates that correlation ``R`` by propagating it
through the graph with the model's own weights, and returns::

    H = D^1/2 R D^1/2 + mu mu^T              D = diag(v), R_cc = 1

Rules per node (``C`` the input covariance ``D^1/2 R D^1/2``, with a unit variance where the
statistics do not know it):

* ``conv`` and ``linear``: ``C' = sum_k W_k C W_k^T`` over the kernel taps ``k``, as if the input
  were uncorrelated between different positions (a depthwise kernel: ``C'_ij = C_ij (K_i . K_j)``);
  the output correlation is ``C'`` normalised;
* ``batchnorm``: the correlation passes, with the sign of ``gamma`` (its scale and shift do not
  change a correlation);
* ``identity`` with ``fn="clip"`` (ReLU, ReLU6): ``Cov(f(a), f(b)) ~ E[f'(a)] E[f'(b)] Cov(a, b)``
  with ``E[f'] = P(lo < a < hi)``, the first term of Mehler's expansion for jointly normal
  ``a, b`` (Stein's lemma; the rest of the series adds ``rho^n / n!`` terms, ``n >= 2``), off by
  up to about 0.15 in a correlation. On EfficientNet-Lite0 the series to 12 terms gave GPTQ a
  lower top-1 agreement on held-out crops than the first order (a one-off trial, not kept), so
  the first order is used; the variance itself is the clipped normal's, exact. The smooth
  activations (sigmoid, tanh, GELU, SiLU, hardswish) follow the same rule, with ``E[f']`` and the
  variance by Gauss-Hermite quadrature (GELU's curvature puts it up to 0.2 off); any other
  ``identity`` passes the correlation on unchanged;
* ``add`` with ``fn="sum"``: covariances add (inputs taken as independent);
* ``concat``, ``slice``, ``shuffle``: the blocks move with their channels; ``flatten`` gives
  different spatial positions no correlation;
* ``input``, ``mul``, ``layernorm``, ``normalize``, ``embedding``: no correlation (identity).

A layer gets an estimate only where :func:`~coreprune.channel_statistics` knows the mean and
variance of every channel it reads (after a batch norm, and through ReLU/ReLU6, the smooth
activations that the graph names, sums; pooling does not keep the spread): the first layer, the
classifier after a global pool, and layers after a layer norm or an activation that the graph
does not name get none, and :func:`coreprune.quantize` rounds them to nearest.
For a ``k x k`` convolution the patch moment is ``H = C (x) I_taps + (mu mu^T) (x) 1`` in the
weight's ``(C, kh, kw)`` order (different taps uncorrelated, as above; zero padding not modelled).

How good the estimate is depends on the network; ``tests/benchmarks/bench_fidelity.py --moments``
compares it, layer by layer, with the moments measured on real crops (docs/quantization.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeGuard

import numpy as np
from scipy.special import ndtr

from .bias_correction import channel_statistics, gaussian_moments
from .structured.graph import SMOOTH_ACTIVATIONS, Graph, Node

__all__ = ["estimate_hessians"]

#: Channels above which a node's correlation is not computed (taken as none, channels independent):
#: a flattened feature map's ``C * H * W`` features or a vocabulary-sized output would need a matrix
#: of that size squared (4096: 128 MiB in float64).
MAX_CHANNELS = 4096
#: Fan-in above which a layer gets no estimate (its ``H`` alone would take 512 MiB).
MAX_FAN_IN = 8192


def _numeric(value: object) -> TypeGuard[np.ndarray]:
    """A real-valued array (integers and floats; not object, complex or string arrays)."""
    return isinstance(value, np.ndarray) and value.dtype.kind in "iuf"


def _covariance(corr: np.ndarray | None, var: np.ndarray) -> np.ndarray:
    """``D^1/2 R D^1/2`` with unit variance where ``var`` is unknown (NaN)."""
    sd = np.sqrt(np.where(np.isfinite(var) & (var >= 0), var, 1.0))
    if corr is None:
        return np.diag(sd * sd)
    return corr * np.outer(sd, sd)


def _correlation(cov: np.ndarray) -> np.ndarray:
    """``cov`` normalised to unit diagonal; a channel of no variance is uncorrelated with all."""
    d = np.diag(cov).copy()
    live = np.isfinite(d) & (d > 1e-300)
    sd = np.sqrt(np.where(live, d, 1.0))
    with np.errstate(invalid="ignore", over="ignore"):
        r = cov / np.outer(sd, sd)
    r = np.where(np.outer(live, live) & np.isfinite(r), r, 0.0)
    np.fill_diagonal(r, 1.0)
    return r


def _activation_covariance(node: Node, corr: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """``Cov(f(a_i), f(a_j)) ~ E[f'(a_i)] E[f'(a_j)] Cov(a_i, a_j)`` for the node's activation ``f``.

    For normal ``a`` and ``f = clip(., lo, hi)``, ``E[f'(a)] = P(lo < a < hi) = Phi((hi - m) / s) -
    Phi((lo - m) / s)``; for a smooth activation, by quadrature. Only the off-diagonal entries are
    used (the diagonal is the activation's exact variance).
    """
    sd = np.sqrt(np.maximum(var, 0.0))
    if node.attrs.get("fn") == "clip":
        lo, hi = float(node.attrs["lo"]), float(node.attrs["hi"])
        live = sd > 0
        safe = np.where(live, sd, 1.0)
        slope = np.where(live, ndtr((hi - mean) / safe) - ndtr((lo - mean) / safe), 0.0)
    else:
        slope = gaussian_moments(str(node.attrs["fn"]), mean, var)[2]
    return corr * np.outer(sd * slope, sd * slope)


def _layer(node: Node, weight: np.ndarray, cov: np.ndarray) -> np.ndarray | None:
    """Output covariance of a conv/linear node whose input has covariance ``cov``."""
    out = weight.shape[0]
    if node.op == "linear":
        w = weight.reshape(out, -1)
        return w @ cov @ w.T if w.shape[1] == cov.shape[0] else None
    groups = int(node.attrs.get("groups", 1))
    per = weight.shape[1] if weight.ndim > 1 else 1
    if per * groups != cov.shape[0] or out % groups:
        return None
    taps = weight.reshape(out, per, -1)
    if groups == 1:
        return np.einsum("oit,ij,pjt->op", taps, cov, taps, optimize=True)
    source = np.arange(out) // (out // groups)  # the group each output reads
    if per == 1:  # depthwise (with any channel multiplier)
        k = taps[:, 0, :]
        return cov[np.ix_(source, source)] * (k @ k.T)
    # grouped: each tap as a dense (out, in) matrix, zero outside the output's group
    dense = np.zeros((out, cov.shape[0], taps.shape[2]))
    for o in range(out):
        g = source[o]
        dense[o, g * per:(g + 1) * per] = taps[o]
    return np.einsum("oit,ij,pjt->op", dense, cov, dense, optimize=True)


def estimate_hessians(graph: Graph, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Estimated ``E[x x^T]`` of every one-group conv and linear layer's input rows, without data.

    The means and variances come from :func:`coreprune.channel_statistics` (the batch norms'
    statistics); the correlations between channels are propagated through the graph with the
    weights (rules in :mod:`coreprune.graph_moments`). Pass the result to
    ``coreprune.quantize(..., hessians=)`` for GPTQ rounding without calibration data, with the
    same ``graph=`` for the bias correction.

    Parameters
    ----------
    graph : coreprune.structured.Graph
        The model's graph (``coreprune.torch.trace_graph`` / ``coreprune.mxnet.trace_graph``).
    weights : Mapping[str, numpy.ndarray]
        The float weights, batch norm statistics included.

    Returns
    -------
    dict[str, numpy.ndarray]
        Weight name -> float64 ``(fan_in, fan_in)`` symmetric positive semi-definite matrix, in the
        order of ``weight.reshape(out, -1)``; only layers whose every input channel has a known
        mean and variance. A weight read by several layers gets the mean of their estimates.

    Examples
    --------
    >>> import numpy as np
    >>> from coreprune.structured import Graph, Node
    >>> bn = {r: f"bn.{r}" for r in ("weight", "bias", "running_mean", "running_var")}
    >>> g = Graph([Node("x", "input", (), 2), Node("fc1", "linear", ("x",), 2, {"weight": "fc1.weight"}),
    ...            Node("bn", "batchnorm", ("fc1",), 2, bn),
    ...            Node("fc2", "linear", ("bn",), 1, {"weight": "fc2.weight"})], outputs=["fc2"])
    >>> w = {"fc1.weight": np.array([[1.0, 0.0], [1.0, 1.0]], np.float32),
    ...      "fc2.weight": np.ones((1, 2), np.float32),
    ...      "bn.weight": np.array([2.0, 1.0], np.float32), "bn.bias": np.array([1.0, 0.0], np.float32),
    ...      "bn.running_mean": np.zeros(2, np.float32), "bn.running_var": np.ones(2, np.float32)}
    >>> h = estimate_hessians(g, w)
    >>> sorted(h)                                 # fc1 reads the model input: no statistics
    ['fc2.weight']
    >>> np.round(h["fc2.weight"], 3).tolist()     # var 4 and 1, correlation 1/sqrt(2), mean (1, 0)
    [[5.0, 1.414], [1.414, 1.0]]
    """
    stats = channel_statistics(graph, weights)
    readers: dict[str, int] = {}
    for node in graph.nodes.values():
        for src in node.inputs:
            readers[src] = readers.get(src, 0) + 1
    corr: dict[str, np.ndarray | None] = {}
    sums: dict[str, tuple[np.ndarray, int]] = {}
    for node in graph.nodes.values():
        ins = [(corr[s], stats[s][1]) for s in node.inputs]
        if node.op in ("conv", "linear") and ins:
            _moment(node, weights, ins[0][0], stats[node.inputs[0]], sums)
        result = _propagate(node, ins, weights, stats)
        # a weight that does not fit its node, or a concatenation too wide: no correlation known
        fits = result is not None and result.shape == (node.channels, node.channels)
        corr[node.name] = result if fits else None
        for src in node.inputs:  # free what no later node reads
            readers[src] -= 1
            if readers[src] == 0 and src not in graph.outputs:
                corr.pop(src, None)
    return {name: total / count for name, (total, count) in sums.items()}


def _moment(node: Node, weights: Mapping[str, np.ndarray], corr: np.ndarray | None,
            stat: tuple[np.ndarray, np.ndarray], sums: dict[str, tuple[np.ndarray, int]]) -> None:
    """Add this layer's estimated patch moment to ``sums`` when its input statistics are known."""
    key = node.params.get("weight")
    weight = weights.get(key) if key is not None else None
    mean, var = stat
    if key is None or not _numeric(weight) or weight.ndim < 2:
        return
    if int(node.attrs.get("groups", 1)) != 1:
        return
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
        return
    fan_in = int(np.prod(weight.shape[1:]))
    if fan_in % mean.size or fan_in > MAX_FAN_IN:
        return
    taps = fan_in // mean.size
    h = _covariance(corr, var)
    if taps == 1:
        h += np.outer(mean, mean)
    else:
        h = np.kron(h, np.eye(taps)) + np.kron(np.outer(mean, mean), np.ones((taps, taps)))
    total, count = sums.get(key, (np.zeros_like(h), 0))
    if total.shape == h.shape:
        sums[key] = (total + h, count + 1)


def _propagate(node: Node, ins: list[tuple[np.ndarray | None, np.ndarray]],
               weights: Mapping[str, np.ndarray], stats: Mapping[str, tuple[np.ndarray, np.ndarray]]
               ) -> np.ndarray | None:
    """The correlation of ``node``'s output channels (None: none known, the identity)."""
    op, fn = node.op, node.attrs.get("fn")
    # no matrix wider than MAX_CHANNELS is ever formed, not even a diagonal one for an input
    if node.channels > MAX_CHANNELS or any(v.size > MAX_CHANNELS for _, v in ins):
        return None
    if op in ("conv", "linear"):
        weight = weights.get(node.params.get("weight", ""))
        if not _numeric(weight) or not ins:
            return None
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite weights: masked below
            cov = _layer(node, np.asarray(weight, np.float64), _covariance(*ins[0]))
        return None if cov is None else _correlation(cov)
    if op == "batchnorm":
        r = ins[0][0]
        if r is None:
            return None
        key = node.params.get("weight")
        gamma = weights.get(key) if key is not None else None
        fixed = node.attrs.get("fix_gamma", 0)
        if fixed or not _numeric(gamma) or gamma.shape != (r.shape[0],):
            return r
        sign = np.where(gamma < 0, -1.0, 1.0)
        return r * np.outer(sign, sign)
    if op == "identity" and (fn == "clip" or fn in SMOOTH_ACTIVATIONS):
        r, _ = ins[0]
        mean, var = stats[node.inputs[0]]
        if r is None or not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
            return r
        cov = _activation_covariance(node, r, mean, var)
        out_var = stats[node.name][1]
        np.fill_diagonal(cov, np.where(np.isfinite(out_var), out_var, 0.0))
        return _correlation(cov)
    if op == "identity":
        return ins[0][0]
    if op == "add" and fn == "sum":
        if all(r is None for r, _ in ins):
            return None
        total = np.zeros((node.channels, node.channels))
        for r, v in ins:
            total += _covariance(r, v)
        return _correlation(total)
    if op == "concat":
        if all(r is None for r, _ in ins):
            return None
        sizes = [v.size for _, v in ins]
        r = np.zeros((sum(sizes), sum(sizes)))
        at = 0
        for (block, _), n in zip(ins, sizes):
            r[at:at + n, at:at + n] = np.eye(n) if block is None else block
            at += n
        return r
    if op == "slice":
        r = ins[0][0]
        start, stop = int(node.attrs["start"]), int(node.attrs["stop"])
        return None if r is None else r[start:stop, start:stop]
    if op == "shuffle":
        r = ins[0][0]
        g, c = int(node.attrs.get("groups", 1)), node.channels
        order = np.arange(c).reshape(g, c // g).T.reshape(-1)
        return None if r is None else r[np.ix_(order, order)]
    if op == "flatten":
        r = ins[0][0]
        per = node.channels // max(1, ins[0][1].size)
        return None if r is None else np.kron(r, np.eye(per))
    return None
