"""The second moments of each layer's inputs on a few real batches, for ``quantize(..., hessians=)``.

:func:`input_hessians` runs the model with forward pre-hooks on its linear and convolution layers
and hands each layer's input rows (tokens, or convolution patches in the order of
``weight.reshape(out, -1)``) to :class:`coreprune.gptq.InputMoments`, which does the sums in
NumPy float64 (the same code as :func:`coreprune.mxnet.input_hessians`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

import torch
import torch.nn.functional as F
from coreprune.errors import CompressionError
from coreprune.gptq import InputMoments
from torch import nn

__all__ = ["input_hessians"]


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """Weight name (as ``model.state_dict()`` / ``to_numpy(model)`` name it) to its layer: every
    ``nn.Linear`` and every ``nn.Conv1d`` / ``nn.Conv2d`` of one group (a grouped or depthwise
    convolution has one input per group, no single fan-in to correlate)."""
    out: dict[str, nn.Module] = {}
    for path, m in model.named_modules():
        if isinstance(m, nn.Linear) or (isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups == 1):
            out[f"{path}.weight" if path else "weight"] = m
    return out


def _padded(m: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``x`` padded as ``m`` pads it (any ``padding`` and ``padding_mode``), and the kernel shape."""
    kernel = tuple(m.kernel_size)
    dims = len(kernel)
    if isinstance(m.padding, str):  # "valid" or "same" (stride 1): torch's own rule
        total = [0] * dims if m.padding == "valid" else [d * (k - 1) for d, k in zip(m.dilation, kernel)]
        pads = [(t // 2, t - t // 2) for t in total]
    else:
        pads = [(p, p) for p in m.padding]
    flat = [v for pair in reversed(pads) for v in pair]  # F.pad: last dimension first
    if any(flat):
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        x = F.pad(x, flat, mode=mode)
    return x, kernel


def _rows(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input vectors the weight of ``m`` multiplies: ``(rows, fan_in)``."""
    if isinstance(m, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    x, kernel = _padded(m, x)  # type: ignore[arg-type]
    stride = tuple(int(v) for v in m.stride)  # type: ignore[union-attr]
    dilation = tuple(int(v) for v in m.dilation)  # type: ignore[union-attr]
    if len(kernel) == 1:  # Conv1d: a 2-D unfold of height 1
        x, kernel, stride, dilation = x.unsqueeze(-2), (1, *kernel), (1, *stride), (1, *dilation)
    if x.dim() == len(kernel) + 1:  # an unbatched input
        x = x.unsqueeze(0)
    patches = F.unfold(x, kernel, dilation=dilation, stride=stride)  # (N, C*kh*kw, L)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def _as_tensor(value: Any) -> Any:
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value


def _batches(inputs: Any, batch_size: int | None) -> Iterator[tuple[int, tuple]]:
    """``(batch index, positional arguments)``, each batch sliced along its first axis into
    ``batch_size`` samples."""
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        inputs = [inputs]
    elif isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
        raise CompressionError(f"inputs must be a tensor or an iterable of batches, "
                               f"got {type(inputs).__name__}")
    for index, batch in enumerate(inputs):
        many = isinstance(batch, (tuple, list))
        args = tuple(_as_tensor(a) for a in batch) if many else (_as_tensor(batch),)
        size = len(args[0]) if args and isinstance(args[0], torch.Tensor) and args[0].dim() else 0
        if batch_size is None or size <= batch_size:
            yield index, args
            continue
        for start in range(0, size, batch_size):
            yield index, tuple(a[start : start + batch_size]
                        if isinstance(a, torch.Tensor) and a.dim() and len(a) == size else a for a in args)


def input_hessians(model: nn.Module, inputs: Any, *, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """``H = E[x x^T]`` of the inputs of each linear and convolution weight of ``model`` on ``inputs``.

    The model runs once per batch in eval mode under ``torch.no_grad()`` (its train/eval flags are
    restored afterwards; no batch-norm statistic changes). For every ``nn.Linear`` and every
    ``nn.Conv1d`` / ``nn.Conv2d`` with ``groups == 1`` that the batches reach, the rows its weight
    multiplies -- a linear layer's input vectors, a convolution's patches ``(C, kh, kw)`` at each
    output position (with the layer's padding, stride and dilation) -- are accumulated in float64.
    Grouped and depthwise convolutions, 3-D and transposed convolutions are left out (quantized
    by round to nearest).

    Parameters
    ----------
    model : torch.nn.Module
        Not modified.
    inputs : torch.Tensor, numpy.ndarray or iterable
        One batch, or an iterable of batches; a batch that is a tuple or a list is passed as
        positional arguments (one batch of two inputs: ``[(a, b)]``); NumPy arrays become tensors.
        A few hundred images or sentences are enough (GPTQ uses 128 sequences).
    batch_size : int or None
        If given, every batch is run in slices of at most this many samples along its first
        axis (the arguments of that length are sliced; to bound memory); the result is that of
        the whole batch.

    Returns
    -------
    dict[str, numpy.ndarray]
        Weight name, as ``model.state_dict()`` and :func:`coreprune.torch.to_numpy` name it, to
        the float64 ``(fan_in, fan_in)`` mean of ``x x^T``; for :func:`coreprune.quantize`'s
        ``hessians``. Layers no batch reached are absent.

    Raises
    ------
    CompressionError
        ``model`` not a module, no batch, ``batch_size`` not a positive int, non-finite inputs
        of a layer, or a batch the model refuses (its message attached).

    Examples
    --------
    >>> import torch, coreprune, coreprune.torch as cpt
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    >>> x = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]])
    >>> h = cpt.input_hessians(net, x)
    >>> list(h), h["0.weight"].tolist()
    (['0.weight', '2.weight'], [[0.5, 1.0, 0.0], [1.0, 2.5, 0.5], [0.0, 0.5, 0.5]])
    >>> q = coreprune.quantize(cpt.to_numpy(net), bits=4, hessians=h)
    """
    if not isinstance(model, nn.Module):
        raise CompressionError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise CompressionError(f"batch_size must be a positive int or None, got {batch_size!r}")
    moments = InputMoments()
    layers = _layers(model)

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return  # called with keywords or something else: the layer's own forward decides
            rows = _rows(module, args[0].detach())
            if rows.shape[1] != module.weight[0].numel():  # type: ignore[index]
                return  # the layer refuses this input itself, with torch's own message
            if rows.dtype == torch.bfloat16:  # NumPy has no bfloat16; the float32 values are exact
                rows = rows.float()
            moments.add(name, rows.cpu().numpy())
        return record

    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    seen = 0
    try:
        model.eval()
        with torch.no_grad():
            for index, batch in _batches(inputs, batch_size):
                try:
                    model(*batch)
                except CompressionError:
                    raise
                except Exception as exc:  # the user's forward may raise anything on a batch it refuses
                    raise CompressionError(
                        f"input_hessians: the model failed on batch {index}: {exc}") from exc
                seen += 1
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    if not seen:
        raise CompressionError("input_hessians needs at least one batch")
    return moments.hessians()
