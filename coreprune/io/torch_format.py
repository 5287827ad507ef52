"""PyTorch ``torch.save`` files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) with NumPy only.

Reading
-------
Both layouts ``torch.save`` has used are read:

* the **zip** layout (default since PyTorch 1.6): ``<folder>/data.pkl`` is the
  pickled object, ``<folder>/data/<key>`` the raw bytes of each storage;
* the **legacy** layout (``_use_new_zipfile_serialization=False``, PyTorch < 1.6):
  five pickles in a row (magic number, protocol, system info, the object, the
  storage keys) followed by each storage as an int64 element count and its bytes.

The pickle goes through :mod:`coreprune.io.torch_pickle`, which builds tensors and
plain containers and refuses everything else before anything runs. The tensors
found anywhere in the object are served by name (see *Names*); storages are
memory-mapped when a tensor is first read, so opening a 4 GiB checkpoint reads
only its pickle. ``reader[name]`` is a read-only ``numpy.memmap`` view shaped by the
tensor's size, stride and offset (a strided view for non-contiguous tensors; a
copy for conjugated / negated-bit tensors and big-endian files). Tensors that
share a storage are views of the same mapped bytes.

Names
-----
A nested checkpoint is flattened to dotted names: ``{"model": {"fc.weight": t},
"epoch": 3}`` gives the tensor ``"model.fc.weight"`` and ``extras["epoch"] == 3``.
Integer keys (optimizer state) become decimal parts (``"optimizer.state.0.exp_avg"``).
A list or tuple that holds tensors is indexed (``"layers.0"``); one that holds none
is one value in ``extras`` (``"optimizer.param_groups"``). A bare saved tensor is
named ``"tensor"``; a bare non-tensor value is ``extras["value"]``.
``reader.structure`` records the nesting itself (:mod:`coreprune.io.structure`; None for a
flat state dict), so that :func:`write` can rebuild the checkpoint around processed tensors.

Writing
-------
:func:`write` stores a flat state dict (``OrderedDict`` of plain tensors, as
``model.state_dict()`` holds) in the zip layout, which ``torch.load(path,
weights_only=True)`` reads with ``mmap`` on or off: every record stored
(uncompressed) and 64-byte aligned, CRCs set, zip64 end records as torch writes
them. Tensors are written one at a time, C-contiguous, each in its own storage. Given a
``structure``, it writes that nested checkpoint instead (dicts, ``OrderedDict``, lists, tuples,
strings, numbers, booleans, None and the tensors).
"""

from __future__ import annotations

import collections
import io
import math
import os
import re
import struct
import sys
import weakref
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import CompressionError, WeightFileError
from . import structure as _st
from .base import (
    ExpansionMeter,
    TensorSpec,
    WeightReader,
    check_extent,
    element_count,
    file_region,
    spec_of,
    strided_view,
)
from .pickle_vm import PickledObject, PickleGlobal
from .torch_pickle import STORAGE_DTYPES, TORCH_DTYPES, StorageRef, TensorRef, load_torch_pickle
from .zip_reader import ZIP_LOCAL_MAGIC, ZipArchive, first_member_name

__all__ = ["FORMAT", "EXTENSIONS", "sniff", "open_reader", "write", "TorchReader"]

FORMAT = "torch"
EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt")

#: ``torch.serialization.MAGIC_NUMBER`` and ``PROTOCOL_VERSION`` of the legacy layout.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
#: The magic number pickled as LONG1: the bytes after ``80 02`` in a legacy file.
_LEGACY_HEAD = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"

#: Names of a bare tensor and a bare non-tensor value saved with ``torch.save(obj)``.
ROOT_TENSOR = "tensor"
ROOT_VALUE = "value"
#: Containers nest a handful of levels in real checkpoints; deeper means cyclic or hostile.
_MAX_DEPTH = 100

_ALIGN = 64
_ZIP64_LIMIT = (
    0xFFFFFFFF  # sizes and offsets from here on go in zip64 extras (a module constant: tests lower it)
)
_U32_MAX = 0xFFFFFFFF  # the "see the zip64 extra" value of a 32-bit field
_CHUNK = 1 << 24


# ------------------------------------------------------------------------------------------------------
# Detection
# ------------------------------------------------------------------------------------------------------
def sniff(head: bytes) -> bool:
    """True when ``head`` (the first bytes of a file) starts a ``torch.save`` file, zip or legacy.

    A zip whose first entry is a visible ``*.npy`` name is an ``.npz`` archive instead.

    Examples
    --------
    >>> sniff(b"PK\\x03\\x04" + bytes(26) + b"archive/data.pkl")
    False
    >>> import struct
    >>> sniff(b"PK\\x03\\x04" + bytes(22) + struct.pack("<HH", 16, 0) + b"archive/data.pkl")
    True
    >>> sniff(b"\\x80\\x02\\x8a\\x0a\\x6c\\xfc\\x9c\\x46\\xf9\\x20\\x6a\\xa8\\x50\\x19.")
    True
    """
    if head.startswith(ZIP_LOCAL_MAGIC):
        name = first_member_name(head)
        # None: the name runs past the head, so the bytes cannot tell; the extension decides.
        return name is None or (len(name) > 0 and not name.endswith(b".npy"))
    return len(head) >= 2 + len(_LEGACY_HEAD) and head[0] == 0x80 and head[2:].startswith(_LEGACY_HEAD)


