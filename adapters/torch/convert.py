"""PyTorch <-> ``dict[str, numpy.ndarray]``: the two verbs that connect a ``torch.nn.Module`` to coreprune.

What this module does
---------------------
* :func:`to_numpy` turns a module (its ``state_dict``: parameters *and* persistent buffers) or a
  mapping of tensors into ``dict[str, numpy.ndarray]`` under the ``state_dict`` names: copies by
  default, views of CPU tensors with ``copy=False``.
* :func:`load_numpy` writes such a dict back into a module's own tensors, in place: same
  ``Parameter`` objects, same dtype, device and ``requires_grad``, so an optimizer that holds them
  keeps working.

The masks (:func:`~coreprune.torch.attach_masks` and its siblings) are in :mod:`coreprune.torch.masks`.

What it must not do
-------------------
* No compression maths: choosing thresholds, computing masks, quantizing, measuring sparsity all
  live in :mod:`coreprune`, which works on the dicts this module produces.
* No file I/O and no pickles: reading and writing weight files is :mod:`coreprune.io`'s job.
* No changes to a module's structure.

Conventions
-----------
* Names are ``state_dict`` names (``"features.0.weight"``, ``"bn.running_mean"``,
  ``"bn.num_batches_tracked"``), prefixes of wrappers included (``module.`` for ``DataParallel``,
  ``_orig_mod.`` for ``torch.compile``; :func:`coreprune.name_mapping.strip_wrapper_prefixes` removes
  them, and :func:`load_numpy` / ``attach_masks`` match names across them). A tied tensor (one
  ``Parameter`` under two names) is one array under both names, so coreprune counts it once.
  A tensor pruned with ``torch.nn.utils.prune`` (by
  ``attach_masks`` or by hand) is exported under its plain name with its *effective* value
  ``weight_orig * weight_mask`` (``+0.0`` at pruned entries), as if ``prune.remove`` had been
  called; ``weight_orig`` and ``weight_mask`` themselves are not exported. Parametrizations of
  ``torch.nn.utils.parametrize`` (weight norm, orthogonal, ...) keep their ``state_dict`` names
  (``"fc.parametrizations.weight.original"``).
* dtypes map one to one. ``torch.bfloat16`` and the float8 types become the ``ml_dtypes`` types of
  the same bit layout (``ml_dtypes.bfloat16``, ``ml_dtypes.float8_e4m3fn``, ...), through an
  integer view, so no bits change.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping

import numpy as np

import torch
from coreprune import dtypes
from coreprune.errors import CompressionError
from coreprune.load_report import LoadReport, match_names
from coreprune.name_mapping import align_wrapper_prefixes
from coreprune.selection import check_weights, is_floating
from torch import nn
from torch.nn.utils import prune

__all__ = ["LoadReport", "to_numpy", "load_numpy", "weight_names"]

# Layers whose ``weight`` is a weight to compress, and the attention parameters that are weights.
_WEIGHT_LAYERS = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.Embedding, nn.EmbeddingBag)
_ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


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
_CARRIER_NP: dict[torch.dtype, np.dtype] = {torch.int16: np.dtype(np.int16), torch.uint8: np.dtype(np.uint8)}


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


def _tensor_to_numpy(name: str, tensor: torch.Tensor, *, copy: bool = False) -> np.ndarray:
    """``tensor`` as an array: over its memory if it is on the CPU and ``copy`` is False, else its own."""
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
    on_host = tensor.device.type == "cpu"
    # detach() and, on CPU, cpu() return views: the array below aliases the tensor's memory.
    tensor = tensor.detach().cpu().resolve_conj().resolve_neg()
    twin = _TORCH_TO_ML.get(tensor.dtype)
    if twin is not None:
        ndtype, carrier = twin
        array = tensor.view(carrier).numpy().view(ndtype)
    else:
        try:
            array = tensor.numpy()
        except TypeError as exc:
            raise CompressionError(
                f"tensor {name!r} has dtype {tensor.dtype}, which has no NumPy equivalent; convert it "
                f"first (e.g. .to(torch.float32))"
            ) from exc
    # A device tensor came over as a fresh host copy already; copying it again would waste time.
    return array.copy() if copy and on_host else array


def _effective_state(module: nn.Module) -> dict[str, object]:
    """``module.state_dict()``, each pruned ``x_orig``/``x_mask`` pair replaced by ``x = x_orig * x_mask``.

    ``x`` takes the place of ``x_orig``, which is where ``prune.remove`` would put it. The product is
    written as ``where(x_mask != 0, x_orig, +0.0)``: ``-3.0 * 0`` would give ``-0.0``, and
    :func:`coreprune.apply_masks` and the MXNet adapter give ``+0.0``, bit for bit.
    """
    effective = {name + "_orig": name for name, _, _ in _pruned(module)}
    masks = {name + "_mask" for name in effective.values()}
    state = module.state_dict()
    out: dict[str, object] = {}
    done: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (orig, mask, effective)
    for key, value in state.items():
        if key in masks:
            continue
        if key in effective:
            mask, zero = state[effective[key] + "_mask"], value.new_zeros(())
            # a tied Parameter pruned under two names with one mask: one effective tensor, still tied
            same = [e for o, m, e in done if _same_tensor(o, value) and torch.equal(m, mask)]
            if same:
                out[effective[key]] = same[0]
                continue
            with torch.no_grad():
                out[effective[key]] = torch.where(mask != 0, value, zero)
            done.append((value, mask, out[effective[key]]))  # type: ignore[arg-type]
        else:
            out[key] = value
    return out


def _tensor_key(t: torch.Tensor) -> tuple | None:
    """Equal for two tensors viewing the same elements (a tied parameter under two names)."""
    if t.numel() == 0 or t.layout != torch.strided or t.device.type == "meta":
        return None
    return (str(t.device), t.dtype, tuple(t.shape), t.stride(), t.data_ptr())


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    key = _tensor_key(a)
    return key is not None and key == _tensor_key(b)


def to_numpy(obj: nn.Module | Mapping[str, torch.Tensor], *, copy: bool = True) -> dict[str, np.ndarray]:
    """The tensors of a module or a ``state_dict`` as ``dict[str, numpy.ndarray]``: copies, or views.

    Parameters
    ----------
    obj : torch.nn.Module or Mapping[str, torch.Tensor]
        A module: its ``state_dict()`` is converted, parameters *and* persistent buffers
        (``running_mean``, ``num_batches_tracked``, ...), in ``state_dict`` order and under
        ``state_dict`` names. A tensor pruned with ``torch.nn.utils.prune`` (for example by
        ``attach_masks``) appears once, under its plain name (``"fc.weight"``), with the
        effective value ``weight_orig * weight_mask``; ``weight_orig`` and ``weight_mask`` are not
        exported (the masks are available from ``attached_masks``).
        A mapping: a plain ``name -> torch.Tensor`` mapping such as a ``state_dict``; nested
        checkpoints must be unpacked by the caller.
    copy : bool, default True
        True: every array owns its memory, so it stays as it is while training goes on and
        writing into it leaves the module alone. False: the arrays of CPU tensors are views of
        the tensors' memory (no copy, nothing allocated; see Notes).

    Returns
    -------
    dict[str, numpy.ndarray]
        Same shapes as the tensors. dtypes map one to one (``float32 -> float32``,
        ``int64 -> int64``, ``bool -> bool``, ``complex64 -> complex64``, ...);
        ``torch.bfloat16 -> ml_dtypes.bfloat16`` and ``torch.float8_* -> ml_dtypes.float8_*``
        keep their bits exactly.

    Notes
    -----
    **Aliasing with copy=False.** The arrays of CPU tensors share memory with those tensors
    (strided views for non-contiguous tensors, bfloat16 included): writing into an array changes
    the module, and a later optimizer step changes the array. coreprune's functions never modify
    their inputs, so passing such a dict to them is safe. Tensors on CUDA or any other device are
    copied to host memory whatever ``copy`` says, and the effective values of pruned tensors are
    freshly computed, so those arrays own their memory. (``coreprune.mxnet.to_numpy`` refuses
    ``copy=False``: MXNet cannot lend its memory.)

    Raises
    ------
    CompressionError
        If ``obj`` is neither a module nor a mapping, ``copy`` is not a bool, a key is not a
        ``str``, a value is not a tensor, or a tensor cannot become an array (quantized, sparse,
        on the ``meta`` device, or of a dtype NumPy has no twin for, such as ``complex32``).

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
    >>> view = to_numpy(bn, copy=False)["weight"]
    >>> view[0] = 5.0  # a view: the module changes too
    >>> bn.weight[0].item(), weights["weight"][0].item()
    (5.0, 1.0)
    """
    if not isinstance(copy, bool):
        raise CompressionError(f"to_numpy: copy must be True or False, got {copy!r}")
    tensors: Mapping[str, object]  # a user's mapping may hold anything: checked below
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
    seen: dict[tuple, str] = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise CompressionError(f"{what} has a non-string key {name!r}; names must be str")
        if not isinstance(tensor, torch.Tensor):
            raise _not_a_tensor(what, name, tensor)
        # Tied tensors (one Parameter under two names) stay one array, so that coreprune counts them once.
        key = _tensor_key(tensor)
        if key is not None and key in seen:
            out[name] = out[seen[key]]
            continue
        if key is not None:
            seen[key] = name
        out[name] = _tensor_to_numpy(name, tensor, copy=copy)
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

    Names that differ only by the prefixes wrappers add (``module.`` of ``DataParallel``,
    ``_orig_mod.`` of ``torch.compile``) are matched, in either direction; tied tensors stay tied
    (one ``Parameter`` under two names is written once, and both arrays must then be equal).
    """
    _check_arrays(weights, "weights")
    slots = _load_slots(target)
    # A checkpoint of a DataParallel (module.) or torch.compile (_orig_mod.) model, or the other way round.
    renamed = align_wrapper_prefixes(weights, slots)
    if any(old != new for old, new in renamed.items()):
        weights = {renamed[name]: array for name, array in weights.items()}
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


