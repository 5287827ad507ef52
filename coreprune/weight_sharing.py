"""Weight sharing: each tensor's surviving weights replaced by one of ``2**bits`` shared values.

Deep Compression's second stage (Han et al., ICLR 2016). The surviving (unpruned) weights of a
tensor are clustered with one-dimensional k-means into ``k = 2**bits`` centroids; every surviving
weight is then stored as the index (``code``) of its centroid, and the tensor as codes + codebook
+ mask, a :class:`CodebookArray`.

* :func:`kmeans_codebook` / :func:`share_weights`: k-means with the paper's *linear*
  initialisation (centroids evenly spaced over ``[min, max]`` of the surviving weights), over the
  surviving weights only, so pruned zeros neither pull a centroid nor take a code.
  ``share_weights(weights, budget=4.5)`` chooses each tensor's width so that the ``.cpz`` file's
  entropy-coded tensors average at most ``budget`` bits per weight (:func:`stored_nbytes`), by
  the allocation of ``quantize(budget=)`` (:func:`coreprune.bit_budget.allocate_bits`).
* :func:`centroid_gradients`: the gradient of a loss with respect to each centroid, which is the
  sum of the gradients of the weights that share it; the frameworks' glue
  (``coreprune.torch.CodebookLinear``-style fine-tuning) follows the same rule.
* :func:`nf4_codebook` and :func:`lloyd_max_gaussian`: fixed non-uniform codebooks that need no
  data, and :func:`quantize_to_codebook` to use them (scaled per tensor).

In one dimension the nearest centroid of ``x`` among sorted centroids is found by a binary
search over the midpoints between neighbours, so each k-means iteration is one
``numpy.searchsorted`` (O(n log k)) and one ``numpy.bincount``: no Python loop over weights or
clusters. :func:`_kmeans_reference` is the plain all-pairs version the tests compare it with.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from .bit_budget import allocate_bits, noise_to_signal, small_tensors, widths_checked
from .errors import CompressionError
from .selection import Pattern, check_weights, is_floating, require_finite, select

__all__ = [
    "CodebookArray",
    "kmeans_codebook",
    "share_weights",
    "centroid_gradients",
    "nf4_codebook",
    "lloyd_max_gaussian",
    "quantize_to_codebook",
    "stored_nbytes",
    "codebook_costs",
    "CODEBOOK_WIDTHS",
]

#: The candidate widths of ``share_weights(budget=...)``.
CODEBOOK_WIDTHS = (3, 4, 5, 6, 7, 8)

_MAX_BITS = 16


def _check_bits(bits: object, what: str = "bits") -> int:
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)):
        raise CompressionError(f"{what} must be an int in 1..{_MAX_BITS}, got {bits!r}")
    if not 1 <= int(bits) <= _MAX_BITS:
        raise CompressionError(f"{what} must be in 1..{_MAX_BITS}, got {bits}")
    return int(bits)


def _code_dtype(bits: int) -> np.dtype:
    return np.dtype(np.uint8 if bits <= 8 else np.uint16)


@dataclasses.dataclass(frozen=True, eq=False)
class CodebookArray:
    """A tensor stored as codes into a shared codebook, with an optional pruning mask.

    Attributes
    ----------
    codes : numpy.ndarray
        Shape ``shape``, uint8 (``bits <= 8``) or uint16; values in ``[0, 2**bits)``. Entries where
        ``mask`` is False are 0 and carry no information.
    codebook : numpy.ndarray
        float32, shape ``(2**bits,)``: the shared values.
    mask : numpy.ndarray or None
        bool, shape ``shape``; True = the weight survives. None means every weight survives.
    bits : int
        1 to 16.
    dtype : numpy.dtype
        dtype of the original tensor; :meth:`dequantize` returns it.

    Examples
    --------
    >>> import numpy as np
    >>> c = CodebookArray(codes=np.array([[0, 1], [1, 0]], np.uint8),
    ...                   codebook=np.array([-0.5, 2.0], np.float32),
    ...                   mask=np.array([[True, False], [True, True]]), bits=1,
    ...                   dtype=np.dtype(np.float32))
    >>> c.dequantize().tolist(), c.nnz, c.nbytes
    ([[-0.5, 0.0], [2.0, -0.5]], 3, 10)
    """

    codes: np.ndarray
    codebook: np.ndarray
    mask: np.ndarray | None
    bits: int
    dtype: np.dtype

    def __post_init__(self) -> None:
        def fail(problem: str) -> CompressionError:
            return CompressionError(f"inconsistent CodebookArray: {problem}")

        bits = _check_bits(self.bits)
        object.__setattr__(self, "bits", bits)
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            raise fail(f"dtype {self.dtype!r} is not a numpy dtype") from None
        if not is_floating(dtype):
            raise fail(f"dtype must be floating, got {dtype}")
        object.__setattr__(self, "dtype", dtype)
        if not isinstance(self.codes, np.ndarray) or self.codes.dtype != _code_dtype(bits):
            raise fail(f"codes must be a {_code_dtype(bits)} array for bits={bits}, "
                       f"got {getattr(self.codes, 'dtype', type(self.codes).__name__)}")
        if self.codes.size and int(self.codes.max()) >= 1 << bits:
            raise fail(f"codes outside [0, {(1 << bits) - 1}]")
        cb = self.codebook
        if not isinstance(cb, np.ndarray) or cb.dtype != np.float32 or cb.shape != (1 << bits,):
            raise fail(f"codebook must be float32 of shape ({1 << bits},), got "
                       f"{getattr(cb, 'dtype', type(cb).__name__)} {getattr(cb, 'shape', '')}")
        if not np.all(np.isfinite(cb)):
            raise fail("codebook holds NaN or Inf")
        if self.mask is not None:
            m = self.mask
            if not isinstance(m, np.ndarray) or m.dtype != np.bool_ or m.shape != self.codes.shape:
                raise fail(f"mask must be bool of shape {self.codes.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the tensor."""
        return tuple(self.codes.shape)

    @property
    def nnz(self) -> int:
        """Number of surviving weights (the codes that carry information)."""
        return int(self.codes.size if self.mask is None else np.count_nonzero(self.mask))

    @property
    def nbytes(self) -> int:
        """Bytes of the packed representation, without entropy coding.

        ``ceil(nnz * bits / 8)`` for the surviving codes bit-packed, plus the float32 codebook,
        plus ``ceil(size / 8)`` for the mask as a bitmap when there is one. The ``.cpz`` file can
        store the positions more compactly (relative gaps) and entropy-code both streams; this is
        the plain, uncoded figure.

        Examples
        --------
        >>> import numpy as np
        >>> w = np.linspace(-1, 1, 1000).astype(np.float32)
        >>> kmeans_codebook(w, bits=4).nbytes   # 1000 * 4 / 8 + 16 * 4, no mask
        564
        """
        n = math.ceil(self.nnz * self.bits / 8) + self.codebook.nbytes
        return n + (math.ceil(self.codes.size / 8) if self.mask is not None else 0)

    def dequantize(self) -> np.ndarray:
        """The tensor: ``codebook[codes]`` where the mask keeps, ``+0.0`` elsewhere, in ``dtype``.

        Examples
        --------
        >>> import numpy as np
        >>> kmeans_codebook(np.array([0.0, 1.0, 1.1, 3.0], np.float32), bits=1).dequantize().tolist()
        [0.0, 1.0499999523162842, 1.0499999523162842, 3.0]
        """
        values = self.codebook[self.codes]
        if self.mask is not None:
            values = np.where(self.mask, values, np.float32(0))
        return values.astype(self.dtype)

    def __repr__(self) -> str:
        return (f"CodebookArray(shape={self.shape}, dtype={self.dtype.name}, bits={self.bits}, "
                f"nnz={self.nnz}, nbytes={self.nbytes})")


