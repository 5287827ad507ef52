"""Uniform n-bit quantization (1 to 16 bits) of a dict of NumPy arrays.

A tensor ``w`` becomes integer ``codes`` of its own shape plus float32 ``scale`` (and, for affine
quantization, an integer ``zero_point``), packed in a :class:`QuantizedArray`:

* symmetric: ``qmax = 2**(b-1) - 1``, ``scale = max|w| / qmax``,
  ``codes = clip(rint(w / scale), -qmax, qmax)``, ``w ~ scale * codes``;
* affine: ``lo = min(w, 0)``, ``hi = max(w, 0)``, ``scale = (hi - lo) / (2**b - 1)``,
  ``zero_point = rint(-lo / scale)``, ``codes = clip(rint(w / scale) + zero_point, 0, 2**b - 1)``,
  ``w ~ scale * (codes - zero_point)``; 0.0 is represented exactly by ``zero_point``;
* ``bits=1``: sign binarization, ``scale = mean|w|``, ``codes = (w >= 0)``, ``w ~ scale * (2 codes - 1)``.

``rint`` rounds half to even. One scale per tensor, per index along ``axis``, per group of
``group_size`` consecutive values along the last axis or along ``axis``, or per group of each output
channel's flattened fan-in (``flatten=True``, the usual layout of conv kernels); see
:mod:`coreprune.quant_layout`. ``full_range=True`` uses the whole two's-complement range
``[-2**(b-1), 2**(b-1) - 1]`` with ``scale = max|w| / (2**(b-1) - 1/2)``, as torch's symmetric
int8 observers do. Beyond round-to-nearest, ``method="clip"`` and ``method="hqq"`` choose scales
of smaller reconstruction error (:mod:`coreprune.scale_search`); ``budget=`` allocates the bits
per tensor (:mod:`coreprune.bit_budget`). With no layout argument, :func:`quantize` picks one per
tensor (:func:`coreprune.quant_layout.default_layout`). Arithmetic runs in float32 for
float16, bfloat16 and float32 tensors and in float64 for float64 tensors; the scale is always
stored as float32 and the codes are computed from that stored scale, so dequantization
reproduces exactly what the codes were fitted to.

Scale rules: a group whose range is zero (all zeros) gets ``scale = 1.0`` (codes all 0, exact);
a scale below the smallest normal float32 ``2**-126`` is raised to ``2**-126`` (never 0 or
subnormal; every code still fits, the error bound still holds); a scale above the largest float32
(only possible for float64 tensors) raises :class:`~coreprune.errors.CompressionError`.
With these rules every dequantized value lies within ``scale / 2`` of the original for
``bits >= 2`` and ``method="rtn"``, up to a few ulps of float rounding (the other methods clip
the range on purpose).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence
from typing import cast

import ml_dtypes
import numpy as np

from . import bit_budget, gptq
from ._fast import blocked as _blocked
from ._fast import kernels as _kernels
from .errors import CompressionError, HessianError
from .packing import _check_bits
from .quant_layout import (
    default_bits,
    default_layout,
    expand_params,
    fast_rows,
    from_rows,
    layout_problem,
    param_shape,
    params_from_rows,
    params_to_rows,
    to_rows,
)
from .rounding import balance_codes
from .scale_search import METHODS, clip_params, hqq_params
from .selection import Pattern, check_weights, is_floating, require_finite, select
from .structured.graph import Graph

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


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class QuantizedArray:
    """A quantized tensor: integer codes of the original shape, float32 or float16 scales, zero points.

    Attributes
    ----------
    codes : numpy.ndarray
        Shape ``shape``. dtype int8 (symmetric, bits <= 8), int16 (symmetric, 9..16), uint8 / uint16
        (affine), uint8 in ``{0, 1}`` for ``bits == 1`` (1 means +1, 0 means -1). Any value of the
        ``bits``-bit range is accepted (the quantizer itself uses ``±(2**(b-1) - 1)`` when symmetric).
    scale : numpy.ndarray
        float32 or float16, finite, ``> 0``. Shape ``()`` per tensor, ``(shape[axis],)`` per axis, the
        tensor's shape with the grouped axis's length ``n`` replaced by ``ceil(n / group_size)``
        per group, ``(shape[0], ceil(fan_in / group_size))`` for flattened groups
        (:func:`coreprune.quant_layout.param_shape`).
    zero_point : numpy.ndarray or None
        Affine only: the scale's shape, the codes' dtype, values in ``[0, 2**bits - 1]``.
    bits : int
        1 to 16.
    symmetric : bool
        True for symmetric and for ``bits == 1``.
    axis : int or None
        Non-negative axis: one scale per index without ``group_size``, the axis the groups run
        along with it; or None.
    group_size : int or None
        Length of the groups (along ``axis``, the last axis when ``axis`` is None, or the
        flattened fan-in); the last group of a run is shorter when it does not divide the run.
    shape : tuple of int
        Shape of the original tensor.
    dtype : numpy.dtype
        dtype of the original tensor (float16, float32, float64, ``ml_dtypes.bfloat16``, ...).
    flatten : bool
        True: the groups run along each output channel's flattened fan-in,
        ``w.reshape(shape[0], -1)`` (needs ``group_size``, no ``axis``). Default False.

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
    flatten: bool = False

    def __post_init__(self) -> None:
        def fail(problem: str) -> CompressionError:
            return CompressionError(f"inconsistent QuantizedArray: {problem}")

        if not _is_int(self.bits) or not 1 <= int(self.bits) <= 16:
            raise fail(f"bits must be an int in 1..16, got {self.bits!r}")
        bits = int(self.bits)
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
        problem = layout_problem(shape, self.axis, self.group_size, self.flatten)
        if problem:
            raise fail(problem)
        axis = None if self.axis is None else int(self.axis)
        group_size = None if self.group_size is None else int(self.group_size)
        flatten = bool(self.flatten)
        for field, value in (("bits", bits), ("symmetric", symmetric), ("shape", shape), ("dtype", dtype),
                             ("axis", axis), ("group_size", group_size), ("flatten", flatten)):
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
        scale_shape = param_shape(shape, axis, group_size, flatten)
        if not isinstance(self.scale, np.ndarray) or self.scale.dtype not in (np.float32, np.float16):
            got = getattr(self.scale, "dtype", type(self.scale).__name__)
            raise fail(f"scale must be a float32 or float16 numpy array, got {got}")
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
        as :func:`coreprune.packing.pack_bits` stores them, plus the scales (4 bytes each in float32,
        2 in float16) and the zero points.

        Examples
        --------
        >>> import numpy as np
        >>> q = quantize({"w": np.ones((64, 10), np.float32)}, bits=4, axis=0)["w"]
        >>> q.nbytes  # 640 * 4 / 8 + 64 * 2: float16 scales below 8 bits
        448
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
        layout = self.layout
        codes, _ = to_rows(self.codes, *layout)
        scale = params_to_rows(self.scale, *layout).astype(work)[:, None]
        values = np.array(codes, dtype=work)  # always a new array
        if self.bits == 1:
            values *= 2
            values -= 1
        elif not self.symmetric:
            assert self.zero_point is not None  # __post_init__: an affine array carries its zero points
            values -= params_to_rows(self.zero_point, *layout).astype(work)[:, None]
        with np.errstate(over="ignore"):  # an overshoot past the float32 range is clipped just below
            values *= scale
        # rounding can put an extreme value up to scale/2 beyond the dtype's largest finite value;
        # clipping it there keeps it finite and only brings it closer to the original
        peak = float(ml_dtypes.finfo(self.dtype).max)
        np.clip(values, -peak, peak, out=values)
        return np.asarray(from_rows(values, self.shape, *layout).astype(self.dtype))

    @property
    def layout(self) -> tuple[int | None, int | None, bool]:
        """``(axis, group_size, flatten)``: where the scales sit (see :mod:`coreprune.quant_layout`).

        Examples
        --------
        >>> import numpy as np
        >>> quantize({"w": np.ones((4, 2, 3, 3), np.float32)}, 4, group_size=8, flatten=True)["w"].layout
        (None, 8, True)
        """
        return self.axis, self.group_size, self.flatten

    def expand(self, params: np.ndarray) -> np.ndarray:
        """Per-scale values (the scale's shape) broadcast to one per element, shape ``shape``.

        Examples
        --------
        >>> import numpy as np
        >>> q = quantize({"w": np.ones((2, 3), np.float32)}, 4, group_size=2)["w"]
        >>> q.expand(np.array([[1, 2], [3, 4]])).tolist()
        [[1, 1, 2], [3, 3, 4]]
        """
        return expand_params(params, self.shape, *self.layout)

    def _fast_job(self) -> _blocked.Job | None:
        """:meth:`dequantize` as a blocked, threaded job (same result), or None where it does not apply.

        It applies to C-contiguous codes of at least ``coreprune._fast.blocked.MIN_FAST_ELEMENTS`` values
        with one scale per tensor, per index of axis 0 or per group, for float16/bfloat16/float32/
        float64 originals.
        """
        rows = fast_rows(self.shape, *self.layout)
        if rows is None or self.dtype not in _kernels.FAST_FLOATS or not _kernels.eligible(self.codes, None):
            return None
        zero_point = None if self.zero_point is None else self.zero_point.reshape(-1)
        shape = self.shape

        def job() -> _blocked.Job:
            values = yield from _kernels.dequantize_job(
                self.codes.reshape(rows, -1), self.scale.reshape(-1).astype(np.float32), zero_point,
                self.bits, self.dtype
            )
            return values.reshape(shape)

        return job()

    def __repr__(self) -> str:
        return (
            f"QuantizedArray(shape={self.shape}, dtype={self.dtype.name}, bits={self.bits}, "
            f"symmetric={self.symmetric}, axis={self.axis}, group_size={self.group_size}, "
            + ("flatten=True, " if self.flatten else "")
            + f"scale={self.scale.dtype.name}{self.scale.shape}, nbytes={self.nbytes})"
        )


