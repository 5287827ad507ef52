"""Centroid fine-tuning in MXNet Gluon: weights computed from trainable codebooks, codes and masks.

The same verbs as :mod:`coreprune.torch`'s ``codebook`` module, the Gluon way:

* :func:`attach_codebooks` gives each named weight a centroid ``Parameter`` of shape
  ``(2**bits,)`` (listed by :func:`centroid_params`, to hand to a ``Trainer``). Before every
  forward pass of the Block, a forward pre-hook writes ``centroids[codes] * mask`` into the weight,
  so the forward uses the shared values. The weight keeps ``grad_req='write'``, so ``backward``
  computes ``dL/dW``; the centroid parameter's ``list_grad`` (the accessor ``Trainer`` reads every
  gradient through, as :mod:`coreprune.mxnet.masks` uses it) returns the sum of ``dL/dW`` over each
  cluster's surviving weights, :func:`coreprune.weight_sharing.centroid_gradients`. Pruned entries
  are never written, so they stay exactly zero.
* :func:`attached_codebooks` reads the codebooks back as
  :class:`~coreprune.weight_sharing.CodebookArray`; :func:`detach_codebooks` writes the shared
  values one last time and forgets the codebooks.

Give the ``Trainer`` the centroid parameters and the block's other parameters, not the shared
weights themselves (their values are recomputed before every forward anyway).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

import mxnet as mx
from coreprune.errors import CompressionError
from coreprune.weight_sharing import CodebookArray, centroid_gradients
from mxnet import autograd, gluon

from .convert import _check_initialised, _slots

__all__ = ["attach_codebooks", "centroid_params", "attached_codebooks", "detach_codebooks"]


@dataclass
class _Shared:
    name: str
    weight: gluon.Parameter
    centroids: gluon.Parameter
    codes: np.ndarray  # int64, the weight's shape
    mask: np.ndarray | None
    bits: int
    dtype: np.dtype
    codes_nd: mx.nd.NDArray
    mask_nd: mx.nd.NDArray

    def write(self) -> None:
        # paused: the hook runs inside autograd.record(), and this write is not part of the graph
        with autograd.pause():
            value = mx.nd.take(self.centroids.data(), self.codes_nd) * self.mask_nd
            for arr in self.weight.list_data():
                arr[:] = value.as_in_context(arr.context)

    def book(self) -> CodebookArray:
        return CodebookArray(codes=self.codes.astype(np.uint8 if self.bits <= 8 else np.uint16),
                             codebook=self.centroids.data().asnumpy().astype(np.float32), mask=self.mask,
                             bits=self.bits, dtype=self.dtype)


# block -> (hook handle, {name: _Shared})
_BLOCKS: weakref.WeakKeyDictionary[Any, tuple[Any, dict[str, _Shared]]] = weakref.WeakKeyDictionary()


def _centroid_list_grad(shared: _Shared):
    """``list_grad`` of a centroid parameter: the cluster sums of the weight's current gradient."""

    def list_grad() -> list[mx.nd.NDArray]:
        grads = type(shared.centroids).list_grad(shared.centroids)
        book = shared.book()
        total = centroid_gradients(shared.weight.grad().asnumpy(), book)
        for g in grads:
            g[:] = mx.nd.array(total, ctx=g.context, dtype=g.dtype)
        return grads

    return list_grad


def _pre_forward(block: gluon.Block, _inputs: Any) -> None:
    entry = _BLOCKS.get(block)
    if entry is not None:
        recording = autograd.is_recording()
        for shared in entry[1].values():
            shared.write()
            if recording:
                # The centroids' gradient comes from this pass's weight gradient (list_grad), which
                # backward never marks on the centroids themselves: mark it, or Trainer.step calls
                # it stale.
                for arr in shared.centroids.list_data():
                    arr._fresh_grad = True