def _assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the ascending ``centroids`` for each ``x`` (ties to the lower one)."""
    mid = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(mid, x, side="left").astype(np.intp)


def _kmeans_1d(x: np.ndarray, init: np.ndarray, iters: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's algorithm in one dimension (float64); empty clusters keep their centroid.

    Returns the centroids (ascending while the initialisation was) and the final assignment.
    """
    c = init.astype(np.float64).copy()
    codes = _assign(x, c)
    for _ in range(iters):
        counts = np.bincount(codes, minlength=c.size)
        sums = np.bincount(codes, weights=x, minlength=c.size)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        shift = float(np.max(np.abs(new - c))) if c.size else 0.0
        c = new
        codes = _assign(x, c)
        if shift <= tol:
            break
    return c, codes


def _kmeans_reference(x: np.ndarray, init: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """All-pairs reference of :func:`_kmeans_1d` (no early stop): distances to every centroid."""
    c = init.astype(np.float64).copy()
    for _ in range(iters):
        codes = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        for j in range(c.size):
            if np.any(codes == j):
                c[j] = x[codes == j].mean()
    return c, np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)


def kmeans_codebook(
    w: np.ndarray,
    bits: int,
    *,
    mask: np.ndarray | None = None,
    iters: int = 30,
    tol: float = 0.0,
) -> CodebookArray:
    """Cluster the surviving weights of one tensor into ``2**bits`` shared values.

    Parameters
    ----------
    w : numpy.ndarray
        Floating tensor of any shape, finite.
    bits : int
        1 to 16; the codebook has ``2**bits`` entries.
    mask : numpy.ndarray of bool, optional
        Shape of ``w``; True = survives. Default ``w != 0`` (a pruned tensor's zeros are not
        clustered). Entries outside the mask decode to ``+0.0``. The result's ``mask`` is None
        when every weight survives.
    iters : int, default 30
        Most Lloyd iterations; it stops earlier once no centroid moves by more than ``tol``.
    tol : float, default 0.0
        Convergence threshold, in units of ``w``.

    Returns
    -------
    CodebookArray
        ``codebook`` float32, ascending as the linear initialisation is; centroids of clusters that
        end up empty keep their initial value. With no surviving weight, the codebook is all zeros.

    Raises
    ------
    CompressionError
        Non-floating or non-finite ``w``, a mask of another shape or dtype, bad ``bits``.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.array([[0.0, -1.0, -0.9], [0.0, 2.0, 2.2]], np.float32)
    >>> c = kmeans_codebook(w, bits=1)
    >>> c.codebook.tolist(), c.codes.tolist()
    ([-0.949999988079071, 2.0999999046325684], [[0, 0, 0], [0, 1, 1]])
    >>> c.dequantize()[0].tolist()
    [0.0, -0.949999988079071, -0.949999988079071]
    """
    bits = _check_bits(bits)
    if not isinstance(w, np.ndarray) or not is_floating(w.dtype):
        raise CompressionError(f"kmeans_codebook expects a floating numpy array, got "
                               f"{getattr(w, 'dtype', type(w).__name__)}")
    require_finite("w", w)
    if mask is None:
        mask = w != 0
    elif not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != w.shape:
        raise CompressionError(f"mask must be a bool array of shape {w.shape}")
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 0:
        raise CompressionError(f"iters must be a non-negative int, got {iters!r}")
    k = 1 << bits
    x = w[mask].astype(np.float64)
    codes = np.zeros(w.shape, dtype=_code_dtype(bits))
    if x.size == 0:
        centroids = np.zeros(k)
    else:
        init = np.linspace(x.min(), x.max(), k)
        centroids, assigned = _kmeans_1d(x, init, int(iters), float(tol))
        codes[mask] = assigned
    kept = None if x.size == w.size else mask.copy()  # all survive: no bitmap to store
    return CodebookArray(codes=codes, codebook=centroids.astype(np.float32), mask=kept, bits=bits,
                         dtype=w.dtype)


