"""PyTorch's allowlist for the restricted pickle interpreter: tensors, storages, dtypes, containers.

A pickle can run any code (``os.system``) when ``pickle.load`` reads it; :mod:`coreprune.io.pickle_vm`
is an interpreter that never imports or calls anything the file names. This module gives it the
names ``torch.save`` writes for tensors and state dicts, each mapped to a local stand-in; any other
global raises :class:`~coreprune.errors.UnsafePickleError` naming it before anything ran.

What it builds
--------------
* ``dict``, ``collections.OrderedDict``, ``list``, ``tuple``, ``set``,
  ``frozenset``, ``str``, ``bytes``, ``bytearray``, ``int``, ``float``,
  ``complex``, ``bool``, ``None``;
* :class:`TensorRef` for each tensor (``torch._utils._rebuild_tensor[_v2|_v3]``,
  ``_rebuild_parameter[_with_state]``): a description of where the elements lie
  in a storage, checked against that storage's declared size. No data is read.
* :class:`StorageRef` for each persistent id ``('storage', <type>, key, location,
  numel[, view])``; the caller maps keys to bytes.
* the dtype and storage-type globals (``torch.float32``, ``torch.FloatStorage``)
  as :class:`TorchGlobal` values.

The allowlist
-------------
``collections.OrderedDict``, ``torch._utils._rebuild_tensor``, ``_rebuild_tensor_v2``,
``_rebuild_tensor_v3``, ``_rebuild_parameter``, ``_rebuild_parameter_with_state``,
``torch.<Name>Storage`` (Float, Double, Half, BFloat16, Long, Int, Short, Char,
Byte, Bool, ComplexFloat, ComplexDouble), ``torch.storage.UntypedStorage``,
``torch.<dtype>``, ``torch.Size``, ``_codecs.encode`` (how protocol 2 pickles
``bytes``) and ``builtins.set`` / ``frozenset`` / ``complex`` / ``bytearray`` / ``bytes`` (also spelled
``__builtin__``, as protocol 2 writes them), with their arguments checked.
It is a subset of ``torch.load(weights_only=True)``'s.

Opcodes
-------
Those of :mod:`coreprune.io.pickle_vm` (protocols 2 to 5; torch writes protocol 2, so files saved
with ``pickle_protocol=4`` read too, though ``torch.load(weights_only=True)`` refuses them), with
persistent ids resolved as storages.
"""

from __future__ import annotations

import collections
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import numpy as np

from ..dtypes import torch_dtypes, torch_storage_dtypes
from . import pickle_vm
from .pickle_vm import BUILTIN_GLOBALS, PickleGlobal, PickleVM, _bad, _check_int, _int_tuple, short_repr

__all__ = [
    "StorageRef",
    "TensorRef",
    "load_torch_pickle",
    "loads_torch_pickle",
    "ALLOWED_GLOBALS",
    "STORAGE_DTYPES",
    "TORCH_DTYPES",
]

_REFUSAL = (
    "which is not a tensor, storage, dtype or plain container; refused before anything ran (only "
    "weights-only checkpoints are read: save model.state_dict(), not the model or arbitrary objects; "
    "if you trust this one, read it as an opaque record with allow_globals=['<that name>'], "
    "or --allow-global <that name> on the command line: nothing is ever imported or called)"
)


#: ``torch.<Name>Storage`` -> the element dtype of the storage (legacy typed storages).
STORAGE_DTYPES: dict[str, np.dtype] = torch_storage_dtypes()

#: ``torch.<dtype>`` -> NumPy dtype; ``None`` where NumPy (with the installed ml_dtypes) has no equivalent.
TORCH_DTYPES: dict[str, np.dtype | None] = torch_dtypes()


