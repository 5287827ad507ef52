"""MXNet NDArray list files (``mx.nd.save``, ``Block.save_parameters``, ``save_checkpoint``), in NumPy.

File layout (all integers little-endian, nothing aligned)::

    u64 0x112 | u64 reserved | u64 N | N x NDArray record | u64 K | K x (u64 length, UTF-8 name)

``K`` is ``N`` for a file saved from a dict and 0 for one saved from a list; a list file's
tensors are named ``"0"``, ``"1"``, ... here. Names are kept as written, so
``save_checkpoint``'s ``arg:``/``aux:`` prefixes survive.

Records of every version MXNet reads are understood: V0 (no magic, u32 dims), V1
(``0xF993FAC8``), V2 (``0xF993FAC9``, "legacy shape" mode, what ``mx.nd.save`` writes, 0-size
arrays such as ``(2, 0)`` included) and V3 (``0xF993FACA``, NumPy-shape mode: 0-d and 0-size
arrays). Type flags 0-12 map to
float32, float64, float16, uint8, int32, int8, int64, bool, int16, uint16, uint32, uint64
and ``ml_dtypes.bfloat16`` (flags 8-11 are read although MXNet 1.9.1 itself rejects them).

Storage types: dense arrays are served as read-only ``numpy.memmap``\\ s at their offset.
``row_sparse`` and ``csr`` arrays are read when indexed and returned dense, or, with
``sparse="scipy"``, as ``scipy.sparse.csr_matrix`` (csr, and 2-D row_sparse: one stored
row = one dense csr row, explicit zeros kept; row_sparse of other rank stays dense).
The data length of a sparse array is computed from its aux shapes, never from its
storage shape, which MXNet may write stale.

Opening a file scans the record headers once, seeking past the data; every count, rank,
dimension, name length and data size is checked against the bytes left before anything
is read, and bytes after the last name are an error (MXNet ignores them; here they mean
corruption).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from ..dtypes import mxnet_type_flags, mxnet_writable_flags
from ..errors import WeightFileError
from .base import (
    MAX_NDIM,
    ExpansionMeter,
    TensorSpec,
    WeightReader,
    check_extent,
    check_shape,
    declared_little_endian,
    element_count,
    file_region,
    read_exact,
    spec_of,
    write_c_order,
)

__all__ = [
    "FORMAT",
    "EXTENSIONS",
    "TYPE_FLAGS",
    "WRITABLE_FLAGS",
    "sniff",
    "open_reader",
    "write",
    "MXNetParamsReader",
]

FORMAT = "mxnet"
EXTENSIONS = (".params", ".nd")

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA

#: mshadow type flag -> dtype (little-endian)
TYPE_FLAGS: dict[int, np.dtype] = mxnet_type_flags()
#: dtype name -> type flag, for the dtypes MXNet 1.9.1 can load
WRITABLE_FLAGS: dict[str, int] = mxnet_writable_flags()

_DEV_TYPES = {1: "cpu", 2: "gpu", 3: "cpu_pinned", 5: "cpu_shared"}
_STYPES = {0: "default", 1: "row_sparse", 2: "csr"}
_NUM_AUX = {0: 0, 1: 1, 2: 2}
_MIN_RECORD = 4  # every record starts with a u32


@dataclass
class _Block:
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int = -1

    @property
    def nbytes(self) -> int:
        return element_count(self.shape) * self.dtype.itemsize


@dataclass
class _Record:
    version: int
    stype: int
    shape: tuple[int, ...]
    data: _Block
    aux: list[_Block] = field(default_factory=list)


class _Cursor:
    """Sequential reads with every length checked against the file before it is read."""

    def __init__(self, f: BinaryIO, path: os.PathLike, size: int) -> None:
        self.f, self.path, self.size, self.pos = f, path, size, 0

    def take(self, n: int, what: str) -> bytes:
        check_extent(self.path, what, self.pos, n, self.size)
        data = read_exact(self.f, n, self.path, what)
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> int:
        check_extent(self.path, what, self.pos, n, self.size)
        start, self.pos = self.pos, self.pos + n
        self.f.seek(self.pos)
        return start

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def tshape(self, what: str, dim_format: str = "<q") -> tuple[int, list[int]]:
        """A TShape: i32 ndim then ndim dims; ``ndim == -1`` (unknown) gives no dims."""
        (ndim,) = self.unpack("<i", what)
        if ndim < -1 or ndim > MAX_NDIM:
            raise WeightFileError(
                f"{self.path}: {what} has {ndim} dimensions (at most {MAX_NDIM}; corrupted?)"
            )
        return ndim, self.dims(max(ndim, 0), what, dim_format)

    def dims(self, ndim: int, what: str, dim_format: str) -> list[int]:
        size = struct.calcsize(dim_format)
        raw = self.take(ndim * size, what)
        return [int(v) for v in np.frombuffer(raw, np.dtype(dim_format), ndim)]


def sniff(head: bytes) -> bool:
    """True if ``head`` starts with the NDArray-list magic ``0x112`` (u64, little-endian).

    Examples
    --------
    >>> sniff(bytes.fromhex("1201000000000000")), sniff(b"PK\\x03\\x04")
    (True, False)
    """
    return len(head) >= 8 and int.from_bytes(head[:8], "little") == LIST_MAGIC


class MXNetParamsReader(WeightReader):
    """Lazy reader of an MXNet NDArray list file.

    Parameters
    ----------
    path : path-like
    sparse : {"dense", "scipy"}
        How ``row_sparse``/``csr`` arrays are returned.
    mmap : bool
        Serve dense arrays as memory maps (default) or read each into memory when it is indexed.
    max_expansion : int, optional
        Bytes that expanding sparse arrays may build beyond the bytes they store, all arrays
        together (default :func:`coreprune.io.base.expansion_budget`).

    Attributes
    ----------
    storage_types : dict of str to str
        ``"default"``, ``"row_sparse"`` or ``"csr"`` per tensor.
    versions : dict of str to int
        Record version (0-3) per tensor.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "net.params")
    >>> with open(p, "wb") as f:
    ...     write({"arg:fc_weight": np.ones((2, 3), np.float32)}, f)
    >>> with MXNetParamsReader(p) as r:
    ...     print(list(r), r.spec("arg:fc_weight").shape, r.versions["arg:fc_weight"])
    ['arg:fc_weight'] (2, 3) 2
    """

    format = FORMAT

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        sparse: str = "dense",
        mmap: bool = True,
        max_expansion: int | None = None,
    ) -> None:
        super().__init__(path)
        if sparse not in ("dense", "scipy"):
            raise WeightFileError(f"{self.path}: sparse must be 'dense' or 'scipy', got {sparse!r}")
        self._sparse, self._mmap, self._max_expansion = sparse, mmap, max_expansion
        self._records: dict[str, _Record] = {}
        self.storage_types: dict[str, str] = {}
        self.versions: dict[str, int] = {}
        try:
            size = os.path.getsize(self.path)
            self._meter = ExpansionMeter(self.path, size, max_expansion)
            with open(self.path, "rb") as f:
                self._scan(_Cursor(f, self.path, size))
        except OSError as e:
            raise WeightFileError(f"{self.path}: cannot read ({e.strerror or e})") from e

    def _scan(self, cur: _Cursor) -> None:
        path = self.path
        magic, _reserved, count = cur.unpack("<QQQ", "the file header")
        if magic != LIST_MAGIC:
            raise WeightFileError(f"{path}: not an MXNet NDArray file (magic 0x{magic:x}, expected 0x112)")
        if count > (cur.size - cur.pos) // _MIN_RECORD:
            raise WeightFileError(
                f"{path}: the header declares {count} arrays but only {cur.size - cur.pos} bytes follow "
                "(corrupted)"
            )
        records = [self._scan_record(cur, i) for i in range(count)]
        (name_count,) = cur.unpack("<Q", "the name count")
        if name_count not in (0, count):
            raise WeightFileError(f"{path}: {name_count} names for {count} arrays (corrupted)")
        names = [str(i) for i in range(count)]
        for i in range(name_count):
            (length,) = cur.unpack("<Q", f"the length of name #{i}")
            raw = cur.take(length, f"name #{i}")
            try:
                names[i] = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise WeightFileError(f"{path}: name #{i} is not UTF-8 ({e})") from e
        if cur.pos != cur.size:
            raise WeightFileError(
                f"{path}: {cur.size - cur.pos} unexpected bytes after the last name at offset {cur.pos} "
                "(corrupted)"
            )
        for name, rec in zip(names, records):
            if name in self._records:
                raise WeightFileError(f"{path}: the name {name!r} occurs twice")
            self._records[name] = rec
            self._specs[name] = TensorSpec(rec.shape, rec.data.dtype)
            self.storage_types[name] = _STYPES[rec.stype]
            self.versions[name] = rec.version

    def _scan_record(self, cur: _Cursor, index: int) -> _Record:
        path, what = self.path, f"array #{index}"
        (first,) = cur.unpack("<I", f"the magic of {what}")
        stype = 0
        if first in (V2_MAGIC, V3_MAGIC):
            version = 2 if first == V2_MAGIC else 3
            (stype,) = cur.unpack("<i", f"the storage type of {what}")
            if stype not in _STYPES:
                raise WeightFileError(f"{path}: {what} has the unknown storage type {stype} (corrupted?)")
            if version == 3 and stype != 0:
                raise WeightFileError(f"{path}: {what} is a sparse V3 record, which MXNet cannot load")
            if stype:
                cur.tshape(f"the storage shape of {what}")  # ignored: MXNet may write it stale
            ndim, dims = cur.tshape(f"the shape of {what}")
        elif first == V1_MAGIC:
            version = 1
            ndim, dims = cur.tshape(f"the shape of {what}")
        elif first <= MAX_NDIM:
            version, ndim = 0, first
            dims = cur.dims(ndim, f"the shape of {what}", "<I")
        else:
            raise WeightFileError(f"{path}: {what} starts with the unknown magic 0x{first:08x} (corrupted?)")
        shape = self._check_dims(version, ndim, dims, what)
        dev_type, dev_id, flag = cur.unpack("<iii", f"the context and type of {what}")
        if dev_type not in _DEV_TYPES or dev_id < 0:
            raise WeightFileError(
                f"{path}: {what} names the unknown device ({dev_type}, {dev_id}) (corrupted?)"
            )
        dtype = self._dtype(flag, what)
        aux = []
        for k in range(_NUM_AUX[stype]):
            (aux_flag,) = cur.unpack("<i", f"aux type #{k} of {what}")
            aux_dtype = self._dtype(aux_flag, what)
            if aux_dtype.kind not in "iu":
                raise WeightFileError(
                    f"{path}: {what} has a non-integer index array ({aux_dtype}) (corrupted?)"
                )
            _, aux_dims = cur.tshape(f"aux shape #{k} of {what}")
            aux.append(
                _Block(
                    aux_dtype, check_shape(path, f"aux shape #{k} of {what}", aux_dims, aux_dtype.itemsize)
                )
            )
        data = _Block(dtype, self._data_shape(stype, shape, aux, what))
        data.offset = cur.skip(data.nbytes, f"the data of {what}")
        for k, block in enumerate(aux):
            block.offset = cur.skip(block.nbytes, f"aux data #{k} of {what}")
        return _Record(version, stype, shape, data, aux)

    def _check_dims(self, version: int, ndim: int, dims: list[int], what: str) -> tuple[int, ...]:
        path = self.path
        if version == 3:
            if ndim == -1 or -1 in dims:
                raise WeightFileError(
                    f"{path}: {what} has an unknown shape (a 'none' array MXNet cannot load)"
                )
        elif ndim <= 0:
            raise WeightFileError(
                f"{path}: {what} is an empty ('none') V{version} record, which MXNet cannot load (corrupted?)"
            )
        elif any(d < 0 for d in dims):
            raise WeightFileError(
                f"{path}: {what} has the shape {tuple(dims)}; V{version} records cannot hold negative dims "
                "(corrupted?)"
            )
        return check_shape(path, f"the shape of {what}", dims, 1)

    def _dtype(self, flag: int, what: str) -> np.dtype:
        if flag not in TYPE_FLAGS:
            raise WeightFileError(f"{self.path}: {what} has the unknown type flag {flag} (corrupted?)")
        return TYPE_FLAGS[flag]

    def _data_shape(
        self, stype: int, shape: tuple[int, ...], aux: list[_Block], what: str
    ) -> tuple[int, ...]:
        """Shape of the stored values: dense ``shape``; sparse: derived from the aux shapes."""
        path = self.path
        if stype == 0:
            return shape
        if stype == 1:
            if len(shape) < 1 or len(aux[0].shape) != 1 or aux[0].shape[0] > shape[0]:
                raise WeightFileError(
                    f"{path}: row_sparse {what} of shape {shape} has an index array of shape {aux[0].shape} "
                    "(corrupted?)"
                )
            return (aux[0].shape[0], *shape[1:])
        indptr, indices = aux
        if len(shape) != 2 or indptr.shape != (shape[0] + 1,) or len(indices.shape) != 1:
            raise WeightFileError(
                f"{path}: csr {what} of shape {shape} has indptr {indptr.shape} and indices {indices.shape} "
                "(corrupted?)"
            )
        return indices.shape

    def _block(self, block: _Block) -> np.ndarray:
        """Read one stored block into a fresh writable array."""
        buf = bytearray(block.nbytes)
        with open(self.path, "rb") as f:
            f.seek(block.offset)
            if f.readinto(buf) != block.nbytes:
                raise WeightFileError(f"{self.path}: the file shrank while it was being read")
        return np.frombuffer(buf, block.dtype).reshape(block.shape)

    def _read(self, name: str) -> Any:
        rec = self._records[name]
        if rec.stype == 0:
            if rec.data.nbytes == 0:
                return np.empty(rec.shape, rec.data.dtype)
            raw = file_region(self.path, rec.data.offset, rec.data.nbytes, mmap=self._mmap,
                              what=f"array {name!r:.80}")
            return raw.view(rec.data.dtype).reshape(rec.shape)
        values = self._block(rec.data)
        aux = [self._block(b).astype(np.int64) for b in rec.aux]
        if rec.stype == 1:
            return self._row_sparse(name, rec, values, aux[0])
        return self._csr(name, rec, values, aux[0], aux[1])

    def _check_limit(self, name: str, rec: _Record, nbytes: int, what: str) -> None:
        # A sparse header may declare any logical shape; the expansion budget bounds what that costs.
        stored = rec.data.nbytes + sum(b.nbytes for b in rec.aux)
        self._meter.charge(
            name, nbytes, stored,
            what=f"{_STYPES[rec.stype]} array {name!r:.80} of shape {rec.shape} ({what})",
            hint="or open it with sparse='scipy'" if what == "dense" else "",
        )

    def _dense_out(self, name: str, rec: _Record) -> np.ndarray:
        self._check_limit(name, rec, element_count(rec.shape) * rec.data.dtype.itemsize, "dense")
        return np.zeros(rec.shape, rec.data.dtype)

    def _row_sparse(self, name: str, rec: _Record, values: np.ndarray, rows: np.ndarray) -> Any:
        if rows.size and (rows[0] < 0 or rows[-1] >= rec.shape[0] or np.any(np.diff(rows) <= 0)):
            raise WeightFileError(
                f"{self.path}: row_sparse array {name!r} has row indices that are not increasing within "
                f"[0, {rec.shape[0]}) (corrupted)"
            )
        if self._sparse == "scipy" and len(rec.shape) == 2:
            import scipy.sparse

            n_rows, n_cols = rec.shape
            self._check_limit(name, rec, 8 * (n_rows + 1), "of csr row pointers")
            indptr = np.zeros(n_rows + 1, np.int64)
            indptr[rows + 1] = n_cols
            np.cumsum(indptr, out=indptr)
            indices = np.tile(np.arange(n_cols, dtype=np.int64), rows.size)
            return self._scipy(
                name, scipy.sparse.csr_matrix, (values.reshape(-1), indices, indptr), rec.shape
            )
        out = self._dense_out(name, rec)
        out[rows] = values
        return out

    def _csr(
        self, name: str, rec: _Record, values: np.ndarray, indptr: np.ndarray, indices: np.ndarray
    ) -> Any:
        n_rows, n_cols = rec.shape
        if (
            indptr[0] != 0
            or indptr[-1] != indices.size
            or np.any(np.diff(indptr) < 0)
            or (indices.size and (indices.min() < 0 or indices.max() >= n_cols))
        ):
            raise WeightFileError(
                f"{self.path}: csr array {name!r} has inconsistent indptr/indices (corrupted)"
            )
        if self._sparse == "scipy":
            import scipy.sparse

            return self._scipy(name, scipy.sparse.csr_matrix, (values, indices, indptr), rec.shape)
        out = self._dense_out(name, rec)
        out[np.repeat(np.arange(n_rows), np.diff(indptr)), indices] = values
        return out

    def _scipy(self, name: str, cls: Any, parts: tuple[np.ndarray, ...], shape: tuple[int, ...]) -> Any:
        try:
            return cls(parts, shape=shape)
        except (ValueError, TypeError, OverflowError) as e:
            raise WeightFileError(f"{self.path}: scipy cannot represent array {name!r} ({e})") from e


def open_reader(
    path: str | os.PathLike, *, sparse: str = "dense", mmap: bool = True, max_expansion: int | None = None
) -> MXNetParamsReader:
    """Open an MXNet ``.params``/``.nd`` file lazily.

    Parameters
    ----------
    path : path-like
    sparse : {"dense", "scipy"}
        ``"dense"`` (default) expands ``row_sparse``/``csr`` arrays to ``numpy.ndarray``;
        ``"scipy"`` returns ``scipy.sparse.csr_matrix`` for csr and 2-D row_sparse arrays.
    mmap : bool
        Serve dense arrays as memory maps (default) or read each into memory when it is indexed
        (safe against the file changing; see :func:`coreprune.io.base.file_region`).
    max_expansion : int, optional
        Bytes that expanding ``row_sparse``/``csr`` arrays may build beyond the bytes they store
        (default :func:`coreprune.io.base.expansion_budget`).

    Returns
    -------
    MXNetParamsReader

    Raises
    ------
    WeightFileError
        Bad magic, impossible counts, ranks or dims, unknown type flags or devices, data
        running past the end, names that are not UTF-8, duplicate names, trailing bytes.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "model-0000.params")
    >>> with open(p, "wb") as f:
    ...     write({"aux:bn_running_mean": np.zeros(4, np.float32)}, f)
    >>> with open_reader(p) as r:
    ...     print(r["aux:bn_running_mean"].tolist())
    [0.0, 0.0, 0.0, 0.0]
    """
    return MXNetParamsReader(path, sparse=sparse, mmap=mmap, max_expansion=max_expansion)


def _tshape(shape: tuple[int, ...]) -> bytes:
    return struct.pack(f"<i{len(shape)}q", len(shape), *shape)


def write(weights: Mapping[str, np.ndarray], f: BinaryIO, *, np_shape: bool = False) -> None:
    """Write ``weights`` as an MXNet NDArray dict file, one tensor at a time.

    Each tensor becomes a dense record on ``cpu(0)`` holding its elements in C order,
    little-endian. By default the records are V2, what ``mx.nd.save`` writes and
    ``mx.nd.load`` / ``Block.load_parameters`` read without NumPy-shape mode. V2 holds 0-size
    arrays of rank >= 1 (``(2, 0)``, ``(0,)``: the header, the context, no data, as ``mx.nd.save``
    writes them) but not 0-d arrays. ``np_shape=True`` writes V3 records for every tensor
    (0-d and 0-size included); MXNet loads such files only with NumPy-shape semantics on
    (``mx.npx.set_np()`` or ``with mx.util.np_shape(True):``), ``Block.load_parameters``
    included.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Dtypes float32, float64, float16, uint8, int32, int8, int64, bool or bfloat16.
    f : binary file
    np_shape : bool
        Write V3 (NumPy-shape) records.

    Raises
    ------
    WeightFileError
        A dtype MXNet 1.9.1 cannot load (int16, uint16, uint32, uint64, complex, ...), or
        a 0-d tensor without ``np_shape=True``.

    Examples
    --------
    >>> import io, numpy as np
    >>> buf = io.BytesIO()
    >>> write({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, buf)
    >>> len(buf.getvalue())  # the worked example of the format spec
    105
    """
    names = list(weights)
    f.write(struct.pack("<QQQ", LIST_MAGIC, 0, len(names)))
    for name in names:
        spec = spec_of(weights, name)
        flag = WRITABLE_FLAGS.get(spec.dtype.name)
        if flag is None:
            allowed = ", ".join(WRITABLE_FLAGS)
            raise WeightFileError(
                f"tensor {name!r} has dtype {spec.dtype}, which MXNet 1.9.1 cannot load; "
                f"convert it to one of {allowed}"
            )
        if not np_shape and len(spec.shape) == 0:
            raise WeightFileError(
                f"tensor {name!r} is 0-d: MXNet's default (legacy-shape) records cannot represent it; "
                "pass np_shape=True to write V3 records, which load under mx.npx.set_np()"
            )
        array = weights[name]
        array = declared_little_endian(name, array, spec)
        f.write(struct.pack("<Ii", V3_MAGIC if np_shape else V2_MAGIC, 0))
        f.write(_tshape(spec.shape))
        f.write(struct.pack("<iii", 1, 0, flag))
        write_c_order(f, array)
    encoded = [n.encode("utf-8") for n in names]
    f.write(struct.pack("<Q", len(encoded)))
    for raw in encoded:
        f.write(struct.pack("<Q", len(raw)) + raw)