def share_weights(
    weights: Mapping[str, np.ndarray],
    bits: int | Mapping[str, int] | None = None,
    *,
    budget: float | None = None,
    bit_choices: Sequence[int] = CODEBOOK_WIDTHS,
    importance: Mapping[str, float] | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
    include: Pattern = None,
    exclude: Pattern = None,
    iters: int = 30,
) -> dict[str, np.ndarray | CodebookArray]:
    """:func:`kmeans_codebook` on every selected tensor of a dict; the others are copied unchanged.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
    bits : int or Mapping[str, int], optional
        One width for every selected tensor, or a width per name (only those names are shared;
        ``include`` / ``exclude`` then do not apply). The paper uses 8 bits for conv layers and 5
        for fully connected ones on LeNet-5. Give ``bits`` or ``budget``, not both.
    budget : float, optional
        Average bits per weight of the selected tensors as a ``.cpz`` file stores them (the
        entropy-coded codes and positions plus the float32 codebook, :func:`stored_nbytes`; the
        manifest and the zip's headers are not counted). Each tensor is clustered at every width of
        ``bit_choices`` and the widths are allocated as ``quantize(budget=)`` allocates
        (:func:`coreprune.bit_budget.allocate_bits`: least sum of noise-to-signal ratios
        ``||w - w'||^2 / ||w||^2``, times ``importance``, within the budget; the default layout's
        small tensors, :func:`coreprune.bit_budget.small_tensors`, held at 8 bits while that floor
        fits). Each tensor is clustered once per candidate width and once more at its chosen one
        (:func:`codebook_costs`), one at a time.
    bit_choices : sequence of int, default CODEBOOK_WIDTHS
        The candidate widths of ``budget`` (2 to 16).
    importance : Mapping[str, float], optional
        Per-tensor factors of ``budget``'s error proxy (e.g. :func:`coreprune.measured_importance`).
    masks : Mapping[str, numpy.ndarray], optional
        Survival masks by name (from :func:`coreprune.prune_magnitude` or
        :func:`coreprune.prune_iterative`); a tensor without one uses ``w != 0``.
    include, exclude : glob, sequence of globs, predicate, or None
        As :func:`coreprune.select` (default: floating tensors with ``ndim >= 2``).
    iters : int, default 30

    Returns
    -------
    dict[str, numpy.ndarray or CodebookArray]
        A new dict in ``weights``' order.

    Raises
    ------
    CompressionError
        Neither or both of ``bits`` and ``budget``; a budget below what the narrowest width of
        every tensor stores; bad widths, names or masks.

    Examples
    --------
    >>> import numpy as np
    >>> w = {"fc.weight": np.arange(12, dtype=np.float32).reshape(3, 4), "fc.bias": np.ones(3)}
    >>> out = share_weights(w, bits=2)
    >>> type(out["fc.weight"]).__name__, out["fc.weight"].codebook.size, out["fc.bias"].tolist()
    ('CodebookArray', 4, [1.0, 1.0, 1.0])
    >>> rng = np.random.default_rng(0)
    >>> w = {"a.weight": rng.normal(size=(256, 64)).astype(np.float32),
    ...      "b.weight": rng.normal(size=(256, 64)).astype(np.float32)}
    >>> out = share_weights(w, budget=4.0)
    >>> stored = sum(stored_nbytes(v) for v in out.values())
    >>> bool(8 * stored / (2 * 256 * 64) <= 4.0)
    True
    """
    check_weights(weights)
    if (bits is None) == (budget is None):
        raise CompressionError("share_weights: give bits or budget, not both or neither")
    masks = {} if masks is None else masks
    if budget is not None:
        widths = _budget_widths(weights, budget, bit_choices, importance, masks, include, exclude, iters)
        return {name: widths[name] if name in widths else w.copy() for name, w in weights.items()}
    if isinstance(bits, Mapping):
        unknown = [n for n in bits if n not in weights]
        if unknown:
            raise CompressionError(f"share_weights: no tensor named {unknown}")
        chosen = {n: _check_bits(b, f"bits[{n!r}]") for n, b in bits.items()}
    else:
        b = _check_bits(bits)
        chosen = {n: b for n in select(weights, include, exclude)}
    out: dict[str, np.ndarray | CodebookArray] = {}
    for name, w in weights.items():
        if name in chosen:
            out[name] = kmeans_codebook(w, chosen[name], mask=masks.get(name), iters=iters)
        else:
            out[name] = w.copy()
    return out


