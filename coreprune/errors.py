"""The one exception family of coreprune.

Every user mistake that coreprune detects (bad arguments, bad tensors, bad or
hostile files) raises :class:`CompressionError` or one of its subclasses, with a
message that names the tensor or file and says what is wrong. It subclasses
``ValueError`` so that callers who already catch ``ValueError`` keep working.
"""

from __future__ import annotations

__all__ = ["CompressionError", "WeightFileError", "UnsafePickleError", "HessianError", "EmptyLayerWarning"]


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


class HessianError(CompressionError):
    """GPTQ input moments (``quantize(..., hessians=)``) that cannot be used: not a mapping, a name
    that is not a weight, a matrix of the wrong shape, not finite, not symmetric, not positive
    semi-definite, or given for a tensor GPTQ cannot round (1 bit, ndim < 2).

    The message starts with ``hessian`` and names the tensor; the command line attributes it to
    the moments' file rather than to the weights.

    Examples
    --------
    >>> import numpy as np, coreprune
    >>> try:
    ...     coreprune.quantize({"fc.weight": np.ones((2, 3), np.float32)}, bits=4,
    ...                        hessians={"fc.weight": np.eye(2)})
    ... except coreprune.HessianError as e:
    ...     print(str(e).split(" must")[0], isinstance(e, coreprune.CompressionError))
    hessian of 'fc.weight' True
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