# ------------------------------------------------------------------------------------------------------
# The reader
# ------------------------------------------------------------------------------------------------------
class TorchReader(WeightReader):
    """Lazy reader of a ``torch.save`` file; see the module docstring for names and views.

    Attributes
    ----------
    layout : str
        ``"zip"`` or ``"legacy"``.
    byteorder : str
        ``"little"`` or ``"big"``: the byte order of the stored data.
    parameters : frozenset of str
        Names of tensors saved as ``nn.Parameter``.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "sd.pt")
    >>> with open(p, "wb") as f:
    ...     write({"fc.weight": np.eye(2, dtype=np.float32)}, f)
    >>> with open_reader(p) as r:
    ...     print(r.layout, list(r), r["fc.weight"].tolist())
    zip ['fc.weight'] [[1.0, 0.0], [0.0, 1.0]]
    """

    format = FORMAT

    def __init__(
        self,
        path: Path,
        layout: str,
        refs: dict[str, TensorRef],
        extras: dict[str, Any],
        spans: dict[str, tuple[int, int]],
        byteorder: str,
        *,
        size: int = 0,
        mmap: bool = True,
        max_expansion: int | None = None,
    ) -> None:
        super().__init__(path)
        self.layout = layout
        self.byteorder = byteorder
        self.extras = extras
        self._refs = refs
        self._spans = spans
        self._mmap = mmap
        # Views of distinct storages never add up to more than the file; overlapping views (one storage
        # under many names) can, and that excess is charged to the expansion budget.
        self._meter = ExpansionMeter(path, size, max_expansion, credit=size)
        # One buffer per storage, alive while an array uses it: tensors that share a storage are
        # views of one buffer, and a storage nobody holds is released (a whole-file mapping would
        # keep every page read so far resident, so compressing a 4 GiB file would need 4 GiB).
        self._maps: weakref.WeakValueDictionary[str, np.ndarray] = weakref.WeakValueDictionary()
        self._specs = {name: TensorSpec(ref.shape, ref.dtype) for name, ref in refs.items()}
        self.parameters = frozenset(name for name, ref in refs.items() if ref.parameter)
        first: dict[tuple, str] = {}
        for name, ref in refs.items():  # tied tensors: the same elements of the same storage
            if element_count(ref.shape) == 0:
                continue
            key = (ref.storage.key, ref.offset, tuple(ref.shape), tuple(ref.stride), ref.dtype.str,
                   ref.conj, ref.neg)
            if key in first:
                self.aliases[name] = first[key]
            else:
                first[key] = name

    def _storage(self, key: str) -> np.ndarray:
        buf = self._maps.get(key)
        if buf is None:
            offset, nbytes = self._spans[key]
            buf = file_region(self.path, offset, nbytes, mmap=self._mmap, what=f"storage {key!r:.40}")
            self._maps[key] = buf
        return buf

    def _read(self, name: str) -> np.ndarray:
        ref = self._refs[name]
        dtype = ref.dtype
        if element_count(ref.shape) == 0:
            return np.empty(ref.shape, dtype)
        itemsize = dtype.itemsize
        self._meter.charge(name, element_count(ref.shape) * itemsize, what=f"tensor {name!r:.80}")
        buf = self._storage(ref.storage.key)
        strides = tuple(s * itemsize for s in ref.stride)
        what = f"tensor {name!r:.80} (storage {ref.storage.key!r:.40})"
        unit = itemsize // 2 if dtype.kind == "c" else itemsize
        # Every view is checked against the bytes of its storage before it exists (strided_view): a
        # storage read with two element sizes, or offsets and strides that reach past it, are errors.
        if self.byteorder == sys.byteorder or unit == 1:
            out = strided_view(self.path, what, buf, dtype, ref.shape, ref.offset * itemsize, strides)
        else:
            # Gather this tensor's raw elements, then swap each scalar (each half of a complex).
            raw = strided_view(self.path, what, buf, np.dtype((np.void, itemsize)), ref.shape,
                               ref.offset * itemsize, strides)
            words = np.ascontiguousarray(raw).reshape(-1).view(np.dtype(f"u{unit}")).byteswap()
            out = words.view(dtype).reshape(ref.shape)
        if ref.conj:
            out = np.conj(out)
        if ref.neg:
            out = np.negative(out)
        return out

    def close(self) -> None:
        # Arrays already returned hold their own reference to their buffer.
        self._maps = weakref.WeakValueDictionary()


