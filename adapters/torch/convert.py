"""PyTorch <-> ``dict[str, numpy.ndarray]``: the three verbs that connect a ``torch.nn.Module`` to coreprune.

What this module does
---------------------
* :func:`to_numpy` turns a module (its ``state_dict``: parameters *and* persistent buffers) or a
  mapping of tensors into ``dict[str, numpy.ndarray]`` under the ``state_dict`` names, without
  copying CPU tensors.
* :func:`load_numpy` writes such a dict back into a module's own tensors, in place: same
  ``Parameter`` objects, same dtype, device and ``requires_grad``, so an optimizer that holds them
  keeps working.
* :func:`attach_masks` installs pruning masks (``name -> bool array``, e.g. from
  ``coreprune.prune_magnitude``) with PyTorch's own ``torch.nn.utils.prune.custom_from_mask``, so
  that pruned weights stay exactly zero while the module is fine-tuned; :func:`masks_from_module`
  reads such masks back.

What it must not do
-------------------
* No compression maths: choosing thresholds, computing masks, quantizing, measuring sparsity all
  live in :mod:`coreprune`, which works on the dicts this module produces.
* No file I/O and no pickles: reading and writing weight files is :mod:`coreprune.io`'s job.
* No changes to a module's structure, except the pruning reparametrisation that
  :func:`attach_masks` is asked to add (undone with ``torch.nn.utils.prune.remove``).

Conventions
-----------
* Names are ``state_dict`` names (``"features.0.weight"``, ``"bn.running_mean"``,
  ``"bn.num_batches_tracked"``). A tensor pruned with ``torch.nn.utils.prune`` (by
  :func:`attach_masks` or by hand) is exported under its plain name with its *effective* value
  ``weight_orig * weight_mask``, as if ``prune.remove`` had been called; ``weight_orig`` and
  ``weight_mask`` themselves are not exported. Parametrizations of ``torch.nn.utils.parametrize``
  (weight norm, orthogonal, ...) keep their ``state_dict`` names
  (``"fc.parametrizations.weight.original"``).
* dtypes map one to one. ``torch.bfloat16`` and the float8 types become the ``ml_dtypes`` types of
  the same bit layout (``ml_dtypes.bfloat16``, ``ml_dtypes.float8_e4m3fn``, ...), through an
  integer view, so no bits change and nothing is copied.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping

import numpy as np

import torch
from coreprune import dtypes
from coreprune.errors import CompressionError
from coreprune.load_report import LoadReport, match_names
from coreprune.selection import check_weights, is_floating
from torch import nn
from torch.nn.utils import prune

__all__ = ["LoadReport", "to_numpy", "load_numpy", "attach_masks", "masks_from_module"]


def _bit_twins() -> dict[torch.dtype, tuple[np.dtype, torch.dtype]]:
    """torch dtypes NumPy lacks -> (the ml_dtypes dtype with the same bits, the integer carrier)."""
    twins: dict[torch.dtype, tuple[np.dtype, torch.dtype]] = {}
    carriers = {2: torch.int16, 1: torch.uint8}  # an integer torch dtype of the same width
    for info in dtypes.DTYPES:
        if not (info.ml and info.torch):
            continue
        tdtype, ndtype = getattr(torch, info.torch, None), info.dtype
        if tdtype is not None and ndtype is not None:  # both libraries' versions must know the type
            twins[tdtype] = (ndtype, carriers[ndtype.itemsize])
    return twins


_TORCH_TO_ML = _bit_twins()
_ML_TO_TORCH = {ndtype: (tdtype, carrier) for tdtype, (ndtype, carrier) in _TORCH_TO_ML.items()}
_CARRIER_NP = {torch.int16: np.dtype(np.int16), torch.uint8: np.dtype(np.uint8)}


def _pruned(module: nn.Module) -> Iterator[tuple[str, nn.Module, prune.BasePruningMethod]]:
    """``(effective name, submodule, pruning hook)`` for every tensor pruned with ``torch.nn.utils.prune``.

    ``remove_duplicate=False`` because ``state_dict`` lists a shared submodule under each of its names.
    """
    for prefix, sub in module.named_modules(remove_duplicate=False):
        for hook in sub._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                yield (f"{prefix}." if prefix else "") + hook._tensor_name, sub, hook


def _not_a_tensor(what: str, name: str, value: object) -> CompressionError:
    return CompressionError(f"{what}[{name!r}] is a {type(value).__name__}, not a torch.Tensor")


def _tensor_to_numpy(name: str, tensor: torch.Tensor) -> np.ndarray:
    if tensor.is_quantized:
        raise CompressionError(
            f"tensor {name!r} is a quantized tensor ({tensor.dtype}); pass tensor.dequantize() "
            "or tensor.int_repr() explicitly"
        )
    if tensor.layout != torch.strided:
        # Densifying silently could blow up memory and would not load back into a sparse tensor.
        raise CompressionError(
            f"tensor {name!r} has layout {tensor.layout}; only dense (strided) tensors convert, "
            "call .to_dense() first if that is what you want"
        )
    if tensor.device.type == "meta":
        raise CompressionError(f"tensor {name!r} is on the 'meta' device and has no values")
    # detach() and, on CPU, cpu() return views: the array below aliases the tensor's memory.
    tensor = tensor.detach().cpu().resolve_conj().resolve_neg()
    twin = _TORCH_TO_ML.get(tensor.dtype)
    if twin is not None:
        ndtype, carrier = twin
        return tensor.view(carrier).numpy().view(ndtype)
    try:
        return tensor.numpy()
    except TypeError as exc:
        raise CompressionError(
            f"tensor {name!r} has dtype {tensor.dtype}, which has no NumPy equivalent; convert it "
            f"first (e.g. .to(torch.float32))"
        ) from exc


def _effective_state(module: nn.Module) -> dict[str, object]:
    """``module.state_dict()``, each pruned ``x_orig``/``x_mask`` pair replaced by ``x = x_orig * x_mask``.

    ``x`` takes the place of ``x_orig``, which is where ``prune.remove`` would put it.
    """
    effective = {name + "_orig": (name, sub, hook) for name, sub, hook in _pruned(module)}
    masks = {name + "_mask" for name, _, _ in effective.values()}
    out: dict[str, object] = {}
    for key, value in module.state_dict().items():
        if key in masks:
            continue
        if key in effective:
            name, sub, hook = effective[key]
            with torch.no_grad():
                out[name] = hook.apply_mask(sub)
        else:
            out[key] = value
    return out


def to_numpy(obj: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The tensors of a module or a ``state_dict`` as ``dict[str, numpy.ndarray]``, without copying.

    Parameters
    ----------
    obj : torch.nn.Module or Mapping[str, torch.Tensor]
        A module: its ``state_dict()`` is converted, parameters *and* persistent buffers
        (``running_mean``, ``num_batches_tracked``, ...), in ``state_dict`` order and under
        ``state_dict`` names. A tensor pruned with ``torch.nn.utils.prune`` (for example by
        :func:`attach_masks`) appears once, under its plain name (``"fc.weight"``), with the
        effective value ``weight_orig * weight_mask``; ``weight_orig`` and ``weight_mask`` are not
        exported (the masks are available from :func:`masks_from_module`).
        A mapping: a plain ``name -> torch.Tensor`` mapping such as a ``state_dict``; nested
        checkpoints must be unpacked by the caller.

    Returns
    -------
    dict[str, numpy.ndarray]
        Same shapes as the tensors. dtypes map one to one (``float32 -> float32``,
        ``int64 -> int64``, ``bool -> bool``, ``complex64 -> complex64``, ...);
        ``torch.bfloat16 -> ml_dtypes.bfloat16`` and ``torch.float8_* -> ml_dtypes.float8_*``
        keep their bits exactly.

    Notes
    -----
    **Aliasing.** The arrays of CPU tensors share memory with those tensors (strided views for
    non-contiguous tensors, bfloat16 included): writing into an array changes the module, and a
    later optimizer step changes the array. coreprune's functions never modify their inputs, so
    passing the dict to them is safe; call ``.copy()`` on an array before mutating it yourself, or
    to keep a snapshot while training continues. Tensors on CUDA or any other device are copied to
    host memory, and the effective values of pruned tensors are freshly computed, so those arrays
    own their memory.

    Raises
    ------
    CompressionError
        If ``obj`` is neither a module nor a mapping, a key is not a ``str``, a value is not a
        tensor, or a tensor cannot become an array (quantized, sparse, on the ``meta`` device, or of
        a dtype NumPy has no twin for, such as ``complex32``).

    Examples
    --------
    >>> import torch
    >>> from coreprune.torch import to_numpy
    >>> bn = torch.nn.BatchNorm1d(3)
    >>> weights = to_numpy(bn)
    >>> list(weights)
    ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
    >>> str(weights["num_batches_tracked"].dtype), weights["weight"].tolist()
    ('int64', [1.0, 1.0, 1.0])
    >>> str(to_numpy({"w": torch.ones(2, dtype=torch.bfloat16)})["w"].dtype)
    'bfloat16'
    """
    if isinstance(obj, nn.Module):
        tensors, what = _effective_state(obj), "state_dict"
    elif isinstance(obj, Mapping):
        tensors, what = obj, "tensors"
    else:
        raise CompressionError(
            "to_numpy expects a torch.nn.Module or a mapping of name -> torch.Tensor, "
            f"got {type(obj).__name__}"
        )
    out: dict[str, np.ndarray] = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise CompressionError(f"{what} has a non-string key {name!r}; names must be str")
        if not isinstance(tensor, torch.Tensor):
            raise _not_a_tensor(what, name, tensor)
        out[name] = _tensor_to_numpy(name, tensor)
    return out


