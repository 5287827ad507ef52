"""The one exception family of coreprune.

Every user mistake that coreprune detects (bad arguments, bad tensors, bad or
hostile files) raises :class:`CompressionError` or one of its subclasses, with a
message that names the tensor or file and says what is wrong. It subclasses
``ValueError`` so that callers who already catch ``ValueError`` keep working.
"""

from __future__ import annotations

__all__ = ["CompressionError", "WeightFileError", "UnsafePickleError", "EmptyLayerWarning"]


class CompressionError(ValueError):
    """Bad input to a coreprune function: the message names the tensor and the problem.

    Examples
    --------
    >>> import numpy as np, coreprune
    >>> try:
    ...     coreprune.prune_threshold({"w": np.ones((2, 2))}, -1.0)
    ... except coreprune.CompressionError as e:
    ...     print("refused")
    refused
    """


class WeightFileError(CompressionError):
    """A weight file that cannot be read or written: truncated, corrupted, wrong format.

    The message starts with the file's path.

    Examples
    --------
    >>> issubclass(WeightFileError, ValueError)
    True
    """


class UnsafePickleError(WeightFileError):
    """A pickle inside a weight file asks for something other than tensors and plain containers.

    Raised before anything in the pickle runs; the message names the refused global.

    Examples
    --------
    >>> issubclass(UnsafePickleError, CompressionError)
    True
    """


class EmptyLayerWarning(UserWarning):
    """Pruning removed every entry of a layer (a deleted layer) although its sparsity was below 1.

    Not an error: the result is what was asked for, but it is rarely what was meant. Pass a
    floor (``min_keep``) or a per-layer sparsity to prevent it.

    Examples
    --------
    >>> issubclass(EmptyLayerWarning, UserWarning)
    True
    """
