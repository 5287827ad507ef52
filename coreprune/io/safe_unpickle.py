"""A restricted unpickler for PyTorch checkpoints: tensors and plain containers, nothing else.

A pickle is a small program: its ``GLOBAL`` opcode imports any callable and
``REDUCE`` calls it, so ``pickle.load`` on an untrusted ``.pt`` file can run
``os.system``. This module is its own pickle interpreter (one loop, one handler
per opcode) and never imports or calls anything the file names. Every global is
looked up in a fixed allowlist of the names ``torch.save`` writes for tensors and
state dicts, each mapped to a local stand-in; any other name raises
:class:`~coreprune.errors.UnsafePickleError` naming it, at the moment the opcode
is read, before any later opcode is interpreted. Nothing is ever executed, so
"refused" also means "nothing ran".

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
The binary data opcodes of protocols 2 to 5 are accepted (torch writes protocol 2;
``FRAME``, ``STACK_GLOBAL``, ``MEMOIZE`` and the short string and byte opcodes of
protocols 3-5 are harmless, so files saved with ``pickle_protocol=4`` read too,
though ``torch.load(weights_only=True)`` refuses them). ``REDUCE`` and ``NEWOBJ``
apply only to allowlisted callables, ``BUILD`` only to an ``OrderedDict`` (whose
``_metadata`` attribute is dropped), ``APPEND`` only to lists, ``SETITEM`` only to
dicts. Refused outright: ``INST`` and ``OBJ`` (build an instance of any class),
``EXT1/2/4`` (the copyreg extension registry), ``NEWOBJ_EX``, ``PERSID`` (text),
out-of-band buffers, and the text number/string/memo opcodes of protocol 0.

The interpreter is a loop, not a recursion, so a deeply nested pickle cannot
overflow the stack; every length is checked against the bytes left before
anything is read.
"""

from __future__ import annotations

import collections
import io
import pickletools
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from ..errors import UnsafePickleError, WeightFileError

__all__ = [
    "StorageRef",
    "TensorRef",
    "TorchGlobal",
    "restricted_load",
    "restricted_loads",
    "ALLOWED_GLOBALS",
    "STORAGE_DTYPES",
    "TORCH_DTYPES",
]

#: Numpy has no 128-dimensional arrays; numpy 1.x stops at 32 dimensions.
_MAX_NDIM = 32
#: A GLOBAL line is a dotted Python name; anything longer is not one.
_MAX_LINE = 1024


def _ml(name: str) -> np.dtype | None:
    dt = getattr(ml_dtypes, name, None)
    return None if dt is None else np.dtype(dt)


