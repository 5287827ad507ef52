"""Keep pruned entries of Gluon parameters at exactly zero while the rest trains.

A mask from :func:`coreprune.prune_threshold` or :func:`coreprune.prune_magnitude`
(``True`` = keep) is registered with each parameter it names. From then on three
things hold the pruned entries at zero, each covering what the others cannot:

1. **Zeroing now.** :func:`attach_masks` sets the pruned entries of the stored
   weights to ``+0.0`` on every context.
2. **Gradient mask.** The parameter's ``list_grad`` (the accessor through which
   ``Trainer`` reads gradients on every path: local update, kvstore push,
   AMP overflow check) returns gradients whose pruned entries are zeroed in place.
   With a zero weight, a zero gradient and zero optimizer state, every elementwise
   update rule leaves the entry at zero: SGD ``m <- mu*m - lr*(g + wd*w)``,
   ``w <- w + m`` gives 0; Adam ``m_t = b1*m + (1-b1)*g``, ``v_t = b2*v + (1-b2)*g^2``,
   ``w <- w - lr*m_t/(sqrt(v_t)+eps)`` gives 0. So with a ``Trainer`` whose state at the
   pruned entries is zero (a fresh one, or one created after :func:`attach_masks`), the
   *stored* weights stay exactly zero after every ``trainer.step``.
3. **Forward pre-hook** (when the target is a Block). Before every forward pass of
   that Block, the pruned entries are zeroed again. This covers what the gradient mask
   cannot: optimizer state left non-zero by training before pruning (momentum, Adam's
   moments keep moving a weight whose gradient is zero), update rules that are not
   elementwise, and weights changed by hand. The weights used in every forward are
   therefore exactly zero at pruned entries whatever the optimizer.

In case 3 the stored weights can be non-zero between a ``trainer.step`` and the next
forward; :func:`reapply_masks` zeroes them on demand (before ``save_parameters`` or
:func:`~coreprune.mxnet.to_numpy`), and :func:`detach_masks` zeroes them one last time
and removes the masks, making the pruning permanent (like ``torch.nn.utils.prune.remove``).
:func:`attached_masks` reads the masks back.

``freeze=True`` additionally sets ``grad_req='null'`` on every masked parameter, so the
whole tensor stops training (the all-or-nothing behaviour of the original project);
:func:`detach_masks` restores the previous ``grad_req``.

The four verbs and their signatures are those of :mod:`coreprune.torch`'s. Which names a mask
may use, and how it is checked, is :func:`coreprune.masks.check_masks`, the rule
:func:`coreprune.apply_masks` and :func:`coreprune.torch.attach_masks` use too. This module never
computes a mask: it only enforces the one it is given.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union, cast

import numpy as np

import mxnet as mx
from coreprune.errors import CompressionError
from coreprune.masks import check_masks
from mxnet import autograd, gluon

from .convert import _check_initialised, _slots

__all__ = ["attach_masks", "attached_masks", "reapply_masks", "detach_masks"]

#: What :func:`attach_masks` accepts: something that owns trainable Parameters.
MaskTarget = Union[gluon.Block, gluon.ParameterDict, Mapping[str, gluon.Parameter]]


@dataclass
class _MaskState:
    name: str
    mask: np.ndarray  # bool, True = keep
    grad_req: str  # the parameter's grad_req before the first attach_masks
    frozen: bool = False
    # The mask as an NDArray per (context, dtype) it has been applied on, so that the
    # forward hook does not copy it to the device on every call.
    cache: dict[tuple[Any, Any], mx.nd.NDArray] = field(default_factory=dict)

    def zero_(self, arr: mx.nd.NDArray) -> None:
        """Set the pruned entries of ``arr`` to +0.0, in place (``where``, not ``*``, to avoid -0.0)."""
        key = (arr.context, np.dtype(arr.dtype))
        keep = self.cache.get(key)
        if keep is None:
            keep = mx.nd.array(self.mask, ctx=arr.context).astype(arr.dtype)
            self.cache[key] = keep
        with autograd.pause():
            arr[:] = mx.nd.where(keep, arr, mx.nd.zeros_like(arr))


# Per-parameter and per-block registries. Weak keys: a model that is dropped takes its
# masks with it.
_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_HOOKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _parameters(target: Any, *, verb: str) -> dict[str, gluon.Parameter]:
    if not isinstance(target, (gluon.Block, gluon.ParameterDict, Mapping)):
        raise CompressionError(
            f"{verb}: needs a gluon Block, a ParameterDict or a mapping name -> Parameter, "
            f"got {type(target).__name__}"
        )
    slots = _slots(target, verb=verb)
    not_params = [n for n, v in slots.items() if not isinstance(v, gluon.Parameter)]
    if not_params:
        raise CompressionError(
            f"{verb}: {not_params} are plain NDArrays, which no Trainer updates; masks need Parameters "
            "(pass the Block or its collect_params())"
        )
    return slots


def _shape(param: gluon.Parameter) -> tuple[int, ...] | None:
    """The parameter's shape; from its data where ``param.shape`` is unknown (``SymbolBlock.imports``
    leaves it None, legacy shapes use 0 for unknown dims). None when it has neither."""
    shape = param.shape
    if shape is None or 0 in shape or -1 in shape:
        if param._data is None:
            return None
        return tuple(param.list_data()[0].shape)
    return tuple(shape)


def _masked_list_grad(param: gluon.Parameter):
    """A ``list_grad`` for ``param`` that zeroes the pruned entries of the gradients it returns."""

    def list_grad() -> list[mx.nd.NDArray]:
        grads = type(param).list_grad(param)
        state = _STATES.get(param)
        if state is not None:
            for grad in grads:
                state.zero_(grad)
        return grads

    return list_grad


def _zero_weights(param: gluon.Parameter, state: _MaskState) -> None:
    for arr in param.list_data():
        state.zero_(arr)


def _pre_forward(block: gluon.Block, _inputs: Any) -> None:
    entry = _HOOKS.get(block)
    if entry is None:
        return
    for param in entry[1]:
        state = _STATES.get(param)
        if state is not None:
            _zero_weights(param, state)


def attach_masks(target: MaskTarget, masks: Mapping[str, np.ndarray], *, freeze: bool = False) -> MaskTarget:
    """Register pruning masks with Gluon parameters so that pruned entries stay exactly zero.

    See the module docstring for how: the pruned entries are zeroed now, their gradient is
    zeroed before every ``Trainer`` update, and (for a Block target) they are zeroed again
    before every forward pass of that Block. Attaching a mask to a parameter that already
    has one replaces it.

    Parameters
    ----------
    target : gluon.Block, gluon.ParameterDict, or Mapping[str, gluon.Parameter]
        Names as in :func:`~coreprune.mxnet.to_numpy`: structural (``conv1.weight``) for a
        Block, global (``dense0_weight``) for a ParameterDict. Pass the Block you call
        (the outermost one): only its forward pre-hook runs when it is hybridized.
    masks : Mapping[str, numpy.ndarray]
        Name to a bool mask (True = keep) of the parameter's shape, as
        :func:`coreprune.masks.check_masks` requires. Every name must exist in ``target``.
    freeze : bool, default False
        Also set ``grad_req='null'`` on the masked parameters (the whole tensor stops
        training); :func:`detach_masks` restores the previous value.

    Returns
    -------
    target
        The same object, for chaining.

    Raises
    ------
    CompressionError
        Plain NDArrays in the target, uninitialised parameters; then, all listed in one
        message, unknown names (with the names that exist), masks that are not bool, shape
        mismatches; sparse gradients, a shared parameter given two different masks.

    Examples
    --------
    >>> import mxnet as mx, numpy as np
    >>> net = mx.gluon.nn.HybridSequential()
    >>> net.add(mx.gluon.nn.Dense(2, in_units=2))
    >>> net.initialize(mx.init.One())
    >>> _ = attach_masks(net, {"0.weight": np.array([[True, False], [False, True]])})
    >>> trainer = mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    >>> for _ in range(3):
    ...     with mx.autograd.record():
    ...         loss = net(mx.nd.ones((1, 2))).sum()
    ...     loss.backward()
    ...     trainer.step(1)
    >>> (net[0].weight.data().asnumpy() == 0).tolist()
    [[False, True], [True, False]]
    """
    params = _parameters(target, verb="attach_masks")
    if isinstance(masks, Mapping):
        _check_initialised({n: params[n] for n in masks if n in params}, verb="attach_masks")
    # a masked parameter is initialised (checked above), so its shape is known; the others' shapes
    # only name them in an error message
    shapes = cast(dict[str, tuple[int, ...]], {n: _shape(p) for n, p in params.items()})
    checked = check_masks(masks, shapes, verb="attach_masks")

    chosen: dict[gluon.Parameter, tuple[str, np.ndarray]] = {}
    for name, mask in checked.items():
        param = params[name]
        if param._stype != "default" or param._grad_stype != "default":
            raise CompressionError(
                f"attach_masks: parameter {name!r} has a sparse storage or gradient; "
                "only dense parameters are supported"
            )
        if param in chosen and not np.array_equal(chosen[param][1], mask):
            raise CompressionError(
                f"attach_masks: {chosen[param][0]!r} and {name!r} are the same (shared) parameter "
                "but got different masks"
            )
        chosen[param] = (name, np.array(mask, dtype=bool, copy=True))

    for param, (name, mask) in chosen.items():
        state = _STATES.get(param)
        if state is None:
            state = _MaskState(name=name, mask=mask, grad_req=param.grad_req)
            _STATES[param] = state
            param.list_grad = _masked_list_grad(param)
        else:
            state.name, state.mask, state.cache = name, mask, {}
        state.frozen = freeze
        param.grad_req = "null" if freeze else state.grad_req
        _zero_weights(param, state)

    if isinstance(target, gluon.Block):
        entry = _HOOKS.get(target)
        if entry is None:
            entry = (target.register_forward_pre_hook(_pre_forward), [])
            _HOOKS[target] = entry
        entry[1].extend(p for p in chosen if p not in entry[1])
    return target


def attached_masks(target: MaskTarget) -> dict[str, np.ndarray]:
    """The masks :func:`attach_masks` registered with the parameters of ``target``, as bool arrays.

    The inverse of :func:`attach_masks`: ``attach_masks(other, attached_masks(net))`` masks
    ``other`` like ``net``.

    Parameters
    ----------
    target : gluon.Block, gluon.ParameterDict, or Mapping[str, gluon.Parameter]

    Returns
    -------
    dict[str, numpy.ndarray]
        Parameter name (as :func:`~coreprune.mxnet.to_numpy` names it) to a bool array of the
        parameter's shape (True = kept), in the target's order; a shared parameter appears under
        each of its names. Empty when nothing is masked. The arrays are copies.

    Examples
    --------
    >>> import mxnet as mx, numpy as np
    >>> fc = mx.gluon.nn.Dense(2, in_units=2)
    >>> fc.initialize()
    >>> _ = attach_masks(fc, {"weight": np.array([[True, False], [True, True]])})
    >>> attached_masks(fc)["weight"].tolist()
    [[True, False], [True, True]]
    """
    masks = {}
    for name, param in _parameters(target, verb="attached_masks").items():
        state = _STATES.get(param)
        if state is not None:
            masks[name] = state.mask.copy()
    return masks


def reapply_masks(target: MaskTarget) -> MaskTarget:
    """Zero the pruned entries of every masked parameter of ``target`` now, in place.

    Needed only when the stored weights may have moved since the last forward pass
    (optimizer state from before the masks were attached, non-elementwise optimizers),
    before reading them with :func:`~coreprune.mxnet.to_numpy` or ``save_parameters``.

    Examples
    --------
    >>> import mxnet as mx, numpy as np
    >>> fc = mx.gluon.nn.Dense(2, in_units=2)
    >>> fc.initialize(mx.init.One())
    >>> _ = attach_masks(fc, {"weight": np.array([[True, False], [True, True]])})
    >>> fc.weight.set_data(mx.nd.ones((2, 2)))  # changed behind the mask's back
    >>> reapply_masks(fc).weight.data().asnumpy().tolist()
    [[1.0, 0.0], [1.0, 1.0]]
    """
    for param in _parameters(target, verb="reapply_masks").values():
        state = _STATES.get(param)
        if state is not None:
            _zero_weights(param, state)
    return target


def detach_masks(target: MaskTarget) -> MaskTarget:
    """Make the pruning permanent and forget the masks of every parameter of ``target``.

    The pruned entries are zeroed one last time; then the gradient mask and (for a Block)
    the forward pre-hook are removed and ``grad_req`` is restored to its value before
    :func:`attach_masks`. Afterwards the zeros are ordinary weights that training may move.

    Examples
    --------
    >>> import mxnet as mx, numpy as np
    >>> fc = mx.gluon.nn.Dense(2, in_units=2)
    >>> fc.initialize(mx.init.One())
    >>> _ = attach_masks(fc, {"weight": np.eye(2, dtype=bool)}, freeze=True)
    >>> fc.weight.grad_req
    'null'
    >>> detach_masks(fc).weight.grad_req, fc.weight.data().asnumpy().tolist()
    ('write', [[1.0, 0.0], [0.0, 1.0]])
    """
    for param in _parameters(target, verb="detach_masks").values():
        state = _STATES.pop(param, None)
        if state is None:
            continue
        _zero_weights(param, state)
        del param.list_grad  # the instance override; the class method shows through again
        param.grad_req = state.grad_req
    if isinstance(target, gluon.Block):
        entry = _HOOKS.pop(target, None)
        if entry is not None:
            entry[0].detach()
    return target
