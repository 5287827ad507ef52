"""Copy MXNet parameter collections to ``dict[str, numpy.ndarray]`` and back.

This module converts and nothing else: no pruning, no quantization, no maths.
It accepts four kinds of MXNet collection and names their tensors the way
MXNet's own files do, so that a dict produced here has the keys of the file the
same collection would be saved to:

* a Gluon ``Block``: structural names, ``fc.weight``, ``0.weight``,
  ``bn.running_var`` (aux states included), the keys of ``Block.save_parameters``;
* a ``ParameterDict`` (``block.collect_params()``): global names, ``dense0_weight``,
  the keys of ``ParameterDict.save``;
* a mapping name -> ``NDArray`` (what ``mx.nd.load`` returns) or name -> ``Parameter``:
  the mapping's keys, unchanged (``arg:``/``aux:`` prefixes kept);
* an ``(arg_params, aux_params)`` pair (``Module.get_params()``,
  ``mx.model.load_checkpoint``): ``arg:<name>`` and ``aux:<name>``, the keys of
  ``mx.model.save_checkpoint``.

MXNet keeps its arrays in its own memory (and on its own devices), so
:func:`to_numpy` always copies (``NDArray.asnumpy``); the dict it returns shares
nothing with the model, and ``copy=False`` (the zero-copy views
:func:`coreprune.torch.to_numpy` offers) is refused. :func:`load_numpy` writes *in place* into the existing
arrays, keeping each one's dtype and context (device), casting the incoming values
to the array's dtype.

dtypes: float16/32/64, uint8, int8, int32, int64, bool and bfloat16. MXNet 1.9.1
hands bfloat16 to Python as the structured dtype ``[('bfloat16', '<u2')]``; here
it becomes ``ml_dtypes.bfloat16`` (the same 16 bits), and back.

Not supported, with a :class:`~coreprune.errors.CompressionError` naming the
tensor: sparse arrays (``row_sparse``/``csr``; densify with
``.tostype('default')``), parameters whose initialisation is still deferred
(run one forward pass, or give ``in_units``/``in_channels``), and loading floating
values into integer or bool arrays (almost always a mix-up of names; it would
truncate silently).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Union

import ml_dtypes
import numpy as np

import mxnet as mx
from coreprune.errors import CompressionError
from coreprune.load_report import LoadReport, match_names
from coreprune.selection import check_weights, is_floating
from mxnet import gluon

__all__ = ["LoadReport", "to_numpy", "load_numpy", "weight_names"]

# Blocks whose ``weight`` is a weight to compress, and the symbol operators that take one.
_WEIGHT_BLOCKS = (
    gluon.nn.Dense, gluon.nn.Conv1D, gluon.nn.Conv2D, gluon.nn.Conv3D, gluon.nn.Conv1DTranspose,
    gluon.nn.Conv2DTranspose, gluon.nn.Conv3DTranspose, gluon.nn.Embedding,
)
_WEIGHT_OPS = {"FullyConnected", "Convolution", "Deconvolution", "Embedding"}

#: How MXNet 1.9.1's Python front end spells bfloat16 (``NDArray.dtype`` of a bf16 array).
MX_BFLOAT16 = np.dtype([("bfloat16", "<u2")])
#: The same 16 bits as NumPy knows them (the dtype registry's bfloat16, an ml_dtypes type).
_BFLOAT16: np.dtype = np.dtype(ml_dtypes.bfloat16)

#: A collection :func:`to_numpy` and :func:`load_numpy` accept.
Collection = Union[
    gluon.Block,
    gluon.ParameterDict,
    Mapping[str, Union[mx.nd.NDArray, gluon.Parameter]],
    "tuple[Mapping[str, mx.nd.NDArray], Mapping[str, mx.nd.NDArray]]",
]

_PAIR_PREFIXES = ("arg:", "aux:")


def _slots(target: Any, *, verb: str) -> dict[str, Any]:
    """Name -> ``Parameter`` or ``NDArray`` for every tensor of ``target``, in MXNet's order."""
    if isinstance(target, gluon.Block):
        # The exact routine Block.save_parameters uses for its keys. A shared parameter
        # appears under every name that reaches it, as save_parameters writes it by default.
        return dict(target._collect_params_with_prefix())
    if isinstance(target, gluon.ParameterDict):
        return dict(target.items())
    if (
        isinstance(target, (tuple, list))
        and len(target) == 2
        and all(isinstance(part, Mapping) for part in target)
    ):
        slots: dict[str, Any] = {}
        for prefix, part in zip(_PAIR_PREFIXES, target):
            for name, value in _mapping_slots(part, verb=verb, what=f"{prefix[:3]}_params").items():
                slots[prefix + name] = value
        return slots
    if isinstance(target, Mapping):
        return _mapping_slots(target, verb=verb, what="the mapping")
    raise CompressionError(
        f"{verb}: cannot handle a {type(target).__name__}; expected a gluon Block, a ParameterDict, "
        "a mapping name -> NDArray/Parameter, or an (arg_params, aux_params) pair"
    )


