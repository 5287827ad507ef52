"""PyTorch adapter: ``torch.nn.Module`` <-> ``dict[str, numpy.ndarray]``, and masks for fine-tuning.

What it does: converts a module's parameters and buffers to NumPy arrays for :mod:`coreprune`
(:func:`to_numpy`), writes arrays back into the module's own tensors (:func:`load_numpy`), keeps
pruned weights at zero while fine-tuning with PyTorch's own pruning hooks (:func:`attach_masks`,
:func:`attached_masks`, :func:`reapply_masks`, :func:`detach_masks`), distils a student
(:func:`kd_loss`, :func:`distill_student`), and measures each layer's input second moments on a
few real batches for GPTQ rounding (:func:`input_hessians`). :mod:`coreprune.mxnet` has the same
verbs with the same signatures; ``docs/torch.md`` tabulates them and the one difference
(``to_numpy(copy=False)``).

What it must not do: any compression maths (that is :mod:`coreprune`'s, on the dicts), any file
I/O, or any change to a module beyond the pruning reparametrisation it is asked for.

Its source lives in the repository's ``adapters/torch/`` folder and installs as ``coreprune.torch``
(as safetensors ships ``safetensors.torch``); ``import coreprune`` alone imports no framework. Its
modules import PyTorch with absolute imports (``import torch``), which always mean PyTorch itself.

Examples
--------
>>> import torch
>>> from coreprune.torch import load_numpy, to_numpy
>>> net = torch.nn.Linear(3, 2)
>>> weights = to_numpy(net)  # copies: the module is left alone
>>> weights["weight"][:] = 0.5
>>> load_numpy(net, weights).missing
[]
>>> net.weight.sum().item()
3.0
"""

from __future__ import annotations

from .blocks import (
    ChannelShuffle,
    DepthwiseSeparable,
    Fire,
    MobileNetStudent,
    ShuffleUnit,
    SqueezeNetStudent,
    mobilenet_student,
    num_parameters,
    squeezenet_student,
)
from .calibration import input_hessians
from .codebook import attach_codebooks, attached_codebooks, detach_codebooks
from .convert import LoadReport, load_numpy, to_numpy, weight_names
from .distill import distill_student, kd_loss
from .masks import attach_masks, attached_masks, detach_masks, reapply_masks
from .structured import prune_channels, trace_graph

# The same names, in the same order, as coreprune.mxnet.__all__ (tests/interop checks it). The
# conversion and mask verbs are the adapter proper; the loss and blocks live in their own modules
# (distill.py, blocks.py).
__all__ = [
    "LoadReport",
    "to_numpy",
    "load_numpy",
    "weight_names",
    "attach_masks",
    "attached_masks",
    "reapply_masks",
    "detach_masks",
    "attach_codebooks",
    "attached_codebooks",
    "detach_codebooks",
    "kd_loss",
    "distill_student",
    "Fire",
    "DepthwiseSeparable",
    "ChannelShuffle",
    "ShuffleUnit",
    "MobileNetStudent",
    "SqueezeNetStudent",
    "mobilenet_student",
    "squeezenet_student",
    "num_parameters",
    "prune_channels",
    "trace_graph",
    "input_hessians",
]