def open_reader(
    path: str | os.PathLike,
    *,
    mmap: bool = True,
    max_expansion: int | None = None,
    allow_globals: Iterable[str] = (),
    **options: Any,
) -> TorchReader:
    """Open a ``torch.save`` file lazily (zip or legacy layout).

    Parameters
    ----------
    path : path-like
    mmap : bool
        Map each storage (default) or read it into memory when a tensor of it is first indexed
        (safe against the file changing; see :func:`coreprune.io.base.file_region`). Either way,
        tensors that share a storage are views of one buffer.
    max_expansion : int, optional
        Bytes that tensors may span beyond the file size, all together (views that overlap:
        one storage under many names); default :func:`coreprune.io.base.expansion_budget`.
    allow_globals : iterable of str
        ``"module.Name"`` globals outside the allowlist that the pickle may name anyway, like
        ``torch.serialization.add_safe_globals``. Nothing is imported or called: each becomes an
        opaque :class:`~coreprune.io.pickle_vm.PickledObject` record (in ``extras``) holding its
        arguments and state; tensors in its state are read like any other.

    Returns
    -------
    TorchReader

    Raises
    ------
    UnsafePickleError
        The pickle names a global that is not a tensor, storage, dtype or plain container
        (a pickled ``nn.Module``, ``os.system``, ...).
    WeightFileError
        A TorchScript archive, a truncated or corrupted file, or a tensor whose declared
        size does not fit the bytes present.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "sd.pt")
    >>> with open(p, "wb") as f:
    ...     write({"b": np.arange(3, dtype=np.int64)}, f)
    >>> with open_reader(p) as r:
    ...     print(r.spec("b").shape, r["b"].tolist())
    (3,) [0, 1, 2]
    """
    if options:
        raise WeightFileError(f"{path}: unknown option(s) for torch files: {', '.join(sorted(options))}")
    path = Path(path)
    opts = _Options(mmap, max_expansion, tuple(allow_globals))
    try:
        size = path.stat().st_size
        f = open(path, "rb")
    except OSError as e:
        raise WeightFileError(f"{path}: cannot open: {e.strerror or e}") from None
    with f:
        head = f.read(64)
        f.seek(0)
        if head.startswith(ZIP_LOCAL_MAGIC):
            return _open_zip(path, size, opts)
        if head[:1] == b"\x80" and head[2 : 2 + len(_LEGACY_HEAD)] == _LEGACY_HEAD:
            return _open_legacy(path, f, size, opts)
        if len(head) >= 2 and head[:2] == b"\x80\x02":
            raise WeightFileError(f"{path}: a bare pickle, not a torch.save file (no torch magic number)")
        raise WeightFileError(f"{path}: not a torch.save file (neither a zip archive nor the legacy layout)")


# -- zip layout ---------------------------------------------------------------------------------------
def _record_span(z: ZipArchive, info: zipfile.ZipInfo) -> tuple[int, int]:
    """(data offset, length) of a stored zip record, from its local header; no CRC trusted or needed."""
    what = f"zip record {info.filename}"
    z.check_plain(info, what)
    if info.compress_type != zipfile.ZIP_STORED:
        raise WeightFileError(
            f"{z.path}: {what} is compressed (method {info.compress_type}); torch.save "
            "stores records uncompressed and memory-maps them, so a re-zipped checkpoint is refused: "
            "unzip it and zip it again with `zip -0`, or load and re-save it with torch.save"
        )
    return z.stored_span(info, what)


@dataclass(frozen=True)
class _Options:
    mmap: bool
    max_expansion: int | None
    allow_globals: tuple[str, ...]

    def reader_kwargs(self, size: int) -> dict[str, Any]:
        return {"size": size, "mmap": self.mmap, "max_expansion": self.max_expansion}


def _open_zip(path: Path, size: int, opts: _Options) -> TorchReader:
    with ZipArchive(path) as z:
        return _read_zip(z, path, size, opts)