def _mapping_slots(mapping: Mapping, *, verb: str, what: str) -> dict[str, Any]:
    for name, value in mapping.items():
        if not isinstance(name, str):
            raise CompressionError(f"{verb}: {what} has a non-string key {name!r}")
        if not isinstance(value, (mx.nd.NDArray, gluon.Parameter)):
            raise CompressionError(
                f"{verb}: {what}[{name!r}] is a {type(value).__name__}, not an mxnet NDArray or Parameter"
            )
    return dict(mapping)


def _arrays(name: str, value: Any, *, verb: str) -> list[mx.nd.NDArray]:
    """The NDArrays holding one tensor: one per context for a Parameter, else the array itself."""
    if isinstance(value, gluon.Parameter):
        if value._stype != "default":
            raise CompressionError(
                f"{verb}: parameter {name!r} has storage type {value._stype!r}; only dense parameters "
                "are supported"
            )
        if value._data is None:
            _check_initialised({name: value}, verb=verb)
        arrays = value.list_data()
    else:
        arrays = [value]
    for arr in arrays:
        if arr.stype != "default":
            raise CompressionError(
                f"{verb}: {name!r} is a {arr.stype} array; only dense arrays are supported "
                "(densify it with .tostype('default'))"
            )
    return arrays


def _check_initialised(slots: Mapping[str, Any], *, verb: str) -> None:
    deferred = [n for n, v in slots.items() if isinstance(v, gluon.Parameter) and v._data is None]
    if deferred:
        raise CompressionError(
            f"{verb}: {len(deferred)} parameter(s) not initialised: {deferred}. If their initialisation "
            "is deferred, run one forward pass first (or give in_units/in_channels when building the "
            "layers); otherwise call initialize()"
        )


def _numpy_dtype(arr: mx.nd.NDArray) -> np.dtype:
    dtype = np.dtype(arr.dtype)
    return _BFLOAT16 if dtype == MX_BFLOAT16 else dtype


def _read(arr: mx.nd.NDArray) -> np.ndarray:
    out = arr.asnumpy()  # synchronous device -> host copy into a fresh NumPy array
    if out.dtype == MX_BFLOAT16:
        out = out.view(np.uint16).view(_BFLOAT16)
    return out


def _cast_for(name: str, array: np.ndarray, arr: mx.nd.NDArray) -> np.ndarray:
    """``array`` converted to the dtype MXNet expects for a write into ``arr``."""
    target = _numpy_dtype(arr)
    if is_floating(array.dtype) and not is_floating(target):
        raise CompressionError(
            f"load_numpy: {name!r} holds {array.dtype} values but the target array is {target}; "
            "refusing to truncate floating values into an integer/bool array"
        )
    out = array.astype(target, copy=False)
    if target == _BFLOAT16:
        out = np.ascontiguousarray(out).view(np.uint16).view(MX_BFLOAT16)
    return out


def _host_array(array: np.ndarray) -> np.ndarray | mx.nd.NDArray:
    """Wrap a cast NumPy array as a CPU NDArray, the one source MXNet copies into any layout.

    After a forward pass with MKL-DNN, conv weights live in an MKL-DNN layout, and copying a NumPy
    array into them fails ("can't generate TBlob for MKLDNN data"); an NDArray source is reordered
    by MXNet itself. bfloat16 (a structured NumPy dtype here) has no NDArray constructor and is
    never held in an MKL-DNN layout, so it stays NumPy.
    """
    if array.dtype == MX_BFLOAT16:
        return array
    return mx.nd.array(array, ctx=mx.cpu(), dtype=array.dtype)


