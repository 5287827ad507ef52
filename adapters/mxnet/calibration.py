"""The second moments of each layer's inputs on a few real batches, for ``quantize(..., hessians=)``.

:func:`input_hessians` runs a Gluon block in predict mode with forward pre-hooks on its dense and
convolution layers and hands each layer's input rows (input vectors, or convolution patches in
the order of ``weight.reshape(out, -1)``) to :class:`coreprune.gptq.InputMoments`, which does the
sums in NumPy float64 (the same code as :func:`coreprune.torch.input_hessians`). A hybridized
block runs imperatively for the occasion (hooks do not fire inside a cached graph) and is left
hybridized, with its cached graph, exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable

import numpy as np

import mxnet as mx
from coreprune.errors import CompressionError
from coreprune.gptq import InputMoments
from mxnet import autograd, gluon

from .convert import MX_BFLOAT16, _check_initialised, _slots

__all__ = ["input_hessians"]

#: The layout each convolution class must have: its patches are then ``(C, k...)``, the weight's order.
_LAYOUTS: dict[type, str] = {gluon.nn.Conv1D: "NCW", gluon.nn.Conv2D: "NCHW"}


def _blocks(model: gluon.Block) -> list[gluon.Block]:
    """Every block of ``model`` once (a block registered twice is visited once), parents first."""
    seen: set[int] = set()
    out: list[gluon.Block] = []

    def visit(block: gluon.Block) -> None:
        if id(block) in seen:
            return
        seen.add(id(block))
        out.append(block)
        for child in block._children.values():
            # As convert.weight_names: a weakref in some MXNet versions, the block itself in 1.9.
            visit(child() if callable(child) and not isinstance(child, gluon.Block) else child)

    visit(model)
    return out


def _layers(blocks: list[gluon.Block], names: Mapping[int, list[str]]) -> list[tuple[gluon.Block, str]]:
    """``(block, weight name)`` for every Dense and one-group Conv1D/Conv2D; the name is the first
    :func:`~coreprune.mxnet.to_numpy` name of the block's weight."""
    out = []
    for block in blocks:
        conv = isinstance(block, (gluon.nn.Conv1D, gluon.nn.Conv2D)) and block._op_name == "Convolution"
        if not (conv or isinstance(block, gluon.nn.Dense)):
            continue
        if conv:
            if block._kwargs["num_group"] != 1:  # grouped/depthwise: no single fan-in to correlate
                continue
            layout = block._kwargs["layout"]
            wanted = _LAYOUTS[gluon.nn.Conv1D if isinstance(block, gluon.nn.Conv1D) else gluon.nn.Conv2D]
            if layout != wanted:
                raise CompressionError(
                    f"input_hessians: {block.name} has layout {layout!r}; only {wanted!r} is supported "
                    "(its patches must follow the weight's (in_channels, kernel...) order)"
                )
        aliases = names.get(id(block.weight))
        if aliases:
            out.append((block, aliases[0]))
    return out


def _rows(block: gluon.Block, x: mx.nd.NDArray) -> mx.nd.NDArray:
    """The input vectors ``(rows, fan_in)`` that the weight of ``block`` multiplies."""
    if np.dtype(x.dtype) == MX_BFLOAT16:
        x = x.astype("float32")  # exact; NumPy cannot read MXNet's bfloat16 arrays directly
    if isinstance(block, gluon.nn.Dense):
        # flatten=True: all but the first axis form one vector; else the last axis is the vector
        return x.reshape((x.shape[0], -1)) if block._flatten else x.reshape((-1, x.shape[-1]))
    k = block._kwargs
    kernel, stride, dilate, pad = k["kernel"], k["stride"], k["dilate"], k["pad"]
    if len(kernel) == 1:  # MXNet 1.9's im2col fails on a 1-D kernel when run: a 2-D one of height 1
        x = x.expand_dims(axis=2)
        kernel, stride, dilate, pad = (1, *kernel), (1, *stride), (1, *dilate), (0, *pad)
    patches = mx.nd.im2col(x, kernel=kernel, stride=stride, dilate=dilate, pad=pad)
    # (N, C * prod(kernel), L): channel-major then kernel positions row-major, as weight.reshape(out, -1)
    return patches.transpose((0, 2, 1)).reshape((-1, patches.shape[1]))


