"""PyTorch adapter: ``torch.nn.Module`` <-> ``dict[str, numpy.ndarray]``, and masks for fine-tuning.

What it does: converts a module's parameters and buffers to NumPy arrays for :mod:`coreprune`
(:func:`to_numpy`), writes arrays back into the module's own tensors (:func:`load_numpy`), and
keeps pruned weights at zero while fine-tuning with PyTorch's own pruning hooks
(:func:`attach_masks`, :func:`masks_from_module`).

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
>>> weights = {name: array.copy() for name, array in to_numpy(net).items()}
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
from .codebook import attach_codebooks, codebooks_from_module, remove_codebooks
from .convert import LoadReport, attach_masks, load_numpy, masks_from_module, to_numpy
from .distill import distill_student, kd_loss

# The conversion verbs are the adapter proper; the losses and blocks are re-exported for convenience
# and live in their own modules (blocks.py, distill.py, models.py).
__all__ = [
    "LoadReport",
    "to_numpy",
    "load_numpy",
    "attach_masks",
    "masks_from_module",
    "attach_codebooks",
    "codebooks_from_module",
    "remove_codebooks",
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
]
