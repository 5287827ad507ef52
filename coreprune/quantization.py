"""Uniform n-bit quantization (1 to 16 bits) of a dict of NumPy arrays.

A tensor ``w`` becomes integer ``codes`` of its own shape plus float32 ``scale`` (and, for affine
quantization, an integer ``zero_point``), packed in a :class:`QuantizedArray`:

* symmetric: ``qmax = 2**(b-1) - 1``, ``scale = max|w| / qmax``,
  ``codes = clip(rint(w / scale), -qmax, qmax)``, ``w ~ scale * codes``;
* affine: ``lo = min(w, 0)``, ``hi = max(w, 0)``, ``scale = (hi - lo) / (2**b - 1)``,
  ``zero_point = rint(-lo / scale)``, ``codes = clip(rint(w / scale) + zero_point, 0, 2**b - 1)``,
  ``w ~ scale * (codes - zero_point)``; 0.0 is represented exactly by ``zero_point``;
* ``bits=1``: sign binarization, ``scale = mean|w|``, ``codes = (w >= 0)``, ``w ~ scale * (2 codes - 1)``.

``rint`` rounds half to even. One scale per tensor (default), per index along ``axis``, or per
group of ``group_size`` consecutive values along the last axis. Arithmetic runs in float32 for
float16, bfloat16 and float32 tensors and in float64 for float64 tensors; the scale is always
stored as float32 and the codes are computed from that stored scale, so dequantization
reproduces exactly what the codes were fitted to.

Scale rules: a group whose range is zero (all zeros) gets ``scale = 1.0`` (codes all 0, exact);
a scale below the smallest normal float32 ``2**-126`` is raised to ``2**-126`` (never 0 or
subnormal; every code still fits, the error bound still holds); a scale above the largest float32
(only possible for float64 tensors) raises :class:`~coreprune.errors.CompressionError`.
With these rules every dequantized value lies within ``scale / 2`` of the original for
``bits >= 2``, up to a few ulps of float rounding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import ml_dtypes
import numpy as np

from ._fast import blocked as _blocked
from ._fast import kernels as _kernels
from .errors import CompressionError
from .packing import _check_bits
from .selection import Pattern, check_weights, is_floating, require_finite, select

__all__ = ["QuantizedArray", "quantize", "dequantize"]

#: Smallest normal float32 (2**-126): the floor of every scale.
SCALE_FLOOR = float(np.finfo(np.float32).tiny)
_F32_MAX = float(np.finfo(np.float32).max)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def code_dtype(bits: int, symmetric: bool) -> np.dtype:
    """The dtype of the codes of a ``bits``-bit quantizer.

    int8 / int16 for symmetric, uint8 / uint16 for affine (8 bits or fewer / 9 to 16 bits);
    uint8 for ``bits == 1``.

    Examples
    --------
    >>> code_dtype(4, True).name, code_dtype(12, False).name, code_dtype(1, True).name
    ('int8', 'uint16', 'uint8')
    """
    if bits == 1:
        return np.dtype(np.uint8)
    if symmetric:
        return np.dtype(np.int8 if bits <= 8 else np.int16)
    return np.dtype(np.uint8 if bits <= 8 else np.uint16)


def _code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Codes a :class:`QuantizedArray` may hold: the whole ``bits``-bit range of its kind."""
    if bits == 1:
        return 0, 1
    if symmetric:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _grouped(x: np.ndarray, axis: int | None, group_size: int | None) -> tuple[np.ndarray, tuple]:
    """``x`` reshaped so that one scale covers each slice over the returned reduction axes.

    Reducing over those axes with ``keepdims=True`` gives an array that broadcasts against the
    reshaped ``x`` and that has exactly the scale's elements, in order.
    """
    if group_size is not None:
        xr = x.reshape(x.shape[:-1] + (x.shape[-1] // group_size, group_size))
        return xr, (xr.ndim - 1,)
    if axis is not None:
        return x, tuple(i for i in range(x.ndim) if i != axis)
    return x, tuple(range(x.ndim))


def _rows(shape: tuple, axis: int | None, group_size: int | None) -> int | None:
    """Rows of the ``(rows, -1)`` view with one scale per row, for the layouts the fast path takes.

    Per group (the groups are consecutive in C order), per tensor (one row) and per index of axis 0;
    None for another axis.
    """
    size = math.prod(shape)
    if group_size is not None:
        return size // group_size
    if axis is None:
        return 1
    return shape[0] if axis == 0 else None


def _scale_shape(shape: tuple, axis: int | None, group_size: int | None) -> tuple:
    if group_size is not None:
        return shape[:-1] + (shape[-1] // group_size,)
    if axis is not None:
        return (shape[axis],)
    return ()


def _layout_problem(shape: tuple, axis: object, group_size: object) -> str | None:
    """Why ``axis`` (already normalised) / ``group_size`` do not fit ``shape``, or None."""
    ndim = len(shape)
    if axis is not None and group_size is not None:
        return "axis and group_size are exclusive (groups always run along the last axis)"
    if axis is not None and (not _is_int(axis) or not 0 <= int(axis) < ndim):  # type: ignore[call-overload]
        return f"axis {axis!r} is out of range for a tensor with ndim={ndim}"
    if group_size is not None:
        if not _is_int(group_size) or int(group_size) < 1:  # type: ignore[call-overload]
            return f"group_size must be an int >= 1, got {group_size!r}"
        if ndim == 0:
            return "group_size needs a tensor with ndim >= 1 (groups run along the last axis)"
        if shape[-1] % int(group_size) != 0:  # type: ignore[call-overload]
            return f"group_size={group_size} does not divide the last axis of size {shape[-1]}"
    return None


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class QuantizedArray:
    """A quantized tensor: integer codes of the original shape, float32 scales, optional zero points.

    Attributes
    ----------
    codes : numpy.ndarray
        Shape ``shape``. dtype int8 (symmetric, bits <= 8), int16 (symmetric, 9..16), uint8 / uint16
        (affine), uint8 in ``{0, 1}`` for ``bits == 1`` (1 means +1, 0 means -1). Any value of the
        ``bits``-bit range is accepted (the quantizer itself uses ``±(2**(b-1) - 1)`` when symmetric).
    scale : numpy.ndarray
        float32, finite, ``> 0``. Shape ``()`` per tensor, ``(shape[axis],)`` per axis,
        ``shape[:-1] + (shape[-1] // group_size,)`` per group.
    zero_point : numpy.ndarray or None
        Affine only: the scale's shape, the codes' dtype, values in ``[0, 2**bits - 1]``.
    bits : int
        1 to 16.
    symmetric : bool
        True for symmetric and for ``bits == 1``.
    axis : int or None
        Non-negative axis with one scale per index, or None.
    group_size : int or None
        Length of the groups along the last axis, or None. Not together with ``axis``.
    shape : tuple of int
        Shape of the original tensor.
    dtype : numpy.dtype
        dtype of the original tensor (float16, float32, float64, ``ml_dtypes.bfloat16``, ...).

    Raises
    ------
    CompressionError
        From the constructor, when the fields are inconsistent.

    Examples
    --------
    >>> import numpy as np
    >>> q = QuantizedArray(codes=np.array([[-2, 1]], np.int8), scale=np.array(0.5, np.float32),
    ...                    zero_point=None, bits=3, symmetric=True, axis=None, group_size=None,
    ...                    shape=(1, 2), dtype=np.dtype(np.float32))
    >>> q.dequantize().tolist(), q.nbytes
    ([[-1.0, 0.5]], 5)
    >>> q
    QuantizedArray(shape=(1, 2), dtype=float32, bits=3, symmetric=True, axis=None, group_size=None,
                   scale=float32(), nbytes=5)
    """

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    bits: int
    symmetric: bool
    axis: int | None
    group_size: int | None
    shape: tuple
    dtype: np.dtype

    def __post_init__(self) -> None:
        def fail(problem: str) -> CompressionError:
            return CompressionError(f"inconsistent QuantizedArray: {problem}")

        if not _is_int(self.bits) or not 1 <= int(self.bits) <= 16:  # type: ignore[call-overload]
            raise fail(f"bits must be an int in 1..16, got {self.bits!r}")
        bits = int(self.bits)  # type: ignore[call-overload]
        if not isinstance(self.symmetric, (bool, np.bool_)):
            raise fail(f"symmetric must be a bool, got {self.symmetric!r}")
        symmetric = bool(self.symmetric)
        if bits == 1 and not symmetric:
            raise fail("bits=1 (sign binarization) is symmetric")
        try:
            shape = tuple(int(s) for s in self.shape)
        except (TypeError, ValueError):
            raise fail(f"shape must be a tuple of int, got {self.shape!r}") from None
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            raise fail(f"dtype {self.dtype!r} is not a numpy dtype") from None
        if not is_floating(dtype):
            raise fail(f"dtype must be a floating dtype, got {dtype}")
        problem = _layout_problem(shape, self.axis, self.group_size)
        if problem:
            raise fail(problem)
        axis = None if self.axis is None else int(self.axis)
        group_size = None if self.group_size is None else int(self.group_size)
        for field, value in (("bits", bits), ("symmetric", symmetric), ("shape", shape), ("dtype", dtype),
                             ("axis", axis), ("group_size", group_size)):
            object.__setattr__(self, field, value)

        expected = code_dtype(bits, symmetric)
        if not isinstance(self.codes, np.ndarray) or self.codes.dtype != expected:
            got = getattr(self.codes, "dtype", type(self.codes).__name__)
            raise fail(f"codes must be a numpy array of dtype {expected} for bits={bits}, "
                       f"symmetric={symmetric}; got {got}")
        if self.codes.shape != shape:
            raise fail(f"codes have shape {self.codes.shape}, expected {shape}")
        lo, hi = _code_range(bits, symmetric)
        if self.codes.size:
            found = (
                _kernels.minmax(self.codes)
                if _kernels.eligible(self.codes, dtypes=None)
                else (int(self.codes.min()), int(self.codes.max()))
            )
            if found[0] < lo or found[1] > hi:
                raise fail(f"codes outside [{lo}, {hi}] for bits={bits}")
        scale_shape = _scale_shape(shape, axis, group_size)
        if not isinstance(self.scale, np.ndarray) or self.scale.dtype != np.float32:
            got = getattr(self.scale, "dtype", type(self.scale).__name__)
            raise fail(f"scale must be a float32 numpy array, got {got}")
        if self.scale.shape != scale_shape:
            raise fail(f"scale has shape {self.scale.shape}, expected {scale_shape}")
        if not np.all(np.isfinite(self.scale) & (self.scale > 0)):
            raise fail("scale must be finite and > 0")
        if symmetric:
            if self.zero_point is not None:
                raise fail("symmetric quantization has no zero_point")
        else:
            zp = self.zero_point
            if not isinstance(zp, np.ndarray) or zp.dtype != expected or zp.shape != scale_shape:
                raise fail(f"zero_point must be a {expected} array of shape {scale_shape}, got "
                           f"{getattr(zp, 'dtype', type(zp).__name__)} {getattr(zp, 'shape', '')}")
            if zp.size and (int(zp.min()) < 0 or int(zp.max()) > hi):
                raise fail(f"zero_point outside [0, {hi}]")

    @property
    def nbytes(self) -> int:
        """Bytes of the packed representation.

        ``ceil(codes.size * bits / 8) + scale.nbytes (+ zero_point.nbytes if affine)``: the codes
        as :func:`coreprune.packing.pack_bits` stores them, plus the float32 scales and the zero points.

        Examples
        --------
        >>> import numpy as np
        >>> q = quantize({"w": np.ones((64, 10), np.float32)}, bits=4, axis=0)["w"]
        >>> q.nbytes  # 640 * 4 / 8 + 64 * 4
        576
        """
        n = math.ceil(self.codes.size * self.bits / 8) + self.scale.nbytes
        return n + (self.zero_point.nbytes if self.zero_point is not None else 0)

    def dequantize(self) -> np.ndarray:
        """The real values the codes stand for, as an array of ``shape`` and ``dtype``.

        ``scale * codes`` (symmetric), ``scale * (codes - zero_point)`` (affine),
        ``scale * (2 * codes - 1)`` (``bits == 1``), computed in float32 (float64 for float64
        tensors) with each scale broadcast over its channel or group, clipped to the largest finite
        value of ``dtype`` and cast to ``dtype``.

        Examples
        --------
        >>> import numpy as np
        >>> w = np.array([[0.0, 1.5, -0.25, 0.5]], np.float32)  # range 1.75 = 7 steps of 0.25
        >>> quantize({"w": w}, bits=3, symmetric=False)["w"].dequantize().tolist()
        [[0.0, 1.5, -0.25, 0.5]]
        """
        job = self._fast_job()
        if job is not None:
            return _blocked.run_job(job)
        work = np.dtype(np.float64 if self.dtype.itemsize > 4 else np.float32)
        codes, reduce_axes = _grouped(self.codes, self.axis, self.group_size)
        kd_shape = tuple(1 if i in reduce_axes else n for i, n in enumerate(codes.shape))
        scale = self.scale.astype(work).reshape(kd_shape)
        values = np.array(codes, dtype=work)  # always a new array, 0-d included
        if self.bits == 1:
            values *= 2
            values -= 1
        elif not self.symmetric:
            values -= self.zero_point.astype(work).reshape(kd_shape)  # type: ignore[union-attr]
        with np.errstate(over="ignore"):  # an overshoot past the float32 range is clipped just below
            values *= scale
        # rounding can put an extreme value up to scale/2 beyond the dtype's largest finite value;
        # clipping it there keeps it finite and only brings it closer to the original
        peak = float(ml_dtypes.finfo(self.dtype).max)
        np.clip(values, -peak, peak, out=values)
        return np.asarray(values.reshape(self.shape).astype(self.dtype))

    def _fast_job(self) -> _blocked.Job | None:
        """:meth:`dequantize` as a blocked, threaded job (same result), or None where it does not apply.

        It applies to C-contiguous codes of at least ``coreprune._fast.blocked.MIN_FAST_ELEMENTS`` values
        with one scale per tensor, per index of axis 0 or per group, for float16/bfloat16/float32/
        float64 originals.
        """
        rows = _rows(self.shape, self.axis, self.group_size)
        if rows is None or self.dtype not in _kernels.FAST_FLOATS or not _kernels.eligible(self.codes, None):
            return None
        zero_point = None if self.zero_point is None else self.zero_point.reshape(-1)
        shape = self.shape

        def job() -> _blocked.Job:
            values = yield from _kernels.dequantize_job(
                self.codes.reshape(rows, -1), self.scale.reshape(-1), zero_point, self.bits, self.dtype
            )
            return values.reshape(shape)

        return job()

    def __repr__(self) -> str:
        return (
            f"QuantizedArray(shape={self.shape}, dtype={self.dtype.name}, bits={self.bits}, "
            f"symmetric={self.symmetric}, axis={self.axis}, group_size={self.group_size}, "
            f"scale=float32{self.scale.shape}, nbytes={self.nbytes})"
        )


def _to_scale(name: str, scale64: np.ndarray, what: str) -> np.ndarray:
    """float64 scales -> stored float32 scales, floored at 2**-126; refuse overflow."""
    if scale64.size and float(scale64.max()) > _F32_MAX:
        raise CompressionError(
            f"tensor {name!r}: the quantization scale {float(scale64.max()):.6g} ({what}) exceeds the "
            f"float32 range; values this large cannot be quantized"
        )
    return np.maximum(scale64.astype(np.float32), np.float32(SCALE_FLOOR))


def _quantize_fast_job(
    name: str, w: np.ndarray, bits: int, symmetric: bool, axis: int | None, group_size: int | None
) -> _blocked.Job | None:
    """The blocked, threaded path of :func:`_quantize_tensor` as a job, or None where it does not apply.

    It applies to C-contiguous float16/bfloat16/float32/float64 tensors of at least
    ``coreprune._fast.blocked.MIN_FAST_ELEMENTS`` values, ``bits >= 2``, with one scale per tensor, per
    index of axis 0 or per group, given ``axis`` and ``group_size`` already checked and normalised.
    The job returns the :class:`QuantizedArray` -- the same one as the reference path -- or None
    when the tensor holds NaN/Inf or a scale exceeds float32, for the reference path to report.
    (``bits=1`` stays on the reference path: its mean is a float64 sum whose rounding depends on
    NumPy's summation order.)
    """
    rows = _rows(w.shape, axis, group_size)
    if bits == 1 or rows is None or not _kernels.eligible(w):
        return None
    qmax = (1 << (bits - 1)) - 1 if symmetric else (1 << bits) - 1
    what = "max |w| / qmax" if symmetric else "(max - min) / (2**bits - 1)"

    def scale_of(stat64: np.ndarray) -> np.ndarray:
        return _to_scale(name, np.where(stat64 > 0, stat64 / qmax, 1.0), what)

    def job() -> _blocked.Job:
        result = yield from _kernels.quantize_job(
            w.reshape(rows, -1), bits, symmetric, code_dtype(bits, symmetric), scale_of, CompressionError
        )
        if result is None:
            return None
        codes, scale, zero_point = result
        return _assemble(w, codes, scale, zero_point, bits, symmetric, axis, group_size)

    return job()


def _layout(
    name: str, w: np.ndarray, axis: int | None, group_size: int | None
) -> tuple[int | None, int | None]:
    """``axis`` normalised for ``w`` and ``group_size``, or CompressionError naming the tensor."""
    if axis is not None:
        if not -w.ndim <= axis < w.ndim:
            raise CompressionError(f"tensor {name!r}: axis {axis} is out of range for ndim={w.ndim}")
        axis = axis % w.ndim
        if group_size is not None:
            if axis != w.ndim - 1:
                raise CompressionError(
                    f"tensor {name!r}: axis={axis} cannot be combined with group_size "
                    f"(groups run along the last axis, {w.ndim - 1})"
                )
            axis = None  # axis=last with groups is redundant: the groups already run along it
    problem = _layout_problem(w.shape, axis, group_size)
    if problem:
        raise CompressionError(f"tensor {name!r} of shape {w.shape}: {problem}")
    return axis, group_size


def _quantize_tensor(
    name: str, w: np.ndarray, bits: int, symmetric: bool, axis: int | None, group_size: int | None
) -> QuantizedArray:
    """The reference path: whole-tensor NumPy expressions (``axis`` and ``group_size`` normalised)."""
    require_finite(name, w)

    work = np.dtype(np.float64 if w.dtype.itemsize > 4 else np.float32)
    x, reduce_axes = _grouped(w.astype(work, copy=False), axis, group_size)
    dtype = code_dtype(bits, symmetric)
    zero_point = None
    if bits == 1:
        count = math.prod(x.shape[i] for i in reduce_axes)
        mean = np.sum(np.abs(x), axis=reduce_axes, keepdims=True, dtype=np.float64) / max(count, 1)
        scale = _to_scale(name, mean, "mean |w|")
        codes = (x >= 0).astype(dtype)
    elif symmetric:
        qmax = (1 << (bits - 1)) - 1
        peak = np.max(np.abs(x), axis=reduce_axes, keepdims=True, initial=0).astype(np.float64)
        scale = _to_scale(name, np.where(peak > 0, peak / qmax, 1.0), "max |w| / qmax")
        q = np.asarray(np.rint(x / scale.astype(work)))  # asarray: a 0-d result would be a scalar
        codes = np.clip(q, -qmax, qmax, out=q).astype(dtype)
    else:
        qmax = (1 << bits) - 1
        lo = np.min(x, axis=reduce_axes, keepdims=True, initial=0).astype(np.float64)
        hi = np.max(x, axis=reduce_axes, keepdims=True, initial=0).astype(np.float64)
        span = hi - lo
        scale = _to_scale(name, np.where(span > 0, span / qmax, 1.0), "(max - min) / (2**bits - 1)")
        zp = np.clip(np.rint(-lo / scale.astype(np.float64)), 0, qmax)
        q = np.asarray(np.rint(x / scale.astype(work)))
        q += zp.astype(work)
        codes = np.clip(q, 0, qmax, out=q).astype(dtype)
        zero_point = np.asarray(zp).astype(dtype)
    return _assemble(w, codes, scale, zero_point, bits, symmetric, axis, group_size)


def _assemble(
    w: np.ndarray,
    codes: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    bits: int,
    symmetric: bool,
    axis: int | None,
    group_size: int | None,
) -> QuantizedArray:
    """The QuantizedArray of ``w`` from codes, scales and zero points of any compatible shape."""
    scale_shape = _scale_shape(w.shape, axis, group_size)
    return QuantizedArray(
        # asarray: NumPy returns scalars, not 0-d arrays, from several operations on 0-d input
        codes=np.asarray(codes).reshape(w.shape),
        scale=np.asarray(scale).reshape(scale_shape),
        zero_point=None if zero_point is None else np.asarray(zero_point).reshape(scale_shape),
        bits=bits,
        symmetric=symmetric,
        axis=axis,
        group_size=group_size,
        shape=w.shape,
        dtype=w.dtype,
    )


def quantize(
    weights: Mapping[str, np.ndarray],
    bits: int,
    *,
    symmetric: bool = True,
    axis: int | None = None,
    group_size: int | None = None,
    include: Pattern = None,
    exclude: Pattern = None,
) -> dict[str, QuantizedArray | np.ndarray]:
    """Quantize the selected tensors to ``bits``-bit integer codes with float32 scales.

    Symmetric (``b = bits``, ``qmax = 2**(b-1) - 1``)::

        scale = max|w| / qmax            codes = clip(rint(w / scale), -qmax, qmax)

    Affine (``lo = min(w, 0)``, ``hi = max(w, 0)``)::

        scale = (hi - lo) / (2**b - 1)   zero_point = rint(-lo / scale)
        codes = clip(rint(w / scale) + zero_point, 0, 2**b - 1)

    ``bits=1``: ``scale = mean|w|``, ``codes = 1 where w >= 0 else 0`` (dequantized to ``±scale``).
    The statistics run over the whole tensor (default), over every axis but ``axis`` (one scale per
    index along ``axis``), or over groups of ``group_size`` consecutive values of the last axis.
    ``rint`` rounds half to even. A zero range gives ``scale = 1.0``; scales are never below
    ``2**-126``. For ``bits >= 2`` every dequantized value is within ``scale / 2`` of ``w``.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Name to array. Not modified.
    bits : int
        1 to 16.
    symmetric : bool
        Symmetric (default) or affine with a zero point; ``bits=1`` must be symmetric.
    axis : int or None
        One scale per index along this axis (negative counts from the end); must be in range for
        every selected tensor. A 0-d tensor takes only ``axis=None``.
    group_size : int or None
        One scale per ``group_size`` consecutive values along the last axis, which it must divide.
        Not together with ``axis``, except ``axis`` = the last axis, which is then redundant.
    include, exclude : glob, list of globs, predicate, or None
        Which tensors to quantize, see :func:`coreprune.selection.select` (default: floating arrays
        with ``ndim >= 2``).

    Returns
    -------
    dict[str, QuantizedArray or numpy.ndarray]
        Same names and order; a :class:`QuantizedArray` for each selected tensor, the input objects
        for the others.

    Raises
    ------
    CompressionError
        ``bits`` not an int in 1..16; ``axis`` out of range (names the tensor and its ndim);
        ``group_size`` < 1 or not dividing the last axis (names tensor, size and group);
        ``axis`` with ``group_size``; NaN/Inf in a selected tensor; a scale beyond float32.

    Examples
    --------
    >>> import numpy as np
    >>> w = {"fc.weight": np.array([[0.4, -1.0], [0.25, 0.0]], np.float32), "fc.bias": np.ones(2)}
    >>> q = quantize(w, bits=8)
    >>> q["fc.weight"].codes.tolist(), float(q["fc.weight"].scale) * 127
    ([[51, -127], [32, 0]], 1.0)
    >>> q["fc.bias"] is w["fc.bias"]
    True
    >>> quantize(w, bits=4, axis=0)["fc.weight"].codes.tolist()
    [[3, -7], [7, 0]]
    """
    bits = _check_bits(bits)
    if not isinstance(symmetric, (bool, np.bool_)):
        raise CompressionError(f"symmetric must be a bool, got {symmetric!r}")
    symmetric = bool(symmetric)
    if bits == 1 and not symmetric:
        raise CompressionError("bits=1 is sign binarization, which is symmetric; affine needs bits >= 2")
    if axis is not None and not _is_int(axis):
        raise CompressionError(f"axis must be an int or None, got {axis!r}")
    if group_size is not None and (not _is_int(group_size) or int(group_size) < 1):
        raise CompressionError(f"group_size must be an int >= 1, got {group_size!r}")
    axis = None if axis is None else int(axis)
    group_size = None if group_size is None else int(group_size)
    names = select(weights, include, exclude)
    out: dict[str, QuantizedArray | np.ndarray] = dict(weights)
    # Layouts are checked first, but each error is raised at its tensor's turn, so that the first
    # problem in mapping order is the one reported, as when every tensor is done one by one.
    plans: dict[str, tuple[int | None, int | None] | CompressionError] = {}
    for name in names:
        try:
            plans[name] = _layout(name, weights[name], axis, group_size)
        except CompressionError as problem:
            plans[name] = problem
            break  # nothing after the first layout error is ever reached
    jobs = {}
    for name, plan in plans.items():
        if not isinstance(plan, CompressionError):
            job = _quantize_fast_job(name, weights[name], bits, symmetric, *plan)
            if job is not None:
                jobs[name] = job
    done = dict(zip(jobs, _blocked.run_jobs(list(jobs.values()))))
    for name, plan in plans.items():
        if isinstance(plan, CompressionError):
            raise plan
        result = done.get(name)
        if result is None:  # not a fast layout, or NaN/Inf or a scale overflow for the reference to report
            result = _quantize_tensor(name, weights[name], bits, symmetric, *plan)
        out[name] = result
    return out


def dequantize(qweights: Mapping[str, QuantizedArray | np.ndarray]) -> dict[str, np.ndarray]:
    """Replace every :class:`QuantizedArray` by its dequantized array; arrays pass through.

    Parameters
    ----------
    qweights : Mapping[str, QuantizedArray or numpy.ndarray]
        As returned by :func:`quantize`.

    Returns
    -------
    dict[str, numpy.ndarray]
        Same names and order. Dequantized tensors have the original shape and dtype; the arrays
        are the input objects.

    Raises
    ------
    CompressionError
        A value that is neither a QuantizedArray nor a numpy array.

    Examples
    --------
    >>> import numpy as np
    >>> w = {"w": np.array([[0.3, -0.6], [0.0, 0.9]], np.float32)}
    >>> dq = dequantize(quantize(w, bits=8))["w"]
    >>> dq.dtype.name, bool(np.abs(dq - w["w"]).max() <= 0.9 / 127 / 2)
    ('float32', True)
    """
    if not isinstance(qweights, Mapping):
        raise CompressionError(f"qweights must be a mapping, got {type(qweights).__name__}")
    check_weights({k: v for k, v in qweights.items() if not isinstance(v, QuantizedArray)}, what="qweights")
    jobs = {k: v._fast_job() for k, v in qweights.items() if isinstance(v, QuantizedArray)}
    jobs = {k: job for k, job in jobs.items() if job is not None}
    done = dict(zip(jobs, _blocked.run_jobs(list(jobs.values()))))
    return {
        k: done[k] if k in done else v.dequantize() if isinstance(v, QuantizedArray) else v
        for k, v in qweights.items()
    }
