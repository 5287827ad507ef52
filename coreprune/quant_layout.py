"""Where the scales of a quantized tensor sit: its layout, and the ``(rows, group)`` view of it.

A layout is ``(axis, group_size, flatten)``, as stored in a :class:`~coreprune.quantization.QuantizedArray`:

* ``(None, None, False)``: one scale for the whole tensor;
* ``(k, None, False)``: one scale per index along axis ``k``;
* ``(None, g, False)`` / ``(k, g, False)``: groups of ``g`` consecutive values along the last axis /
  along axis ``k``; the scales have the tensor's shape with that axis's length ``n`` replaced by
  ``ceil(n / g)``; when ``g`` does not divide ``n`` the last group of each run is shorter;
* ``(None, g, True)``: groups of ``g`` along each output channel's flattened fan-in
  (``w.reshape(shape[0], -1)``, the usual layout of conv kernels), scales of shape
  ``(shape[0], ceil(fan_in / g))``.

Every quantizer works on the *row view*: a 2-D ``(R, C)`` array with one scale per row, in the
order of the flattened scale array. Short last groups are padded with zeros, which never changes
a range that always includes 0; the mask of real entries comes with the view for the error-driven
scale searches.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "Layout",
    "SMALL_FAN_IN",
    "SMALL_TENSOR",
    "default_bits",
    "default_layout",
    "param_shape",
    "row_count",
    "fast_rows",
    "to_rows",
    "from_rows",
    "expand_params",
    "params_to_rows",
    "params_from_rows",
    "layout_problem",
]

#: ``(axis, group_size, flatten)``, axis normalised (non-negative) or None.
Layout = tuple  # (int | None, int | None, bool)


def _group_axis(ndim: int, axis: int | None) -> int:
    return ndim - 1 if axis is None else axis


#: Largest fan-in ``prod(shape[1:])`` that the low-bit default keeps at 8 bits per output channel
#: (:func:`default_bits`): depthwise kernels (9 or 25 inputs), a 3-channel stem (27), narrow 1x1
#: convolutions. On EfficientNet-Lite0 one such tensor at 4 bits, the rest float, already costs
#: 30-45% of the top-1 agreement (docs/quantization.md); they hold few of a model's weights.
SMALL_FAN_IN = 32
#: Largest tensor (``prod(shape)`` weights) that the low-bit default keeps at 8 bits per output
#: channel whatever its fan-in (:func:`default_bits`): at 8 bits it costs at most 2 KiB more than
#: at 4, nothing next to a model, while one such tensor can carry an outsized share of the error --
#: EfficientNet-Lite0's first two 1x1 projections (2304 and 3456 weights), MiniLM's token-type
#: embeddings (768 weights, added to every token: as much cosine at 4 bits as the 11.7 M word
#: embeddings; ``bench_fidelity.py --text-breakdown``).
SMALL_TENSOR = 4096


def default_bits(shape: tuple, bits: int) -> int:
    """The width :func:`coreprune.quantization.quantize` gives a tensor when asked for ``bits``
    with its default layout: 8 for a tensor of ``ndim >= 2`` whose fan-in ``prod(shape[1:])`` is
    at most :data:`SMALL_FAN_IN` or whose size ``prod(shape)`` is at most :data:`SMALL_TENSOR`
    when ``2 <= bits < 8``, else ``bits``.

    Examples
    --------
    >>> default_bits((32, 1, 3, 3), 4), default_bits((32, 3, 3, 3), 3), default_bits((40, 144, 1, 1), 4)
    (8, 8, 4)
    >>> default_bits((24, 144, 1, 1), 4), default_bits((2, 384), 4)    # 3456 and 768 weights
    (8, 8)
    >>> default_bits((32, 1, 3, 3), 1), default_bits((32, 1, 3, 3), 12), default_bits((32,), 4)
    (1, 12, 4)
    """
    if len(shape) < 2 or not 2 <= bits < 8:
        return bits
    small = math.prod(shape[1:]) <= SMALL_FAN_IN or math.prod(shape) <= SMALL_TENSOR
    return 8 if small else bits


def default_layout(shape: tuple, bits: int, group: int = 64) -> tuple[int | None, int | None, bool]:
    """The layout :func:`coreprune.quantization.quantize` picks when given none.

    * 0-d and 1-d tensors (only quantized when included explicitly): one scale per tensor;
    * ``bits >= 8``: one scale per output channel (axis 0);
    * otherwise, with ``fan_in = prod(shape[1:])``: one scale per output channel when
      ``fan_in <= 1.5 * group`` (depthwise and small kernels), else groups of each channel's
      (flattened) fan-in, ``k = ceil(fan_in / group)`` groups of equal length ``ceil(fan_in / k)``
      (so no group is much shorter than the others). ``group`` is 64 for up to 4 bits, 128 above.

    At 4 bits a group of 64 costs ``4 + 16/64 = 4.25`` bits per weight with the float16 scale
    :func:`coreprune.quantization.quantize` stores by default (``4 + 32/64 = 4.5`` with float32).

    Examples
    --------
    >>> default_layout((32, 1, 3, 3), 4), default_layout((96, 16, 1, 1), 4)
    ((0, None, False), (0, None, False))
    >>> default_layout((24, 144, 1, 1), 4), default_layout((384, 1536), 4), default_layout((10, 20), 8)
    ((None, 48, True), (None, 64, False), (0, None, False))
    """
    if len(shape) < 2:
        return None, None, False
    if bits >= 8:
        return 0, None, False
    group = group if bits <= 4 else 2 * group
    fan_in = math.prod(shape[1:])
    if fan_in <= 1.5 * group:
        return 0, None, False
    k = -(-fan_in // group)
    g = -(-fan_in // k)
    return (None, g, False) if len(shape) == 2 else (None, g, True)


def layout_problem(shape: tuple, axis: object, group_size: object, flatten: object) -> str | None:
    """Why a normalised layout does not fit ``shape``, or None.

    Examples
    --------
    >>> layout_problem((4, 3), None, 2, False) is None   # 3 = 2 + a short group of 1
    True
    >>> layout_problem((4,), 5, None, False)
    'axis 5 is out of range for a tensor with ndim=1'
    """
    ndim = len(shape)
    is_int = isinstance(axis, (int, np.integer)) and not isinstance(axis, (bool, np.bool_))
    if axis is not None and (not is_int or not 0 <= int(axis) < ndim):  # type: ignore[call-overload]
        return f"axis {axis!r} is out of range for a tensor with ndim={ndim}"
    if not isinstance(flatten, (bool, np.bool_)):
        return f"flatten must be a bool, got {flatten!r}"
    if group_size is not None:
        g_int = isinstance(group_size, (int, np.integer)) and not isinstance(group_size, (bool, np.bool_))
        if not g_int or int(group_size) < 1:  # type: ignore[call-overload]
            return f"group_size must be an int >= 1, got {group_size!r}"
        if ndim == 0:
            return "group_size needs a tensor with ndim >= 1"
    if flatten:
        if group_size is None:
            return "flatten needs a group_size (groups along each output channel's flattened fan-in)"
        if axis is not None:
            return "flatten groups run along the flattened fan-in; it takes no axis"
        if ndim < 2:
            return "flatten needs a tensor with ndim >= 2 (an output axis and a fan-in)"
    return None


def param_shape(shape: tuple, axis: int | None, group_size: int | None, flatten: bool) -> tuple:
    """Shape of the scales (and zero points) of a layout.

    Examples
    --------
    >>> param_shape((8, 3, 3, 3), None, 16, True), param_shape((6, 10), 0, 4, False)
    ((8, 2), (2, 10))
    """
    if flatten:
        fan_in = math.prod(shape[1:])
        return (shape[0], -(-fan_in // group_size)) if fan_in else (shape[0], 0)
    if group_size is not None:
        k = _group_axis(len(shape), axis)
        return tuple(shape[:k]) + (-(-shape[k] // group_size),) + tuple(shape[k + 1 :])
    if axis is not None:
        return (shape[axis],)
    return ()


def row_count(shape: tuple, axis: int | None, group_size: int | None, flatten: bool) -> int:
    """Number of scales of a layout (rows of its row view)."""
    return math.prod(param_shape(shape, axis, group_size, flatten))


def fast_rows(shape: tuple, axis: int | None, group_size: int | None, flatten: bool) -> int | None:
    """Rows when the row view is a plain C-order reshape (no padding, no transposition), else None.

    Per tensor, per index of axis 0, and groups along the last axis or the flattened fan-in that
    the group size divides.
    """
    size = math.prod(shape)
    if group_size is not None:
        run = math.prod(shape[1:]) if flatten else shape[_group_axis(len(shape), axis)]
        if (flatten or _group_axis(len(shape), axis) == len(shape) - 1) and run % group_size == 0:
            return size // group_size if group_size else None
        return None
    if axis is None:
        return 1
    return shape[0] if axis == 0 else None


def _columns(n: int, group_size: int) -> int:
    """Columns of the row view of runs of ``n`` values in groups of ``group_size``.

    A group longer than its run is one group of the run's length, unpadded: the same values, the
    same scale, and no allocation that grows with ``group_size`` (a file may say 2**63).
    """
    return max(1, min(group_size, n))


def _run_view(x: np.ndarray, axis: int | None, flatten: bool) -> np.ndarray:
    """``x`` with the grouped run as its last axis: ``(..., n)`` (``flatten`` is handled by the caller)."""
    return np.moveaxis(x, _group_axis(x.ndim, axis), -1)


def to_rows(
    x: np.ndarray, axis: int | None, group_size: int | None, flatten: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``(R, C)`` row view of ``x`` and the bool mask of its real (not padding) entries.

    Parameters
    ----------
    x : numpy.ndarray
        Any shape ``S`` that the layout fits.
    axis, group_size, flatten
        A normalised layout.

    Returns
    -------
    rows : numpy.ndarray
        ``(R, C)`` with ``R`` = :func:`row_count`; row ``r`` holds the values of scale ``r`` (C
        order of :func:`param_shape`), zero-padded to ``C`` where a group is short. A view of ``x``
        where :func:`fast_rows` applies, else a new array.
    mask : numpy.ndarray or None
        ``(R, C)`` bool, True at real entries; None when there is no padding.

    Examples
    --------
    >>> import numpy as np
    >>> rows, mask = to_rows(np.arange(10.0).reshape(2, 5), None, 2, False)
    >>> rows.tolist()[:3], mask[2].tolist()
    ([[0.0, 1.0], [2.0, 3.0], [4.0, 0.0]], [True, False])
    """
    if group_size is None:
        if axis is None:
            return x.reshape(1, x.size), None
        n = x.shape[axis]
        return np.moveaxis(x, axis, 0).reshape(n, x.size // n if n else 0), None
    run = x.reshape(x.shape[0], math.prod(x.shape[1:])) if flatten else _run_view(x, axis, flatten)
    n = run.shape[-1]
    group_size = _columns(n, group_size)
    groups = -(-n // group_size)
    pad = groups * group_size - n
    if pad == 0:
        return run.reshape(-1, group_size), None
    padded = np.zeros(run.shape[:-1] + (groups * group_size,), x.dtype)
    padded[..., :n] = run
    mask = np.zeros(groups * group_size, np.bool_)
    mask[:n] = True
    full_mask = np.broadcast_to(mask, padded.shape).reshape(-1, group_size)
    return padded.reshape(-1, group_size), full_mask


def from_rows(
    rows: np.ndarray, shape: tuple, axis: int | None, group_size: int | None, flatten: bool
) -> np.ndarray:
    """Inverse of :func:`to_rows`: the ``(R, C)`` rows back to an array of ``shape`` (padding dropped).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(24.0).reshape(2, 3, 4)
    >>> all(np.array_equal(from_rows(to_rows(x, *lay)[0], x.shape, *lay), x)
    ...     for lay in [(None, None, False), (1, None, False), (1, 2, False), (None, 5, True)])
    True
    """
    if group_size is None:
        if axis is None:
            return rows.reshape(shape)
        moved = (shape[axis],) + tuple(shape[:axis]) + tuple(shape[axis + 1 :])
        return np.ascontiguousarray(np.moveaxis(rows.reshape(moved), 0, axis))
    if flatten:
        run_shape: tuple = (shape[0], math.prod(shape[1:]))
    else:
        k = _group_axis(len(shape), axis)
        run_shape = tuple(shape[:k]) + tuple(shape[k + 1 :]) + (shape[k],)
    n = run_shape[-1]
    group_size = _columns(n, group_size)
    groups = -(-n // group_size)
    run = rows.reshape(run_shape[:-1] + (groups * group_size,))[..., :n]
    if flatten:
        return np.ascontiguousarray(run).reshape(shape)
    return np.ascontiguousarray(np.moveaxis(run, -1, _group_axis(len(shape), axis)))


def expand_params(
    params: np.ndarray, shape: tuple, axis: int | None, group_size: int | None, flatten: bool
) -> np.ndarray:
    """Per-scale values (of :func:`param_shape`) broadcast to one per element of ``shape``.

    Examples
    --------
    >>> import numpy as np
    >>> expand_params(np.array([[1, 2], [3, 4]]), (2, 3), None, 2, False).tolist()
    [[1, 1, 2], [3, 3, 4]]
    """
    flat = params_to_rows(np.asarray(params), axis, group_size, flatten)
    columns = to_rows(np.zeros(shape, np.bool_), axis, group_size, flatten)[0].shape[1]
    return from_rows(np.repeat(flat[:, None], columns, axis=1), shape, axis, group_size, flatten)


def params_to_rows(p: np.ndarray, axis: int | None, group_size: int | None, flatten: bool) -> np.ndarray:
    """Scales (or zero points) of :func:`param_shape` as a flat array in row order."""
    if group_size is not None and not flatten and axis is not None:
        return np.moveaxis(p, axis, -1).reshape(-1)
    return p.reshape(-1)


def params_from_rows(
    flat: np.ndarray, shape: tuple, axis: int | None, group_size: int | None, flatten: bool
) -> np.ndarray:
    """Inverse of :func:`params_to_rows`."""
    target = param_shape(shape, axis, group_size, flatten)
    if group_size is not None and not flatten and axis is not None:
        moved = tuple(target[:axis]) + tuple(target[axis + 1 :]) + (target[axis],)
        return np.ascontiguousarray(np.moveaxis(flat.reshape(moved), -1, axis))
    return flat.reshape(target)