def _to_scale(name: str, scale64: np.ndarray, what: str) -> np.ndarray:
    """float64 scales -> stored float32 scales, floored at 2**-126; refuse overflow."""
    if scale64.size and float(scale64.max()) > _F32_MAX:
        raise CompressionError(
            f"tensor {name!r}: the quantization scale {float(scale64.max()):.6g} ({what}) exceeds the "
            f"float32 range; values this large cannot be quantized"
        )
    return np.maximum(scale64.astype(np.float32), np.float32(SCALE_FLOOR))


#: ``scale_dtype`` choices of :func:`quantize`.
SCALE_DTYPES = ("auto", "float32", "float16")
#: The largest finite float16: a scale above it cannot be stored in float16.
_F16_MAX = 65504.0


def _half_up(scale32: np.ndarray) -> np.ndarray | None:
    """float32 scales -> the smallest float16 at or above each, as float32 values (each exactly a
    float16), or None when one exceeds 65504.

    Rounding up keeps every code in range and every RTN error within the stored ``scale / 2``
    (the range ``max|w|`` still fits in ``qmax`` steps). The stored scale exceeds the float32 one
    by at most ``2**-10`` of it in float16's normal range (``>= 2**-14``) and by at most
    ``2**-24`` below it (subnormals, and ``2**-24`` itself for anything smaller): the error bound
    grows by at most ``2**-25`` in absolute terms there -- channels whose weights are all below
    ``qmax * 2**-14`` (the dead channels of real networks reach ``1e-9``) lose relative precision,
    never more than that.

    The fast path calls it once per tile, so the usual case -- every scale in float16's normal
    range, whose 10 mantissa bits are float32's top 10 -- is two integer operations on the bits:
    add ``2**13 - 1``, clear the low 13 bits (a carry into the exponent is the next power of two,
    itself a float16).
    """
    if not scale32.size:
        return scale32.copy()
    if float(scale32.max()) > _F16_MAX:
        return None
    if float(scale32.min()) >= 2.0**-14:
        bits = scale32.view(np.uint32) + np.uint32(0x1FFF)
        bits &= np.uint32(0xFFFFE000)
        return bits.view(np.float32)
    half = scale32.astype(np.float16)  # subnormal float16 scales (near-zero channels): rare
    low = half.astype(np.float32) < scale32
    half[low] = np.nextafter(half[low], np.float16(np.inf))
    return half.astype(np.float32)


