"""Keep pruned entries of a ``torch.nn.Module`` at exactly zero while the rest trains.

The four mask verbs, the same in :mod:`coreprune.mxnet`:

* :func:`attach_masks` installs a mask (``name -> bool array``, True = keep, e.g. from
  :func:`coreprune.prune_magnitude`) with PyTorch's own ``torch.nn.utils.prune.custom_from_mask``:
  the parameter becomes ``weight_orig``, the mask the buffer ``weight_mask``, and before every
  forward pass ``weight = weight_orig * weight_mask``. A tensor that is already pruned (by
  :func:`attach_masks` or any ``torch.nn.utils.prune`` method) gets the new mask *instead of* the
  old one.
* :func:`attached_masks` reads the masks back (from any ``torch.nn.utils.prune`` method).
* :func:`reapply_masks` zeroes the pruned entries of the stored ``weight_orig`` and recomputes
  ``weight`` now, without waiting for the next forward pass.
* :func:`detach_masks` makes the pruning permanent (``torch.nn.utils.prune.remove`` on every
  pruned tensor: a plain ``Parameter`` whose pruned entries are ``+0.0``) and restores
  ``requires_grad``.

Which names a mask may use, and how it is checked, is :func:`coreprune.masks.check_masks`, the rule
:func:`coreprune.apply_masks` and :func:`coreprune.mxnet.attach_masks` use too. This module never
computes a mask: it only enforces the one it is given.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import numpy as np

import torch
from coreprune.errors import CompressionError
from coreprune.masks import check_masks
from coreprune.name_mapping import align_wrapper_prefixes
from torch import nn
from torch.nn.utils import prune

from .convert import _check_arrays, _pruned, _tensor_to_numpy

__all__ = ["attach_masks", "attached_masks", "reapply_masks", "detach_masks"]

# requires_grad of each masked Parameter before the first attach_masks, for detach_masks to restore:
# id(param) -> (weak reference to param, value). Not a WeakKeyDictionary: tensors compare
# elementwise, so they cannot be dictionary keys; the weak reference tells a reused id apart.
_REQUIRES_GRAD: dict[int, tuple[weakref.ref, bool]] = {}


def _remember_requires_grad(param: nn.Parameter) -> bool:
    """``param.requires_grad`` as it was before the first :func:`attach_masks` that masked it."""
    entry = _REQUIRES_GRAD.get(id(param))
    if entry is None or entry[0]() is not param:
        key = id(param)
        entry = (weakref.ref(param, lambda _: _REQUIRES_GRAD.pop(key, None)), param.requires_grad)
        _REQUIRES_GRAD[key] = entry
    return entry[1]


def _forget_requires_grad(param: nn.Parameter) -> bool:
    entry = _REQUIRES_GRAD.pop(id(param), None)
    return entry[1] if entry is not None and entry[0]() is param else param.requires_grad


# Modules given to attach_masks -> the handle of their forward pre-hook that recomputes every masked
# weight below them (see _refresh_masked).
_REFRESH: weakref.WeakKeyDictionary[nn.Module, object] = weakref.WeakKeyDictionary()


def _refresh_masked(module: nn.Module, _inputs: object) -> None:
    """Forward pre-hook of the module masks were attached to: recompute every masked weight below it.

    PyTorch's pruning hook recomputes ``weight = weight_orig * weight_mask`` only before its own
    submodule's forward. A parameter read by another module -- ``nn.MultiheadAttention`` reads
    ``out_proj.weight`` without calling ``out_proj``; the transformer fast paths read every
    projection -- would otherwise keep the value (and the autograd graph) of an earlier pass: the
    forward would use stale weights, and backward would go through a freed graph.
    """
    for _, sub, hook in _pruned(module):
        hook(sub, ())


def _check_module(module: object, verb: str) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise CompressionError(f"{verb} expects a torch.nn.Module, got {type(module).__name__}")
    return module


def _zero_pruned_(sub: nn.Module, attr: str) -> None:
    """Set the pruned entries of ``attr_orig`` to ``+0.0`` and recompute ``attr`` from it, in place.

    ``where`` rather than ``*``: ``-3.0 * 0`` is ``-0.0``, and the other adapters and
    :func:`coreprune.apply_masks` write ``+0.0``.
    """
    orig, mask = getattr(sub, attr + "_orig"), getattr(sub, attr + "_mask")
    with torch.no_grad():
        orig.copy_(torch.where(mask != 0, orig, orig.new_zeros(())))
    for hook in sub._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == attr:
            hook(sub, ())  # what the forward pre-hook does: weight = weight_orig * weight_mask


def attach_masks(target: nn.Module, masks: Mapping[str, np.ndarray], *, freeze: bool = False) -> nn.Module:
    """Keep pruned weights at zero during fine-tuning, with ``torch.nn.utils.prune.custom_from_mask``.

    For every ``name -> mask`` (``"features.0.weight" -> bool array``) the submodule
    ``features.0`` gets PyTorch's pruning reparametrisation of ``weight``: the parameter becomes
    ``weight_orig``, the mask the buffer ``weight_mask``, and before every forward pass
    ``weight = weight_orig * weight_mask``. Gradients reach ``weight_orig`` only through that
    product, so the loss gradient at a pruned entry is zero, and whatever an optimizer does to
    ``weight_orig`` there (momentum, weight decay, Adam's update) is multiplied by zero again:
    the effective weight stays exactly 0 while the kept entries train. The pruned entries of
    ``weight_orig`` are set to ``+0.0`` now. Everything PyTorch offers for pruned modules applies:
    ``prune.is_pruned(target)`` is True and :func:`~coreprune.torch.to_numpy` exports the
    effective weights. A tensor that is already pruned gets the new mask instead of its old one
    (its previously pruned entries stay 0 but train again where the new mask keeps them).

    Parameters read by another module than their own (``nn.MultiheadAttention`` reads
    ``out_proj.weight`` directly; the transformer fast paths read every projection) are masked
    where they are read: ``target`` gets a forward pre-hook that recomputes every masked weight
    below it before each of its forward passes, so call ``target`` (or a module that calls
    it). A tied ``Parameter`` (one object under two names) masked under one name is masked under
    all, and stays one ``Parameter``. Mask names may carry or lack the prefixes of
    ``DataParallel`` (``module.``) and ``torch.compile`` (``_orig_mod.``).

    Parameters
    ----------
    target : torch.nn.Module
        Modified in place and returned.
    masks : Mapping[str, numpy.ndarray]
        Parameter name (a ``state_dict`` name, or the plain name of an already pruned tensor) to a
        bool mask (True = keep) of the parameter's shape, as :func:`coreprune.masks.check_masks`
        requires. The mask is copied to the parameter's device and stored in the parameter's
        dtype, as ``custom_from_mask`` does.
    freeze : bool, default False
        Also set ``requires_grad=False`` on these parameters, so the kept entries stop training
        too; :func:`detach_masks` restores the previous value.

    Returns
    -------
    torch.nn.Module
        ``target`` itself.

    Raises
    ------
    CompressionError
        Names of buffers or of pruning bookkeeping (``weight_orig``); then, all listed in one
        message, names that are no parameter of the module, masks that are not bool, shape
        mismatches; a shared parameter given two different masks. Checked for all masks before
        any is attached.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from torch.nn.utils import prune
    >>> from coreprune.torch import attach_masks, to_numpy
    >>> layer = torch.nn.Linear(2, 2)
    >>> _ = attach_masks(layer, {"weight": np.array([[True, False], [False, True]])})
    >>> prune.is_pruned(layer)
    True
    >>> (to_numpy(layer)["weight"] == 0).tolist()
    [[False, True], [True, False]]
    """
    _check_module(target, "attach_masks")
    _check_arrays(masks, "masks")
    pruned = {name for name, _, _ in _pruned(target)}
    # The maskable tensors, under the names to_numpy exports: parameters, a pruned one by its plain name.
    shapes: dict[str, tuple[int, ...]] = {}
    for name, param in target.named_parameters(remove_duplicate=False):
        plain = name[: -len("_orig")] if name.endswith("_orig") else name
        shapes[plain if plain in pruned else name] = tuple(param.shape)
    buffers = {name for name, _ in target.named_buffers(remove_duplicate=False)}
    bookkeeping = {name + suffix: name for name in pruned for suffix in ("_orig", "_mask")}
    not_trainable = [
        f"{name!r} is pruning bookkeeping; give the plain name {bookkeeping[name]!r}"
        if name in bookkeeping
        else f"{name!r} is a buffer, not a parameter"
        for name in masks
        if name in bookkeeping or name in buffers
    ]
    if not_trainable:
        raise CompressionError("attach_masks: " + "; ".join(not_trainable) + "; only parameters take masks")
    # Masks named for a DataParallel / torch.compile wrapper, or for the plain model inside one.
    renamed = align_wrapper_prefixes(masks, shapes)
    if any(old != new for old, new in renamed.items()):
        masks = {renamed[name]: mask for name, mask in masks.items()}
    checked = check_masks(masks, shapes, verb="attach_masks")
    checked = _spread_over_ties(target, checked, pruned)
    # One entry per (submodule, tensor): a submodule reachable under two names is pruned once. A
    # parameter shared by several names must get one mask, as in coreprune.mxnet.attach_masks.
    plan: dict[tuple[int, str], tuple[nn.Module, str, np.ndarray]] = {}
    first: dict[int, tuple[str, np.ndarray]] = {}
    for name, mask in checked.items():
        path, _, attr = name.rpartition(".")
        sub = target.get_submodule(path)
        stored = sub._parameters.get(attr + "_orig", sub._parameters.get(attr))
        seen = first.setdefault(id(stored), (name, mask))
        if not np.array_equal(seen[1], mask):
            raise CompressionError(
                f"attach_masks: {seen[0]!r} and {name!r} are the same (shared) parameter "
                "but got different masks"
            )
        plan[(id(sub), attr)] = (sub, attr, mask)
    for sub, attr, mask in plan.values():
        if attr + "_orig" in sub._parameters:
            # Replace, not combine: PyTorch would keep only the entries both masks keep.
            _zero_pruned_(sub, attr)
            prune.remove(sub, attr)
        masked = sub._parameters[attr]
        assert masked is not None  # check_masks kept only the names of parameters
        trainable = _remember_requires_grad(masked)
        # torch.tensor copies, so the hook never aliases the caller's array.
        prune.custom_from_mask(sub, attr, mask=torch.tensor(mask, device=masked.device))
        _zero_pruned_(sub, attr)
        masked.requires_grad_(False if freeze else trainable)
    if checked and target not in _REFRESH:
        _REFRESH[target] = target.register_forward_pre_hook(_refresh_masked)
    return target


def _spread_over_ties(
    target: nn.Module, masks: dict[str, np.ndarray], pruned: set[str]
) -> dict[str, np.ndarray]:
    """``masks`` with each mask also under every other name of the same ``Parameter`` (tied weights).

    A tied parameter masked under one name only would still be read unmasked under the other.
    """
    names_of: dict[int, list[str]] = {}
    for name, param in target.named_parameters(remove_duplicate=False):
        plain = name[: -len("_orig")] if name.endswith("_orig") and name[: -len("_orig")] in pruned else name
        names_of.setdefault(id(param), []).append(plain)
    out = dict(masks)
    for names in names_of.values():
        given = [n for n in names if n in masks]
        if given and len(names) > 1:
            for other in names:  # two different given masks are refused by the caller
                out.setdefault(other, masks[given[0]])
    return out


def attached_masks(target: nn.Module) -> dict[str, np.ndarray]:
    """The masks of every tensor pruned with ``torch.nn.utils.prune``, as bool arrays (True = kept).

    The inverse of :func:`attach_masks`: ``attach_masks(other, attached_masks(target))`` prunes
    ``other`` like ``target``. Works for masks set by any ``torch.nn.utils.prune`` method.

    Parameters
    ----------
    target : torch.nn.Module

    Returns
    -------
    dict[str, numpy.ndarray]
        Plain parameter name (``"fc.weight"``) to a bool array of the parameter's shape, in
        ``state_dict`` order; empty when nothing is pruned. The arrays are copies.

    Examples
    --------
    >>> import torch
    >>> from torch.nn.utils import prune
    >>> from coreprune.torch import attached_masks
    >>> layer = torch.nn.Linear(4, 1)
    >>> with torch.no_grad():
    ...     _ = layer.weight.copy_(torch.tensor([[0.1, -3.0, 0.2, 4.0]]))
    >>> _ = prune.l1_unstructured(layer, "weight", amount=2)
    >>> attached_masks(layer)["weight"].tolist()
    [[False, True, False, True]]
    """
    _check_module(target, "attached_masks")
    by_buffer = {name + "_mask": name for name, _, _ in _pruned(target)}
    return {
        by_buffer[key]: _tensor_to_numpy(key, value != 0)
        for key, value in target.state_dict().items()
        if key in by_buffer
    }


def reapply_masks(target: nn.Module) -> nn.Module:
    """Zero the pruned entries of every masked parameter of ``target`` now, in place.

    Sets the pruned entries of each ``weight_orig`` to ``+0.0`` (an optimizer with momentum or
    weight decay moves them, harmlessly, since the forward pass multiplies them by 0) and
    recomputes ``weight`` as the next forward pass would. :func:`~coreprune.torch.to_numpy`
    already exports the effective weights, so this is needed only before reading ``weight_orig``
    or ``module.weight`` yourself between an optimizer step and the next forward pass.

    Parameters
    ----------
    target : torch.nn.Module
        Modified in place and returned; a module without masks is returned unchanged.

    Returns
    -------
    torch.nn.Module
        ``target`` itself.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from coreprune.torch import attach_masks, reapply_masks
    >>> fc = torch.nn.Linear(2, 2)
    >>> _ = attach_masks(fc, {"weight": np.array([[True, False], [True, True]])})
    >>> with torch.no_grad():
    ...     _ = fc.weight_orig.fill_(1.0)  # changed behind the mask's back
    >>> reapply_masks(fc).weight_orig.tolist()
    [[1.0, 0.0], [1.0, 1.0]]
    """
    _check_module(target, "reapply_masks")
    for name, sub, _ in list(_pruned(target)):
        _zero_pruned_(sub, name.rpartition(".")[2])
    return target


def detach_masks(target: nn.Module) -> nn.Module:
    """Make the pruning permanent and remove the masks of every pruned tensor of ``target``.

    The pruned entries are zeroed one last time (``+0.0``), then ``torch.nn.utils.prune.remove``
    turns each ``weight_orig`` back into a plain ``weight`` (the same ``Parameter`` object) and
    drops ``weight_mask``; ``requires_grad`` gets its value from before :func:`attach_masks`.
    Afterwards the zeros are ordinary weights that training may move.

    Parameters
    ----------
    target : torch.nn.Module
        Modified in place and returned; a module without masks is returned unchanged.

    Returns
    -------
    torch.nn.Module
        ``target`` itself.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from torch.nn.utils import prune
    >>> from coreprune.torch import attach_masks, detach_masks
    >>> fc = torch.nn.Linear(2, 2)
    >>> _ = attach_masks(fc, {"weight": np.eye(2, dtype=bool)}, freeze=True)
    >>> fc.weight_orig.requires_grad
    False
    >>> _ = detach_masks(fc)
    >>> prune.is_pruned(fc), fc.weight.requires_grad, (fc.weight == 0).tolist()
    (False, True, [[False, True], [True, False]])
    """
    _check_module(target, "detach_masks")
    handle = _REFRESH.pop(target, None)
    if handle is not None:
        handle.remove()  # type: ignore[attr-defined]
    for name, sub, _ in list(_pruned(target)):
        attr = name.rpartition(".")[2]
        if attr + "_orig" not in sub._parameters:
            continue  # a shared submodule listed under a second name, already detached
        _zero_pruned_(sub, attr)
        prune.remove(sub, attr)
        param = sub._parameters[attr]
        assert param is not None  # prune.remove has just put the pruned parameter back
        param.requires_grad_(_forget_requires_grad(param))
    return target
