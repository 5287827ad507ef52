"""coreprune: framework-agnostic compression of neural-network weights.

Every algorithm takes and returns ``dict[str, numpy.ndarray]``. This package never
imports torch or mxnet on its own; the converters are the subpackages :mod:`coreprune.torch` and
:mod:`coreprune.mxnet`, which import their framework only when they themselves are imported.

* pruning: :func:`prune_threshold`, :func:`prune_magnitude`, :func:`apply_masks`,
  :func:`global_magnitude_threshold` (the global cut, streamed over a lazy reader)
* quantization: :func:`quantize`, :func:`dequantize`, :class:`QuantizedArray`, :func:`pack_bits`,
  :func:`unpack_bits` (n-bit codes to bytes and back), :func:`measured_importance` (per-tensor
  sensitivities for ``quantize(..., budget=)`` from a loss on a few real inputs), :mod:`coreprune.gptq`
  (``quantize(..., hessians=)``: rounding that compensates its errors on a few real inputs),
  :func:`estimate_hessians` (the same moments estimated without data, from the batch norms)
* data-free corrections from the batch norms: :func:`channel_statistics`, :func:`correct_bias`
* statistics: :func:`sparsity`, :func:`tensor_stats` (what ``coreprune inspect`` prints)
* files: :mod:`coreprune.io` (``load``, ``save``, ``open_weights``), :func:`save_compressed`,
  :func:`load_compressed`
  (the ``.cpz`` format, :mod:`coreprune.io.cpz`), :func:`encoded_nbytes` and :func:`layout_of` (its
  size planner)
* distillation and light architectures: :mod:`coreprune.distill`, :mod:`coreprune.arch`
* selection of tensors: :func:`select`; errors: :class:`CompressionError`
* threads of the fast paths: :func:`set_num_threads`, :func:`num_threads`

Examples
--------
>>> import numpy as np, coreprune
>>> w = {"fc.weight": np.array([[0.5, -0.01], [0.02, -2.0]], np.float32)}
>>> pruned, masks = coreprune.prune_threshold(w, 0.1)
>>> pruned["fc.weight"].tolist()
[[0.5, 0.0], [0.0, -2.0]]
>>> q = coreprune.quantize(pruned, bits=8, group_size=None)  # one scale for the tensor
>>> q["fc.weight"].codes.tolist(), q["fc.weight"].nbytes
([[32, 0], [0, -127]], 8)
"""

from __future__ import annotations

from . import arch, distill, gptq, io, structured
from ._fast.blocked import num_threads, set_num_threads
from .arch import channel_shuffle
from .bias_correction import channel_statistics, correct_bias
from .bit_budget import measured_importance
from .distill import kd_loss, kd_loss_and_grad
from .errors import CompressionError, EmptyLayerWarning, HessianError, UnsafePickleError, WeightFileError
from .graph_moments import estimate_hessians
from .io.cpz import load_compressed, save_compressed
from .layout_planner import encoded_nbytes, layout_of
from .packing import pack_bits, unpack_bits
from .pruning import (
    GlobalThreshold,
    PruneResult,
    apply_masks,
    global_magnitude_threshold,
    prune_magnitude,
    prune_threshold,
)
from .quantization import QuantizedArray, dequantize, quantize
from .selection import select
from .stats import sparsity, tensor_stats

__version__ = "0.1.0"

__all__ = [
    "CompressionError",
    "HessianError",
    "EmptyLayerWarning",
    "UnsafePickleError",
    "WeightFileError",
    "select",
    "prune_threshold",
    "prune_magnitude",
    "apply_masks",
    "global_magnitude_threshold",
    "GlobalThreshold",
    "PruneResult",
    "sparsity",
    "tensor_stats",
    "pack_bits",
    "unpack_bits",
    "QuantizedArray",
    "quantize",
    "dequantize",
    "measured_importance",
    "channel_statistics",
    "correct_bias",
    "estimate_hessians",
    "arch",
    "structured",
    "gptq",
    "io",
    "distill",
    "channel_shuffle",
    "kd_loss",
    "kd_loss_and_grad",
    "save_compressed",
    "load_compressed",
    "encoded_nbytes",
    "layout_of",
    "set_num_threads",
    "num_threads",
    "__version__",
]