def _scale_storage(scale_dtype: str, request: int, layout: tuple[int | None, int | None, bool]) -> str:
    """``"float16"`` (must fit), ``"try16"`` (float16 where it fits, else float32) or ``"float32"``.

    ``request`` is the call's int ``bits``, 0 for a ``bits`` mapping or a budget. ``"auto"``
    stores float16 scales per channel and per group unless the call asks for 8 bits or more:
    below 8 bits a float32 scale is a real share of the size (``32 / 64`` of the 4 bits per
    weight of a 4-bit group of 64; ``32 / 9`` of a depthwise 3x3 channel the 4-bit default holds
    at 8 bits), and a mapping or a budget is a size choice; ``bits >= 8`` keeps float32 (torch's
    int8 parity), and so does a tensor's single scale (2 bytes are nothing).
    """
    if scale_dtype == "auto":
        per_tensor = layout[0] is None and layout[1] is None
        return "try16" if request < 8 and not per_tensor else "float32"
    return scale_dtype


def _store(name: str, scale32: np.ndarray, storage: str) -> np.ndarray:
    """The scales as stored (:func:`_scale_storage`): float32, or float16 rounded up; ``"try16"``
    scales that do not fit float16 stay float32, ``"float16"`` ones are a CompressionError naming
    the tensor."""
    if storage == "float32":
        return scale32
    up = _half_up(scale32)
    if up is not None:
        return up.astype(np.float16)
    if storage == "float16":
        raise CompressionError(
            f"tensor {name!r}: a quantization scale ({float(scale32.max()):.6g}) exceeds float16's "
            "largest value 65504; use scale_dtype='float32' (or 'auto')"
        )
    return scale32


def _quantize_fast_job(
    name: str, w: np.ndarray, bits: int, symmetric: bool, layout: tuple[int | None, int | None, bool],
    storage: str = "float32",
) -> _blocked.Job | None:
    """The blocked, threaded path of :func:`_quantize_tensor` as a job, or None where it does not apply.

    It applies to round-to-nearest with the restricted symmetric or the affine range, on
    C-contiguous float16/bfloat16/float32/float64 tensors of at least
    ``coreprune._fast.blocked.MIN_FAST_ELEMENTS`` values, ``bits >= 2``, whose row view is a plain
    reshape (:func:`coreprune.quant_layout.fast_rows`). The job returns the :class:`QuantizedArray`
    -- the same one as the reference path -- or None when the tensor holds NaN/Inf, a scale
    exceeds float32 or does not fit float16 storage, for the reference path to report or to store
    in float32. (``bits=1`` stays on the reference path:
    its mean is a float64 sum whose rounding depends on NumPy's summation order.)
    """
    rows = fast_rows(w.shape, *layout)
    if bits == 1 or rows is None or not _kernels.eligible(w):
        return None
    qmax = (1 << (bits - 1)) - 1 if symmetric else (1 << bits) - 1
    what = "max |w| / qmax" if symmetric else "(max - min) / (2**bits - 1)"

    def scale_of(stat64: np.ndarray) -> np.ndarray:
        scale32 = _to_scale(name, np.where(stat64 > 0, stat64 / qmax, 1.0), what)
        if storage == "float32":
            return scale32
        half = _half_up(scale32)
        if half is None:
            raise CompressionError("a scale above float16")  # the reference path decides
        return half  # float32 holding float16 values: the codes follow the stored value

    def job() -> _blocked.Job:
        result = yield from _kernels.quantize_job(
            w.reshape(rows, -1), bits, symmetric, code_dtype(bits, symmetric), scale_of, CompressionError
        )
        if result is None:
            return None
        codes, scale, zero_point = result
        scale_shape = param_shape(w.shape, *layout)
        return QuantizedArray(
            codes=codes.reshape(w.shape),
            scale=(scale if storage == "float32" else scale.astype(np.float16)).reshape(scale_shape),
            zero_point=None if zero_point is None else zero_point.reshape(scale_shape),
            bits=bits,
            symmetric=symmetric,
            axis=layout[0],
            group_size=layout[1],
            shape=w.shape,
            dtype=w.dtype,
            flatten=layout[2],
        )

    return job()