def weight_names(model: nn.Module) -> list[str]:
    """Names of the weights of ``model``'s convolution, linear, embedding and attention layers.

    Selection by role, for ``include=`` of :func:`coreprune.prune_magnitude` and
    :func:`coreprune.quantize` on ``to_numpy(model)``: the ``weight`` of every ``nn.Linear``,
    ``nn.Bilinear``, convolution (transposed too), ``nn.Embedding`` and ``nn.EmbeddingBag``, and the
    input projections of ``nn.MultiheadAttention`` (``in_proj_weight`` or ``q/k/v_proj_weight``;
    its ``out_proj`` is an ``nn.Linear``). Biases, normalisation layers, tokens, position
    embeddings and buffers are not weights. Under weight norm, the direction (``weight_v``,
    ``parametrizations.weight.original1``) is the weight; other parametrizations give
    ``parametrizations.weight.original``. Names are those :func:`to_numpy` exports, in its order; a
    tied weight appears under each of its names.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    list of str

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
    ...                           torch.nn.Linear(4, 2))
    >>> weight_names(net)
    ['0.weight', '3.weight']
    """
    if not isinstance(model, nn.Module):
        raise CompressionError(f"weight_names expects a torch.nn.Module, got {type(model).__name__}")
    wanted: set[str] = set()
    for prefix, sub in model.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        if isinstance(sub, _WEIGHT_LAYERS):
            wanted.update(dot + leaf for leaf in ("weight", "weight_v", "parametrizations.weight.original",
                                                  "parametrizations.weight.original1"))
        elif isinstance(sub, nn.MultiheadAttention):
            wanted.update(dot + leaf for leaf in _ATTENTION_WEIGHTS)
    return [name for name in _load_slots(model) if name in wanted]