def _read_zip(z: ZipArchive, path: Path, size: int, opts: _Options) -> TorchReader:
    infos = z.members
    if not infos:
        raise WeightFileError(f"{path}: an empty zip archive, not a torch.save file")
    first = infos[0].filename
    if "/" not in first:
        raise WeightFileError(
            f"{path}: a zip archive whose entries are not in a folder ({first!r:.60}); torch.save puts every "
            "record under one folder, so this is not a torch.save file"
        )
    prefix = first.split("/", 1)[0] + "/"
    records = {i.filename[len(prefix) :]: i for i in infos if i.filename.startswith(prefix)}
    if "constants.pkl" in records or any(n.startswith("code/") for n in records):
        raise WeightFileError(
            f"{path}: a TorchScript archive (written by torch.jit.save), a compiled program rather "
            "than saved weights. In PyTorch run "
            "`torch.save(torch.jit.load(path).state_dict(), 'weights.pt')` and read that file"
        )
    if "data.pkl" not in records:
        raise WeightFileError(f"{path}: zip archive without {prefix}data.pkl, so not a torch.save file")
    byteorder = "little"
    if "byteorder" in records:
        start, length = _record_span(z, records["byteorder"])
        mark = z.read_span(start, min(length, 16), f"{prefix}byteorder")
        if mark not in (b"little", b"big"):
            raise WeightFileError(f"{path}: byteorder record holds {mark!r}, not 'little' or 'big'")
        byteorder = mark.decode()
    info = records["data.pkl"]
    start, length = _record_span(z, info)
    pickle_bytes = z.read_span(start, length, "data.pkl")
    if info.CRC and zlib.crc32(pickle_bytes) != info.CRC:
        raise WeightFileError(f"{path}: data.pkl fails its CRC-32 check (corrupted)")
    spans: dict[str, tuple[int, int]] = {}

    def storage_hook(ref: StorageRef) -> None:
        if ref.key not in spans:
            record = records.get(f"data/{ref.key}")
            if record is None:
                raise WeightFileError(
                    f"{path}: the pickle refers to storage {ref.key!r:.40} but no record holds it"
                )
            spans[ref.key] = _record_span(z, record)
        need = ref.root_numel * ref.dtype.itemsize
        if spans[ref.key][1] < need:
            raise WeightFileError(
                f"{path}: storage {ref.key!r} declares {need} bytes but its record holds {spans[ref.key][1]} "
                "(truncated or corrupted)"
            )

    obj = load_torch_pickle(
        io.BytesIO(pickle_bytes),
        end=length,
        source=f"{path} ({prefix}data.pkl)",
        storage_hook=storage_hook,
        max_tensor_nbytes=size,
        allow_globals=opts.allow_globals,
    )
    tensors, extras, tree = _flatten(path, obj, budget=length + 16)
    reader = TorchReader(path, "zip", tensors, extras, spans, byteorder, **opts.reader_kwargs(size))
    reader.structure = tree
    return reader


# -- legacy layout ------------------------------------------------------------------------------------
def _open_legacy(path: Path, f: BinaryIO, size: int, opts: _Options) -> TorchReader:
    magic = load_torch_pickle(f, end=size, source=f"{path} (magic number)")
    if magic != LEGACY_MAGIC:
        raise WeightFileError(f"{path}: wrong torch magic number (corrupted)")
    protocol = load_torch_pickle(f, end=size, source=f"{path} (protocol version)")
    if protocol != LEGACY_PROTOCOL:
        raise WeightFileError(f"{path}: legacy protocol version {protocol!r:.20}, expected {LEGACY_PROTOCOL}")
    sys_info = load_torch_pickle(f, end=size, source=f"{path} (system info)")
    if type(sys_info) is not dict or type(sys_info.get("little_endian", True)) is not bool:
        raise WeightFileError(
            f"{path}: legacy system-info record is not a dict with little_endian (corrupted)"
        )
    byteorder = "little" if sys_info.get("little_endian", True) else "big"
    declared: dict[str, StorageRef] = {}

    def storage_hook(ref: StorageRef) -> None:
        seen = declared.setdefault(ref.key, ref)
        if (seen.dtype.itemsize, seen.root_numel) != (ref.dtype.itemsize, ref.root_numel):
            raise WeightFileError(f"{path}: storage {ref.key!r:.40} is declared twice with different sizes")

    start = f.tell()
    obj = load_torch_pickle(f, end=size, source=str(path), storage_hook=storage_hook, max_tensor_nbytes=size,
                            allow_globals=opts.allow_globals)
    pickle_len = f.tell() - start
    keys = load_torch_pickle(f, end=size, source=f"{path} (storage key list)")
    if type(keys) is not list or any(type(k) is not str for k in keys):
        raise WeightFileError(f"{path}: the legacy storage key list is not a list of strings (corrupted)")
    missing = set(declared) - set(keys)
    if missing:
        raise WeightFileError(
            f"{path}: storage {sorted(missing)[0]!r:.40} is used but its data is not in the file"
        )
    spans: dict[str, tuple[int, int]] = {}
    pos = f.tell()
    for key in keys:
        ref = declared.get(key)
        if ref is None:
            raise WeightFileError(
                f"{path}: the key list names storage {key!r:.40}, which no tensor uses (corrupted)"
            )
        check_extent(path, f"the element count of storage {key!r:.40}", pos, 8, size)
        f.seek(pos)
        count = struct.unpack("<q" if byteorder == "little" else ">q", f.read(8))[0]
        if count != ref.root_numel:
            raise WeightFileError(
                f"{path}: storage {key!r:.40} holds {count} elements but the pickle declares "
                f"{ref.root_numel} "
                "(corrupted)"
            )
        nbytes = count * ref.dtype.itemsize
        check_extent(path, f"storage {key!r:.40}", pos + 8, nbytes, size)
        spans[key] = (pos + 8, nbytes)
        pos += 8 + nbytes
    tensors, extras, tree = _flatten(path, obj, budget=pickle_len + 16)
    reader = TorchReader(path, "legacy", tensors, extras, spans, byteorder, **opts.reader_kwargs(size))
    reader.structure = tree
    return reader


