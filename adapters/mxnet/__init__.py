"""MXNet (Gluon) adapter: convert parameter collections to ``dict[str, numpy.ndarray]`` and back.

What it does
------------
* :func:`to_numpy` copies the tensors of a Gluon Block, a ParameterDict, a mapping of
  NDArrays or an ``(arg_params, aux_params)`` pair into a new dict, named exactly as
  MXNet's own files name them (``Block.save_parameters``, ``mx.nd.save``,
  ``mx.model.save_checkpoint``).
* :func:`load_numpy` writes such a dict back in place, keeping dtype and context, and
  returns a :class:`LoadReport` (strict by default).
* :func:`attach_masks` keeps pruned entries at exactly zero while a ``Trainer`` trains the
  rest; :func:`reapply_masks` and :func:`detach_masks` re-zero and remove them.

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
    TORCH_LEAF_NAMES,
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
from .codebook import attach_codebooks, centroid_params, codebooks_from_module, remove_codebooks
from .convert import LoadReport, load_numpy, to_numpy
from .distill import KDLoss, distill_student
from .masks import attach_masks, detach_masks, reapply_masks

# The conversion verbs are the adapter proper; the loss and blocks are re-exported for convenience
# and live in their own modules (blocks.py, distill.py, models.py).
__all__ = [
    "LoadReport",
    "to_numpy",
    "load_numpy",
    "attach_masks",
    "reapply_masks",
    "detach_masks",
    "attach_codebooks",
    "centroid_params",
    "codebooks_from_module",
    "remove_codebooks",
    "KDLoss",
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
    "TORCH_LEAF_NAMES",
]