@dataclass(frozen=True)
class StorageRef:
    """One storage named by a persistent id: ``('storage', type, key, location, numel[, view])``.

    Attributes
    ----------
    key : str
        Record key: ``data/<key>`` in a zip archive, a position in the key list of a legacy file.
    dtype : numpy.dtype
        Element dtype of the storage (``uint8`` for ``torch.storage.UntypedStorage``).
    numel : int
        Elements of ``dtype`` this storage (or view) spans.
    location : str
        Device it was saved from (``"cpu"``, ``"cuda:0"``); everything is read to host memory.
    byte_offset : int
        Where a legacy storage view starts inside the key's record; 0 otherwise.
    root_numel : int
        Elements of the whole record (equals ``numel`` unless this is a view).
    """

    key: str
    dtype: np.dtype
    numel: int
    location: str
    byte_offset: int = 0
    root_numel: int = -1

    @property
    def nbytes(self) -> int:
        """Bytes this storage spans: ``numel * dtype.itemsize``."""
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True)
class TensorRef:
    """Where a tensor's elements lie: ``storage[offset + sum(i_k * stride_k)]`` for each index ``i``.

    Validated when built: every element it reaches lies inside the storage's declared size.

    Attributes
    ----------
    storage : StorageRef
    dtype : numpy.dtype
        Element dtype of the tensor (differs from the storage's for ``_rebuild_tensor_v3``).
    offset : int
        First element, in elements of ``dtype`` from the start of ``storage``.
    shape, stride : tuple of int
        In elements; strides are non-negative.
    conj, neg : bool
        The stored bits are the un-conjugated / un-negated values: apply these on reading.
    requires_grad, parameter : bool
        Saved autograd flags; ``parameter`` marks an ``nn.Parameter``.
    """

    storage: StorageRef
    dtype: np.dtype
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    conj: bool = False
    neg: bool = False
    requires_grad: bool = False
    parameter: bool = False


@dataclass(frozen=True)
class _Context:
    """What the stand-ins need besides their arguments (``vm.context``)."""

    storage_hook: Callable[[StorageRef], None] | None
    max_tensor_nbytes: int | None


def _persistent_load(u: PickleVM, pid: Any) -> StorageRef:
    src = u.source
    if type(pid) is not tuple or not pid:
        raise u.refuse(
            f"has a persistent id of type {type(pid).__name__}, not a ('storage', ...) tuple"
        )
    tag = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
    if tag != "storage":
        detail = f" of class {short_repr(pid[1], 80)}" if tag == "module" and len(pid) > 1 else ""
        raise u.refuse(f"has a persistent id tagged {short_repr(tag, 40)}{detail}; only storages are read")
    if len(pid) not in (5, 6):
        raise _bad(src, f"storage persistent id has {len(pid)} fields, expected 5 or 6")
    stype, key, location, numel = pid[1], pid[2], pid[3], pid[4]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(stype, PickleGlobal) or stype.kind != "storage":
        raise _bad(src, f"storage persistent id names {short_repr(stype, 60)}, not a storage type")
    if stype.dtype is None:
        raise _bad(src, f"{stype.name} has no NumPy dtype")
    if isinstance(location, bytes):
        location = location.decode("ascii", "replace")
    if type(key) is not str or type(location) is not str:
        raise _bad(src, "storage key and location must be strings")
    numel = _check_int(src, f"storage {key!r} element count", numel)
    ref = StorageRef(key, stype.dtype, numel, location, 0, numel)
    if view is not None:
        if type(view) is not tuple or len(view) != 3:
            raise _bad(src, f"storage {key!r} view must be a (key, offset, size) tuple")
        v_off = _check_int(src, f"storage {key!r} view offset", view[1])
        v_size = _check_int(src, f"storage {key!r} view size", view[2])
        if v_off + v_size > numel:
            raise _bad(
                src, f"storage view [{v_off}, {v_off + v_size}) lies outside storage {key!r} of {numel}"
            )
        ref = StorageRef(key, stype.dtype, v_size, location, v_off * stype.dtype.itemsize, numel)
    if u.context.storage_hook is not None:
        u.context.storage_hook(ref)
    return ref