def _budget_widths(
    weights: Mapping[str, np.ndarray],
    budget: float,
    bit_choices: Sequence[int],
    importance: Mapping[str, float] | None,
    masks: Mapping[str, np.ndarray],
    include: Pattern,
    exclude: Pattern,
    iters: int,
) -> dict[str, CodebookArray]:
    """The CodebookArray of the width :func:`allocate_bits` gives each selected tensor."""
    if (isinstance(budget, (bool, np.bool_)) or not isinstance(budget, (int, float, np.integer, np.floating))
            or not np.isfinite(budget) or budget <= 0):
        raise CompressionError(f"budget must be a positive number of bits per weight, got {budget!r}")
    budget = float(budget)
    choices = widths_checked(bit_choices)
    names = select(weights, include, exclude)
    sizes: dict[str, dict[int, int]] = {}
    errors: dict[str, dict[int, float]] = {}
    for name in names:
        sizes[name], errors[name] = codebook_costs(weights[name], choices, mask=masks.get(name), iters=iters)
    counts = {n: int(weights[n].size) for n in names}
    small = small_tensors({n: weights[n].shape for n in names})
    picked = allocate_bits(sizes, errors, counts, budget, importance, wide_only=small)
    # k-means is deterministic (linear initialisation): clustering again at the chosen width gives
    # the measured codebook, without holding every candidate's codes meanwhile
    return {n: kmeans_codebook(weights[n], b, mask=masks.get(n), iters=iters) for n, b in picked.items()}