def _check_arrays(weights: Mapping[str, np.ndarray], what: str) -> None:
    """:func:`check_weights`, with a hint for the two wrong values users most often pass."""
    if isinstance(weights, Mapping):
        for name, value in weights.items():
            if isinstance(value, torch.Tensor):
                raise CompressionError(
                    f"{what}[{name!r}] is a torch.Tensor, not a numpy.ndarray; convert it with "
                    "to_numpy (or load tensors with module.load_state_dict)"
                )
            if not isinstance(value, np.ndarray) and hasattr(value, "dequantize"):
                raise CompressionError(
                    f"{what}[{name!r}] is a {type(value).__name__}, not a numpy.ndarray; "
                    "dequantize first (coreprune.dequantize)"
                )
    check_weights(weights, what=what)


def _array_to_tensor(name: str, array: np.ndarray) -> torch.Tensor:
    """A CPU tensor over ``array``'s memory where torch can share it, else over a converted copy."""
    twin = _ML_TO_TORCH.get(array.dtype)
    if twin is not None:
        tdtype, carrier = twin
        return _array_to_tensor(name, array.view(_CARRIER_NP[carrier])).view(tdtype)
    if is_floating(array.dtype) and not np.issubdtype(array.dtype, np.floating):
        # An ml_dtypes float torch has no twin for (float8_e3m4, float4, ...): all fit float32 exactly.
        array = array.astype(np.float32)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if any(s < 0 for s in array.strides):
        array = np.ascontiguousarray(array)
    try:
        with warnings.catch_warnings():
            # The tensor is only ever read (copied from), so a read-only array is fine.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(array)
    except TypeError as exc:
        raise CompressionError(f"array {name!r} has dtype {array.dtype}, which torch cannot hold") from exc


