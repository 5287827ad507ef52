"""Build ``torch.save``-format files without torch, for the framework-free tests.

A pure-Python pickler writes ``GLOBAL module\\nname`` verbatim for :class:`Global`
markers (no import, no identity check), so a test can spell exactly the pickle
torch writes -- or a hostile one. :func:`zip_file` and :func:`legacy_file` wrap a
pickled object in the two ``torch.save`` layouts. tests/torch cross-checks the
real framework; these files test what torch itself cannot produce (big-endian
data, legacy storage views, broken headers).
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C


@dataclass(frozen=True)
class Global:
    """A global written verbatim as ``GLOBAL module name``."""

    module: str
    name: str

    def __call__(self, *args: Any) -> Any:  # save_reduce insists that func be callable
        raise RuntimeError("a marker, never called")


@dataclass(eq=False)
class Storage:
    """A storage: raw bytes under ``key``, pickled as a persistent id."""

    data: bytes
    type_name: str = "FloatStorage"
    key: str = "0"
    numel: int | None = None
    view: tuple | None = None  # legacy (view_key, offset, size)
    itemsize: int = 4

    @property
    def count(self) -> int:
        return len(self.data) // self.itemsize if self.numel is None else self.numel


@dataclass(eq=False)
class Tensor:
    """A tensor over a :class:`Storage`, pickled as ``_rebuild_tensor_v2`` (v3 when ``dtype`` is set)."""

    storage: Storage
    offset: int
    shape: tuple
    stride: tuple
    dtype: str | None = None  # torch dtype name for _rebuild_tensor_v3
    metadata: dict | None = None
    parameter: bool = False
    hooks: dict = field(default_factory=collections.OrderedDict)

    def __reduce_ex__(self, protocol: int) -> tuple:
        args: tuple = (self.storage, self.offset, self.shape, self.stride, False, self.hooks)
        func = Global("torch._utils", "_rebuild_tensor_v2")
        if self.dtype is not None:
            func = Global("torch._utils", "_rebuild_tensor_v3")
            args += (Global("torch", self.dtype),)
        if self.metadata is not None:
            args += (self.metadata,)
        if self.parameter:
            return (
                Global("torch._utils", "_rebuild_parameter"),
                (_Reduced(func, args), True, collections.OrderedDict()),
            )
        return func, args


@dataclass(eq=False)
class _Reduced:
    func: Global
    args: tuple

    def __reduce_ex__(self, protocol: int) -> tuple:
        return self.func, self.args


@dataclass(eq=False)
class Call:
    """Any ``REDUCE(Global, args)``: how a test spells a hostile call."""

    func: Global
    args: tuple = ()

    def __reduce_ex__(self, protocol: int) -> tuple:
        return self.func, self.args


class _Pickler(pickle._Pickler):  # type: ignore[name-defined]
    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, f: io.BytesIO, protocol: int, legacy: bool) -> None:
        super().__init__(f, protocol=protocol)
        self.legacy = legacy
        self.storages: dict[str, Storage] = {}

    def _save_global(self, obj: Global) -> None:
        if self.proto >= 4:
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[Global] = _save_global

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Storage):
            self.storages.setdefault(obj.key, obj)
            module = "torch.storage" if obj.type_name == "UntypedStorage" else "torch"
            pid: tuple = ("storage", Global(module, obj.type_name), obj.key, "cpu", obj.count)
            return pid + (obj.view,) if self.legacy else pid
        return None


def dumps(obj: Any, *, protocol: int = 2, legacy: bool = False) -> tuple[bytes, dict[str, Storage]]:
    """Pickle ``obj``; returns the bytes and the storages it referenced, by key."""
    buf = io.BytesIO()
    p = _Pickler(buf, protocol, legacy)
    p.dump(obj)
    return buf.getvalue(), p.storages


def zip_file(
    obj: Any = None,
    *,
    pickle_bytes: bytes | None = None,
    storages: dict[str, Storage] | None = None,
    folder: str = "archive",
    extra: dict[str, bytes] | None = None,
    byteorder: bytes | None = b"little",
    compression: int = zipfile.ZIP_STORED,
) -> bytes:
    """A zip-layout torch file holding ``obj`` (or the given pickle and storages)."""
    if pickle_bytes is None:
        pickle_bytes, storages = dumps(obj)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:

        def put(name: str, data: bytes) -> None:  # a fixed time stamp: the same object, the same bytes
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, data, compress_type=compression)

        put(f"{folder}/data.pkl", pickle_bytes)
        if byteorder is not None:
            put(f"{folder}/byteorder", byteorder)
        for key, s in (storages or {}).items():
            put(f"{folder}/data/{key}", s.data)
        for name, data in (extra or {}).items():
            put(f"{folder}/{name}", data)
        put(f"{folder}/version", b"3\n")
    return buf.getvalue()


def legacy_file(obj: Any, *, little_endian: bool = True, keys: list[str] | None = None) -> bytes:
    """A legacy-layout torch file: five pickles, then each storage as int64 count + bytes."""
    body, storages = dumps(obj, legacy=True)
    sys_info = {
        "protocol_version": 1001,
        "little_endian": little_endian,
        "type_sizes": {"short": 2, "int": 4},
    }
    out = io.BytesIO()
    for value in (MAGIC, 1001, sys_info):
        out.write(pickle.dumps(value, protocol=2))
    out.write(body)
    keys = sorted(storages) if keys is None else keys
    out.write(pickle.dumps(keys, protocol=2))
    for key in keys:
        if key not in storages:  # a key no tensor uses: an empty record, for the reader to refuse
            out.write(struct.pack("<q", 0))
            continue
        s = storages[key]
        out.write(struct.pack("<q" if little_endian else ">q", s.count))
        out.write(s.data)
    return out.getvalue()


def tensor_of(array: np.ndarray, key: str, type_name: str) -> Tensor:
    """A contiguous :class:`Tensor` holding ``array`` (little-endian bytes) in its own storage."""
    array = np.array(array, order="C")  # ascontiguousarray would turn 0-d into 1-d
    strides = tuple(s // array.itemsize for s in array.strides) if array.size else (1,) * array.ndim
    storage = Storage(array.tobytes(), type_name, key, itemsize=array.itemsize)
    return Tensor(storage, 0, tuple(array.shape), strides)
