"""Which tensors an algorithm touches: the one selection rule shared by every function.

Every algorithm in coreprune takes ``include`` and ``exclude`` and calls
:func:`select`. Keeping the rule in one place means ``prune_threshold``,
``prune_magnitude``, ``quantize``, ``sparsity`` and the CLI always agree on which
tensors a pattern means.

The rule
--------
1. Only floating-point arrays are ever selected (NumPy float16/32/64 and the
   ``ml_dtypes`` floats such as bfloat16). Integer and bool buffers
   (``num_batches_tracked``, index tables) always pass through.
2. ``include=None`` selects the *weights* (:func:`is_default_weight`): floating
   arrays with ``ndim >= 2`` -- weight matrices, conv kernels, embedding tables --
   except the known non-weights, recognised by the last component of the dotted
   name: ``bias`` (GPT-2's ``attn.bias`` is a causal mask), anything ending in
   ``_mask`` (``weight_mask`` of torch's pruning, ``attn_mask``), class, register
   and mask tokens (``cls_token``, ``class_token``, ``dist_token``, ``reg_token``,
   ``register_tokens``, ``mask_token``), position embeddings stored as raw tensors
   (``pos_embed``, ``pos_embedding``, ``absolute_pos_embed``, ``position_embedding``,
   ``relative_position_bias_table``) and weight norm's magnitude (``weight_g``, and
   ``original0`` under ``parametrizations``); and the parameters of normalisation
   layers whatever their shape, recognised by the module's own name (the component
   before the last), or a bare parameter's name, containing ``norm`` (any case:
   ``norm1``, ``LayerNorm``, ``input_layernorm``, ``post_norm``) or being ``bn``,
   ``ln``, ``gn`` with an optional number (``bn1``, ``ln_2``). Embedding layers
   (``position_embeddings.weight``) are weights.
   An explicit ``include`` selects the floating arrays it matches, whatever
   their shape or name.
3. ``exclude`` then removes what it matches.

A model knows more than a name: ``coreprune.torch.weight_names(module)`` and
``coreprune.mxnet.weight_names(block)`` list the weights of its convolution, linear,
embedding and attention layers by role, for ``include=``.

A pattern is a glob (``fnmatch.fnmatchcase``, case-sensitive) or a sequence of
globs, matched against the full name; or a predicate ``f(name, array) -> bool``.
A glob that matches no name at all is almost always a typo, so it raises
:class:`~coreprune.errors.CompressionError` listing the names that exist.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Union

import numpy as np

from .dtypes import ML_FLOAT_NAMES
from .errors import CompressionError

__all__ = ["Pattern", "select", "check_weights", "is_floating", "require_finite", "is_default_weight"]

#: Last name components that are never weights, whatever their shape.
NON_WEIGHT_NAMES = frozenset({
    "bias", "cls_token", "class_token", "dist_token", "reg_token", "register_tokens", "mask_token",
    "pos_embed", "pos_embedding", "absolute_pos_embed", "position_embedding",
    "relative_position_bias_table", "weight_g",
    # optimizer state stored beside the weights in a checkpoint ("optimizer.state.0.exp_avg")
    "momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "acc_delta", "sum",
})
#: Last components ending so are never weights (masks and mask buffers).
NON_WEIGHT_SUFFIXES = ("_mask",)
#: Module names of normalisation layers, whose parameters are never weights to compress.
_NORM_MODULE = re.compile(r"(?i)norm|^(bn|ln|gn)(_?\d+)?$")

#: A glob, a sequence of globs, or a predicate ``f(name, array) -> bool``.
Pattern = Union[str, Sequence[str], Callable[[str, np.ndarray], bool], None]



def is_floating(dtype: np.dtype) -> bool:
    """True for real floating dtypes, including ``ml_dtypes.bfloat16`` (which NumPy does not classify).

    Parameters
    ----------
    dtype : numpy.dtype

    Examples
    --------
    >>> import numpy as np
    >>> is_floating(np.dtype(np.float16)), is_floating(np.dtype(np.int8))
    (True, False)
    """
    dtype = np.dtype(dtype)
    return bool(np.issubdtype(dtype, np.floating)) or dtype.name in ML_FLOAT_NAMES


def check_weights(weights: Mapping[str, np.ndarray], *, what: str = "weights") -> None:
    """Raise :class:`CompressionError` unless ``weights`` maps ``str`` names to ``numpy.ndarray``.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
    what : str
        How the error message refers to the mapping.

    Examples
    --------
    >>> import numpy as np
    >>> check_weights({"w": np.zeros(3)})
    >>> check_weights({"w": [1, 2]})
    Traceback (most recent call last):
    ...
    coreprune.errors.CompressionError: weights['w'] is a list, not a numpy.ndarray
    """
    if not isinstance(weights, Mapping):
        raise CompressionError(
            f"{what} must be a mapping of name -> numpy.ndarray, got {type(weights).__name__}"
        )
    for name, value in weights.items():
        if not isinstance(name, str):
            raise CompressionError(f"{what} has a non-string key {name!r}; names must be str")
        if not isinstance(value, np.ndarray):
            raise CompressionError(
                f"{what}[{name!r}] is a {type(value).__name__}, not a numpy.ndarray"
            )


def is_default_weight(name: str, array: np.ndarray) -> bool:
    """Whether the default selection (``include=None``) takes ``array`` as a weight to compress.

    A floating array with ``ndim >= 2`` whose name is not a known non-weight and whose module
    is not a normalisation layer (see the module docstring for the exact rule).

    Examples
    --------
    >>> import numpy as np
    >>> is_default_weight("fc.weight", np.ones((4, 3))), is_default_weight("fc.bias", np.ones(4))
    (True, False)
    >>> is_default_weight("vit.cls_token", np.ones((1, 1, 8)))
    False
    >>> is_default_weight("vit.pos_embed", np.ones((1, 5, 8)))
    False
    >>> is_default_weight("conv.weight_g", np.ones((8, 1, 1, 1)))
    False
    >>> is_default_weight("conv.weight_mask", np.ones((8, 3)))
    False
    >>> is_default_weight("blocks.0.norm1.weight", np.ones((1, 8)))
    False
    """
    if not is_floating(array.dtype) or array.ndim < 2:
        return False
    parts = name.split(".")
    last = parts[-1]
    if last in NON_WEIGHT_NAMES or last.endswith(NON_WEIGHT_SUFFIXES):
        return False
    if any(_NORM_MODULE.search(part) for part in parts[-2:]):
        return False
    # torch.nn.utils.parametrizations.weight_norm: original0 is g, original1 the direction v
    return not (last == "original0" and len(parts) >= 3 and parts[-3] == "parametrizations")


def require_finite(name: str, array: np.ndarray) -> None:
    """Raise :class:`CompressionError` if ``array`` holds NaN or Inf, naming the tensor and the count.

    Examples
    --------
    >>> import numpy as np
    >>> require_finite("fc.weight", np.array([1.0, np.nan]))
    Traceback (most recent call last):
    ...
    coreprune.errors.CompressionError: tensor 'fc.weight' has 1 NaN/Inf value(s); clean it before compressing
    """
    if array.size == 0 or not is_floating(array.dtype):
        return
    # ml_dtypes floats have no isfinite ufunc loop on every numpy version; float32 holds them exactly.
    values = array.astype(np.float32) if array.dtype.name in ML_FLOAT_NAMES else array
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise CompressionError(
            f"tensor {name!r} has {bad} NaN/Inf value(s); clean it before compressing"
        )


def _as_globs(pattern: str | Sequence[str], argname: str) -> list[str]:
    globs = [pattern] if isinstance(pattern, str) else list(pattern)
    for g in globs:
        if not isinstance(g, str):
            raise CompressionError(
                f"{argname} must be a glob, a list of globs or a predicate; got an element {g!r}"
            )
    return globs


def _matcher(pattern: Pattern, argname: str, names: Iterable[str]) -> Callable[[str, np.ndarray], bool]:
    if callable(pattern):
        return pattern
    globs = _as_globs(pattern, argname)  # type: ignore[arg-type]
    names = list(names)
    for g in globs:
        if not any(fnmatch.fnmatchcase(n, g) for n in names):
            shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
            raise CompressionError(f"{argname} pattern {g!r} matches no tensor; the names are: {shown}")
    return lambda name, _array: any(fnmatch.fnmatchcase(name, g) for g in globs)


def select(
    weights: Mapping[str, np.ndarray],
    include: Pattern = None,
    exclude: Pattern = None,
) -> list[str]:
    """Names of the tensors an algorithm should touch, in the mapping's order.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Name to array. Checked with :func:`check_weights`.
    include : glob, sequence of globs, predicate, or None
        None selects the weights (:func:`is_default_weight`); otherwise the
        floating arrays it matches, of any shape and name.
    exclude : glob, sequence of globs, predicate, or None
        Removes what it matches from the selection.

    Returns
    -------
    list of str

    Raises
    ------
    CompressionError
        If ``weights`` is not a mapping of arrays, or a glob matches no name.

    Examples
    --------
    >>> import numpy as np
    >>> w = {"conv.weight": np.ones((4, 3, 3, 3)), "conv.bias": np.ones(4),
    ...      "dense.weight": np.ones((10, 4)), "bn.num_batches_tracked": np.array(3)}
    >>> select(w)
    ['conv.weight', 'dense.weight']
    >>> select(w, exclude="*dense*")
    ['conv.weight']
    >>> select(w, include="conv.*")
    ['conv.weight', 'conv.bias']
    """
    check_weights(weights)
    names = list(weights)
    keep: Callable[[str, np.ndarray], bool]
    if include is None:
        keep = is_default_weight
    else:
        keep = _matcher(include, "include", names)
    drop = _matcher(exclude, "exclude", names) if exclude is not None else (lambda n, a: False)
    return [
        n
        for n in names
        if is_floating(weights[n].dtype) and keep(n, weights[n]) and not drop(n, weights[n])
    ]


def _everything(name: str, value: np.ndarray) -> bool:
    """An ``include`` predicate that selects every tensor: for callers that have chosen the names
    themselves and pass one tensor at a time (the CLI, shard workers, per-tensor measurements)."""
    return True