# -- names --------------------------------------------------------------------------------------------
def _flatten(
    path: Path, root: Any, budget: int
) -> tuple[dict[str, TensorRef], dict[str, Any], _st.Node | None]:
    """Tensors and other values of a checkpoint by dotted name, and its structure.

    ``budget`` bounds the values visited: a tree cannot have more nodes than its pickle
    has bytes, so visiting more means containers shared or nested in a cycle. The structure
    (:mod:`coreprune.io.structure`) is None for a flat state dict (string keys, tensor values),
    which is what :func:`write` writes by default.
    """
    visits = 0

    def key_text(key: Any, where: str) -> str:
        if type(key) is str:
            return key
        if type(key) in (int, bool) and abs(key) < 2**63 or type(key) is float or key is None:
            return str(key)
        raise WeightFileError(f"{path}: a dict at {where or 'the top'!r:.60} has a {type(key).__name__} key")

    Walked = tuple[list[tuple[str, TensorRef]], list[tuple[str, Any]], _st.Node]

    def walk(obj: Any, name: str, depth: int) -> Walked:
        nonlocal visits
        visits += 1
        if visits > budget or depth > _MAX_DEPTH:
            raise WeightFileError(
                f"{path}: containers nest deeper than {_MAX_DEPTH} levels or refer to themselves near "
                f"{name!r:.60} (corrupted or hostile)"
            )
        tensor_name = name or ROOT_TENSOR
        if isinstance(obj, TensorRef):
            return [(name, obj)], [], {"tensor": tensor_name}
        if isinstance(obj, StorageRef):  # a bare storage reads as the 1-D tensor of its elements
            return [
                (name, TensorRef(obj, obj.dtype, obj.byte_offset // obj.dtype.itemsize, (obj.numel,), (1,)))
            ], [], {"unsupported": "a bare storage (not a tensor)"}
        if type(obj) in (dict, collections.OrderedDict):
            if not obj:
                return [], [(name, {})], {"dict" if type(obj) is dict else "odict": []}
            tensors: list[tuple[str, TensorRef]] = []
            extras: list[tuple[str, Any]] = []
            pairs: list[list[Any]] = []
            for k, v in obj.items():
                part = key_text(k, name)
                t, e, node = walk(v, f"{name}.{part}" if name else part, depth + 1)
                tensors += t
                extras += e
                pairs.append([k, node] if type(k) is not float or math.isfinite(k)
                             else [part, {"unsupported": f"a dict with the key {part}"}])
            return tensors, extras, {"dict" if type(obj) is dict else "odict": pairs}
        if type(obj) in (list, tuple):
            tensors, extras, nodes = [], [], []
            for i, v in enumerate(obj):
                t, e, node = walk(v, f"{name}.{i}" if name else str(i), depth + 1)
                tensors += t
                extras += e
                nodes.append(node)
            kind = "list" if type(obj) is list else "tuple"
            return (tensors, extras, {kind: nodes}) if tensors else ([], [(name, obj)], {kind: nodes})
        if isinstance(obj, PickleGlobal):
            return [], [(name, obj.name)], {"unsupported": f"the global {obj.name}"}
        if isinstance(obj, PickledObject):  # an allowed global's record: its attributes are its contents
            opaque = {"unsupported": f"an opaque {obj.name} record"}
            if type(obj.state) in (dict, collections.OrderedDict) and obj.state:
                return (*walk(obj.state, name, depth + 1)[:2], opaque)
            return [], [(name, obj)], opaque
        return [], [(name, obj)], _st.leaf(obj)

    tensors, extras, tree = walk(root, "", 0)
    out_t: dict[str, TensorRef] = {}
    out_e: dict[str, Any] = {}
    for name, ref in tensors:
        name = name if name or not isinstance(root, (TensorRef, StorageRef)) else ROOT_TENSOR
        if name in out_t:
            raise WeightFileError(f"{path}: two tensors map to the name {name!r:.80}")
        out_t[name] = ref
    for name, value in extras:
        if not name:
            if isinstance(root, (dict, collections.OrderedDict)):
                continue  # an empty checkpoint dict: nothing to report
            name = ROOT_VALUE
        if name in out_t or name in out_e:
            raise WeightFileError(f"{path}: two values map to the name {name!r:.80}")
        out_e[name] = value
    flat = type(root) in (dict, collections.OrderedDict) and all(
        type(k) is str and isinstance(v, TensorRef) for k, v in root.items()
    )
    return out_t, out_e, None if flat else tree


# ------------------------------------------------------------------------------------------------------
# The writer
# ------------------------------------------------------------------------------------------------------
_V2_STORAGE = {dt: name for name, dt in STORAGE_DTYPES.items()}
_V3_DTYPES: dict[np.dtype, str] = {
    TORCH_DTYPES[n]: n  # type: ignore[misc]
    for n in (
        "uint16",
        "uint32",
        "uint64",
        "float8_e4m3fn",
        "float8_e5m2",
        "float8_e4m3fnuz",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
    )
    if TORCH_DTYPES[n] is not None
}


def _torch_name(name: str, dtype: np.dtype) -> tuple[str, str]:
    """("v2", "<Name>Storage") or ("v3", "<torch dtype>") for a NumPy dtype, or raise."""
    dt = np.dtype(dtype)
    if dt.byteorder in "<>":
        dt = dt.newbyteorder("=")
    if dt in _V2_STORAGE:
        return "v2", _V2_STORAGE[dt]
    if dt in _V3_DTYPES:
        return "v3", _V3_DTYPES[dt]
    kinds = sorted({str(d) for d in _V2_STORAGE} | {str(d) for d in _V3_DTYPES})
    raise CompressionError(
        f"tensor {name!r}: dtype {dtype} cannot be stored in a torch file ({', '.join(kinds)})"
    )


class _Pickle:
    """Protocol-2 opcodes for a flat state dict, written by hand so no global is ever imported."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")
        self.memo: dict[str, int] = {}

    def global_(self, module: str, name: str) -> None:
        key = f"{module}\n{name}\n"
        index = self.memo.get(key)
        if index is not None:  # BINGET / LONG_BINGET of the memoised global
            self.out += b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index)
            return
        self.out += b"c" + key.encode("utf-8")
        index = self.memo[key] = len(self.memo)
        self.out += b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index)  # BINPUT

    def int_(self, n: int) -> None:
        if 0 <= n < 256:
            self.out += b"K" + bytes([n])
        elif 0 <= n < 65536:
            self.out += b"M" + struct.pack("<H", n)
        elif -(2**31) <= n < 2**31:
            self.out += b"J" + struct.pack("<i", n)
        else:
            data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(data)]) + data

    def str_(self, s: str) -> None:
        data = s.encode("utf-8", "surrogatepass")
        self.out += b"X" + struct.pack("<I", len(data)) + data

    def tuple_(self, items: tuple[int, ...]) -> None:
        if not items:
            self.out += b")"
            return
        if len(items) > 3:
            self.out += b"("
        for v in items:
            self.int_(v)
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(items), b"t")

    def empty_ordered_dict(self) -> None:
        self.global_("collections", "OrderedDict")
        self.out += b")R"

    def tensor(self, key: str, spec: TensorSpec, version: str, torch_name: str) -> None:
        self.global_("torch._utils", "_rebuild_tensor_v2" if version == "v2" else "_rebuild_tensor_v3")
        self.out += b"(("  # args tuple, then the persistent-id tuple
        self.str_("storage")
        if version == "v2":
            self.global_("torch", torch_name)
            numel = spec.size
        else:
            self.global_("torch.storage", "UntypedStorage")
            numel = spec.nbytes
        self.str_(key)
        self.str_("cpu")
        self.int_(numel)
        self.out += b"tQ"  # TUPLE, BINPERSID
        self.int_(0)
        self.tuple_(spec.shape)
        self.tuple_(_contiguous_strides(spec.shape))
        self.out += b"\x89"  # requires_grad=False
        self.empty_ordered_dict()
        if version == "v3":
            self.global_("torch", torch_name)
        self.out += b"tR"


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides in elements, as torch computes them (a 0-length dimension counts as 1).

    Examples
    --------
    >>> _contiguous_strides((2, 3, 4)), _contiguous_strides((3, 0)), _contiguous_strides(())
    ((12, 4, 1), (1, 1), ())
    """
    strides = []
    step = 1
    for d in reversed(shape):
        strides.append(step)
        step *= max(d, 1)
    return tuple(reversed(strides))


def _structure_pickle(tree: _st.Node, items: list[tuple[str, TensorSpec, str, str]]) -> bytes:
    """The pickle of a nested checkpoint: ``tree``'s containers and values around the tensors.

    Only opcodes and globals that ``torch.load(weights_only=True)`` accepts: dicts, lists,
    tuples, ``OrderedDict``, str, int, float, bool, None and the tensors.
    """
    index = {name: i for i, (name, *_rest) in enumerate(items)}
    p = _Pickle()

    def emit(node: _st.Node) -> None:
        if node is None:
            p.out += b"N"
        elif node is True or node is False:
            p.out += b"\x88" if node else b"\x89"
        elif type(node) is int:
            p.int_(node)
        elif type(node) is float:
            p.out += b"G" + struct.pack(">d", node)
        elif type(node) is str:
            p.str_(node)
        else:
            (kind, body), = node.items()
            if kind == "tensor":
                i = index[body]
                _, spec, version, torch_name = items[i]
                p.tensor(str(i), spec, version, torch_name)
            elif kind == "float":
                p.out += b"G" + struct.pack(">d", float(body))
            elif kind in ("dict", "odict"):
                if kind == "dict":
                    p.out += b"}"
                else:
                    p.empty_ordered_dict()
                for start in range(0, len(body), 1000):  # SETITEMS in batches, as pickle does
                    p.out += b"("
                    for k, v in body[start : start + 1000]:
                        emit(k)
                        emit(v)
                    p.out += b"u"
            elif kind == "list":
                p.out += b"]"
                for start in range(0, len(body), 1000):
                    p.out += b"("
                    for v in body[start : start + 1000]:
                        emit(v)
                    p.out += b"e"
            elif kind == "tuple":
                p.out += b"("
                for v in body:
                    emit(v)
                p.out += b"t"
            else:  # check_writable refused "unsupported" nodes before
                raise CompressionError(f"a checkpoint structure node of kind {kind!r} cannot be written")

    emit(tree)
    p.out += b"."
    return bytes(p.out)


def _state_dict_pickle(items: list[tuple[str, TensorSpec, str, str]]) -> bytes:
    p = _Pickle()
    p.empty_ordered_dict()
    for start in range(0, len(items), 1000):  # SETITEMS in batches, as pickle itself does
        p.out += b"("
        for i, (name, spec, version, torch_name) in enumerate(items[start : start + 1000], start):
            p.str_(name)
            p.tensor(str(i), spec, version, torch_name)
        p.out += b"u"
    p.out += b"."
    return bytes(p.out)


class _ZipWriter:
    """A stored (uncompressed) zip with 64-byte-aligned records, as torch's writer lays it out."""

    def __init__(self, f: BinaryIO, folder: str) -> None:
        self.f = f
        self.folder = folder
        self.pos = 0
        self.entries: list[tuple[bytes, int, int, int]] = []  # name, header offset, crc, size

    def _write(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        self.pos += len(data)

    def record(self, name: str, size: int, chunks: Iterator[memoryview | bytes]) -> None:
        full = f"{self.folder}/{name}".encode()
        header_offset = self.pos
        zip64 = size >= _ZIP64_LIMIT
        zip64_extra = struct.pack("<HHQQ", 1, 16, 0, 0) if zip64 else b""
        pad = -(header_offset + 30 + len(full) + len(zip64_extra) + 4) % _ALIGN
        extra = zip64_extra + b"FB" + struct.pack("<H", pad) + b"Z" * pad
        sizes = _U32_MAX if zip64 else 0
        self._write(
            struct.pack(
                "<4sHHHHHIIIHH",
                ZIP_LOCAL_MAGIC,
                45 if zip64 else 20,
                0x0808,
                0,
                0,
                0x21,
                0,
                sizes,
                sizes,
                len(full),
                len(extra),
            )
            + full
            + extra
        )
        crc = 0
        written = 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
            self._write(chunk)
            written += len(chunk)
        if written != size:
            raise CompressionError(f"record {name}: wrote {written} bytes, expected {size}")
        if zip64:
            self._write(struct.pack("<4sIQQ", b"PK\x07\x08", crc, size, size))
        else:
            self._write(struct.pack("<4sIII", b"PK\x07\x08", crc, size, size))
        self.entries.append((full, header_offset, crc, size))

    def finish(self) -> None:
        cd_offset = self.pos
        for full, offset, crc, size in self.entries:
            fields = []
            if size >= _ZIP64_LIMIT:
                fields += [size, size]
            if offset >= _ZIP64_LIMIT:
                fields.append(offset)
            extra = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
            small = _U32_MAX if size >= _ZIP64_LIMIT else size
            self._write(
                struct.pack(
                    "<4sHHHHHHIIIHHHHHII",
                    b"PK\x01\x02",
                    45,
                    45 if fields else 20,
                    0x0808,
                    0,
                    0,
                    0x21,
                    crc,
                    small,
                    small,
                    len(full),
                    len(extra),
                    0,
                    0,
                    0,
                    0,
                    _U32_MAX if offset >= _ZIP64_LIMIT else offset,
                )
                + full
                + extra
            )
        cd_size = self.pos - cd_offset
        eocd64_offset = self.pos
        n = len(self.entries)
        self._write(struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, cd_size, cd_offset))
        self._write(struct.pack("<4sIQI", b"PK\x06\x07", 0, eocd64_offset, 1))
        self._write(
            struct.pack(
                "<4sHHHHIIH",
                b"PK\x05\x06",
                0,
                0,
                min(n, 0xFFFF),
                min(n, 0xFFFF),
                _U32_MAX if cd_size >= _ZIP64_LIMIT else cd_size,
                _U32_MAX if cd_offset >= _ZIP64_LIMIT else cd_offset,
                0,
            )
        )


def _tensor_chunks(name: str, value: Any, spec: TensorSpec) -> Iterator[memoryview]:
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray) or tuple(value.shape) != spec.shape or value.dtype != spec.dtype:
        raise CompressionError(
            f"tensor {name!r}: its value does not match its spec {spec.shape} {spec.dtype} "
            "(changed while writing?)"
        )
    arr = np.ascontiguousarray(value)
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and sys.byteorder == "big"):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    raw = arr.reshape(-1).view(np.uint8)
    for start in range(0, raw.size, _CHUNK):
        # NumPy's stubs give ndarray the buffer protocol (__buffer__) only for Python >= 3.12
        yield memoryview(raw[start : start + _CHUNK])  # type: ignore[arg-type]


