"""Centroid fine-tuning in PyTorch: a weight computed from a trainable codebook, codes and mask.

:func:`attach_codebooks` replaces each named weight of a module by the reparametrisation
``weight = centroids[codes] * mask``, computed before every forward pass, in the way
``torch.nn.utils.prune`` computes ``weight = weight_orig * weight_mask``: the parameter becomes
``<name>_centroids`` (shape ``(2**bits,)``), and ``<name>_codes`` / ``<name>_mask`` are buffers.
Autograd's gather backward adds the gradient of every weight to the centroid it reads, so
``centroids.grad[j]`` is the sum of the gradients of the weights of cluster ``j`` (Deep
Compression's centroid update, :func:`coreprune.weight_sharing.centroid_gradients`), and pruned
entries stay exactly zero whatever the optimizer does. :func:`attached_codebooks` reads the
fine-tuned codebooks back as :class:`~coreprune.weight_sharing.CodebookArray` values and
:func:`detach_codebooks` turns the weights back into plain parameters.

The maths (clustering, sizes) stays in :mod:`coreprune.weight_sharing`; this module only wires
the given codes into the module.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

import torch
from coreprune.errors import CompressionError
from coreprune.weight_sharing import CodebookArray
from torch import nn

__all__ = ["attach_codebooks", "attached_codebooks", "detach_codebooks"]


class _SharedWeight:
    """Forward pre-hook recomputing ``module.<attr>`` from its centroids, codes and mask."""

    def __init__(self, attr: str, bits: int, dtype: np.dtype) -> None:
        self.attr, self.bits, self.dtype = attr, bits, dtype

    def compute(self, module: nn.Module) -> torch.Tensor:
        centroids = getattr(module, self.attr + "_centroids")
        codes = getattr(module, self.attr + "_codes")
        mask = getattr(module, self.attr + "_mask")
        return centroids[codes] * mask

    def __call__(self, module: nn.Module, _inputs: object) -> None:
        setattr(module, self.attr, self.compute(module))


def _hooks(module: nn.Module) -> dict[str, tuple[int, _SharedWeight]]:
    hooks = module._forward_pre_hooks.items()
    return {hook.attr: (key, hook) for key, hook in hooks if isinstance(hook, _SharedWeight)}


def attach_codebooks(target: nn.Module, shared: Mapping[str, CodebookArray]) -> nn.Module:
    """Make the named weights of ``target`` shared-weight tensors whose centroids train.

    Parameters
    ----------
    target : torch.nn.Module
        Modified in place and returned. Each named weight must be a plain parameter (call
        ``torch.nn.utils.prune.remove`` first on a pruned one: the codebook's mask replaces it).
    shared : Mapping[str, CodebookArray]
        ``state_dict`` name (``"fc1.weight"``) to the codebook from
        :func:`coreprune.weight_sharing.share_weights`, of the parameter's shape.

    Returns
    -------
    torch.nn.Module
        ``target``; its ``parameters()`` now list ``<name>_centroids`` instead of the weights, so
        an optimizer built afterwards trains the centroids (and the other parameters).

    Raises
    ------
    CompressionError
        Unknown or non-parameter names, shape mismatches, values that are not CodebookArrays.
        Everything is checked before anything changes.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from coreprune.weight_sharing import kmeans_codebook
    >>> layer = torch.nn.Linear(3, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = layer.weight.copy_(torch.tensor([[0.0, 1.0, 1.2], [3.0, 0.0, 2.8]]))
    >>> _ = attach_codebooks(layer, {"weight": kmeans_codebook(layer.weight.detach().numpy(), bits=1)})
    >>> layer(torch.ones(1, 3)).sum().backward()
    >>> layer.weight_centroids.grad.tolist()   # two weights in each cluster, dL/dw = 1 each
    [2.0, 2.0]
    """
    if not isinstance(target, nn.Module):
        raise CompressionError(f"attach_codebooks expects a torch.nn.Module, got {type(target).__name__}")
    plan = []
    for name, value in shared.items():
        if not isinstance(value, CodebookArray):
            kind = type(value).__name__
            raise CompressionError(f"attach_codebooks: {name!r} is a {kind}, not a CodebookArray")
        path, _, attr = name.rpartition(".")
        try:
            sub = target.get_submodule(path)
        except AttributeError:
            raise CompressionError(f"attach_codebooks: no submodule {path!r} for {name!r}") from None
        param = sub._parameters.get(attr)
        if param is None:
            hint = " (pruned: call torch.nn.utils.prune.remove first)" if hasattr(sub, attr + "_orig") else ""
            raise CompressionError(f"attach_codebooks: {name!r} is not a parameter of the target{hint}")
        if tuple(param.shape) != value.shape:
            raise CompressionError(f"attach_codebooks: {name!r} has shape {tuple(param.shape)}, "
                                   f"the codebook {value.shape}")
        plan.append((sub, attr, param, value))
    for sub, attr, param, value in plan:
        mask = np.ones(value.shape, bool) if value.mask is None else value.mask
        device, dtype = param.device, param.dtype
        del sub._parameters[attr]
        sub.register_parameter(attr + "_centroids",
                               nn.Parameter(torch.tensor(value.codebook, dtype=dtype, device=device)))
        sub.register_buffer(attr + "_codes", torch.tensor(value.codes.astype(np.int64), device=device))
        sub.register_buffer(attr + "_mask", torch.tensor(mask, dtype=dtype, device=device))
        hook = _SharedWeight(attr, value.bits, value.dtype)
        setattr(sub, attr, hook.compute(sub))
        sub.register_forward_pre_hook(hook)
    return target


def _shared_modules(module: nn.Module):
    for path, sub in module.named_modules():
        for attr, (key, hook) in _hooks(sub).items():
            yield (f"{path}.{attr}" if path else attr), sub, key, hook


def attached_codebooks(target: nn.Module) -> dict[str, CodebookArray]:
    """The current codebooks of every weight set up by :func:`attach_codebooks`.

    Returns
    -------
    dict[str, CodebookArray]
        Under the plain weight names (``"fc1.weight"``); codebooks as float32, codes and masks as
        attached (the masks None where every weight survives).

    Examples
    --------
    >>> import torch
    >>> from coreprune.weight_sharing import kmeans_codebook
    >>> layer = torch.nn.Linear(4, 4)
    >>> _ = attach_codebooks(layer, {"weight": kmeans_codebook(layer.weight.detach().numpy(), bits=2)})
    >>> attached_codebooks(layer)["weight"].codebook.shape
    (4,)
    """
    out = {}
    for name, sub, _, hook in _shared_modules(target):
        mask = getattr(sub, hook.attr + "_mask").detach().cpu().numpy() != 0
        codes = getattr(sub, hook.attr + "_codes").detach().cpu().numpy()
        centroids = getattr(sub, hook.attr + "_centroids").detach().cpu().numpy().astype(np.float32)
        out[name] = CodebookArray(codes=codes.astype(np.uint8 if hook.bits <= 8 else np.uint16),
                                  codebook=centroids, mask=None if mask.all() else mask, bits=hook.bits,
                                  dtype=hook.dtype)
    return out


def detach_codebooks(target: nn.Module) -> nn.Module:
    """Undo :func:`attach_codebooks`: each weight becomes a plain parameter holding its shared values.

    Examples
    --------
    >>> import torch
    >>> from coreprune.weight_sharing import kmeans_codebook
    >>> layer = torch.nn.Linear(4, 4)
    >>> _ = attach_codebooks(layer, {"weight": kmeans_codebook(layer.weight.detach().numpy(), bits=1)})
    >>> sorted(n for n, _ in detach_codebooks(layer).named_parameters())
    ['bias', 'weight']
    >>> len(torch.unique(layer.weight))
    2
    """
    for _name, sub, key, hook in list(_shared_modules(target)):
        with torch.no_grad():
            value = hook.compute(sub).detach().clone()
        del sub._forward_pre_hooks[key]
        for suffix in ("_centroids", "_codes", "_mask"):
            delattr(sub, hook.attr + suffix)
        if hook.attr in sub.__dict__:
            del sub.__dict__[hook.attr]
        sub.register_parameter(hook.attr, nn.Parameter(value))
    return target
