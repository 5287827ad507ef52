"""Statistics of weights: how sparse a dict is (:func:`sparsity`), and per-tensor statistics for
``coreprune inspect`` (and anyone who wants them), one tensor at a time.

:func:`tensor_stats` summarises one array: size, sparsity, range, moments, the share of
small weights, what 8- and 4-bit quantization would cost, and how much signal 8-bit
quantization keeps (:func:`sqnr_db`). The moments are accumulated over chunks of a
flattened view in float64, so a tensor costs a few MiB of working memory beyond itself
and a 4 GiB file can be inspected one tensor at a time.

Conventions
-----------
* ``sparsity``: fraction of elements equal to 0 (``-0.0`` counts, NaN does not).
* ``below_threshold``: fraction with ``|w| <= threshold`` -- exactly the elements
  ``prune_threshold(weights, threshold)`` would zero. Floating tensors only.
* ``std``: population standard deviation (``ddof=0``), as ``numpy.std``.
* ``bytes_8bit`` / ``bytes_4bit``: ``QuantizedArray.nbytes`` of symmetric quantization
  with one scale per output channel (``axis=0``; float32 at 8 bits, float16 at 4) for tensors
  with ``ndim >= 2`` and one float32 scale per tensor otherwise:
  ``ceil(n * bits / 8) + 4 * scales`` (``+ 2 * scales`` per channel at 4 bits).
* ``sqnr_8bit_db``: signal-to-quantization-noise ratio of that 8-bit quantization,
  ``10 * log10(sum(w**2) / sum((w - dequantize(q))**2))``; ``inf`` when the
  reconstruction is exact (an all-zero tensor included).

Floating statistics are ``None`` for integer, boolean and complex tensors, and the
quantization fields are ``None`` for tensors holding NaN or Inf (``nonfinite`` counts
them) and for empty tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np

from .errors import CompressionError
from .quantization import QuantizedArray, quantize
from .selection import Pattern, is_floating, select

__all__ = [
    "sparsity",
    "TensorStats",
    "tensor_stats",
    "sqnr_db",
    "quantized_nbytes",
    "totals",
    "DEFAULT_THRESHOLD",
]

#: Default ``threshold`` of :func:`tensor_stats` and ``coreprune inspect --threshold``.
DEFAULT_THRESHOLD = 1e-3
_CHUNK = 1 << 18  # elements per float64 working chunk: 2 MiB


@dataclass(frozen=True)
class TensorStats:
    """Statistics of one tensor; see the module docstring for the conventions.

    Attributes
    ----------
    name : str
    shape : tuple of int
    dtype : str
        NumPy dtype name (``"float32"``, ``"bfloat16"``, ...).
    parameters : int
        Number of elements.
    nbytes : int
        Dense size in bytes.
    zeros : int
    sparsity : float or None
        ``zeros / parameters``; None for an empty tensor.
    min, max, mean, std : float or None
        Over all elements, in float64 (NaN if the tensor holds NaN).
    nonfinite : int
        Number of NaN and Inf elements.
    below_threshold : float or None
        Fraction with ``|w| <= threshold``.
    bytes_8bit, bytes_4bit : int or None
        Size after 8- / 4-bit quantization.
    sqnr_8bit_db : float or None
        Signal-to-noise ratio of 8-bit quantization in dB.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    parameters: int
    nbytes: int
    zeros: int
    sparsity: float | None
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    nonfinite: int
    below_threshold: float | None
    bytes_8bit: int | None
    bytes_4bit: int | None
    sqnr_8bit_db: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields: the shape as a list, non-finite floats as ``"inf"``, ``"-inf"``, ``"nan"``.

        Examples
        --------
        >>> import numpy as np
        >>> d = tensor_stats("b", np.zeros(4, np.float32)).as_dict()
        >>> d["shape"], d["sparsity"], d["sqnr_8bit_db"]
        ([4], 1.0, 'inf')
        """
        out = asdict(self)
        out["shape"] = list(self.shape)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = str(value)
        return out


def _chunks(flat: np.ndarray) -> Iterable[np.ndarray]:
    for start in range(0, flat.size, _CHUNK):
        yield flat[start : start + _CHUNK].astype(np.float64)


def sqnr_db(original: np.ndarray, reconstructed: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in decibels.

    ``10 * log10(sum(w**2) / sum((w - r)**2))``, accumulated in float64 chunk by chunk.

    Parameters
    ----------
    original, reconstructed : numpy.ndarray
        Same shape; any real dtype (bfloat16 included).

    Returns
    -------
    float
        ``inf`` when the reconstruction is exact (zero noise), ``-inf`` when the
        signal is zero but the noise is not.

    Raises
    ------
    CompressionError
        The shapes differ.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.array([1.0, -2.0, 3.0])
    >>> round(sqnr_db(w, w + 0.1), 3)   # 10 log10(14 / 0.03)
    26.69
    >>> sqnr_db(w, w)
    inf
    """
    if original.shape != reconstructed.shape:
        raise CompressionError(f"shapes differ: {original.shape} vs {reconstructed.shape}")
    signal = noise = 0.0
    for w, r in zip(_chunks(original.reshape(-1)), _chunks(reconstructed.reshape(-1))):
        signal += float(np.dot(w, w))
        d = w - r
        noise += float(np.dot(d, d))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def quantized_nbytes(shape: tuple[int, ...], bits: int) -> int:
    """Bytes of ``bits``-bit quantization in the convention of :func:`tensor_stats`.

    One scale per index of axis 0 for ``ndim >= 2`` (float16 below 8 bits, float32 at 8 and
    more, as ``quantize``'s ``scale_dtype="auto"`` stores them), one float32 scale per tensor
    otherwise; equal to ``quantize(...).nbytes`` with that layout (when the scales fit float16).

    Examples
    --------
    >>> quantized_nbytes((64, 3, 3, 3), 4), quantized_nbytes((64, 3, 3, 3), 8), quantized_nbytes((10,), 8)
    (992, 1984, 14)
    """
    n = math.prod(shape)
    if len(shape) < 2:
        return math.ceil(n * bits / 8) + 4
    return math.ceil(n * bits / 8) + (2 if bits < 8 else 4) * shape[0]


