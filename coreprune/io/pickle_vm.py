"""A restricted pickle interpreter: plain containers and an explicit allowlist of globals, nothing else.

A pickle is a small program: its ``GLOBAL`` opcode imports any callable and ``REDUCE`` calls it, so
``pickle.load`` on an untrusted file can run ``os.system``. This module is its own pickle interpreter
(one loop, one handler per opcode) and never imports or calls anything the file names. Every global
is looked up in the allowlist the caller passes, each entry mapped to a local stand-in
(:class:`PickleGlobal`); any other name raises :class:`~coreprune.errors.UnsafePickleError` naming
it, at the moment the opcode is read, before any later opcode is interpreted. Nothing is ever
executed, so "refused" also means "nothing ran".

:func:`restricted_load` is the entry point. The allowlist is explicit: names from the two catalogs
here (:data:`BUILTIN_GLOBALS`: ``OrderedDict``, ``set``, ``frozenset``, ``complex``, ``bytes``,
``bytearray``, ``_codecs.encode``; :data:`NUMPY_GLOBALS`: the globals NumPy writes for numeric
arrays, dtypes and scalars), or :class:`PickleGlobal` stand-ins of the caller's own
(:mod:`coreprune.io.torch_pickle` builds PyTorch's this way).

What it builds
--------------
* ``dict``, ``list``, ``tuple``, ``set``, ``frozenset``, ``str``, ``bytes``, ``bytearray``,
  ``int``, ``float``, ``bool``, ``None`` from their opcodes, without any global;
* whatever the allowlisted stand-ins return, e.g. ``numpy.ndarray`` of numeric dtypes (never
  object or structured dtypes: those are pickles of arbitrary objects).

Opcodes
-------
The binary data opcodes of protocols 2 to 5 are accepted (``FRAME``, ``STACK_GLOBAL``,
``MEMOIZE`` and the short string and byte opcodes of protocols 3-5 are harmless). ``REDUCE`` and
``NEWOBJ`` apply only to allowlisted callables; ``BUILD`` only to an ``OrderedDict`` (whose
attribute state is checked and dropped) or to a value a stand-in marked buildable (a NumPy array
or dtype); ``APPEND`` only to lists, ``SETITEM`` only to dicts; ``BINPERSID`` only when the caller
resolves persistent ids. Refused outright: ``INST`` and ``OBJ`` (build an instance of any class),
``EXT1/2/4`` (the copyreg extension registry), ``NEWOBJ_EX``, ``PERSID`` (text), out-of-band
buffers, and the text number/string/memo opcodes of protocol 0.

The interpreter is a loop, not a recursion, so a deeply nested pickle cannot overflow the stack;
every length is checked against the bytes left before anything is read.

Budgets
-------
A pickle of a few hundred bytes can describe objects whose hashing, comparison or printing takes
forever (a tuple that holds the same memoised tuple twice, sixty times over), whose nesting
crashes the interpreter when hashed, or that copy a memoised value thousands of times. Every
opcode reads at least one byte, so opcodes and objects are bounded by the pickle's length; the
rest has explicit budgets, each refused with a :class:`~coreprune.errors.WeightFileError` that
names it:

* :data:`MAX_DEPTH` -- nesting of tuples and frozensets (built bottom-up, so their depth is exact;
  hashing one recurses in C without a recursion check);
* :data:`MAX_KEY_COST` -- the expanded size (shared members counted every time they are reached)
  of anything used as a dict key or set member, which is what hashing and comparing it costs;
* :data:`MAX_SAME_HASH` -- distinct keys of one dict or set with one hash value (crafted
  collisions make every insertion a scan);
* :data:`MAX_INT_BYTES` -- the size of one integer (Python refuses to print ints of more than
  4,300 digits);
* :data:`BUILT_PER_BYTE` -- bytes that stand-ins copy (``bytearray``, ``set``, ``OrderedDict``,
  NumPy arrays) per byte of pickle read, plus 1 MiB.

Examples
--------
A gzipped pickle of NumPy arrays, read with the three NumPy globals it needs:

>>> import gzip, io, pickle, numpy as np
>>> blob = gzip.compress(pickle.dumps((np.ones((2, 3), np.float32), np.arange(2)), protocol=4))
>>> allowed = ["numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"]
>>> with gzip.open(io.BytesIO(blob)) as f:
...     x, y = restricted_load(f, allowed, source="digits.pkl.gz")
>>> x.dtype, x.shape, y.tolist()
(dtype('float32'), (2, 3), [0, 1])
"""

from __future__ import annotations

import collections
import io
import pickletools
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, TypeVar

import numpy as np

from ..errors import CompressionError, UnsafePickleError, WeightFileError