def attach_codebooks(target: gluon.Block, shared: Mapping[str, CodebookArray]) -> gluon.Block:
    """Make the named weights of ``target`` shared-weight tensors whose centroids train.

    Parameters
    ----------
    target : gluon.Block
        The Block you call (its forward pre-hook writes the weights); initialised.
    shared : Mapping[str, CodebookArray]
        Structural name (``"fc1.weight"``, as :func:`~coreprune.mxnet.to_numpy` names it) to the
        codebook from :func:`coreprune.weight_sharing.share_weights`, of the parameter's shape.

    Returns
    -------
    gluon.Block
        ``target``; :func:`centroid_params` lists the new trainable centroids.

    Raises
    ------
    CompressionError
        Unknown names, shape mismatches, values that are not CodebookArrays, uninitialised
        parameters. Everything is checked before anything changes.

    Examples
    --------
    >>> import mxnet as mx, numpy as np
    >>> from coreprune.weight_sharing import kmeans_codebook
    >>> fc = mx.gluon.nn.Dense(2, in_units=3, use_bias=False)
    >>> fc.initialize()
    >>> fc.weight.set_data(mx.nd.array([[0.0, 1.0, 1.2], [3.0, 0.0, 2.8]]))
    >>> _ = attach_codebooks(fc, {"weight": kmeans_codebook(fc.weight.data().asnumpy(), bits=1)})
    >>> with mx.autograd.record():
    ...     loss = fc(mx.nd.ones((1, 3))).sum()
    >>> loss.backward()
    >>> centroid_params(fc)["weight"].list_grad()[0].asnumpy().tolist()
    [2.0, 2.0]
    """
    if not isinstance(target, gluon.Block):
        raise CompressionError(f"attach_codebooks expects a gluon Block, got {type(target).__name__}")
    params = _slots(target, verb="attach_codebooks")
    plan = []
    for name, value in shared.items():
        if not isinstance(value, CodebookArray):
            kind = type(value).__name__
            raise CompressionError(f"attach_codebooks: {name!r} is a {kind}, not a CodebookArray")
        param = params.get(name)
        if not isinstance(param, gluon.Parameter):
            shown = list(params)[:30]
            raise CompressionError(f"attach_codebooks: no parameter named {name!r}; the names are {shown}")
        plan.append((name, param, value))
    _check_initialised({n: p for n, p, _ in plan}, verb="attach_codebooks")
    for name, param, value in plan:
        if tuple(param.shape) != value.shape:
            raise CompressionError(f"attach_codebooks: {name!r} has shape {tuple(param.shape)}, "
                                   f"the codebook {value.shape}")
    entry = _BLOCKS.get(target)
    if entry is None:
        entry = (target.register_forward_pre_hook(_pre_forward), {})
        _BLOCKS[target] = entry
    for name, param, value in plan:
        ctx = param.list_ctx()[0]
        centroids = gluon.Parameter(f"{name.replace('.', '_')}_centroids", shape=(value.codebook.size,),
                                    dtype=param.dtype)
        centroids.initialize(mx.init.Constant(0), ctx=param.list_ctx())
        centroids.set_data(mx.nd.array(value.codebook, dtype=param.dtype))
        codes = value.codes.astype(np.int64)
        mask = np.ones(value.shape, np.float32) if value.mask is None else value.mask.astype(np.float32)
        state = _Shared(name=name, weight=param, centroids=centroids, codes=codes, mask=value.mask,
                        bits=value.bits, dtype=value.dtype,
                        codes_nd=mx.nd.array(codes, ctx=ctx, dtype="int64"),
                        mask_nd=mx.nd.array(mask, ctx=ctx, dtype=param.dtype))
        centroids.list_grad = _centroid_list_grad(state)
        if param.grad_req == "null":
            param.grad_req = "write"
        state.write()
        entry[1][name] = state
    return target


def centroid_params(block: gluon.Block) -> dict[str, gluon.Parameter]:
    """The centroid Parameters of ``block``'s shared weights, by weight name (for a ``Trainer``)."""
    entry = _BLOCKS.get(block)
    return {} if entry is None else {name: s.centroids for name, s in entry[1].items()}


def attached_codebooks(target: gluon.Block) -> dict[str, CodebookArray]:
    """The current codebooks of every weight set up by :func:`attach_codebooks`, by weight name.

    Examples
    --------
    >>> import mxnet as mx
    >>> from coreprune.weight_sharing import kmeans_codebook
    >>> fc = mx.gluon.nn.Dense(4, in_units=4)
    >>> fc.initialize()
    >>> _ = attach_codebooks(fc, {"weight": kmeans_codebook(fc.weight.data().asnumpy(), bits=2)})
    >>> attached_codebooks(fc)["weight"].codebook.shape
    (4,)
    """
    entry = _BLOCKS.get(target)
    return {} if entry is None else {name: s.book() for name, s in entry[1].items()}


def detach_codebooks(target: gluon.Block) -> gluon.Block:
    """Write the shared values into the weights one last time and forget the codebooks.

    Examples
    --------
    >>> import mxnet as mx, numpy as np
    >>> from coreprune.weight_sharing import kmeans_codebook
    >>> fc = mx.gluon.nn.Dense(4, in_units=4)
    >>> fc.initialize()
    >>> _ = attach_codebooks(fc, {"weight": kmeans_codebook(fc.weight.data().asnumpy(), bits=1)})
    >>> len(np.unique(detach_codebooks(fc).weight.data().asnumpy()))
    2
    """
    entry = _BLOCKS.pop(target, None)
    if entry is not None:
        entry[0].detach()
        for s in entry[1].values():
            s.write()
    return target