def _recorder(moments: InputMoments, name: str) -> Callable[[gluon.Block, tuple], None]:
    def record(block: gluon.Block, args: tuple) -> None:
        if not args or not isinstance(args[0], mx.nd.NDArray):  # e.g. a symbolic shape inference
            return
        rows = _rows(block, args[0])
        if rows.shape[1] != int(np.prod(block.weight.shape[1:])):
            return  # the layer refuses this input itself, with MXNet's message
        moments.add(name, rows.asnumpy())

    return record


def _as_ndarray(value: Any, index: int, ctx: mx.Context, dtype: np.dtype) -> mx.nd.NDArray:
    if isinstance(value, mx.nd.NDArray):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiub":
            raise CompressionError(f"input_hessians: batch {index} holds a {value.dtype} array, not numbers")
        return mx.nd.array(value, ctx=ctx, dtype=dtype if value.dtype.kind == "f" else value.dtype)
    raise CompressionError(
        f"input_hessians: batch {index} holds a {type(value).__name__}; a batch is an NDArray, a NumPy "
        "array, or a tuple of them (the positional arguments)"
    )


def _batches(
    inputs: Any, batch_size: int | None, ctx: mx.Context, dtype: np.dtype
) -> Iterator[tuple[int, tuple[mx.nd.NDArray, ...]]]:
    """``(batch index, positional arguments)`` for every (sliced) batch of ``inputs``."""
    if isinstance(inputs, (mx.nd.NDArray, np.ndarray)):
        inputs = [inputs]
    elif isinstance(inputs, (str, bytes, Mapping)) or not isinstance(inputs, Iterable):
        raise CompressionError(
            f"input_hessians: inputs must be an NDArray, a NumPy array or an iterable of batches, got "
            f"{type(inputs).__name__}"
        )
    for index, batch in enumerate(inputs):
        items = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
        if not items:
            raise CompressionError(f"input_hessians: batch {index} is empty")
        args = tuple(_as_ndarray(item, index, ctx, dtype) for item in items)
        if batch_size is None:
            yield index, args
            continue
        lengths = {int(a.shape[0]) if a.ndim else -1 for a in args}
        if len(lengths) != 1 or -1 in lengths:
            raise CompressionError(
                f"input_hessians: batch_size needs every array of a batch to have the same first axis; "
                f"batch {index} has shapes {[a.shape for a in args]}"
            )
        length = lengths.pop()
        for start in range(0, length, batch_size):
            yield index, tuple(a[start : start + batch_size] for a in args)