#: ``torch.<Name>Storage`` -> the element dtype of the storage (legacy typed storages).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("f4"),
    "DoubleStorage": np.dtype("f8"),
    "HalfStorage": np.dtype("f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("i8"),
    "IntStorage": np.dtype("i4"),
    "ShortStorage": np.dtype("i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "ComplexFloatStorage": np.dtype("c8"),
    "ComplexDoubleStorage": np.dtype("c16"),
}

#: ``torch.<dtype>`` -> NumPy dtype; ``None`` where NumPy (with the installed ml_dtypes) has no equivalent.
TORCH_DTYPES: dict[str, np.dtype | None] = {
    "float32": np.dtype("f4"),
    "float": np.dtype("f4"),
    "float64": np.dtype("f8"),
    "double": np.dtype("f8"),
    "float16": np.dtype("f2"),
    "half": np.dtype("f2"),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "int64": np.dtype("i8"),
    "long": np.dtype("i8"),
    "int32": np.dtype("i4"),
    "int": np.dtype("i4"),
    "int16": np.dtype("i2"),
    "short": np.dtype("i2"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("u2"),
    "uint32": np.dtype("u4"),
    "uint64": np.dtype("u8"),
    "bool": np.dtype("?"),
    "complex64": np.dtype("c8"),
    "cfloat": np.dtype("c8"),
    "complex128": np.dtype("c16"),
    "cdouble": np.dtype("c16"),
    "float8_e4m3fn": _ml("float8_e4m3fn"),
    "float8_e5m2": _ml("float8_e5m2"),
    "float8_e4m3fnuz": _ml("float8_e4m3fnuz"),
    "float8_e5m2fnuz": _ml("float8_e5m2fnuz"),
    "float8_e8m0fnu": _ml("float8_e8m0fnu"),
    # Real torch dtypes with no NumPy twin: a tensor of one is refused by name.
    "complex32": None,
    "chalf": None,
    "float4_e2m1fn_x2": None,
    "bits1x8": None,
    "bits2x4": None,
    "bits4x2": None,
    "bits8": None,
    "bits16": None,
    "quint8": None,
    "qint8": None,
    "qint32": None,
    "quint4x2": None,
    "quint2x4": None,
}


@dataclass(frozen=True)
class TorchGlobal:
    """An allowlisted global as the pickle names it: ``torch.float32``, ``torch.FloatStorage``, a function.

    Attributes
    ----------
    name : str
        ``"module.qualname"``.
    kind : str
        ``"call"`` (a stand-in function that REDUCE/NEWOBJ may apply), ``"storage"`` or ``"dtype"``.
    dtype : numpy.dtype or None
        Element dtype of a storage type or dtype global.
    """

    name: str
    kind: str
    dtype: np.dtype | None = None
    call: Callable[..., Any] | None = None

    def __repr__(self) -> str:
        return self.name


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


def _bad(source: str, message: str) -> WeightFileError:
    return WeightFileError(f"{source}: {message}")


def _check_int(source: str, what: str, value: Any, minimum: int = 0) -> int:
    if type(value) is not int or value < minimum:
        raise _bad(source, f"{what} must be an integer >= {minimum}, got {type(value).__name__}")
    return value


def _int_tuple(source: str, what: str, value: Any) -> tuple[int, ...]:
    if type(value) not in (tuple, list):
        raise _bad(source, f"tensor {what} must be a tuple of ints, got {type(value).__name__}")
    if len(value) > _MAX_NDIM:
        raise _bad(source, f"tensor {what} has {len(value)} dimensions; at most {_MAX_NDIM} are supported")
    return tuple(_check_int(source, f"tensor {what} entry", v) for v in value)


class _Stop(Exception):
    """Internal: raised by the STOP handler to leave the loop with the result."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _Unpickler:
    """The interpreter. One instance reads one pickle from ``f`` (at most up to byte ``end``)."""

    def __init__(
        self,
        f: BinaryIO,
        end: int,
        source: str,
        storage_hook: Callable[[StorageRef], None] | None,
        max_tensor_nbytes: int | None,
    ) -> None:
        self.f = f
        self.pos = f.tell()
        self.end = end
        self.source = source
        self.storage_hook = storage_hook
        self.max_tensor_nbytes = max_tensor_nbytes
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}

    # -- reading ------------------------------------------------------------------------------------
    def read(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise _bad(
                self.source,
                f"pickle asks for {n} bytes at offset {self.pos} but only "
                f"{max(self.end - self.pos, 0)} remain (truncated or corrupted)",
            )
        data = self.f.read(n)
        if len(data) != n:
            raise _bad(
                self.source, f"file ends inside the pickle at offset {self.pos + len(data)} (truncated)"
            )
        self.pos += n
        return data

    def readline(self) -> str:
        out = bytearray()
        while True:
            c = self.read(1)
            if c == b"\n":
                break
            out += c
            if len(out) > _MAX_LINE:
                raise _bad(self.source, f"pickle GLOBAL name longer than {_MAX_LINE} bytes (corrupted)")
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(self.source, "pickle GLOBAL name is not valid UTF-8 (corrupted)") from None

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    # -- stack helpers ------------------------------------------------------------------------------
    def pop(self) -> Any:
        if not self.stack:
            raise _bad(self.source, f"corrupted pickle: stack underflow at offset {self.pos}")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            raise _bad(self.source, f"corrupted pickle: empty stack at offset {self.pos}")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise _bad(self.source, f"corrupted pickle: no MARK before offset {self.pos}")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    # -- globals ------------------------------------------------------------------------------------
    def find_class(self, module: str, name: str) -> TorchGlobal:
        full = f"{module}.{name}"
        # Protocol-2 pickles spell builtins the Python 2 way (pickle's fix_imports).
        found = _GLOBALS.get(f"builtins.{name}" if module == "__builtin__" else full)
        if found is None:
            raise UnsafePickleError(
                f"{self.source}: the pickle asks for the global {full}, which is not a tensor, storage, "
                "dtype or plain container; refused before anything ran (only weights-only checkpoints "
                "are read: save model.state_dict(), not the model or arbitrary objects)"
            )
        return found

    def refuse(self, what: str) -> UnsafePickleError:
        return UnsafePickleError(f"{self.source}: the pickle {what}; refused before anything ran")

    def persistent_load(self, pid: Any) -> StorageRef:
        src = self.source
        if type(pid) is not tuple or not pid:
            raise self.refuse(
                f"has a persistent id of type {type(pid).__name__}, not a ('storage', ...) tuple"
            )
        tag = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
        if tag != "storage":
            detail = f" of class {pid[1]!r:.80}" if tag == "module" and len(pid) > 1 else ""
            raise self.refuse(f"has a persistent id tagged {tag!r:.40}{detail}; only storages are read")
        if len(pid) not in (5, 6):
            raise _bad(src, f"storage persistent id has {len(pid)} fields, expected 5 or 6")
        stype, key, location, numel = pid[1], pid[2], pid[3], pid[4]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(stype, TorchGlobal) or stype.kind != "storage":
            raise _bad(src, f"storage persistent id names {stype!r}, not a storage type")
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
        if self.storage_hook is not None:
            self.storage_hook(ref)
        return ref

    # -- the loop -----------------------------------------------------------------------------------
    def load(self) -> Any:
        dispatch = _DISPATCH
        try:
            while True:
                op = self.read(1)[0]
                handler = dispatch.get(op)
                if handler is None:
                    raise _refused_opcode(self, op)
                handler(self)
        except _Stop as stop:
            return stop.value
        except (TypeError, ValueError, KeyError, IndexError, OverflowError, struct.error) as e:
            if isinstance(e, WeightFileError):
                raise
            raise _bad(
                self.source, f"corrupted pickle near offset {self.pos}: {type(e).__name__}: {e}"
            ) from None
        except RecursionError:
            raise _bad(self.source, "pickle nests too deeply (corrupted or hostile)") from None
        finally:  # drop partial results now, not at the next garbage collection
            self.stack, self.metastack, self.memo = [], [], {}


def _refused_opcode(u: _Unpickler, op: int) -> WeightFileError:
    info = pickletools.code2op.get(chr(op))
    if info is None:
        return _bad(u.source, f"byte 0x{op:02x} at offset {u.pos - 1} is not a pickle opcode (corrupted)")
    if info.name == "INST":
        module, name = u.readline(), u.readline()
        return u.refuse(f"uses INST to build an instance of {module}.{name}")
    reasons = {
        "OBJ": "uses OBJ to build an instance of a class",
        "EXT1": "uses the copyreg extension registry (EXT1)",
        "EXT2": "uses the copyreg extension registry (EXT2)",
        "EXT4": "uses the copyreg extension registry (EXT4)",
        "NEWOBJ_EX": "uses NEWOBJ_EX (keyword arguments to a constructor)",
        "PERSID": "uses a text persistent id (PERSID)",
        "NEXT_BUFFER": "uses an out-of-band buffer (NEXT_BUFFER)",
        "READONLY_BUFFER": "uses an out-of-band buffer (READONLY_BUFFER)",
    }
    what = reasons.get(info.name, f"uses the opcode {info.name}, which this reader does not accept")
    return u.refuse(what)


# ------------------------------------------------------------------------------------------------------
# Opcode handlers. Each takes the unpickler; STOP raises _Stop.
# ------------------------------------------------------------------------------------------------------
def _op_proto(u: _Unpickler) -> None:
    proto = u.read(1)[0]
    if proto > 5:
        raise _bad(u.source, f"pickle protocol {proto} is not supported (0-5)")


def _op_frame(u: _Unpickler) -> None:
    size = u.unpack("<Q")
    if u.pos + size > u.end:
        raise _bad(u.source, f"pickle frame of {size} bytes runs past the end of the data (truncated)")


def _op_stop(u: _Unpickler) -> None:
    raise _Stop(u.pop())


def _op_mark(u: _Unpickler) -> None:
    u.metastack.append(u.stack)
    u.stack = []


def _op_pop(u: _Unpickler) -> None:
    if u.stack:
        u.stack.pop()
    else:
        u.pop_mark()


def _push(value: Any) -> Callable[[_Unpickler], None]:
    return lambda u: u.stack.append(value)


def _push_new(factory: Callable[[], Any]) -> Callable[[_Unpickler], None]:
    return lambda u: u.stack.append(factory())


def _op_long(u: _Unpickler, n: int) -> None:
    u.stack.append(int.from_bytes(u.read(n), "little", signed=True))


def _op_long4(u: _Unpickler) -> None:
    n = u.unpack("<i")
    if n < 0:
        raise _bad(u.source, "negative LONG4 length (corrupted)")
    _op_long(u, n)


def _text(u: _Unpickler, n: int) -> None:
    try:
        u.stack.append(u.read(n).decode("utf-8", "surrogatepass"))
    except UnicodeDecodeError:
        raise _bad(u.source, f"pickle string near offset {u.pos} is not valid UTF-8 (corrupted)") from None


def _py2_string(u: _Unpickler, n: int) -> None:
    try:
        u.stack.append(u.read(n).decode("ascii"))
    except UnicodeDecodeError:
        raise _bad(u.source, f"Python 2 string near offset {u.pos} is not ASCII") from None


def _op_binstring(u: _Unpickler) -> None:
    n = u.unpack("<i")
    if n < 0:
        raise _bad(u.source, "negative BINSTRING length (corrupted)")
    _py2_string(u, n)


def _op_tuple_n(n: int) -> Callable[[_Unpickler], None]:
    def handler(u: _Unpickler) -> None:
        if len(u.stack) < n:
            raise _bad(u.source, f"corrupted pickle: stack underflow at offset {u.pos}")
        items = tuple(u.stack[len(u.stack) - n :])
        del u.stack[len(u.stack) - n :]
        u.stack.append(items)

    return handler


def _op_tuple(u: _Unpickler) -> None:
    items = tuple(u.pop_mark())  # pop first: it replaces u.stack
    u.stack.append(items)


def _op_list(u: _Unpickler) -> None:
    items = u.pop_mark()
    u.stack.append(items)


def _op_dict(u: _Unpickler) -> None:
    items = u.pop_mark()
    if len(items) % 2:
        raise _bad(u.source, "corrupted pickle: DICT with an odd number of items")
    u.stack.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})


def _target(u: _Unpickler, types: tuple[type, ...], opname: str) -> Any:
    target = u.top()
    if type(target) not in types:
        raise u.refuse(f"applies {opname} to a {type(target).__name__}")
    return target


def _op_append(u: _Unpickler) -> None:
    item = u.pop()
    _target(u, (list,), "APPEND").append(item)


def _op_appends(u: _Unpickler) -> None:
    items = u.pop_mark()
    _target(u, (list,), "APPENDS").extend(items)


def _op_setitem(u: _Unpickler) -> None:
    value = u.pop()
    key = u.pop()
    _target(u, (dict, collections.OrderedDict), "SETITEM")[key] = value


def _op_setitems(u: _Unpickler) -> None:
    items = u.pop_mark()
    if len(items) % 2:
        raise _bad(u.source, "corrupted pickle: SETITEMS with an odd number of items")
    target = _target(u, (dict, collections.OrderedDict), "SETITEMS")
    for i in range(0, len(items), 2):
        target[items[i]] = items[i + 1]


def _op_additems(u: _Unpickler) -> None:
    items = u.pop_mark()
    _target(u, (set,), "ADDITEMS").update(items)


def _op_frozenset(u: _Unpickler) -> None:
    items = frozenset(u.pop_mark())
    u.stack.append(items)


def _op_get(u: _Unpickler, index: int) -> None:
    if index not in u.memo:
        raise _bad(u.source, f"corrupted pickle: memo entry {index} read before it was written")
    u.stack.append(u.memo[index])


def _op_put(u: _Unpickler, index: int) -> None:
    u.memo[index] = u.top()


def _op_global(u: _Unpickler) -> None:
    module = u.readline()
    name = u.readline()
    u.stack.append(u.find_class(module, name))


def _op_stack_global(u: _Unpickler) -> None:
    name = u.pop()
    module = u.pop()
    if type(name) is not str or type(module) is not str:
        raise _bad(u.source, "corrupted pickle: STACK_GLOBAL needs two strings")
    u.stack.append(u.find_class(module, name))


def _op_reduce(u: _Unpickler) -> None:
    args = u.pop()
    func = u.top()
    if not isinstance(func, TorchGlobal) or func.call is None:
        shown = func.name if isinstance(func, TorchGlobal) else type(func).__name__
        raise u.refuse(f"calls {shown} (REDUCE), which is not an allowed function")
    if type(args) is not tuple:
        raise _bad(u.source, f"corrupted pickle: arguments of {func.name} are a {type(args).__name__}")
    u.stack[-1] = func.call(u, *args)


def _op_newobj(u: _Unpickler) -> None:
    args = u.pop()
    cls = u.pop()
    if not isinstance(cls, TorchGlobal) or cls.call is None:
        shown = cls.name if isinstance(cls, TorchGlobal) else type(cls).__name__
        raise u.refuse(f"creates an object of {shown} (NEWOBJ), which is not an allowed class")
    if type(args) is not tuple:
        raise _bad(u.source, f"corrupted pickle: arguments of {cls.name} are a {type(args).__name__}")
    u.stack.append(cls.call(u, *args))


def _op_build(u: _Unpickler) -> None:
    state = u.pop()
    inst = u.top()
    if type(inst) is not collections.OrderedDict:
        raise u.refuse(
            f"sets the state of a {type(inst).__name__} object (BUILD); only OrderedDict is allowed"
        )
    # torch's state_dict() carries module versions in OrderedDict._metadata; the values are what matter,
    # so the attribute state is checked for shape and dropped (never setattr'd).
    if isinstance(state, tuple) and len(state) == 2:
        state, slots = state
        if slots is not None and type(slots) is not dict:
            raise _bad(u.source, "corrupted pickle: OrderedDict slot state is not a dict")
    if state is not None and type(state) is not dict:
        raise _bad(u.source, "corrupted pickle: OrderedDict state is not a dict")


def _op_binpersid(u: _Unpickler) -> None:
    u.stack.append(u.persistent_load(u.pop()))


def _op_memoize(u: _Unpickler) -> None:
    u.memo[len(u.memo)] = u.top()


def _make_dispatch() -> dict[int, Callable[[_Unpickler], None]]:
    ops: dict[str, Callable[[_Unpickler], None]] = {
        "PROTO": _op_proto,
        "FRAME": _op_frame,
        "STOP": _op_stop,
        "MARK": _op_mark,
        "POP": _op_pop,
        "POP_MARK": lambda u: u.pop_mark() and None,
        "DUP": lambda u: u.stack.append(u.top()),
        "NONE": _push(None),
        "NEWTRUE": _push(True),
        "NEWFALSE": _push(False),
        "BININT": lambda u: u.stack.append(u.unpack("<i")),
        "BININT1": lambda u: u.stack.append(u.read(1)[0]),
        "BININT2": lambda u: u.stack.append(u.unpack("<H")),
        "LONG1": lambda u: _op_long(u, u.read(1)[0]),
        "LONG4": _op_long4,
        "BINFLOAT": lambda u: u.stack.append(u.unpack(">d")),
        "BINUNICODE": lambda u: _text(u, u.unpack("<I")),
        "SHORT_BINUNICODE": lambda u: _text(u, u.read(1)[0]),
        "BINUNICODE8": lambda u: _text(u, u.unpack("<Q")),
        "SHORT_BINSTRING": lambda u: _py2_string(u, u.read(1)[0]),
        "BINSTRING": _op_binstring,
        "BINBYTES": lambda u: u.stack.append(u.read(u.unpack("<I"))),
        "SHORT_BINBYTES": lambda u: u.stack.append(u.read(u.read(1)[0])),
        "BINBYTES8": lambda u: u.stack.append(u.read(u.unpack("<Q"))),
        "BYTEARRAY8": lambda u: u.stack.append(bytearray(u.read(u.unpack("<Q")))),
        "EMPTY_TUPLE": _push(()),
        "TUPLE": _op_tuple,
        "TUPLE1": _op_tuple_n(1),
        "TUPLE2": _op_tuple_n(2),
        "TUPLE3": _op_tuple_n(3),
        "EMPTY_LIST": _push_new(list),
        "LIST": _op_list,
        "APPEND": _op_append,
        "APPENDS": _op_appends,
        "EMPTY_DICT": _push_new(dict),
        "DICT": _op_dict,
        "SETITEM": _op_setitem,
        "SETITEMS": _op_setitems,
        "EMPTY_SET": _push_new(set),
        "ADDITEMS": _op_additems,
        "FROZENSET": _op_frozenset,
        "BINGET": lambda u: _op_get(u, u.read(1)[0]),
        "LONG_BINGET": lambda u: _op_get(u, u.unpack("<I")),
        "BINPUT": lambda u: _op_put(u, u.read(1)[0]),
        "LONG_BINPUT": lambda u: _op_put(u, u.unpack("<I")),
        "MEMOIZE": _op_memoize,
        "GLOBAL": _op_global,
        "STACK_GLOBAL": _op_stack_global,
        "REDUCE": _op_reduce,
        "NEWOBJ": _op_newobj,
        "BUILD": _op_build,
        "BINPERSID": _op_binpersid,
    }
    codes = {op.name: op.code for op in pickletools.opcodes}
    return {ord(codes[name]): fn for name, fn in ops.items()}


# ------------------------------------------------------------------------------------------------------
# Stand-ins for the allowlisted globals. They validate their arguments and build plain values.
# ------------------------------------------------------------------------------------------------------
def _tensor(
    u: _Unpickler,
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
            raise _bad(src, f"{func}: unknown tensor metadata {metadata!r:.80}")
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
        if u.max_tensor_nbytes is not None and count * itemsize > u.max_tensor_nbytes:
            raise _bad(
                src,
                f"{func}: a tensor of size {shape} ({count * itemsize} bytes dense) over storage "
                f"{storage.key!r} "
                f"is larger than the file ({u.max_tensor_nbytes} bytes); refusing a view that would "
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


def _check_hooks(u: _Unpickler, func: str, hooks: Any) -> None:
    if hooks is not None and not isinstance(hooks, (dict, collections.OrderedDict)):
        raise _bad(u.source, f"{func}: backward hooks must be an OrderedDict")
    if hooks:
        raise u.refuse(f"attaches backward hooks to a tensor in {func}")


def _allowed_globals() -> dict[str, TorchGlobal]:
    """The allowlist: each name and its stand-in, called as ``stand_in(unpickler, *args)``."""

    def rebuild_v1(u: _Unpickler, storage: Any, offset: Any, size: Any, stride: Any) -> TensorRef:
        return _tensor(u, "_rebuild_tensor", storage, offset, size, stride)

    def rebuild_v2(
        u: _Unpickler,
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
        u: _Unpickler,
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
        if not isinstance(dtype, TorchGlobal) or dtype.kind != "dtype":
            raise _bad(
                u.source, f"_rebuild_tensor_v3: dtype argument is {type(dtype).__name__}, not a torch dtype"
            )
        if dtype.dtype is None:
            raise _bad(u.source, f"a tensor of {dtype.name} cannot be read: NumPy has no such dtype")
        return _tensor(
            u, "_rebuild_tensor_v3", storage, offset, size, stride, requires_grad, dtype.dtype, metadata
        )

    def rebuild_parameter(
        u: _Unpickler, data: Any, requires_grad: Any, hooks: Any, state: Any = None
    ) -> TensorRef:
        if not isinstance(data, TensorRef):
            raise _bad(u.source, f"_rebuild_parameter: data is a {type(data).__name__}, not a tensor")
        _check_hooks(u, "_rebuild_parameter", hooks)
        return replace(data, requires_grad=bool(requires_grad), parameter=True)

    def ordered_dict(u: _Unpickler, *args: Any) -> collections.OrderedDict:
        if len(args) > 1 or (args and type(args[0]) not in (list, tuple, dict, collections.OrderedDict)):
            raise _bad(u.source, "collections.OrderedDict: expected no argument or one list of pairs")
        return collections.OrderedDict(*args)

    def torch_size(u: _Unpickler, *args: Any) -> tuple[int, ...]:
        if len(args) > 1:
            raise _bad(u.source, "torch.Size: expected one tuple")
        return _int_tuple(u.source, "torch.Size", args[0] if args else ())

    def codecs_encode(u: _Unpickler, text: Any, encoding: Any = "utf-8") -> bytes:
        if type(text) is not str or encoding not in ("latin1", "latin-1"):
            raise _bad(u.source, "_codecs.encode: only (str, 'latin1') is accepted, as pickle writes bytes")
        try:
            return text.encode("latin1")
        except UnicodeEncodeError:
            raise _bad(u.source, "_codecs.encode: text is not latin-1 (corrupted)") from None

    def make_set(u: _Unpickler, items: Any = ()) -> set:
        if type(items) not in (list, tuple, set, frozenset):
            raise _bad(u.source, "builtins.set: expected a list")
        return set(items)

    def make_frozenset(u: _Unpickler, items: Any = ()) -> frozenset:
        return frozenset(make_set(u, items))

    def make_complex(u: _Unpickler, real: Any = 0.0, imag: Any = 0.0) -> complex:
        if type(real) not in (int, float) or type(imag) not in (int, float):
            raise _bad(u.source, "builtins.complex: expected two numbers")
        return complex(real, imag)

    def make_bytearray(u: _Unpickler, data: Any = b"", encoding: Any = None) -> bytearray:
        # bytearray(n) allocates n bytes: only the (bytes,) and (str, 'latin-1') forms pickle writes.
        if type(data) is bytes and encoding is None:
            return bytearray(data)
        if type(data) is str and encoding in ("latin1", "latin-1"):
            return bytearray(codecs_encode(u, data, encoding))
        raise _bad(u.source, "builtins.bytearray: only bytes or (str, 'latin-1') are accepted")

    def make_bytes(u: _Unpickler, *args: Any) -> bytes:
        if args:  # bytes(n) allocates n bytes; pickle writes only bytes() this way
            raise _bad(u.source, "builtins.bytes: only the empty form is accepted")
        return b""

    calls: dict[str, Callable[..., Any]] = {
        "collections.OrderedDict": ordered_dict,
        "torch._utils._rebuild_tensor": rebuild_v1,
        "torch._utils._rebuild_tensor_v2": rebuild_v2,
        "torch._utils._rebuild_tensor_v3": rebuild_v3,
        "torch._utils._rebuild_parameter": rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": rebuild_parameter,
        "torch.Size": torch_size,
        "_codecs.encode": codecs_encode,
        "builtins.set": make_set,
        "builtins.frozenset": make_frozenset,
        "builtins.complex": make_complex,
        "builtins.bytearray": make_bytearray,
        "builtins.bytes": make_bytes,
    }
    table = {name: TorchGlobal(name, "call", None, fn) for name, fn in calls.items()}
    for name, dt in STORAGE_DTYPES.items():
        table[f"torch.{name}"] = TorchGlobal(f"torch.{name}", "storage", dt)
    table["torch.storage.UntypedStorage"] = TorchGlobal(
        "torch.storage.UntypedStorage", "storage", np.dtype("u1")
    )
    for name, dt in TORCH_DTYPES.items():
        table[f"torch.{name}"] = TorchGlobal(f"torch.{name}", "dtype", dt)
    return table


_DISPATCH = _make_dispatch()

_GLOBALS = _allowed_globals()
#: Every global name the unpickler accepts, as ``"module.name"``.
ALLOWED_GLOBALS: tuple[str, ...] = tuple(sorted(_GLOBALS))


def restricted_load(
    f: BinaryIO,
    *,
    end: int,
    source: str,
    storage_hook: Callable[[StorageRef], None] | None = None,
    max_tensor_nbytes: int | None = None,
) -> Any:
    """Unpickle one pickle from ``f`` with the allowlist, leaving ``f`` just after its STOP opcode.

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
    >>> restricted_load(io.BytesIO(data), end=len(data), source="ckpt.pt")
    {'epoch': 3, 'lr': [0.1, 0.01]}
    """
    return _Unpickler(f, end, source, storage_hook, max_tensor_nbytes).load()


def restricted_loads(data: bytes, *, source: str = "<pickle>", **kwargs: Any) -> Any:
    """:func:`restricted_load` over bytes in memory.

    Examples
    --------
    >>> import pickle, os
    >>> restricted_loads(pickle.dumps(os.system, protocol=2), source="evil.pt")
    Traceback (most recent call last):
    ...
    coreprune.errors.UnsafePickleError: evil.pt: the pickle asks for the global posix.system, ...
    """
    return restricted_load(io.BytesIO(data), end=len(data), source=source, **kwargs)