def to_numpy(obj: Collection, *, copy: bool = True) -> dict[str, np.ndarray]:
    """Copy every tensor of an MXNet collection into a new ``dict[str, numpy.ndarray]``.

    Parameters
    ----------
    obj : gluon.Block, gluon.ParameterDict, Mapping[str, NDArray | Parameter], or (arg_params, aux_params)
        A Block gives its structural names (the keys ``Block.save_parameters`` writes,
        aux states such as BatchNorm running statistics included); a ParameterDict its
        global names; a mapping its own keys; a pair of mappings (``Module.get_params()``,
        ``mx.model.load_checkpoint``) ``arg:<name>`` and ``aux:<name>``.
    copy : bool, default True
        Must be True. The signature is :func:`coreprune.torch.to_numpy`'s, whose ``copy=False``
        returns views of CPU tensors; MXNet offers NumPy no view of its memory (it lives in
        MXNet's own allocator, possibly in an MKL-DNN layout or on a GPU), so ``copy=False``
        raises rather than silently copying.

    Returns
    -------
    dict[str, numpy.ndarray]
        New arrays (copies), same shapes, the MXNet dtype (bfloat16 as ``ml_dtypes.bfloat16``),
        in MXNet's order. A parameter held on several contexts is read from its first one
        (the copies are equal after every ``Trainer.step``).

    Raises
    ------
    CompressionError
        For uninitialised (deferred) parameters, sparse arrays, an unsupported object, or
        ``copy=False``.

    Examples
    --------
    >>> import mxnet as mx
    >>> net = mx.gluon.nn.HybridSequential()
    >>> net.add(mx.gluon.nn.Dense(3, in_units=4), mx.gluon.nn.BatchNorm(in_channels=3))
    >>> net.initialize()
    >>> w = to_numpy(net)
    >>> list(w)
    ['0.weight', '0.bias', '1.gamma', '1.beta', '1.running_mean', '1.running_var']
    >>> w["0.weight"].shape, str(w["0.weight"].dtype)
    ((3, 4), 'float32')
    >>> list(to_numpy(({"fc_weight": mx.nd.ones((2, 2))}, {"bn_running_var": mx.nd.ones(2)})))
    ['arg:fc_weight', 'aux:bn_running_var']
    >>> to_numpy(net, copy=False)
    Traceback (most recent call last):
    ...
    coreprune.errors.CompressionError: to_numpy(copy=False): MXNet cannot share its memory with NumPy; ...
    """
    if copy is not True:
        raise CompressionError(
            "to_numpy(copy=False): MXNet cannot share its memory with NumPy; every array is a copy, "
            "so leave copy=True (the default)"
            if copy is False
            else f"to_numpy: copy must be True or False, got {copy!r}"
        )
    slots = _slots(obj, verb="to_numpy")
    _check_initialised(slots, verb="to_numpy")
    out: dict[str, np.ndarray] = {}
    first: dict[int, str] = {}
    for name, value in slots.items():
        # A parameter shared by several blocks is one array under each name, so coreprune counts it once.
        seen = first.setdefault(id(value), name)
        out[name] = out[seen] if seen != name else _read(_arrays(name, value, verb="to_numpy")[0])
    return out