def tensor_stats(name: str, array: np.ndarray, *, threshold: float = DEFAULT_THRESHOLD) -> TensorStats:
    """Statistics of one tensor (module docstring), computed in bounded extra memory.

    Parameters
    ----------
    name : str
    array : numpy.ndarray
        Any numeric array (a memory map is read chunk by chunk).
    threshold : float
        For ``below_threshold``, ``>= 0``.

    Returns
    -------
    TensorStats

    Raises
    ------
    CompressionError
        ``threshold`` is negative or NaN.

    Examples
    --------
    >>> import numpy as np
    >>> s = tensor_stats("fc.weight", np.array([[0.0, 0.5], [-1.0, 0.0005]], np.float32))
    >>> s.parameters, s.sparsity, s.min, s.max, s.below_threshold, s.bytes_8bit
    (4, 0.25, -1.0, 0.5, 0.5, 12)
    >>> s.sqnr_8bit_db > 40
    True
    """
    if not (threshold >= 0):  # also refuses NaN
        raise CompressionError(f"threshold must be >= 0, got {threshold!r}")
    flat = array.reshape(-1)
    n = int(flat.size)
    real = array.dtype.kind in "biuf" or is_floating(array.dtype)
    floating = is_floating(array.dtype)
    zeros = nonfinite = below = 0
    lo, hi = math.inf, -math.inf
    count, mean, m2 = 0, 0.0, 0.0
    for chunk in _chunks(flat) if real else ():
        zeros += int(np.count_nonzero(chunk == 0))
        finite = np.isfinite(chunk)
        nonfinite += int(chunk.size - np.count_nonzero(finite))
        below += int(np.count_nonzero(np.abs(chunk) <= threshold))
        lo, hi = float(np.minimum(lo, chunk.min())), float(np.maximum(hi, chunk.max()))  # NaN propagates
        # Chan et al.'s pairwise update: merge this chunk's mean and M2 into the running ones
        c_mean = float(chunk.mean())
        c_m2 = float(np.sum((chunk - c_mean) ** 2))
        total = count + chunk.size
        delta = c_mean - mean
        mean += delta * chunk.size / total
        m2 += c_m2 + delta * delta * count * chunk.size / total
        count = total
    if not real:
        zeros = n - int(np.count_nonzero(flat))
    has_values = real and n > 0
    quantizable = floating and n > 0 and nonfinite == 0
    bytes_8bit = bytes_4bit = sqnr = None
    if quantizable:
        # include= selects it, so quantize returns it quantized
        q = cast(QuantizedArray, quantize({name: array}, 8, axis=0 if array.ndim >= 2 else None,
                                          include=lambda _n, _a: True)[name])
        bytes_8bit = q.nbytes
        bytes_4bit = quantized_nbytes(tuple(array.shape), 4)
        sqnr = sqnr_db(array, q.dequantize())
    return TensorStats(
        name=name,
        shape=tuple(int(d) for d in array.shape),
        dtype=array.dtype.name,
        parameters=n,
        nbytes=int(array.nbytes),
        zeros=zeros,
        sparsity=zeros / n if n else None,
        min=lo if has_values else None,
        max=hi if has_values else None,
        mean=mean if has_values else None,
        std=(math.sqrt(m2 / count) if m2 >= 0 else math.nan) if has_values else None,
        nonfinite=nonfinite,
        below_threshold=below / n if floating and n else None,
        bytes_8bit=bytes_8bit,
        bytes_4bit=bytes_4bit,
        sqnr_8bit_db=sqnr,
    )