__all__ = [
    "MAX_DEPTH",
    "MAX_KEY_COST",
    "MAX_SAME_HASH",
    "MAX_INT_BYTES",
    "BUILT_PER_BYTE",
    "short_repr",
    "PickledObject",
    "opaque_global",
    "PickleGlobal",
    "PickleVM",
    "BUILTIN_GLOBALS",
    "NUMPY_GLOBALS",
    "restricted_load",
    "restricted_loads",
]

#: Numpy has no 128-dimensional arrays; numpy 1.x stops at 32 dimensions.
_MAX_NDIM = 32

_Immutable = TypeVar("_Immutable", tuple, frozenset)
#: A GLOBAL line is a dotted Python name; anything longer is not one.
_MAX_LINE = 1024
_DEFAULT_REFUSAL = "which is not in the allowlist; refused before anything ran"
#: Deepest nesting of tuples / frozensets (real checkpoints nest a handful of levels).
MAX_DEPTH = 200
#: Largest expanded size (elements reached, shared ones counted each time) of a dict key or set member.
MAX_KEY_COST = 10_000
#: Most distinct keys with one hash value in one dict or set.
MAX_SAME_HASH = 32
#: Largest integer, in bytes (1,024 bytes is 2,467 decimal digits, below Python's 4,300-digit print limit).
MAX_INT_BYTES = 1024
#: Bytes that stand-ins may copy per byte of pickle read (plus 1 MiB).
BUILT_PER_BYTE = 16
_BUILT_SLACK = 1 << 20
_HASHABLE_SCALARS = (str, int, float, bool, bytes, type(None), complex)


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, in time bounded whatever ``value`` holds.

    ``f"{value!r:.80}"`` builds the whole repr first, which for a hostile value (sixty levels of a
    tuple holding the same tuple twice) never ends; this stops after a few levels and items.

    Examples
    --------
    >>> t = ()
    >>> for _ in range(100):
    ...     t = (t, t)
    >>> short_repr(t, 30)
    '(((((((...), (...)), ((...)...'
    """
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxtuple, r.maxlist, r.maxdict, r.maxset, r.maxfrozenset = 6, 6, 6, 6, 6, 6
    r.maxstring, r.maxother, r.maxlong = limit, limit, limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class PickleGlobal:
    """An allowlisted global as the pickle names it, and its local stand-in.

    Attributes
    ----------
    name : str
        ``"module.qualname"``, as the pickle spells it (Python 2's ``__builtin__`` reads as ``builtins``).
    kind : str
        ``"call"`` for a stand-in that ``REDUCE``/``NEWOBJ`` may apply; any other word marks a plain
        value that only other stand-ins consume (PyTorch's ``"storage"`` and ``"dtype"``).
    dtype : numpy.dtype or None
        The element dtype a storage-type or dtype global stands for.
    call : callable or None
        ``call(vm, *args)``: validates the arguments and builds a plain value; raises
        :class:`~coreprune.errors.WeightFileError` (through ``vm.fail``) on bad ones.
    """

    name: str
    kind: str
    dtype: np.dtype | None = None
    call: Callable[..., Any] | None = None

    def __repr__(self) -> str:
        return self.name


class Buildable:
    """A stand-in's result that a following ``BUILD`` opcode completes (NumPy arrays and dtypes).

    ``BUILD`` calls :meth:`build` with the pickled state; the value it returns replaces the
    placeholder on the stack and in the memo (pickle writes ``BUILD`` right after the object, before
    any container holds it).
    """

    def build(self, vm: PickleVM, state: Any) -> Any:  # pragma: no cover - every subclass overrides
        raise vm.refuse(f"sets the state of a {type(self).__name__}")


class PickledObject(Buildable):
    """An object of a global the caller allowed without a stand-in: a record, never an instance.

    ``allow_globals=["argparse.Namespace"]`` (:func:`opaque_global`) lets a pickle name a harmless
    class that is not in the allowlist. Nothing is imported or called: calling the global gives this
    record of its name, its arguments and (after ``BUILD``) its state, as plain pickled values.

    Attributes
    ----------
    name : str
        ``"module.Name"``.
    args : tuple
        The arguments the pickle called it with (``REDUCE`` / ``NEWOBJ``).
    state : object
        What ``BUILD`` set (usually a dict of attributes), or None.

    Examples
    --------
    >>> import argparse, io, pickle
    >>> data = pickle.dumps({"args": argparse.Namespace(lr=0.1)}, protocol=2)
    >>> restricted_load(io.BytesIO(data), [opaque_global("argparse.Namespace")])
    {'args': PickledObject('argparse.Namespace', args=(), state={'lr': 0.1})}
    """

    def __init__(self, name: str, args: tuple = (), state: Any = None) -> None:
        self.name, self.args, self.state = name, args, state

    def build(self, vm: PickleVM, state: Any) -> PickledObject:
        return PickledObject(self.name, self.args, state)

    def __repr__(self) -> str:
        return f"PickledObject({self.name!r}, args={short_repr(self.args)}, state={short_repr(self.state)})"


def opaque_global(name: str) -> PickleGlobal:
    """A stand-in for ``name`` that builds :class:`PickledObject` records (an explicit opt-in).

    Examples
    --------
    >>> opaque_global("argparse.Namespace")
    argparse.Namespace
    """
    if not isinstance(name, str) or name.count(".") < 1 or any(not p.isidentifier() for p in name.split(".")):
        raise CompressionError(f"allow a global as 'module.Name', got {name!r:.80}")

    def make(vm: PickleVM, *args: Any) -> PickledObject:
        return PickledObject(name, args)

    return PickleGlobal(name, "call", None, make)


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


class PickleVM:
    """The interpreter. One instance reads one pickle from ``f`` (at most up to byte ``end``).

    Stand-ins receive it as their first argument: ``vm.source`` names the input in messages,
    ``vm.fail(message)`` and ``vm.refuse(what)`` build the errors to raise, ``vm.context`` is the
    caller's own state (PyTorch's storage bookkeeping). Use it through :func:`restricted_load`.
    """

    def __init__(
        self,
        f: BinaryIO,
        end: int,
        source: str,
        allowed: Mapping[str, PickleGlobal],
        *,
        encoding: str = "ASCII",
        refusal: str = _DEFAULT_REFUSAL,
        persistent_load: Callable[[PickleVM, Any], Any] | None = None,
        context: Any = None,
    ) -> None:
        self.f = f
        self.pos = f.tell()
        self.end = end
        self.source = source
        self.allowed = allowed
        self.encoding = encoding
        self.refusal = refusal
        self.resolve_pid = persistent_load
        self.context = context
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        # id of a Buildable placeholder -> memo keys holding it, replaced when BUILD completes it
        self.placeholders: dict[int, list[int]] = {}
        self.start = self.pos
        # id of each tuple / frozenset built -> (nesting depth, expanded size); the objects are kept
        # alive in ``_shaped`` so that an id is never reused for another object during the load.
        self._shape: dict[int, tuple[int, int]] = {}
        self._shaped: list[Any] = []
        self._same_hash: dict[tuple[int, int], int] = {}
        self.built = 0

    # -- budgets ------------------------------------------------------------------------------------
    def shape_of(self, value: Any) -> tuple[int, int]:
        """(nesting depth, expanded size) of a value: scalars and unknown objects are (0, 1)."""
        return self._shape.get(id(value), (0, 1))

    def immutable(self, value: _Immutable) -> _Immutable:
        """Record a new tuple / frozenset's depth and expanded size; refuse one nested too deeply."""
        depth, cost = 0, 1
        shape = self._shape
        for item in value:
            d, c = shape.get(id(item), (0, 1))
            if d > depth:
                depth = d
            cost += c
        depth += 1
        if depth > MAX_DEPTH:
            raise self.fail(
                f"pickle nests tuples or sets deeper than {MAX_DEPTH} levels (corrupted or hostile)"
            )
        if depth > 1 or cost > 1:
            shape[id(value)] = (depth, min(cost, 1 << 62))
            self._shaped.append(value)
        return value

    def key(self, key: Any, what: str) -> Any:
        """``key`` if hashing and comparing it is cheap; refuse it otherwise."""
        if type(key) in _HASHABLE_SCALARS:
            return key
        cost = self.shape_of(key)[1]
        if cost > MAX_KEY_COST:
            raise self.fail(
                f"pickle uses a {type(key).__name__} of {cost} elements (shared ones counted each time) as "
                f"a {what}; more than {MAX_KEY_COST} is refused, as hashing it could take forever (hostile?)"
            )
        return key

    def insert(self, target: Any, key: Any, value: Any = None, *, is_set: bool = False) -> None:
        """``target[key] = value`` (or ``target.add(key)``) with the key and collision budgets."""
        key = self.key(key, "set member" if is_set else "dict key")
        try:
            h = hash(key)
        except TypeError:
            raise self.fail(f"pickle uses an unhashable {type(key).__name__} as a key (corrupted)") from None
        if key not in target:
            slot = (id(target), h)
            n = self._same_hash.get(slot, 0) + 1
            if n > MAX_SAME_HASH:
                raise self.fail(
                    f"pickle puts more than {MAX_SAME_HASH} keys with the same hash into one dict or set; "
                    "crafted collisions make loading quadratic (hostile?)"
                )
            self._same_hash[slot] = n
        if is_set:
            target.add(key)
        else:
            target[key] = value

    def charge(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` copied by a stand-in against the budget for the bytes read so far."""
        self.built += nbytes
        allowed = BUILT_PER_BYTE * (self.pos - self.start) + _BUILT_SLACK
        if self.built > allowed:
            raise self.fail(
                f"pickle builds {self.built} bytes ({what}) from {self.pos - self.start} bytes read; "
                f"more than {BUILT_PER_BYTE} per byte read + 1 MiB is refused (amplification: hostile?)"
            )

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
    def find_class(self, module: str, name: str) -> PickleGlobal:
        full = f"{module}.{name}"
        # Protocol-2 pickles spell builtins the Python 2 way (pickle's fix_imports).
        found = self.allowed.get(f"builtins.{name}" if module == "__builtin__" else full)
        if found is None:
            raise UnsafePickleError(
                f"{self.source}: the pickle asks for the global {full}, {self.refusal}"
            )
        return found

    def fail(self, message: str) -> WeightFileError:
        """The error for a corrupted pickle: ``WeightFileError("<source>: <message>")``."""
        return _bad(self.source, message)

    def refuse(self, what: str) -> UnsafePickleError:
        return UnsafePickleError(f"{self.source}: the pickle {what}; refused before anything ran")

    def persistent_load(self, pid: Any) -> Any:
        if self.resolve_pid is None:
            raise self.refuse("uses a persistent id (BINPERSID), which this reader does not resolve")
        return self.resolve_pid(self, pid)

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
            self.stack, self.metastack, self.memo, self.placeholders = [], [], {}, {}
            self._shape, self._shaped, self._same_hash = {}, [], {}


def _refused_opcode(u: PickleVM, op: int) -> WeightFileError:
    # pickletools.code2op exists (the module's opcode table) but typeshed does not list it
    info = pickletools.code2op.get(chr(op))  # type: ignore[attr-defined]
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
def _op_proto(u: PickleVM) -> None:
    proto = u.read(1)[0]
    if proto > 5:
        raise _bad(u.source, f"pickle protocol {proto} is not supported (0-5)")


def _op_frame(u: PickleVM) -> None:
    size = u.unpack("<Q")
    if u.pos + size > u.end:
        raise _bad(u.source, f"pickle frame of {size} bytes runs past the end of the data (truncated)")


def _op_stop(u: PickleVM) -> None:
    raise _Stop(u.pop())


def _op_mark(u: PickleVM) -> None:
    u.metastack.append(u.stack)
    u.stack = []


def _op_pop(u: PickleVM) -> None:
    if u.stack:
        u.stack.pop()
    else:
        u.pop_mark()


def _push(value: Any) -> Callable[[PickleVM], None]:
    return lambda u: u.stack.append(value)


def _push_new(factory: Callable[[], Any]) -> Callable[[PickleVM], None]:
    return lambda u: u.stack.append(factory())


def _op_long(u: PickleVM, n: int) -> None:
    raw = u.read(n)  # (a length past the data is reported as truncation first)
    if n > MAX_INT_BYTES:
        raise _bad(
            u.source, f"pickle holds an integer of {n} bytes; at most {MAX_INT_BYTES} are read (hostile?)"
        )
    u.stack.append(int.from_bytes(raw, "little", signed=True))


def _op_long4(u: PickleVM) -> None:
    n = u.unpack("<i")
    if n < 0:
        raise _bad(u.source, "negative LONG4 length (corrupted)")
    _op_long(u, n)


def _text(u: PickleVM, n: int) -> None:
    try:
        u.stack.append(u.read(n).decode("utf-8", "surrogatepass"))
    except UnicodeDecodeError:
        raise _bad(u.source, f"pickle string near offset {u.pos} is not valid UTF-8 (corrupted)") from None


def _py2_string(u: PickleVM, n: int) -> None:
    # A Python 2 ``str`` is bytes; like pickle.load, ``encoding`` says how to read it ("bytes": as is).
    data = u.read(n)
    if u.encoding == "bytes":
        u.stack.append(data)
        return
    try:
        u.stack.append(data.decode(u.encoding))
    except UnicodeDecodeError:
        raise _bad(u.source, f"Python 2 string near offset {u.pos} is not {u.encoding}") from None


def _op_binstring(u: PickleVM) -> None:
    n = u.unpack("<i")
    if n < 0:
        raise _bad(u.source, "negative BINSTRING length (corrupted)")
    _py2_string(u, n)


def _op_tuple_n(n: int) -> Callable[[PickleVM], None]:
    def handler(u: PickleVM) -> None:
        if len(u.stack) < n:
            raise _bad(u.source, f"corrupted pickle: stack underflow at offset {u.pos}")
        items = tuple(u.stack[len(u.stack) - n :])
        del u.stack[len(u.stack) - n :]
        u.stack.append(u.immutable(items))

    return handler


def _op_tuple(u: PickleVM) -> None:
    items = tuple(u.pop_mark())  # pop first: it replaces u.stack
    u.stack.append(u.immutable(items))


def _op_list(u: PickleVM) -> None:
    items = u.pop_mark()
    u.stack.append(items)


def _op_dict(u: PickleVM) -> None:
    items = u.pop_mark()
    if len(items) % 2:
        raise _bad(u.source, "corrupted pickle: DICT with an odd number of items")
    out: dict = {}
    for i in range(0, len(items), 2):
        u.insert(out, items[i], items[i + 1])
    u.stack.append(out)


def _target(u: PickleVM, types: tuple[type, ...], opname: str) -> Any:
    target = u.top()
    if type(target) not in types:
        raise u.refuse(f"applies {opname} to a {type(target).__name__}")
    return target


def _op_append(u: PickleVM) -> None:
    item = u.pop()
    _target(u, (list,), "APPEND").append(item)


def _op_appends(u: PickleVM) -> None:
    items = u.pop_mark()
    _target(u, (list,), "APPENDS").extend(items)


def _op_setitem(u: PickleVM) -> None:
    value = u.pop()
    key = u.pop()
    u.insert(_target(u, (dict, collections.OrderedDict), "SETITEM"), key, value)


def _op_setitems(u: PickleVM) -> None:
    items = u.pop_mark()
    if len(items) % 2:
        raise _bad(u.source, "corrupted pickle: SETITEMS with an odd number of items")
    target = _target(u, (dict, collections.OrderedDict), "SETITEMS")
    for i in range(0, len(items), 2):
        u.insert(target, items[i], items[i + 1])


def _op_additems(u: PickleVM) -> None:
    items = u.pop_mark()
    target = _target(u, (set,), "ADDITEMS")
    for item in items:
        u.insert(target, item, is_set=True)


def _op_frozenset(u: PickleVM) -> None:
    items = u.pop_mark()  # pop first: it replaces u.stack
    u.stack.append(_frozen(u, items))


def _frozen(u: PickleVM, items: Any) -> frozenset:
    members: set = set()
    for item in items:
        u.insert(members, item, is_set=True)
    return u.immutable(frozenset(members))


def _op_get(u: PickleVM, index: int) -> None:
    if index not in u.memo:
        raise _bad(u.source, f"corrupted pickle: memo entry {index} read before it was written")
    u.stack.append(u.memo[index])


def _op_put(u: PickleVM, index: int) -> None:
    value = u.top()
    u.memo[index] = value
    if isinstance(value, Buildable):
        u.placeholders.setdefault(id(value), []).append(index)


def _op_global(u: PickleVM) -> None:
    module = u.readline()
    name = u.readline()
    u.stack.append(u.find_class(module, name))


def _op_stack_global(u: PickleVM) -> None:
    name = u.pop()
    module = u.pop()
    if type(name) is not str or type(module) is not str:
        raise _bad(u.source, "corrupted pickle: STACK_GLOBAL needs two strings")
    u.stack.append(u.find_class(module, name))


def _apply(u: PickleVM, func: Any, args: Any, refusal: str) -> Any:
    """``func.call(u, *args)`` for an allowlisted callable, else ``refusal`` with the name for ``{}``."""
    if not isinstance(func, PickleGlobal) or func.call is None:
        raise u.refuse(refusal.format(func.name if isinstance(func, PickleGlobal) else type(func).__name__))
    if type(args) is not tuple:
        raise _bad(u.source, f"corrupted pickle: arguments of {func.name} are a {type(args).__name__}")
    return func.call(u, *args)


def _op_reduce(u: PickleVM) -> None:
    args = u.pop()
    u.stack[-1] = _apply(u, u.top(), args, "calls {} (REDUCE), which is not an allowed function")


def _op_newobj(u: PickleVM) -> None:
    args = u.pop()
    cls = u.pop()
    u.stack.append(_apply(u, cls, args, "creates an object of {} (NEWOBJ), which is not an allowed class"))


def _op_build(u: PickleVM) -> None:
    state = u.pop()
    inst = u.top()
    if isinstance(inst, Buildable):
        built = inst.build(u, state)
        u.stack[-1] = built
        for key in u.placeholders.pop(id(inst), ()):  # memo entries that hold the placeholder
            u.memo[key] = built
        return
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


def _op_binpersid(u: PickleVM) -> None:
    u.stack.append(u.persistent_load(u.pop()))


def _op_memoize(u: PickleVM) -> None:
    _op_put(u, len(u.memo))


def _make_dispatch() -> dict[int, Callable[[PickleVM], object]]:
    # handlers return nothing the VM reads (POP_MARK's lambda returns its list or None)
    ops: dict[str, Callable[[PickleVM], object]] = {
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


_DISPATCH = _make_dispatch()


# ------------------------------------------------------------------------------------------------------
# Stand-ins for plain Python globals. Each validates its arguments and builds a plain value.
# ------------------------------------------------------------------------------------------------------
def _ordered_dict(u: PickleVM, *args: Any) -> collections.OrderedDict:
    if len(args) > 1 or (args and type(args[0]) not in (list, tuple, dict, collections.OrderedDict)):
        raise _bad(u.source, "collections.OrderedDict: expected no argument or one list of pairs")
    out: collections.OrderedDict = collections.OrderedDict()
    if not args:
        return out
    pairs = args[0].items() if isinstance(args[0], dict) else args[0]
    u.charge(16 * len(args[0]), "collections.OrderedDict")
    for pair in pairs:
        if type(pair) not in (tuple, list) or len(pair) != 2:
            raise _bad(u.source, "collections.OrderedDict: expected (key, value) pairs")
        u.insert(out, pair[0], pair[1])
    return out


def _codecs_encode(u: PickleVM, text: Any, encoding: Any = "utf-8") -> bytes:
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise _bad(u.source, "_codecs.encode: only (str, 'latin1') is accepted, as pickle writes bytes")
    u.charge(len(text), "_codecs.encode")
    try:
        return text.encode("latin1")
    except UnicodeEncodeError:
        raise _bad(u.source, "_codecs.encode: text is not latin-1 (corrupted)") from None


def _make_set(u: PickleVM, items: Any = ()) -> set:
    if type(items) not in (list, tuple, set, frozenset):
        raise _bad(u.source, "builtins.set: expected a list")
    u.charge(16 * len(items), "builtins.set")
    out: set = set()
    for item in items:
        u.insert(out, item, is_set=True)
    return out


def _make_frozenset(u: PickleVM, items: Any = ()) -> frozenset:
    return u.immutable(frozenset(_make_set(u, items)))


def _make_complex(u: PickleVM, real: Any = 0.0, imag: Any = 0.0) -> complex:
    if type(real) not in (int, float) or type(imag) not in (int, float):
        raise _bad(u.source, "builtins.complex: expected two numbers")
    return complex(real, imag)


def _make_bytearray(u: PickleVM, data: Any = b"", encoding: Any = None) -> bytearray:
    # bytearray(n) allocates n bytes: only the (bytes,) and (str, 'latin-1') forms pickle writes.
    if type(data) is bytes and encoding is None:
        u.charge(len(data), "builtins.bytearray")
        return bytearray(data)
    if type(data) is str and encoding in ("latin1", "latin-1"):
        return bytearray(_codecs_encode(u, data, encoding))
    raise _bad(u.source, "builtins.bytearray: only bytes or (str, 'latin-1') are accepted")


def _make_bytes(u: PickleVM, *args: Any) -> bytes:
    if args:  # bytes(n) allocates n bytes; pickle writes only bytes() this way
        raise _bad(u.source, "builtins.bytes: only the empty form is accepted")
    return b""


def _calls(table: Mapping[str, Callable[..., Any]]) -> dict[str, PickleGlobal]:
    return {name: PickleGlobal(name, "call", None, fn) for name, fn in table.items()}


#: Plain Python globals that protocol-2 pickles name for containers, sets, complex numbers and bytes.
BUILTIN_GLOBALS: Mapping[str, PickleGlobal] = _calls(
    {
        "collections.OrderedDict": _ordered_dict,
        "_codecs.encode": _codecs_encode,
        "builtins.set": _make_set,
        "builtins.frozenset": _make_frozenset,
        "builtins.complex": _make_complex,
        "builtins.bytearray": _make_bytearray,
        "builtins.bytes": _make_bytes,
    }
)


# ------------------------------------------------------------------------------------------------------
# Stand-ins for NumPy's globals: numeric arrays, dtypes and scalars, as numpy 1.x and 2.x pickle them.
# ------------------------------------------------------------------------------------------------------
def _raw_bytes(u: PickleVM, what: str, data: Any) -> bytes | bytearray:
    if type(data) is str:  # a Python 2 str read with encoding="latin1", as numpy itself accepts
        try:
            return data.encode("latin1")
        except UnicodeEncodeError:
            raise _bad(u.source, f"{what}: array data is not latin-1 text (corrupted)") from None
    if type(data) not in (bytes, bytearray):
        raise _bad(u.source, f"{what}: array data is a {type(data).__name__}, not bytes")
    return data


def _numeric_dtype(u: PickleVM, what: str, dtype: Any) -> np.dtype:
    if isinstance(dtype, _PendingDtype):
        dtype = dtype.dtype
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or dtype.fields is not None:
        raise u.refuse(f"asks for a {what} of {short_repr(dtype, 60)}; only numeric NumPy dtypes are read")
    return dtype


def _shape(u: PickleVM, what: str, shape: Any) -> tuple[int, ...]:
    return _int_tuple(u.source, f"{what} shape", shape)


def _array_from(u: PickleVM, what: str, raw: bytes | bytearray, dtype: np.dtype, shape: Any,
                order: Literal["C", "F"]) -> np.ndarray:
    dims = _shape(u, what, shape)
    count = 1
    for d in dims:
        count *= d
    if count * dtype.itemsize != len(raw):
        raise _bad(u.source, f"{what}: {len(raw)} bytes of data for shape {dims} of {dtype} (corrupted)")
    # One copy into memory the array owns: writable, as pickle.load gives it.
    u.charge(len(raw), what)
    flat = np.frombuffer(bytearray(raw), dtype=dtype)
    return flat.reshape(dims, order=order)


class _PendingDtype(Buildable):
    """``numpy.dtype(code, align, copy)`` before its ``BUILD`` state sets the byte order."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype

    def build(self, vm: PickleVM, state: Any) -> np.dtype:
        # (version, byteorder, subarray, names, fields, elsize, alignment[, flags])
        if type(state) is not tuple or len(state) not in (8, 9) or state[1] not in ("<", ">", "|", "="):
            raise _bad(vm.source, "numpy.dtype: unexpected dtype state (corrupted)")
        if any(part is not None for part in state[2:5]):
            raise vm.refuse("builds a structured or subarray NumPy dtype; only numeric dtypes are read")
        order = state[1]
        if order not in "<>" or self.dtype.itemsize == 1:
            return self.dtype
        dtype = self.dtype.newbyteorder(order)
        return dtype.newbyteorder("=") if dtype.isnative else dtype  # 'float32', not '<f4', as numpy gives


class _PendingArray(Buildable):
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`` before ``BUILD`` fills it."""

    def build(self, vm: PickleVM, state: Any) -> np.ndarray:
        # (version, shape, dtype, is_fortran, data); numpy 1.x and 2.x write version 1
        if type(state) is tuple and len(state) == 4:
            state = (1, *state)
        if type(state) is not tuple or len(state) != 5 or type(state[3]) is not bool:
            raise _bad(vm.source, "numpy.ndarray: unexpected array state (corrupted)")
        dtype = _numeric_dtype(vm, "numpy array", state[2])
        raw = _raw_bytes(vm, "numpy.ndarray", state[4])
        return _array_from(vm, "numpy.ndarray", raw, dtype, state[1], "F" if state[3] else "C")


def _np_dtype(u: PickleVM, code: Any, align: Any = False, copy: Any = False) -> _PendingDtype:
    if type(code) is bytes:
        code = code.decode("ascii", "replace")
    if type(code) is not str or len(code) > 8:
        raise _bad(u.source, "numpy.dtype: expected a short type code such as 'f4'")
    try:
        dtype = np.dtype(code)
    except TypeError:
        raise _bad(u.source, f"numpy.dtype: unknown type code {code!r}") from None
    return _PendingDtype(_numeric_dtype(u, "dtype", dtype))


def _np_reconstruct(u: PickleVM, cls: Any, shape: Any, typecode: Any) -> _PendingArray:
    if not (isinstance(cls, PickleGlobal) and cls.kind == "ndarray"):
        raise u.refuse(
            f"reconstructs a {short_repr(cls, 60)} with numpy's _reconstruct; only ndarray is read"
        )
    if shape != (0,) or type(typecode) not in (bytes, str):
        raise _bad(u.source, "numpy _reconstruct: unexpected arguments (corrupted)")
    return _PendingArray()


def _np_frombuffer(u: PickleVM, data: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    # numpy's protocol-5 form: the buffer comes in-band, as bytes or a bytearray.
    if order not in ("C", "F"):
        raise _bad(u.source, "numpy _frombuffer: order must be 'C' or 'F'")
    raw = _raw_bytes(u, "numpy _frombuffer", data)
    return _array_from(u, "numpy _frombuffer", raw, _numeric_dtype(u, "array", dtype), shape, order)


def _np_scalar(u: PickleVM, dtype: Any, data: Any) -> np.generic:
    dtype = _numeric_dtype(u, "scalar", dtype)
    raw = _raw_bytes(u, "numpy scalar", data)
    if len(raw) != dtype.itemsize:
        raise _bad(u.source, f"numpy scalar: {len(raw)} bytes for a {dtype} (corrupted)")
    return np.frombuffer(bytes(raw), dtype=dtype)[0]


def _numpy_globals() -> dict[str, PickleGlobal]:
    table: dict[str, PickleGlobal] = {}
    for core in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x spell the module differently
        table.update(
            _calls(
                {
                    f"{core}.multiarray._reconstruct": _np_reconstruct,
                    f"{core}.multiarray.scalar": _np_scalar,
                    f"{core}.numeric._frombuffer": _np_frombuffer,
                }
            )
        )
    table["numpy.dtype"] = PickleGlobal("numpy.dtype", "call", None, _np_dtype)
    table["numpy.ndarray"] = PickleGlobal("numpy.ndarray", "ndarray")
    return table


#: NumPy's globals for numeric arrays, dtypes and scalars (numpy 1.x ``numpy.core`` and 2.x
#: ``numpy._core`` spellings). Object and structured dtypes are refused: they pickle arbitrary objects.
NUMPY_GLOBALS: Mapping[str, PickleGlobal] = _numpy_globals()
_CATALOG: dict[str, PickleGlobal] = {**BUILTIN_GLOBALS, **NUMPY_GLOBALS}
# numpy 2 renamed numpy.core to numpy._core; a file says whichever wrote it, so allowing one allows both.
_NUMPY_TWINS: dict[str, str] = {
    **{n: n.replace("numpy.core.", "numpy._core.", 1) for n in NUMPY_GLOBALS if n.startswith("numpy.core.")},
    **{n: n.replace("numpy._core.", "numpy.core.", 1) for n in NUMPY_GLOBALS if n.startswith("numpy._core.")},
}


def _allowlist(allowed: Iterable[str | PickleGlobal] | Mapping[str, PickleGlobal]) -> dict[str, PickleGlobal]:
    if isinstance(allowed, Mapping):
        allowed = allowed.values()
    if isinstance(allowed, (str, bytes)):
        raise CompressionError("allowed must be a collection of global names, not one string")
    table: dict[str, PickleGlobal] = {}
    for entry in allowed:
        if isinstance(entry, PickleGlobal):
            table[entry.name] = entry
        elif isinstance(entry, str) and entry in _CATALOG:
            table[entry] = _CATALOG[entry]
            twin = _NUMPY_TWINS.get(entry)
            if twin is not None:  # the same function under the other numpy major version's module name
                table[twin] = _CATALOG[twin]
        else:
            raise CompressionError(
                f"no stand-in for the global {entry!r}; allow names from BUILTIN_GLOBALS or NUMPY_GLOBALS, "
                "or pass a PickleGlobal"
            )
    return table


def restricted_load(
    f: BinaryIO,
    allowed: Iterable[str | PickleGlobal] | Mapping[str, PickleGlobal],
    *,
    end: int | None = None,
    source: str = "<pickle>",
    encoding: str = "ASCII",
    refusal: str = _DEFAULT_REFUSAL,
    persistent_load: Callable[[PickleVM, Any], Any] | None = None,
    context: Any = None,
) -> Any:
    """Unpickle one pickle from ``f`` with an explicit allowlist, leaving ``f`` just after its STOP opcode.

    Parameters
    ----------
    f : binary file
        Positioned at the first opcode; need not be seekable (a ``gzip`` file works).
    allowed : iterable of str or PickleGlobal, or mapping of name to PickleGlobal
        The only globals the pickle may name: names from :data:`BUILTIN_GLOBALS` and
        :data:`NUMPY_GLOBALS` (a ``numpy.core`` name also allows its numpy 2 ``numpy._core``
        spelling, and the reverse), or stand-ins of the caller's own.
    end : int, optional
        Offset in ``f`` that the pickle must not read past (the file or record size); unbounded
        when omitted (every read still stops at the end of the data).
    source : str
        Prefix of every error message (the file path and record).
    encoding : str
        How Python 2 ``str`` opcodes are read, as in :func:`pickle.load`: ``"ASCII"`` (default),
        ``"latin1"`` (Python 2 pickles of NumPy arrays need it) or ``"bytes"``.
    refusal : str
        The end of the message for a global outside the allowlist (after its name).
    persistent_load : callable, optional
        ``persistent_load(vm, pid)`` resolves ``BINPERSID``; without it persistent ids are refused.
    context : object, optional
        Caller state that stand-ins read as ``vm.context``.

    Returns
    -------
    object
        Plain containers and scalars, and what the allowlisted stand-ins build.

    Raises
    ------
    UnsafePickleError
        A global outside the allowlist, or an opcode that builds or calls anything else.
    WeightFileError
        A truncated or corrupted pickle.
    CompressionError
        ``allowed`` names a global with no stand-in here.

    Examples
    --------
    >>> import io, pickle, os
    >>> data = pickle.dumps({"epoch": 3, "lr": [0.1, 0.01]}, protocol=2)
    >>> restricted_load(io.BytesIO(data), [], end=len(data), source="ckpt.pkl")
    {'epoch': 3, 'lr': [0.1, 0.01]}
    >>> evil = pickle.dumps(os.system, protocol=2)
    >>> restricted_load(io.BytesIO(evil), NUMPY_GLOBALS, source="evil.pkl")
    Traceback (most recent call last):
    ...
    coreprune.errors.UnsafePickleError: evil.pkl: the pickle asks for the global posix.system, ...
    """
    limit = sys.maxsize if end is None else end
    vm = PickleVM(
        f, limit, source, _allowlist(allowed), encoding=encoding, refusal=refusal,
        persistent_load=persistent_load, context=context,
    )
    return vm.load()


def restricted_loads(
    data: bytes, allowed: Iterable[str | PickleGlobal] | Mapping[str, PickleGlobal], **kwargs: Any
) -> Any:
    """:func:`restricted_load` over bytes in memory (``end`` is their length).

    Examples
    --------
    >>> import pickle, numpy as np
    >>> blob = pickle.dumps(np.arange(3, dtype=np.int16), protocol=5)
    >>> restricted_loads(blob, NUMPY_GLOBALS).tolist()
    [0, 1, 2]
    """
    return restricted_load(io.BytesIO(data), allowed, end=len(data), **kwargs)