def _layout(
    name: str, w: np.ndarray, bits: int, axis: int | None, group_size: int | str | None, flatten: bool
) -> tuple[int | None, int | None, bool]:
    """The normalised layout of ``w``, or CompressionError naming the tensor.

    ``group_size="auto"`` without ``axis`` is :func:`coreprune.quant_layout.default_layout`;
    with ``axis`` it means one scale per index of ``axis``. Groups along the last axis are stored
    as ``axis=None``; flattened groups of a 2-D tensor are groups along its last axis.
    """
    if group_size == "auto":
        if axis is None:
            return default_layout(w.shape, bits)
        group_size = None
    if axis is not None:
        if not -w.ndim <= axis < w.ndim:
            raise CompressionError(f"tensor {name!r}: axis {axis} is out of range for ndim={w.ndim}")
        axis = axis % w.ndim
        if group_size is not None and axis == w.ndim - 1:
            axis = None  # groups along the last axis: the default direction of groups
    if flatten and w.ndim == 2 and axis is None:
        flatten = False  # the flattened fan-in of a matrix is its last axis
    problem = layout_problem(w.shape, axis, group_size, flatten)
    if problem:
        raise CompressionError(f"tensor {name!r} of shape {w.shape}: {problem}")
    return axis, group_size, flatten  # type: ignore[return-value]


def _code_bounds(bits: int, symmetric: bool, full_range: bool) -> tuple[int, int]:
    """The codes the quantizer uses: ``[-qmax(-1), qmax]`` symmetric, ``[0, 2**b - 1]`` affine."""
    if symmetric:
        qmax = (1 << (bits - 1)) - 1
        return (-qmax - 1 if full_range else -qmax), qmax
    return 0, (1 << bits) - 1