def codebook_costs(
    w: np.ndarray,
    bit_choices: Sequence[int] = CODEBOOK_WIDTHS,
    *,
    mask: np.ndarray | None = None,
    iters: int = 30,
) -> tuple[dict[int, int], dict[int, float]]:
    """Per candidate width, the stored bytes and the error of ``kmeans_codebook(w, b)``: what
    ``share_weights(budget=)`` (and ``coreprune compress --codebook-budget``) allocate from.

    Parameters
    ----------
    w : numpy.ndarray
        Floating, finite; any shape.
    bit_choices : sequence of int, default CODEBOOK_WIDTHS
        Widths 2 to 16.
    mask, iters
        As :func:`kmeans_codebook` (default mask ``w != 0``).

    Returns
    -------
    sizes : dict[int, int]
        :func:`stored_nbytes` of each width's codebook.
    errors : dict[int, float]
        Its noise-to-signal ratio ``||w_kept - w'||^2 / ||w_kept||^2``, ``w_kept`` being ``w`` with
        the weights outside the mask zeroed (what pruning already decided is not counted).

    Examples
    --------
    >>> import numpy as np
    >>> sizes, errors = codebook_costs(np.random.default_rng(0).normal(size=4096), (3, 6))
    >>> sizes[3] < sizes[6], errors[3] > errors[6]
    (True, True)
    """
    kept = w if mask is None else np.where(mask, w, 0)
    sizes: dict[int, int] = {}
    errors: dict[int, float] = {}
    for b in widths_checked(bit_choices):
        c = kmeans_codebook(w, b, mask=mask, iters=iters)
        sizes[b] = stored_nbytes(c)
        errors[b] = noise_to_signal(kept, c.dequantize())
    return sizes, errors