def totals(stats: Iterable[TensorStats]) -> dict[str, Any]:
    """Sum a model's per-tensor statistics.

    Returns
    -------
    dict
        ``tensors``, ``parameters``, ``zeros``, ``sparsity`` (over all elements), ``nbytes``
        (dense), and ``bytes_8bit`` / ``bytes_4bit``: every quantizable tensor at its quantized
        size, every other tensor at its dense size.

    Examples
    --------
    >>> import numpy as np
    >>> t = totals([tensor_stats("w", np.ones((4, 4), np.float32)), tensor_stats("n", np.arange(3))])
    >>> t["parameters"], t["nbytes"], t["bytes_8bit"]
    (19, 88, 56)
    """
    out: dict[str, Any] = {"tensors": 0, "parameters": 0, "zeros": 0, "nbytes": 0, "bytes_8bit": 0,
                           "bytes_4bit": 0}
    for s in stats:
        out["tensors"] += 1
        out["parameters"] += s.parameters
        out["zeros"] += s.zeros
        out["nbytes"] += s.nbytes
        out["bytes_8bit"] += s.nbytes if s.bytes_8bit is None else s.bytes_8bit
        out["bytes_4bit"] += s.nbytes if s.bytes_4bit is None else s.bytes_4bit
    out["sparsity"] = out["zeros"] / out["parameters"] if out["parameters"] else None
    return out


def sparsity(
    weights: Mapping[str, np.ndarray],
    *,
    include: Pattern = None,
    exclude: Pattern = None,
) -> dict[str, Any]:
    """Fraction of exact zeros, per selected tensor and over the whole selection.

    An entry counts as zero when ``w == 0`` (``-0.0`` included, NaN not). An empty tensor has
    fraction 0.0, and so does ``total`` when the selection holds no entry at all.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Name to array. Not modified.
    include, exclude : glob, list of globs, predicate, or None
        Which tensors to count, see :func:`coreprune.selection.select` (default: the weights,
        :func:`coreprune.selection.is_default_weight`).

    Returns
    -------
    dict
        ``{"per_tensor": {name: float}, "zeros": int, "count": int, "total": float}`` where
        ``zeros`` and ``count`` are summed over the selection and ``total = zeros / count``.

    Examples
    --------
    >>> import numpy as np
    >>> s = sparsity({"a": np.array([[0.0, 1.0], [0.0, 0.0]]), "b": np.zeros((2, 2)), "bias": np.zeros(3)})
    >>> s["per_tensor"], s["zeros"], s["count"], s["total"]
    ({'a': 0.75, 'b': 1.0}, 7, 8, 0.875)
    """
    per_tensor: dict[str, float] = {}
    zeros = count = 0
    for name in select(weights, include, exclude):
        w = weights[name]
        z = int(np.count_nonzero(w == 0))
        per_tensor[name] = z / w.size if w.size else 0.0
        zeros += z
        count += int(w.size)
    total = zeros / count if count else 0.0
    return {"per_tensor": per_tensor, "zeros": zeros, "count": count, "total": total}