#: Rounding modes of :func:`quantize`.
ROUNDINGS = ("auto", "half_even", "torch", "balanced")


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(s, e)`` with ``s = fl(a + b)`` and ``s + e == a + b`` exactly (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _torch_rounded(x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, fused: bool) -> np.ndarray:
    """``nearbyint`` of ``x * (1 / scale) + zp`` in float32 as torch's x86-64 CPU kernels round it.

    ``x`` (rows, cols) is taken as float32, the reciprocal ``1 / scale`` is a float32 division.
    ``fused`` (``quantize_per_tensor``, FBGEMM's AVX2 ``fmadd``): one rounding of the exact
    ``x * inv + zp`` to float32, emulated exactly -- the float64 product of two float32 is exact,
    the sum is rounded to odd in float64 (TwoSum, then the last bit forced to 1 when inexact),
    which then rounds to float32 as a single rounding would. Not fused (``quantize_per_channel``):
    ``float32(float32(x * inv) + zp)``. Returns float64 integers (not yet clipped).
    """
    inv = (np.float32(1) / scale.astype(np.float32))[:, None]
    x32 = x.astype(np.float32, copy=False)
    zero = np.zeros((), np.float64) if zp is None else zp.astype(np.float64)[:, None]
    if fused:
        product = x32.astype(np.float64) * inv.astype(np.float64)  # exact: 24 + 24 bits
        total, err = _two_sum(product, np.broadcast_to(zero, x32.shape))
        bits = total.view(np.uint64)
        inexact_even = (err != 0) & ((bits & np.uint64(1)) == 0)
        total = np.where(inexact_even, np.nextafter(total, np.copysign(np.inf, err)), total)
        y = total.astype(np.float32)
    else:
        y = (x32 * inv).astype(np.float32)
        if zp is not None:
            y = (y + zero.astype(np.float32)).astype(np.float32)
    return np.rint(y).astype(np.float64)


def _quantize_tensor(
    name: str,
    w: np.ndarray,
    bits: int,
    symmetric: bool,
    layout: tuple[int | None, int | None, bool],
    method: str = "rtn",
    full_range: bool = False,
    rounding: str = "half_even",
    storage: str = "float32",
) -> QuantizedArray:
    """The reference path: NumPy expressions over the row view of ``w`` (layout normalised)."""
    require_finite(name, w)

    work = np.dtype(np.float64 if w.dtype.itemsize > 4 else np.float32)
    x, mask = to_rows(w.astype(work, copy=False), *layout)
    dtype = code_dtype(bits, symmetric)
    zp = None
    if bits == 1:
        count = x.shape[1] if mask is None else mask.sum(axis=1)
        mean = np.sum(np.abs(x), axis=1, dtype=np.float64) / np.maximum(count, 1)
        scale = _store(name, _to_scale(name, mean, "mean |w|"), storage)
        codes = (x >= 0).astype(dtype)
    else:
        lo, hi = _code_bounds(bits, symmetric, full_range)
        if method == "rtn" and symmetric:
            peak = np.max(np.abs(x), axis=1, initial=0).astype(np.float64)
            denom = hi + 0.5 if full_range else hi  # full range: -max|w| lands on code -2**(b-1)
            scale = _store(name, _to_scale(name, np.where(peak > 0, peak / denom, 1.0), "max |w| / qmax"),
                           storage)
        elif method == "rtn":
            wlo = np.min(x, axis=1, initial=0).astype(np.float64)
            whi = np.max(x, axis=1, initial=0).astype(np.float64)
            span = whi - wlo
            scale = _store(name, _to_scale(name, np.where(span > 0, span / hi, 1.0),
                                           "(max - min) / (2**bits - 1)"), storage)
            zp = np.clip(np.rint(-wlo / scale.astype(np.float64)), 0, hi)
        else:
            search = clip_params if method == "clip" else hqq_params
            scale64, zp = search(x, mask, symmetric, lo, hi)
            scale = _store(name, _to_scale(name, scale64, f"{method} scale"), storage)
        if rounding == "torch":
            q = _torch_rounded(x, scale, zp, fused=layout[0] is None and layout[1] is None)
        else:
            q = np.rint(x / scale.astype(work)[:, None])
            if zp is not None:
                q += zp.astype(work)[:, None]
        codes = np.clip(q, lo, hi, out=q).astype(dtype)
    return QuantizedArray(
        codes=from_rows(codes, w.shape, *layout),
        scale=params_from_rows(scale, w.shape, *layout),
        zero_point=None if zp is None else params_from_rows(zp.astype(dtype), w.shape, *layout),
        bits=bits,
        symmetric=symmetric,
        axis=layout[0],
        group_size=layout[1],
        shape=w.shape,
        dtype=w.dtype,
        flatten=layout[2],
    )


def quantize(
    weights: Mapping[str, np.ndarray],
    bits: int | Mapping[str, int] | None = None,
    *,
    symmetric: bool = True,
    axis: int | None = None,
    group_size: int | str | None = "auto",
    flatten: bool = False,
    method: str = "rtn",
    full_range: bool = False,
    budget: float | None = None,
    bit_choices: Sequence[int] = bit_budget.DEFAULT_WIDTHS,
    importance: Mapping[str, float] | None = None,
    include: Pattern = None,
    exclude: Pattern = None,
    rounding: str = "auto",
    graph: Graph | None = None,
    scale_dtype: str = "auto",
    hessians: Mapping[str, np.ndarray] | None = None,
) -> dict[str, QuantizedArray | np.ndarray]:
    """Quantize the selected tensors to ``bits``-bit integer codes with float32 or float16 scales.

    Symmetric (``b = bits``, ``qmax = 2**(b-1) - 1``)::

        scale = max|w| / qmax            codes = clip(rint(w / scale), -qmax, qmax)

    with ``full_range=True`` (torch's symmetric int8 rule: the code ``-2**(b-1)`` in use)::

        scale = max|w| / (qmax + 1/2)    codes = clip(rint(w / scale), -qmax - 1, qmax)

    Affine (``lo = min(w, 0)``, ``hi = max(w, 0)``)::

        scale = (hi - lo) / (2**b - 1)   zero_point = rint(-lo / scale)
        codes = clip(rint(w / scale) + zero_point, 0, 2**b - 1)

    ``bits=1``: ``scale = mean|w|``, ``codes = 1 where w >= 0 else 0`` (dequantized to ``±scale``).
    ``rint`` rounds half to even. A zero range gives ``scale = 1.0``; scales are never below
    ``2**-126``. With ``method="rtn"`` and ``bits >= 2`` every dequantized value is within
    ``scale / 2`` of ``w`` (one ``scale`` with ``rounding="balanced"``, the default for
    convolution kernels with the default layout).

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Name to array. Not modified.
    bits : int, Mapping[str, int] or None
        1 to 16; None only with ``budget``. A mapping gives each selected tensor its own width
        (every selected tensor needs one; the default layout's 8 bits for small tensors does not
        apply: the widths are taken as given).
    symmetric : bool
        Symmetric (default) or affine with a zero point; ``bits=1`` must be symmetric.
    axis : int or None
        Without ``group_size``: one scale per index along this axis (negative counts from the
        end). With an int ``group_size``: the axis the groups run along (default: the last).
    group_size : int, None or "auto"
        ``"auto"`` (default): without ``axis``, the layout of
        :func:`coreprune.quant_layout.default_layout` for each tensor at its width (per output
        channel at 8 bits and for small tensors, else groups of about 64 values of each channel's
        flattened fan-in), and below 8 bits, 8 bits per output channel for a fan-in of at most
        :data:`coreprune.quant_layout.SMALL_FAN_IN` (depthwise kernels, a 3-channel stem) or a
        tensor of at most :data:`coreprune.quant_layout.SMALL_TENSOR` weights (see
        :func:`coreprune.quant_layout.default_bits`); with ``axis``, one scale per index.
        None: no groups (per tensor without ``axis``). An int: groups of that many consecutive
        values; a run it does not divide ends with a shorter group.
    flatten : bool
        Groups along each output channel's flattened fan-in ``w.reshape(shape[0], -1)`` (the usual
        conv-kernel layout); needs an int ``group_size`` and no ``axis``.
    method : {"rtn", "clip", "hqq"}
        Round to nearest with the min/max range (default), the per-group clipping ratio of least
        squared error, or half-quadratic optimisation of scale and zero point; see
        :mod:`coreprune.scale_search`. Not with ``bits=1``.
    full_range : bool
        Symmetric only: use the code ``-2**(b-1)`` too, ``scale = max|w| / (2**(b-1) - 1/2)``.
    budget : float or None
        Average bits per weight (codes, scales and zero points over the selected tensors'
        weights): the width of each tensor is chosen from ``bit_choices`` by
        :func:`coreprune.bit_budget.allocate_bits` from each tensor's noise-to-signal ratio at
        each width; with the default layout, the small tensors of
        :func:`coreprune.quant_layout.default_bits` only get widths of 8 and more (or the widest
        choice) unless that floor alone exceeds the budget. Exclusive with ``bits``.
    bit_choices : sequence of int
        Candidate widths for ``budget`` (2 to 16).
    importance : Mapping[str, float] or None
        Optional factors of the sensitivity of each tensor for ``budget`` (e.g. measured on a few
        real inputs); default 1.0 each.
    include, exclude : glob, list of globs, predicate, or None
        Which tensors to quantize, see :func:`coreprune.selection.select` (default: the weights,
        :func:`coreprune.selection.is_default_weight`: not biases, masks, tokens, position
        embeddings, weight norm's ``g`` nor normalisation parameters).
    rounding : {"auto", "half_even", "balanced", "torch"}
        How a code is rounded once the scale and zero point are known. ``"auto"`` (default):
        ``"balanced"`` for the convolution kernels (``ndim >= 3``) of the default layout
        (``group_size="auto"`` and no ``axis``), else ``"half_even"`` (linear layers: no gain
        measured on a transformer, and ten times the time of the fast path). With a ``graph``
        too: the bias correction takes the mean error exactly, and balanced rounding also
        cancels the part of the error that a kernel's correlated taps share. ``"half_even"``:
        ``rint(w / scale) + zero_point`` in the tensor's work dtype (float64 for float64
        tensors). ``"balanced"`` (tensors of ``ndim >= 2``; the others
        ``"half_even"``): ``"half_even"``, then single codes moved one step so that the errors of
        each output channel (index of axis 0) sum to as near zero as one-step moves allow
        (:func:`coreprune.rounding.balance_codes`): the shift ``sum_i (q(w)_ci - w_ci) E[x_i]``
        of the channel's output on inputs of similar means goes, which no batch norm corrects
        (top-1 agreement of int8 EfficientNet-Lite0 84.6% -> 92.5%, docs/quantization.md).
        ``"torch"``: bit for bit what torch 2.13's x86-64 CPU kernels give for that scale and zero
        point: ``nearbyint(w * (1 / scale) + zero_point)`` in float32 (the input cast to float32,
        the reciprocal a float32 division, the zero point added before rounding), with one
        rounding of the multiply-add for a per-tensor scale (``torch.quantize_per_tensor``, a
        fused multiply-add) and two for per-axis or per-group scales
        (``torch.quantize_per_channel``). The two differ by one code on exact half-way values
        with an odd zero point and within an ulp of half-way points.
    graph : coreprune.structured.Graph, optional
        The model's graph (``coreprune.torch.trace_graph`` / ``coreprune.mxnet.trace_graph``).
        With it, data-free bias correction follows the quantization
        (:func:`coreprune.correct_bias`): the expected output shift ``(q(W) - W) E[x]`` of each
        quantized conv/linear layer, ``E[x]`` from the batch norm before it, is taken out of its
        bias or its batch norm's ``running_mean`` (those float arrays change in the result).
        See docs/quantization.md for what it gains on EfficientNet-Lite0.
    scale_dtype : {"auto", "float32", "float16"}
        How the scales are stored. ``"auto"`` (default): float16 unless ``bits`` is an int of 8
        or more, when the tensor has more than one scale (per channel or per group) and no scale
        exceeds 65504; else float32 (so ``bits >= 8``
        keeps torch's int8 parity, while a ``bits`` mapping or a ``budget`` stores float16):
        a group of 64 4-bit codes costs ``4 + 16/64 = 4.25`` bits per weight instead of 4.5, and
        the depthwise kernels the 4-bit default holds at 8 bits ``8 + 16/9`` instead of
        ``8 + 32/9``. ``"float16"``:
        every tensor (a scale above 65504 is an error). ``"float32"``: every tensor, as before
        float16 scales existed. A float16 scale is the float32 scale rounded *up* to float16 (at
        most ``2**-10`` larger; below float16's normal range ``2**-14``, at most ``2**-24`` larger,
        which only the near-zero channels of a tensor reach) and the codes are computed from it,
        so the error bound above holds for the stored scale.
    hessians : Mapping[str, numpy.ndarray] or None
        Optional second moments ``H = E[x x^T]`` of the inputs of some selected tensors, each
        ``(fan_in, fan_in)`` in the order of ``w.reshape(shape[0], -1)``, measured on a few real
        inputs (``coreprune.torch.input_hessians`` / ``coreprune.mxnet.input_hessians``, or
        :class:`coreprune.gptq.InputMoments`). Those tensors keep the scales chosen above but
        get their codes from :func:`coreprune.gptq.gptq_codes` (GPTQ: each rounding error is
        compensated on the inputs it correlates with; their dequantized values may then lie more
        than ``scale / 2`` from ``w``, within the code range); the others are unchanged. A name
        that is not among ``weights`` is an error; one not selected is ignored. See
        docs/quantization.md for what it gains on EfficientNet-Lite0 and MiniLM.

    Returns
    -------
    dict[str, QuantizedArray or numpy.ndarray]
        Same names and order; a :class:`QuantizedArray` for each selected tensor (its ``bits``
        and ``layout`` record the width and layout chosen), the input objects for the others
        (new arrays for the biases and running means that ``graph`` corrects).

    Raises
    ------
    CompressionError
        ``bits`` not an int in 1..16 (or given with ``budget``, or neither given); ``axis`` out of
        range (names the tensor and its ndim); ``group_size`` < 1; ``flatten`` without an int
        ``group_size`` or with ``axis``; an unknown ``method``; NaN/Inf in a selected tensor; a
        scale beyond float32 (or, with ``scale_dtype="float16"``, above 65504);
        a budget below the smallest widths; a ``graph`` that is not a
        :class:`coreprune.structured.Graph` or names weights that are not there.
    HessianError
        (a CompressionError) A ``hessians`` entry for a name not in ``weights``, of another shape
        than the tensor's ``(fan_in, fan_in)``, not finite, not symmetric, not positive
        semi-definite, or for a tensor of ``bits=1`` or ``ndim < 2``.

    Examples
    --------
    >>> import numpy as np
    >>> w = {"fc.weight": np.array([[0.4, -1.0], [0.25, 0.0]], np.float32), "fc.bias": np.ones(2)}
    >>> q = quantize(w, bits=8, group_size=None)
    >>> q["fc.weight"].codes.tolist(), float(q["fc.weight"].scale) * 127
    ([[51, -127], [32, 0]], 1.0)
    >>> q["fc.bias"] is w["fc.bias"]
    True
    >>> quantize(w, bits=4, axis=0)["fc.weight"].codes.tolist()
    [[3, -7], [7, 0]]
    >>> conv = {"conv.weight": np.random.default_rng(0).standard_normal((32, 16, 3, 3)).astype(np.float32)}
    >>> quantize(conv, bits=4)["conv.weight"].layout  # default: groups of each channel's 144 inputs
    (None, 48, True)
    >>> small = quantize({"conv.weight": conv["conv.weight"][:8]}, bits=4)["conv.weight"]
    >>> small.bits, small.layout  # at most SMALL_TENSOR (4096) weights: 8 bits per output channel
    (8, (0, None, False))
    """
    given: dict[str, int] | None = None
    if budget is None and isinstance(bits, Mapping):
        given = {str(n): _check_bits(b) for n, b in bits.items()}
        bits = min(given.values(), default=8)  # the checks below that depend on the width
    elif budget is None:
        bits = _check_bits(bits)
    elif bits is not None:
        raise CompressionError("give either bits or budget, not both")
    if not isinstance(symmetric, (bool, np.bool_)):
        raise CompressionError(f"symmetric must be a bool, got {symmetric!r}")
    symmetric = bool(symmetric)
    if bits == 1 and not symmetric:
        raise CompressionError("bits=1 is sign binarization, which is symmetric; affine needs bits >= 2")
    if axis is not None and not _is_int(axis):
        raise CompressionError(f"axis must be an int or None, got {axis!r}")
    if group_size is not None and group_size != "auto" and (not _is_int(group_size) or int(group_size) < 1):
        raise CompressionError(f"group_size must be an int >= 1, None or 'auto', got {group_size!r}")
    if not isinstance(flatten, (bool, np.bool_)):
        raise CompressionError(f"flatten must be a bool, got {flatten!r}")
    if flatten and not _is_int(group_size):
        raise CompressionError(f"flatten needs an int group_size, got {group_size!r}")
    if method not in METHODS:
        raise CompressionError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if bits == 1 and method != "rtn":
        raise CompressionError(f"method={method!r} needs bits >= 2 (bits=1 is sign binarization)")
    if full_range and not symmetric:
        raise CompressionError("full_range is a symmetric range; affine always uses the whole range")
    if rounding not in ROUNDINGS:
        raise CompressionError(f"rounding must be one of {', '.join(ROUNDINGS)}; got {rounding!r}")
    if not isinstance(scale_dtype, str) or scale_dtype not in SCALE_DTYPES:
        raise CompressionError(f"scale_dtype must be one of {', '.join(SCALE_DTYPES)}; got {scale_dtype!r}")
    if rounding == "auto" and not (group_size == "auto" and axis is None):
        rounding = "half_even"  # "auto" stays for the default layout: balanced conv kernels
    axis = None if axis is None else int(axis)
    group_size = group_size if group_size in (None, "auto") else int(group_size)
    names = select(weights, include, exclude)
    moments = None if hessians is None else gptq.check_names(hessians, weights)
    if graph is not None and not isinstance(graph, Graph):
        raise CompressionError(f"graph must be a coreprune.structured.Graph, got {type(graph).__name__}")
    if budget is not None:
        out = _quantize_budget(weights, names, budget, bit_choices, importance, symmetric, axis,
                               group_size, bool(flatten), method, bool(full_range), rounding, scale_dtype)
    elif given is not None:
        missing = [n for n in names if n not in given]
        if missing:
            raise CompressionError(f"bits gives no width for the selected tensor {missing[0]!r} "
                                   f"({len(missing)} selected tensor(s) without one)")
        out = _quantize_selected(weights, names, {n: given[n] for n in names}, symmetric, axis, group_size,
                                 bool(flatten), method, bool(full_range), rounding,
                                 dict.fromkeys(names, (scale_dtype, 0)), recoded=moments or ())
    else:
        if group_size == "auto" and axis is None:  # the default: small tensors keep 8 bits
            widths = {n: default_bits(np.shape(weights[n]), bits) for n in names}  # type: ignore[arg-type]
        else:
            widths = {n: bits for n in names}  # type: ignore[misc]
        out = _quantize_selected(weights, names, widths, symmetric, axis, group_size,
                                 bool(flatten), method, bool(full_range), rounding,
                                 dict.fromkeys(names, (scale_dtype, bits)),  # type: ignore[arg-type]
                                 recoded=moments or ())
    if moments:
        for name in names:
            if name in moments:
                out[name] = _compensated(name, cast(QuantizedArray, out[name]), weights[name], moments[name],
                                         bool(full_range))
    if graph is None:
        return out
    from .bias_correction import correct_bias  # it reads QuantizedArray from here

    return cast("dict[str, QuantizedArray | np.ndarray]", correct_bias(weights, out, graph))


def _quantize_selected(
    weights: Mapping[str, np.ndarray],
    names: Sequence[str],
    widths: Mapping[str, int],
    symmetric: bool,
    axis: int | None,
    group_size: int | str | None,
    flatten: bool,
    method: str,
    full_range: bool,
    rounding: str,
    storage: Mapping[str, tuple[str, int]],
    recoded: Collection[str] = (),
) -> dict[str, QuantizedArray | np.ndarray]:
    """:func:`quantize` of the tensors ``names`` at their ``widths``, arguments already checked;
    ``storage``: each tensor's ``scale_dtype`` and request (:func:`_scale_storage`); ``recoded``:
    tensors whose codes GPTQ will replace (kept at nearest rounding: balancing them is wasted)."""
    out: dict[str, QuantizedArray | np.ndarray] = dict(weights)
    # Layouts are checked first, but each error is raised at its tensor's turn, so that the first
    # problem in mapping order is the one reported, as when every tensor is done one by one.
    plans: dict[str, tuple[int | None, int | None, bool] | CompressionError] = {}
    for name in names:
        try:
            plans[name] = _layout(name, weights[name], widths[name], axis, group_size, flatten)
        except CompressionError as problem:
            plans[name] = problem
            break  # nothing after the first layout error is ever reached
    # balanced: nearest first, then codes moved; "auto" balances the kernels of ndim >= 3
    balanced = {n for n in names if n not in recoded
                and (rounding == "balanced" or (rounding == "auto" and np.ndim(weights[n]) >= 3))}
    rounding = "half_even" if rounding in ("auto", "balanced") else rounding
    jobs = {}
    if method == "rtn" and not full_range and rounding == "half_even":
        for name, plan in plans.items():
            if not isinstance(plan, CompressionError):
                job = _quantize_fast_job(name, weights[name], widths[name], symmetric, plan,
                                         _scale_storage(*storage[name], plan))
                if job is not None:
                    jobs[name] = job
    done = dict(zip(jobs, _blocked.run_jobs(list(jobs.values()))))
    for name, plan in plans.items():
        if isinstance(plan, CompressionError):
            raise plan
        result = done.get(name)
        if result is None:  # not a fast layout, NaN/Inf, a scale overflow, a scale above float16
            result = _quantize_tensor(
                name, weights[name], widths[name], symmetric, plan, method, full_range, rounding,
                _scale_storage(*storage[name], plan),
            )
        out[name] = _balanced(result, weights[name], full_range) if name in balanced else result
    return out


def _balanced(q: QuantizedArray, w: np.ndarray, full_range: bool) -> QuantizedArray:
    """``q`` with its codes moved by :func:`coreprune.rounding.balance_codes` over each output channel
    (index of axis 0). 0-d and 1-d tensors (biases, norms) have no fan-in whose errors could cancel
    on a shared input: they keep round to nearest."""
    if q.bits == 1 or q.codes.size == 0 or len(q.shape) < 2:
        return q
    rows = q.shape[0]
    # the work dtype of the quantizer (float64 only for float64 tensors); balance_codes widens
    # block by block, so no float64 copy of the whole tensor is made
    work = np.dtype(np.float64 if q.dtype.itemsize > 4 else np.float32)
    step = q.expand(q.scale).reshape(rows, -1).astype(work, copy=False)
    exact = np.asarray(w).reshape(rows, -1).astype(work, copy=False) / step
    if q.zero_point is not None:
        exact += q.expand(q.zero_point).reshape(rows, -1)
    lo, hi = _code_bounds(q.bits, q.symmetric, full_range)
    codes = balance_codes(q.codes.reshape(rows, -1), exact, step, lo, hi).reshape(q.codes.shape)
    return dataclasses.replace(q, codes=codes)


def _compensated(
    name: str, q: QuantizedArray, w: np.ndarray, hessian: object, full_range: bool
) -> QuantizedArray:
    """``q`` with the codes of :func:`coreprune.gptq.gptq_codes` for its scales and the inputs ``hessian``."""
    if q.bits == 1 or len(q.shape) < 2:
        raise HessianError(f"hessian of {name!r}: GPTQ needs bits >= 2 and a weight of ndim >= 2 "
                           f"(got bits={q.bits}, shape {q.shape})")
    rows = q.shape[0]
    fan_in = math.prod(q.shape[1:])
    h = gptq.check_hessian(name, hessian, fan_in)
    step = q.expand(q.scale).reshape(rows, fan_in)
    zero = None if q.zero_point is None else q.expand(q.zero_point).reshape(rows, fan_in)
    lo, hi = _code_bounds(q.bits, q.symmetric, full_range)
    codes = gptq.gptq_codes(np.asarray(w).reshape(rows, fan_in), step, zero, lo, hi, h, name)
    return dataclasses.replace(q, codes=codes.astype(q.codes.dtype).reshape(q.shape))


def _quantize_budget(
    weights: Mapping[str, np.ndarray],
    names: Sequence[str],
    budget: object,
    bit_choices: Sequence[int],
    importance: Mapping[str, float] | None,
    symmetric: bool,
    axis: int | None,
    group_size: int | str | None,
    flatten: bool,
    method: str,
    full_range: bool,
    rounding: str,
    scale_dtype: str,
) -> dict[str, QuantizedArray | np.ndarray]:
    """:func:`quantize` with ``budget``: every width of ``bit_choices`` tried, one chosen per tensor."""
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise CompressionError(f"budget must be a number of bits per weight, got {budget!r}")
    if not math.isfinite(float(budget)) or float(budget) <= 0:
        raise CompressionError(f"budget must be a finite number > 0, got {budget!r}")
    widths = bit_budget.widths_checked(bit_choices)

    def one(name: str, b: int) -> QuantizedArray:
        result = _quantize_selected(weights, [name], {name: b}, symmetric, axis, group_size, flatten, method,
                                    full_range, rounding, {name: (scale_dtype, 0)})
        return cast(QuantizedArray, result[name])  # selected by name, so quantized

    sizes, errors, counts, arrays = bit_budget.measure(names, weights, widths, one)
    # as in quantize(w, bits), the default layout holds small tensors at 8 bits where it can
    small = bit_budget.small_tensors({n: np.shape(weights[n]) for n in names}) \
        if group_size == "auto" and axis is None else ()
    chosen = bit_budget.allocate_bits(sizes, errors, counts, float(budget), importance, wide_only=small)
    out: dict[str, QuantizedArray | np.ndarray] = dict(weights)
    for name, b in chosen.items():
        out[name] = arrays[name][b]
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
    maybe = {k: v._fast_job() for k, v in qweights.items() if isinstance(v, QuantizedArray)}
    jobs = {k: job for k, job in maybe.items() if job is not None}
    done = dict(zip(jobs, _blocked.run_jobs(list(jobs.values()))))
    return {
        k: done[k] if k in done else v.dequantize() if isinstance(v, QuantizedArray) else v
        for k, v in qweights.items()
    }