def _load_slots(target: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors :func:`load_numpy` writes into, under the names :func:`to_numpy` exports."""
    if isinstance(target, nn.Module):
        orig = {name + "_orig": name for name, _, _ in _pruned(target)}
        masks = {name + "_mask" for name in orig.values()}
        state = target.state_dict(keep_vars=True)  # the Parameter and buffer objects themselves
        slots = {orig.get(key, key): value for key, value in state.items() if key not in masks}
        what = "state_dict"
    elif isinstance(target, Mapping):
        slots, what = dict(target), "target"
    else:
        raise CompressionError(
            "load_numpy expects a torch.nn.Module or a mapping of name -> torch.Tensor, "
            f"got {type(target).__name__}"
        )
    for name, value in slots.items():
        if not isinstance(value, torch.Tensor):
            raise _not_a_tensor(what, name, value)
    return slots


def load_numpy(
    target: nn.Module | Mapping[str, torch.Tensor],
    weights: Mapping[str, np.ndarray],
    *,
    strict: bool = True,
) -> LoadReport:
    """Write arrays into a module's existing parameters and buffers, in place.

    Each array is copied into the tensor of the same name under ``torch.no_grad()``. The tensors
    keep their identity (the same ``nn.Parameter`` objects, so an optimizer built on them keeps
    working), their dtype, their device (CUDA tensors are filled from host memory where they are)
    and their ``requires_grad``.

    Parameters
    ----------
    target : torch.nn.Module or Mapping[str, torch.Tensor]
        A module, addressed by the names :func:`to_numpy` exports: ``state_dict`` names, and the
        plain name for a tensor pruned with ``torch.nn.utils.prune``, whose ``weight_orig`` is
        written while its mask stays applied (masked entries stay zero in the effective weight).
        Or a mapping of tensors (such as ``module.state_dict()``), written in place.
    weights : Mapping[str, numpy.ndarray]
        Arrays of the target tensors' shapes. A dtype that differs from the tensor's is cast to the
        tensor's dtype as ``torch.Tensor.copy_`` casts (float64 -> float32 rounds to nearest,
        float -> int truncates); a complex array into a real tensor is refused rather than
        silently dropping the imaginary part. ``ml_dtypes.bfloat16`` and float8 arrays are read
        through an integer view, without a conversion copy.
    strict : bool, default True
        True: every name of the target must be in ``weights`` and the other way round, with equal
        shapes; otherwise nothing is written and :class:`CompressionError` lists the problems.
        False: what matches is loaded, the rest is skipped and reported.

    Returns
    -------
    LoadReport
        ``(missing, unexpected, mismatched)``; all empty after a successful strict load.

    Raises
    ------
    CompressionError
        Names or shapes that do not match (``strict=True``), a value that is not a
        ``numpy.ndarray`` (a ``QuantizedArray`` must be dequantized first with
        ``coreprune.dequantize``), a dtype torch cannot hold, a complex array for a real tensor,
        or two names of one tied tensor given different values. The target is left untouched.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from coreprune.torch import load_numpy, to_numpy
    >>> layer = torch.nn.Linear(2, 1)
    >>> weight = layer.weight
    >>> load_numpy(layer, {"weight": np.array([[1.0, -2.0]]), "bias": np.zeros(1)})
    LoadReport(missing=[], unexpected=[], mismatched=[])
    >>> layer.weight.tolist(), layer.weight is weight, layer.weight.dtype
    ([[1.0, -2.0]], True, torch.float32)
    >>> load_numpy(layer, {"weight": np.zeros((1, 3))}, strict=False)
    LoadReport(missing=['bias'], unexpected=[], mismatched=[('weight', (1, 2), (1, 3))])
    """
    _check_arrays(weights, "weights")
    slots = _load_slots(target)
    report = match_names({n: tuple(t.shape) for n, t in slots.items()}, weights, strict=strict)
    skipped = {n for n, _, _ in report.mismatched}
    names = [n for n in weights if n in slots and n not in skipped]

    # Convert and check everything before writing anything, so that an error leaves the target as it was.
    sources: dict[str, torch.Tensor] = {}
    written: dict[int, str] = {}
    for name in names:
        slot, source = slots[name], _array_to_tensor(name, weights[name])
        if source.is_complex() and not slot.is_complex():
            raise CompressionError(
                f"array {name!r} is complex ({weights[name].dtype}) but the tensor is {slot.dtype}; "
                "pass the real part explicitly"
            )
        first = written.setdefault(id(slot), name)
        if first != name and not torch.equal(sources[first].to(slot.dtype), source.to(slot.dtype)):
            raise CompressionError(
                f"{first!r} and {name!r} are one tied tensor but the arrays given for them differ"
            )
        sources[name] = source
    with torch.no_grad():
        for name, source in sources.items():
            slots[name].copy_(source)
    if isinstance(target, nn.Module):
        for _, sub, hook in _pruned(target):
            hook(sub, ())  # what the forward pre-hook does: recompute weight = weight_orig * weight_mask now
    return report


def _mask_values(name: str, mask: np.ndarray) -> np.ndarray:
    if mask.dtype == np.bool_:
        return mask
    if is_floating(mask.dtype) or np.issubdtype(mask.dtype, np.integer):
        wide = mask if np.issubdtype(mask.dtype, np.number) else mask.astype(np.float32)  # ml_dtypes
        if np.all((wide == 0) | (wide == 1)):
            return wide != 0
    raise CompressionError(
        f"mask {name!r} must be a bool array (True = keep) or hold only 0 and 1; got dtype {mask.dtype}"
        + ("" if mask.dtype.kind not in "iuf" else " with other values")
    )


def attach_masks(module: nn.Module, masks: Mapping[str, np.ndarray], *, freeze: bool = False) -> nn.Module:
    """Keep pruned weights at zero during fine-tuning, with ``torch.nn.utils.prune.custom_from_mask``.

    For every ``name -> mask`` (``"features.0.weight" -> bool array``) the submodule
    ``features.0`` gets PyTorch's pruning reparametrisation of ``weight``: the parameter becomes
    ``weight_orig``, the mask the buffer ``weight_mask``, and before every forward pass
    ``weight = weight_orig * weight_mask``. Gradients reach ``weight_orig`` only through that
    product, so the loss gradient at a pruned entry is zero, and whatever an optimizer does to
    ``weight_orig`` there (momentum, weight decay, Adam's update) is multiplied by zero again:
    the effective weight stays exactly 0 while the kept entries train. Everything PyTorch offers
    for pruned modules applies: ``prune.is_pruned(module)`` is True, ``prune.remove(sub, "weight")``
    makes the zeros permanent, and pruning an already-pruned tensor again keeps the entries both
    masks keep (PyTorch's ``PruningContainer``). :func:`to_numpy` exports the effective weights.

    Parameters
    ----------
    module : torch.nn.Module
        Modified in place and returned.
    masks : Mapping[str, numpy.ndarray]
        Parameter name (a ``state_dict`` name, or the plain name of an already pruned tensor) to a
        mask of the parameter's shape: bool with True = keep, or numbers that are all 0 or 1.
        The mask is copied to the parameter's device and stored in the parameter's dtype, as
        ``custom_from_mask`` does.
    freeze : bool, default False
        Also set ``requires_grad=False`` on these parameters, so the kept entries stop training
        too.

    Returns
    -------
    torch.nn.Module
        ``module`` itself.

    Raises
    ------
    CompressionError
        Names that are no parameter of the module (listed), names of buffers, shape mismatches or
        masks with values other than 0/1. Checked for all masks before any is attached.

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
    if not isinstance(module, nn.Module):
        raise CompressionError(f"attach_masks expects a torch.nn.Module, got {type(module).__name__}")
    _check_arrays(masks, "masks")
    pruned = {name for name, _, _ in _pruned(module)}
    plan: list[tuple[nn.Module, str, torch.Tensor, np.ndarray]] = []
    unknown, problems = [], []
    for name, mask in masks.items():
        path, _, attr = name.rpartition(".")
        try:
            sub = module.get_submodule(path)
        except AttributeError:
            unknown.append(name)
            continue
        if attr.endswith(("_orig", "_mask")) and name[: -len("_orig")] in pruned:
            problems.append(f"{name!r} is pruning bookkeeping; give the plain name {name[:-5]!r}")
            continue
        if name in pruned:
            param = getattr(sub, attr + "_orig")
        elif sub._parameters.get(attr) is not None:
            param = sub._parameters[attr]
        elif attr in sub._buffers:
            problems.append(f"{name!r} is a buffer, not a parameter")
            continue
        else:
            unknown.append(name)
            continue
        if tuple(mask.shape) != tuple(param.shape):
            shapes = f"{tuple(mask.shape)}, the parameter {tuple(param.shape)}"
            problems.append(f"mask {name!r} has shape {shapes}")
            continue
        try:
            plan.append((sub, attr, param, _mask_values(name, mask)))
        except CompressionError as exc:
            problems.append(str(exc))
    if unknown:
        params = [  # under the names attach_masks accepts
            n[:-5] if n.endswith("_orig") and n[:-5] in pruned else n for n, _ in module.named_parameters()
        ]
        shown = ", ".join(params[:20]) + (f", ... ({len(params)} in all)" if len(params) > 20 else "")
        problems.insert(0, f"no parameter named {', '.join(map(repr, unknown))}; the parameters are: {shown}")
    if problems:
        raise CompressionError("attach_masks: " + "; ".join(problems))
    for sub, attr, param, mask in plan:
        # torch.tensor copies, so the hook never aliases the caller's array.
        prune.custom_from_mask(sub, attr, mask=torch.tensor(mask, device=param.device))
        if freeze:
            getattr(sub, attr + "_orig").requires_grad_(False)
    return module


def masks_from_module(module: nn.Module) -> dict[str, np.ndarray]:
    """The masks of every tensor pruned with ``torch.nn.utils.prune``, as bool arrays (True = kept).

    The inverse of :func:`attach_masks`: ``attach_masks(other, masks_from_module(module))`` prunes
    ``other`` like ``module``. Works for masks set by any ``torch.nn.utils.prune`` method.

    Parameters
    ----------
    module : torch.nn.Module

    Returns
    -------
    dict[str, numpy.ndarray]
        Plain parameter name (``"fc.weight"``) to a bool array of the parameter's shape, in
        ``state_dict`` order; empty when nothing is pruned. The arrays are copies.

    Examples
    --------
    >>> import torch
    >>> from torch.nn.utils import prune
    >>> from coreprune.torch import masks_from_module
    >>> layer = torch.nn.Linear(4, 1)
    >>> with torch.no_grad():
    ...     _ = layer.weight.copy_(torch.tensor([[0.1, -3.0, 0.2, 4.0]]))
    >>> _ = prune.l1_unstructured(layer, "weight", amount=2)
    >>> masks_from_module(layer)["weight"].tolist()
    [[False, True, False, True]]
    """
    if not isinstance(module, nn.Module):
        raise CompressionError(f"masks_from_module expects a torch.nn.Module, got {type(module).__name__}")
    by_buffer = {name + "_mask": name for name, _, _ in _pruned(module)}
    return {
        by_buffer[key]: _tensor_to_numpy(key, value != 0)
        for key, value in module.state_dict().items()
        if key in by_buffer
    }