# ------------------------------------------------------------------------------------------------------
# Stand-ins for torch's globals. They validate their arguments and build plain values.
# ------------------------------------------------------------------------------------------------------
def _tensor(
    u: PickleVM,
    func: str,
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    dtype: np.dtype | None = None,
    metadata: Any = None,
) -> TensorRef:
    src = u.source
    if not isinstance(storage, StorageRef):
        raise _bad(src, f"{func}: first argument is a {type(storage).__name__}, not a storage")
    dtype = storage.dtype if dtype is None else dtype
    offset = _check_int(src, f"{func}: storage offset", offset)
    shape = _int_tuple(src, "size", size)
    strides = _int_tuple(src, "stride", stride)
    if len(shape) != len(strides):
        raise _bad(src, f"{func}: size {shape} and stride {strides} have different lengths")
    conj = neg = False
    if metadata is not None:
        if type(metadata) is not dict or not set(metadata) <= {"conj", "neg"}:
            raise _bad(src, f"{func}: unknown tensor metadata {short_repr(metadata, 80)}")
        conj, neg = bool(metadata.get("conj", False)), bool(metadata.get("neg", False))
        # torch sets these bits on views of complex tensors only (x.conj(), x.conj().imag).
        if (conj and dtype.kind != "c") or (neg and dtype.kind not in "fcV"):
            raise _bad(src, f"{func}: a conj/neg bit on a {dtype} tensor (corrupted)")
    itemsize = dtype.itemsize
    if storage.byte_offset % itemsize:
        raise _bad(src, f"{func}: storage view offset is not a multiple of the {dtype} element size")
    capacity = storage.nbytes // itemsize
    count = 1
    nonzero = 1
    for d in shape:
        count *= d
        nonzero *= max(d, 1)
    if nonzero * itemsize > 2**62:
        raise _bad(src, f"{func}: size {shape} is too large for any array")
    if count:
        last = offset + sum((d - 1) * s for d, s in zip(shape, strides))
        if last >= capacity:
            raise _bad(
                src,
                f"{func}: a tensor of size {shape}, stride {strides} at offset {offset} reaches "
                f"element {last} "
                f"of storage {storage.key!r}, which holds {capacity} {dtype} elements (corrupted)",
            )
        if u.context.max_tensor_nbytes is not None and count * itemsize > u.context.max_tensor_nbytes:
            raise _bad(
                src,
                f"{func}: a tensor of size {shape} ({count * itemsize} bytes dense) over storage "
                f"{storage.key!r} "
                f"is larger than the file ({u.context.max_tensor_nbytes} bytes); refusing a view that would "
                "allocate more than the file holds",
            )
    # The stride of a length-1 dimension never moves; zero keeps as_strided away from huge values.
    strides = tuple(0 if d == 1 else s for d, s in zip(shape, strides))
    return TensorRef(
        storage=storage,
        dtype=dtype,
        offset=offset + storage.byte_offset // itemsize,
        shape=shape,
        stride=strides,
        conj=conj,
        neg=neg,
        requires_grad=bool(requires_grad),
    )


def _check_hooks(u: PickleVM, func: str, hooks: Any) -> None:
    if hooks is not None and not isinstance(hooks, (dict, collections.OrderedDict)):
        raise _bad(u.source, f"{func}: backward hooks must be an OrderedDict")
    if hooks:
        raise u.refuse(f"attaches backward hooks to a tensor in {func}")


def _allowed_globals() -> dict[str, PickleGlobal]:
    """The allowlist: each name and its stand-in, called as ``stand_in(vm, *args)``."""

    def rebuild_v1(u: PickleVM, storage: Any, offset: Any, size: Any, stride: Any) -> TensorRef:
        return _tensor(u, "_rebuild_tensor", storage, offset, size, stride)

    def rebuild_v2(
        u: PickleVM,
        storage: Any,
        offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any,
        hooks: Any,
        metadata: Any = None,
    ) -> TensorRef:
        _check_hooks(u, "_rebuild_tensor_v2", hooks)
        return _tensor(u, "_rebuild_tensor_v2", storage, offset, size, stride, requires_grad, None, metadata)

    def rebuild_v3(
        u: PickleVM,
        storage: Any,
        offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any,
        hooks: Any,
        dtype: Any,
        metadata: Any = None,
    ) -> TensorRef:
        _check_hooks(u, "_rebuild_tensor_v3", hooks)
        if not isinstance(dtype, PickleGlobal) or dtype.kind != "dtype":
            raise _bad(
                u.source, f"_rebuild_tensor_v3: dtype argument is {type(dtype).__name__}, not a torch dtype"
            )
        if dtype.dtype is None:
            raise _bad(u.source, f"a tensor of {dtype.name} cannot be read: NumPy has no such dtype")
        return _tensor(
            u, "_rebuild_tensor_v3", storage, offset, size, stride, requires_grad, dtype.dtype, metadata
        )

    def rebuild_parameter(
        u: PickleVM, data: Any, requires_grad: Any, hooks: Any, state: Any = None
    ) -> TensorRef:
        if not isinstance(data, TensorRef):
            raise _bad(u.source, f"_rebuild_parameter: data is a {type(data).__name__}, not a tensor")
        _check_hooks(u, "_rebuild_parameter", hooks)
        return replace(data, requires_grad=bool(requires_grad), parameter=True)

    def torch_size(u: PickleVM, *args: Any) -> tuple[int, ...]:
        if len(args) > 1:
            raise _bad(u.source, "torch.Size: expected one tuple")
        return _int_tuple(u.source, "torch.Size", args[0] if args else ())

    calls: dict[str, Callable[..., Any]] = {
        "torch._utils._rebuild_tensor": rebuild_v1,
        "torch._utils._rebuild_tensor_v2": rebuild_v2,
        "torch._utils._rebuild_tensor_v3": rebuild_v3,
        "torch._utils._rebuild_parameter": rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": rebuild_parameter,
        "torch.Size": torch_size,
    }
    table = dict(BUILTIN_GLOBALS)
    table.update({name: PickleGlobal(name, "call", None, fn) for name, fn in calls.items()})
    for name, dt in STORAGE_DTYPES.items():
        table[f"torch.{name}"] = PickleGlobal(f"torch.{name}", "storage", dt)
    table["torch.storage.UntypedStorage"] = PickleGlobal(
        "torch.storage.UntypedStorage", "storage", np.dtype("u1")
    )
    for name, torch_dt in TORCH_DTYPES.items():
        table[f"torch.{name}"] = PickleGlobal(f"torch.{name}", "dtype", torch_dt)
    return table


