"""MXNet (Gluon) adapter: convert parameter collections to ``dict[str, numpy.ndarray]`` and back.

What it does
------------
* :func:`to_numpy` copies the tensors of a Gluon Block, a ParameterDict, a mapping of
  NDArrays or an ``(arg_params, aux_params)`` pair into a new dict, named exactly as
  MXNet's own files name them (``Block.save_parameters``, ``mx.nd.save``,
  ``mx.model.save_checkpoint``). It always copies: ``copy=False`` is refused, MXNet cannot
  lend its memory to NumPy.
* :func:`load_numpy` writes such a dict back in place, keeping dtype and context, and
  returns a :class:`LoadReport` (strict by default).
* :func:`attach_masks` keeps pruned entries at exactly zero while a ``Trainer`` trains the
  rest; :func:`attached_masks` reads them back, :func:`reapply_masks` and :func:`detach_masks`
  re-zero and remove them.
* :func:`kd_loss` and :func:`distill_student` distil a student.

The verbs, their names and signatures are those of :mod:`coreprune.torch`; ``docs/mxnet.md``
tabulates them and where MXNet forces a difference.

What it must not do
-------------------
No compression maths lives here: pruning, quantization and statistics are the NumPy
functions of :mod:`coreprune`, which never imports MXNet. This package only moves
arrays across the framework boundary and enforces masks it is given. Importing it
imports ``mxnet`` (1.9.1, which needs ``numpy<1.24``); importing :mod:`coreprune` alone does
not (the source lives in the repository's ``adapters/mxnet/`` folder).
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

# The same names, in the same order, as coreprune.torch.__all__ (tests/interop checks it). The
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
