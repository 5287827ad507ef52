"""coreprune: framework-agnostic compression of neural-network weights.

Every algorithm takes and returns ``dict[str, numpy.ndarray]``. This package never
imports torch or mxnet; the converters live in the separate ``adapters`` package.
"""

from __future__ import annotations

from . import arch, distill
from .arch import channel_shuffle
from .compressed import load_compressed, save_compressed
from .distill import kd_loss, kd_loss_and_grad
from .errors import CompressionError, UnsafePickleError, WeightFileError
from .pruning import apply_masks, prune_magnitude, prune_threshold
from .quantization import QuantizedArray, dequantize, quantize
from .selection import select
from .stats import sparsity

__version__ = "0.1.0"

__all__ = [
    "CompressionError",
    "UnsafePickleError",
    "WeightFileError",
    "select",
    "prune_threshold",
    "prune_magnitude",
    "apply_masks",
    "sparsity",
    "QuantizedArray",
    "quantize",
    "dequantize",
    "arch",
    "distill",
    "channel_shuffle",
    "kd_loss",
    "kd_loss_and_grad",
    "save_compressed",
    "load_compressed",
    "__version__",
]