def stored_nbytes(value: CodebookArray) -> int:
    """Bytes a ``.cpz`` file stores for ``value`` with entropy coding (the ``"ans"`` layout).

    The float32 codebook, the entropy-coded gap index of the surviving positions and the
    entropy-coded codes; the manifest entry and the zip headers are not counted. Below
    :attr:`CodebookArray.nbytes` (plain bit-packing) whenever the codes are unevenly used, as
    k-means codes of bell-shaped weights are.

    Examples
    --------
    >>> import numpy as np
    >>> c = kmeans_codebook(np.random.default_rng(0).normal(size=10_000).astype(np.float32), bits=6)
    >>> stored_nbytes(c) < c.nbytes     # 5.4 bits per weight instead of 6.2 (the codebook included)
    True
    """
    from .io.cpz_codebook import encode  # the file format builds on this module

    _, blobs = encode(value, entropy=True)
    return int(sum(blob.size for blob in blobs.values()))


def centroid_gradients(grad: np.ndarray, shared: CodebookArray) -> np.ndarray:
    """Gradient of a loss with respect to each centroid: the sum of its weights' gradients.

    With ``W = codebook[codes] * mask``, ``dL/dc_j = sum over surviving i with codes_i = j of
    dL/dW_i`` (the chain rule through the gather). Pruned entries contribute nothing.

    Parameters
    ----------
    grad : numpy.ndarray
        ``dL/dW``, the tensor's shape, floating.
    shared : CodebookArray

    Returns
    -------
    numpy.ndarray of float64, shape ``(2**bits,)``

    Examples
    --------
    >>> import numpy as np
    >>> c = kmeans_codebook(np.array([1.0, 1.1, 5.0, 0.0], np.float32), bits=1)
    >>> centroid_gradients(np.array([0.5, 0.25, 1.0, 7.0]), c).tolist()
    [0.75, 1.0]
    """
    grad = np.asarray(grad)
    if grad.shape != shared.shape:
        raise CompressionError(f"grad has shape {grad.shape}, the shared tensor {shared.shape}")
    k = shared.codebook.size
    if shared.mask is None:
        return np.bincount(shared.codes.reshape(-1), weights=grad.reshape(-1).astype(np.float64),
                           minlength=k)
    return np.bincount(shared.codes[shared.mask], weights=grad[shared.mask].astype(np.float64), minlength=k)


def nf4_codebook() -> np.ndarray:
    """The 16 values of the NormalFloat4 data type (Dettmers et al., QLoRA 2023), in ``[-1, 1]``.

    Built as in the paper: Gaussian quantiles ``Phi^-1`` at 8 evenly spaced probabilities from
    ``delta = (1/2)(1/30 + 1/32)`` inverted for the positive half and 7 for the negative half,
    plus an exact zero, each half scaled so its extreme is ``±1``.

    Returns
    -------
    numpy.ndarray of float32, shape (16,), ascending

    Examples
    --------
    >>> v = nf4_codebook()
    >>> [round(float(x), 4) for x in v[[0, 7, 8, 15]]]
    [-1.0, 0.0, 0.0796, 1.0]
    """
    from scipy import stats  # lazily: scipy.stats is slow to import and rarely needed

    offset = 0.5 * (1 / 32 + 1 / 30)  # 0.9677 from the top, as bitsandbytes' create_normal_map
    pos = stats.norm.ppf(np.linspace(1 - offset, 0.5, 9)[:-1])
    neg = -stats.norm.ppf(np.linspace(1 - offset, 0.5, 8)[:-1])
    values = np.sort(np.concatenate([pos, [0.0], neg]))
    return (values / np.abs(values).max()).astype(np.float32)


