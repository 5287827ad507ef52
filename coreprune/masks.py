"""The one rule for which tensors a pruning mask applies to, and how a mask is checked.

:func:`coreprune.apply_masks` (on NumPy dicts), :func:`coreprune.torch.attach_masks` and
:func:`coreprune.mxnet.attach_masks` all call :func:`check_masks` before touching anything, so
the three accept the same masks and refuse the others with the same :class:`CompressionError`:

* every mask names a tensor the caller can mask (unknown names are listed, with the names that
  exist);
* every mask is a ``numpy.ndarray`` of dtype ``bool`` (True = keep), the dtype
  :func:`coreprune.prune_threshold` and :func:`coreprune.prune_magnitude` return; 0/1 numbers are
  refused rather than guessed at (``mask != 0`` is the explicit conversion);
* every mask has exactly its tensor's shape (no broadcasting).

All problems are reported in one error. The framework adapters add only what is specific to
their framework (a PyTorch buffer or an MXNet NDArray cannot be trained, so it cannot be masked);
they pass this function the names and shapes of what *can* be masked.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import CompressionError
from .selection import check_weights

__all__ = ["check_masks"]

#: How many existing names an "unknown name" error lists before it abbreviates.
_SHOWN_NAMES = 20


def check_masks(
    masks: Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
    *,
    verb: str = "apply_masks",
) -> dict[str, np.ndarray]:
    """Check pruning masks against the tensors they apply to; return the masks to apply.

    Parameters
    ----------
    masks : Mapping[str, numpy.ndarray]
        Tensor name to a bool mask (True = keep) of that tensor's shape.
    shapes : Mapping[str, tuple of int]
        The tensors a mask may apply to: name to shape, in the caller's naming.
    verb : str
        The public function on whose behalf the check runs; it starts every error message.

    Returns
    -------
    dict[str, numpy.ndarray]
        ``name -> mask`` in the order of ``masks``: the caller's own bool arrays (not copies), to
        be applied to the tensor of the same name.

    Raises
    ------
    CompressionError
        ``masks`` is not a mapping of ``str`` to ``numpy.ndarray``; or, listed together in one
        message: names that are not in ``shapes``, masks that are not of dtype bool, masks whose
        shape differs from their tensor's.

    Examples
    --------
    >>> import numpy as np
    >>> keep = np.array([True, False])
    >>> list(check_masks({"w": keep}, {"w": (2,), "b": (2,)}))
    ['w']
    >>> check_masks({"w": np.array([1, 0]), "v": keep}, {"w": (2,), "b": (2,)})
    Traceback (most recent call last):
    ...
    coreprune.errors.CompressionError: apply_masks: no tensor named 'v' (the names are: w, b); \
mask 'w' has dtype int64, expected bool (True = keep; `mask != 0` converts 0/1 numbers)
    """
    check_weights(masks, what="masks")
    unknown = [name for name in masks if name not in shapes]
    problems = []
    if unknown:
        names = list(shapes)
        shown = ", ".join(names[:_SHOWN_NAMES]) + (
            f", ... ({len(names)} in all)" if len(names) > _SHOWN_NAMES else ""
        )
        problems.append(f"no tensor named {', '.join(map(repr, unknown))} (the names are: {shown or 'none'})")
    for name, mask in masks.items():
        if name in unknown:
            continue
        if mask.dtype != np.bool_:
            problems.append(
                f"mask {name!r} has dtype {mask.dtype}, expected bool (True = keep; "
                "`mask != 0` converts 0/1 numbers)"
            )
        elif tuple(mask.shape) != tuple(shapes[name]):
            problems.append(f"mask {name!r} has shape {tuple(mask.shape)}, the tensor {tuple(shapes[name])}")
    if problems:
        raise CompressionError(f"{verb}: " + "; ".join(problems))
    return dict(masks)