def load_numpy(target: Collection, weights: Mapping[str, np.ndarray], *, strict: bool = True) -> LoadReport:
    """Write NumPy arrays into an MXNet collection in place, matching by name.

    Names follow :func:`to_numpy` (structural for a Block, global for a ParameterDict,
    the mapping's keys, ``arg:``/``aux:`` for a pair). Each value is cast to the target
    array's dtype (NumPy ``astype``, round-to-nearest for narrower floats) and copied into
    every context that holds the tensor; dtype, context and array identity are kept. For a
    Parameter the copy goes through ``Parameter.set_data``, which also keeps a kvstore
    that updates on the store in sync.

    Parameters
    ----------
    target : Block, ParameterDict, Mapping[str, NDArray | Parameter], or (arg_params, aux_params)
        Written in place. Its parameters must be initialised.
    weights : Mapping[str, numpy.ndarray]
        Name to array; never modified. ``QuantizedArray`` values must be dequantized first.
    strict : bool, default True
        If True, any missing name, unexpected name or shape mismatch raises before anything
        is written. If False, the matching names are written and the rest reported.

    Returns
    -------
    LoadReport
        ``missing``, ``unexpected`` and ``mismatched`` (empty lists when everything matched).

    Raises
    ------
    CompressionError
        In strict mode, listing every missing key, unexpected key and shape mismatch
        ``(name, expected, got)``; in both modes for uninitialised parameters, sparse
        arrays, non-array values or floating values bound for an integer/bool array.

    Examples
    --------
    >>> import mxnet as mx, numpy as np
    >>> fc = mx.gluon.nn.Dense(2, in_units=3, dtype="float16")
    >>> fc.initialize()
    >>> load_numpy(fc, {"weight": np.full((2, 3), 0.5), "bias": np.zeros(2)})
    LoadReport(missing=[], unexpected=[], mismatched=[])
    >>> fc.weight.data().asnumpy().tolist(), np.dtype(fc.weight.data().dtype).name
    ([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]], 'float16')
    >>> load_numpy(fc, {"weight": np.zeros((3, 2))}, strict=False)
    LoadReport(missing=['bias'], unexpected=[], mismatched=[('weight', (2, 3), (3, 2))])
    """
    check_weights(weights)
    slots = _slots(target, verb="load_numpy")
    _check_initialised(slots, verb="load_numpy")
    arrays = {name: _arrays(name, value, verb="load_numpy") for name, value in slots.items()}

    report = match_names({name: tuple(arrays[name][0].shape) for name in slots}, weights, strict=strict)
    bad = {name for name, _, _ in report.mismatched}
    todo = [name for name in slots if name in weights and name not in bad]
    # Cast everything first so that a dtype refusal leaves the target untouched.
    values = {name: _host_array(_cast_for(name, weights[name], arrays[name][0])) for name in todo}
    written: dict[int, str] = {}
    for name in todo:
        # A shared parameter is written once: two different values for it would leave the last one.
        first = written.setdefault(id(slots[name]), name)
        if first != name and not np.array_equal(np.asarray(weights[first]), np.asarray(weights[name])):
            raise CompressionError(
                f"load_numpy: {first!r} and {name!r} are one shared parameter but the arrays given for "
                "them differ"
            )
    for name in todo:
        value = slots[name]
        if isinstance(value, gluon.Parameter):
            value.set_data(values[name])
        else:
            value[:] = values[name]
    return report


def weight_names(model: gluon.Block) -> list[str]:
    """Names of the weights of ``model``'s dense, convolution and embedding layers.

    Selection by role, for ``include=`` of :func:`coreprune.prune_magnitude` and
    :func:`coreprune.quantize` on ``to_numpy(model)``: the ``weight`` of every ``Dense``,
    ``Conv1D/2D/3D`` (transposed too) and ``Embedding`` block; for a ``SymbolBlock`` (from
    ``SymbolBlock.imports``) the weight inputs of the graph's ``FullyConnected``, ``Convolution``,
    ``Deconvolution`` and ``Embedding`` nodes. Biases, BatchNorm/LayerNorm parameters and
    running statistics are not weights. Names are those :func:`to_numpy` exports, in its order; a
    shared parameter appears under each of its names.

    Parameters
    ----------
    model : gluon.Block

    Returns
    -------
    list of str

    Examples
    --------
    >>> import mxnet as mx
    >>> net = mx.gluon.nn.HybridSequential()
    >>> net.add(mx.gluon.nn.Conv2D(4, 3, in_channels=3), mx.gluon.nn.BatchNorm(in_channels=4),
    ...         mx.gluon.nn.Dense(2, in_units=4))
    >>> weight_names(net)
    ['0.weight', '2.weight']
    """
    if not isinstance(model, gluon.Block):
        raise CompressionError(f"weight_names expects a gluon Block, got {type(model).__name__}")
    slots = _slots(model, verb="weight_names")
    wanted: set[int] = set()

    def visit(block: gluon.Block) -> None:
        if isinstance(block, _WEIGHT_BLOCKS):
            wanted.add(id(block.weight))
        if isinstance(block, gluon.SymbolBlock):
            outputs = block._cached_graph[1] if block._cached_graph else None
            if outputs is not None:
                nodes = json.loads(outputs.tojson())["nodes"]
                by_name = {p.name: p for p in block.collect_params().values()}
                for node in nodes:
                    if node["op"] in _WEIGHT_OPS and len(node["inputs"]) > 1:
                        source = nodes[node["inputs"][1][0]]  # data, weight[, bias]
                        if source["op"] == "null" and source["name"] in by_name:
                            wanted.add(id(by_name[source["name"]]))
        for child in block._children.values():
            visit(child() if callable(child) and not isinstance(child, gluon.Block) else child)

    visit(model)
    return [name for name, value in slots.items() if id(value) in wanted]