def lloyd_max_gaussian(bits: int, *, iters: int = 200) -> np.ndarray:
    """The mean-squared-error optimal ``2**bits``-level quantizer of a standard normal variable.

    Lloyd-Max (Max, 1960) without data: the thresholds are the midpoints of neighbouring levels and
    each level is the mean of the normal density between its thresholds,
    ``(phi(a) - phi(b)) / (Phi(b) - Phi(a))``, iterated from evenly spaced quantiles.

    Parameters
    ----------
    bits : int
        1 to 8.
    iters : int, default 200

    Returns
    -------
    numpy.ndarray of float32, shape ``(2**bits,)``, ascending, in units of the standard deviation

    Examples
    --------
    >>> [round(float(v), 4) for v in lloyd_max_gaussian(1)]
    [-0.7979, 0.7979]
    >>> [round(float(v), 3) for v in lloyd_max_gaussian(2)]
    [-1.51, -0.453, 0.453, 1.51]
    """
    from scipy import stats  # lazily: scipy.stats is slow to import and rarely needed

    bits = _check_bits(bits)
    if bits > 8:
        raise CompressionError(f"lloyd_max_gaussian supports 1..8 bits, got {bits}")
    k = 1 << bits
    levels = stats.norm.ppf((np.arange(k) + 0.5) / k)
    for _ in range(iters):
        t = np.concatenate([[-np.inf], (levels[1:] + levels[:-1]) / 2, [np.inf]])
        mass = stats.norm.cdf(t[1:]) - stats.norm.cdf(t[:-1])
        levels = (stats.norm.pdf(t[:-1]) - stats.norm.pdf(t[1:])) / mass
    return levels.astype(np.float32)


def quantize_to_codebook(
    w: np.ndarray,
    codebook: np.ndarray,
    *,
    scale: str = "absmax",
    mask: np.ndarray | None = None,
) -> CodebookArray:
    """Round each surviving weight to the nearest value of a fixed codebook, scaled to the tensor.

    Parameters
    ----------
    w : numpy.ndarray
        Floating, finite.
    codebook : numpy.ndarray
        ``2**b`` values, ascending (:func:`nf4_codebook`, :func:`lloyd_max_gaussian`).
    scale : {"absmax", "std"}
        ``"absmax"`` multiplies the codebook by ``max|w|`` (for NF4, whose values span
        ``[-1, 1]``), ``"std"`` by the standard deviation of the surviving weights (for a
        Lloyd-Max codebook, in units of the standard deviation).
    mask : numpy.ndarray of bool, optional
        Default ``w != 0``.

    Returns
    -------
    CodebookArray

    Examples
    --------
    >>> import numpy as np
    >>> c = quantize_to_codebook(np.array([-2.0, 0.1, 2.0], np.float32), nf4_codebook())
    >>> c.dequantize().tolist()
    [-2.0, 0.15916062891483307, 2.0]
    """
    if not isinstance(w, np.ndarray) or not is_floating(w.dtype):
        raise CompressionError("quantize_to_codebook expects a floating numpy array")
    require_finite("w", w)
    cb = np.asarray(codebook, dtype=np.float64).reshape(-1)
    bits = int(round(math.log2(cb.size))) if cb.size else 0
    if cb.size < 2 or cb.size != 1 << bits or np.any(np.diff(cb) < 0):
        raise CompressionError(f"codebook must hold 2**b ascending values, got {cb.size} values")
    if mask is None:
        mask = w != 0
    elif not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != w.shape:
        raise CompressionError(f"mask must be a bool array of shape {w.shape}")
    x = w[mask].astype(np.float64)
    if scale == "absmax":
        s = float(np.abs(x).max()) if x.size else 1.0
    elif scale == "std":
        s = float(x.std()) if x.size else 1.0
    else:
        raise CompressionError(f"scale must be 'absmax' or 'std', got {scale!r}")
    s = s if s > 0 else 1.0
    scaled = (cb * s).astype(np.float32)
    codes = np.zeros(w.shape, dtype=_code_dtype(bits))
    codes[mask] = _assign(x, scaled.astype(np.float64))
    kept = None if x.size == w.size else mask.copy()
    return CodebookArray(codes=codes, codebook=scaled, mask=kept, bits=bits, dtype=w.dtype)