def input_hessians(
    model: gluon.Block, inputs: Any, *, batch_size: int | None = None
) -> dict[str, np.ndarray]:
    """``H = E[x x^T]`` of the inputs of each dense and convolution weight of ``model`` on ``inputs``.

    The model runs once per batch under ``autograd.pause(train_mode=False)`` (predict mode: no
    batch-norm statistic changes, no dropout; nothing recorded). For every ``gluon.nn.Dense`` and
    every ``Conv1D`` / ``Conv2D`` with ``groups == 1`` that the batches reach, the rows its weight
    multiplies -- a dense layer's input vectors (with ``flatten=True``, each sample's input
    flattened), a convolution's patches ``(C, kh, kw)`` at each output position, with the layer's
    padding, stride and dilation -- are accumulated in float64. Grouped and depthwise
    convolutions, ``Conv3D``, transposed convolutions and layers inside a ``SymbolBlock`` are left
    out (quantized by round to nearest).

    A hybridized model runs imperatively here (forward hooks do not fire inside a cached graph):
    each HybridBlock's ``_active`` flag is cleared for the run and restored afterwards, leaving its
    cached graph, hybridize options and parameters untouched. The hooks are removed even when a
    batch fails.

    Parameters
    ----------
    model : gluon.Block
        Initialised (a deferred initialisation must have run: one forward pass). Not modified.
    inputs : NDArray, numpy.ndarray, or iterable
        One batch, or an iterable of batches; a batch is an NDArray, a NumPy array, or a tuple
        (or list) of them passed as positional arguments (so one batch of several inputs is
        ``[(a, b)]``). NumPy floating arrays become NDArrays of the model's float dtype on its
        context. A few hundred samples are enough (GPTQ uses 128 sequences).
    batch_size : int or None, default None
        If given, every batch is run in slices of at most this many samples along its first
        axis (to bound memory); the result is that of the whole batch.

    Returns
    -------
    dict[str, numpy.ndarray]
        Weight name, as :func:`coreprune.mxnet.to_numpy` names it (the structural keys of
        ``Block.save_parameters``), to the float64 ``(fan_in, fan_in)`` mean of ``x x^T`` over
        all rows of all batches; for :func:`coreprune.quantize`'s ``hessians``. In the order the
        layers first ran; a weight shared by several blocks gets the moments of all their inputs,
        under each of its names. Layers no batch reached are absent.

    Raises
    ------
    CompressionError
        ``model`` not a Block, uninitialised parameters, no batch, a batch that is not arrays,
        ``batch_size`` not a positive int, a Conv1D/Conv2D of another layout than NCW/NCHW,
        non-finite inputs of a layer, or a batch MXNet refuses (its message attached).

    Examples
    --------
    >>> import mxnet as mx, numpy as np
    >>> import coreprune, coreprune.mxnet as cpm
    >>> fc = mx.gluon.nn.Dense(2, in_units=3)
    >>> fc.initialize()
    >>> x = np.array([[1, 2, 0], [0, 1, 1], [2, 0, 1], [1, 1, 1]], np.float32)
    >>> h = cpm.input_hessians(fc, x)
    >>> list(h), h["weight"].shape
    (['weight'], (3, 3))
    >>> bool(np.allclose(h["weight"], x.T.astype(float) @ x / 4))
    True
    >>> q = coreprune.quantize(cpm.to_numpy(fc), bits=4, hessians=h)
    """
    if not isinstance(model, gluon.Block):
        raise CompressionError(f"input_hessians: model must be a gluon Block, got {type(model).__name__}")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise CompressionError(
            f"input_hessians: batch_size must be a positive int or None, got {batch_size!r}"
        )
    slots = _slots(model, verb="input_hessians")
    _check_initialised(slots, verb="input_hessians")
    names: dict[int, list[str]] = {}  # a shared parameter has several names (as in to_numpy)
    for name, param in slots.items():
        names.setdefault(id(param), []).append(name)
    blocks = _blocks(model)
    layers = _layers(blocks, names)

    params = list(slots.values())
    ctx = params[0].list_ctx()[0] if params else mx.cpu()
    floats = [np.dtype(p.dtype) for p in params if np.dtype(p.dtype).kind == "f"]
    dtype = floats[0] if floats else np.dtype(np.float32)

    moments = InputMoments()
    active = [(b, b._active) for b in blocks if isinstance(b, gluon.HybridBlock)]
    handles = []
    seen = 0
    try:
        for block, _ in active:
            block._active = False  # not hybridize(False): that would also drop the cached graph
        handles = [block.register_forward_pre_hook(_recorder(moments, name)) for block, name in layers]
        with autograd.pause(train_mode=False):
            for index, args in _batches(inputs, batch_size, ctx, dtype):
                try:
                    model(*args)
                    mx.nd.waitall()  # MXNet is asynchronous: a failure surfaces here, not later
                except mx.base.MXNetError as exc:
                    text = str(exc).strip()
                    last = text.splitlines()[-1] if text else type(exc).__name__  # MXNet's own message
                    raise CompressionError(
                        f"input_hessians: the model failed on batch {index}: {last}"
                    ) from exc
                seen += 1
    finally:
        for handle in handles:
            handle.detach()
        for block, flag in active:
            block._active = flag
    if not seen:
        raise CompressionError("input_hessians needs at least one batch")
    out: dict[str, np.ndarray] = {}
    for name, hessian in moments.hessians().items():
        for alias in names[id(slots[name])]:
            out[alias] = hessian
    return out