_GLOBALS = _allowed_globals()
#: Every global name the unpickler accepts, as ``"module.name"``.
ALLOWED_GLOBALS: tuple[str, ...] = tuple(sorted(_GLOBALS))


def load_torch_pickle(
    f: BinaryIO,
    *,
    end: int,
    source: str,
    storage_hook: Callable[[StorageRef], None] | None = None,
    max_tensor_nbytes: int | None = None,
    allow_globals: Iterable[str] = (),
) -> Any:
    """Unpickle one PyTorch pickle from ``f`` with torch's allowlist; ``f`` is left after its STOP.

    Parameters
    ----------
    f : binary file
        Positioned at the first opcode.
    end : int
        Offset in ``f`` that the pickle must not read past (the file or record size).
    source : str
        Prefix of every error message (the file path and record).
    storage_hook : callable, optional
        Called with each :class:`StorageRef` as its persistent id is read; raises
        :class:`~coreprune.errors.WeightFileError` for a storage the container does not hold.
    max_tensor_nbytes : int, optional
        Refuse any tensor whose dense size exceeds this (the file size): a stride-0 view
        over a small storage could otherwise ask for an allocation larger than the file.
    allow_globals : iterable of str
        More ``"module.Name"`` globals the pickle may name (an explicit opt-in, like
        ``torch.serialization.add_safe_globals``); each builds an opaque
        :class:`~coreprune.io.pickle_vm.PickledObject` record, nothing is imported or called.

    Returns
    -------
    object
        Plain containers and scalars, with :class:`TensorRef` for tensors.

    Raises
    ------
    UnsafePickleError
        A global outside the allowlist, or an opcode that builds or calls anything else.
    WeightFileError
        A truncated or corrupted pickle, or a tensor outside its storage.

    Examples
    --------
    >>> import io, pickle
    >>> data = pickle.dumps({"epoch": 3, "lr": [0.1, 0.01]}, protocol=2)
    >>> load_torch_pickle(io.BytesIO(data), end=len(data), source="ckpt.pt")
    {'epoch': 3, 'lr': [0.1, 0.01]}
    """
    table = _GLOBALS
    extra = [name for name in allow_globals if name not in _GLOBALS]
    if extra:
        table = {**_GLOBALS, **{name: pickle_vm.opaque_global(name) for name in extra}}
    return pickle_vm.restricted_load(
        f,
        table,
        end=end,
        source=source,
        refusal=_REFUSAL,
        persistent_load=_persistent_load,
        context=_Context(storage_hook, max_tensor_nbytes),
    )


def loads_torch_pickle(data: bytes, *, source: str = "<pickle>", **kwargs: Any) -> Any:
    """:func:`load_torch_pickle` over bytes in memory.

    Examples
    --------
    >>> import pickle, os
    >>> loads_torch_pickle(pickle.dumps(os.system, protocol=2), source="evil.pt")
    Traceback (most recent call last):
    ...
    coreprune.errors.UnsafePickleError: evil.pt: the pickle asks for the global posix.system, ...
    """
    return load_torch_pickle(io.BytesIO(data), end=len(data), source=source, **kwargs)