def write(
    weights: Mapping[str, np.ndarray],
    f: BinaryIO,
    *,
    archive_name: str = "archive",
    structure: _st.Node | None = None,
) -> None:
    """Write ``weights`` as a ``torch.save`` zip file: a flat state dict, or a nested checkpoint.

    The pickle (names, shapes, dtypes) is built from the specs first; then each tensor
    is read, made C-contiguous and streamed into its own ``data/<i>`` record, so a lazy
    :class:`~coreprune.io.base.WeightReader` input is never held whole in memory.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        float16/32/64, bfloat16, int8/16/32/64, uint8, bool, complex64/128 (as
        ``_rebuild_tensor_v2`` with typed storages), and uint16/32/64 and the ml_dtypes
        float8 types (as ``_rebuild_tensor_v3``, torch >= 2.3). Any shape, 0-d and empty
        included; the values are written in C order.
    f : binary file
        Written sequentially from its current position.
    archive_name : str
        Name of the zip's top-level folder (torch ignores it; ``[A-Za-z0-9_.-]+``).
    structure : object, optional
        A checkpoint's nesting (``reader.structure`` of a nested ``torch.save`` or ``.cpz``
        file, :mod:`coreprune.io.structure`): the file then holds that object -- its dicts,
        ``OrderedDict``s, lists, tuples, strings, numbers, booleans and ``None`` -- with
        ``weights[name]`` wherever the structure places the tensor ``name``. Default: an
        ``OrderedDict`` of ``weights``.

    Raises
    ------
    CompressionError
        A name that is not a string, a dtype torch cannot hold, a bad ``archive_name``, or a
        structure that holds a value this writer cannot rebuild or does not place exactly
        the tensors of ``weights``.

    Examples
    --------
    >>> import io, zipfile, numpy as np
    >>> buf = io.BytesIO()
    >>> write({"w": np.ones((2, 2), np.float16)}, buf)
    >>> zipfile.ZipFile(buf).namelist()
    ['archive/data.pkl', 'archive/byteorder', 'archive/data/0', 'archive/version']
    """
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", archive_name) or archive_name in (".", ".."):
        raise CompressionError(f"archive_name {archive_name!r}: use letters, digits, '_', '.', '-'")
    items = []
    for name in weights:
        if not isinstance(name, str):
            raise CompressionError(f"tensor name {name!r}: torch state dicts need string names")
        spec = spec_of(weights, name)
        version, torch_name = _torch_name(name, spec.dtype)
        items.append((name, TensorSpec(spec.shape, np.dtype(spec.dtype)), version, torch_name))
    if structure is None:
        pickle_bytes = _state_dict_pickle(items)
    else:
        _st.check_writable(structure, [name for name, *_ in items], "torch")
        pickle_bytes = _structure_pickle(structure, items)
    z = _ZipWriter(f, archive_name)
    z.record("data.pkl", len(pickle_bytes), iter([pickle_bytes]))
    z.record("byteorder", 6, iter([b"little"]))
    for i, (name, spec, _, _) in enumerate(items):
        z.record(f"data/{i}", spec.nbytes, _tensor_chunks(name, weights[name], spec))
    z.record("version", 2, iter([b"3\n"]))
    z.finish()
