"""NumPy ``.npz`` archives and single ``.npy`` arrays, read lazily and written one array at a time.

An ``.npz`` file is a zip archive with one ``<name>.npy`` member per array (what
``numpy.savez`` writes). Reading:

* the zip's central directory and each member's small ``.npy`` header are read when the
  file opens, giving names, shapes and dtypes;
* a **stored** (uncompressed) member is served as a read-only ``numpy.memmap`` at the
  offset where its data starts (found by parsing the member's local zip header), so a
  4 GiB archive costs no RAM until its values are touched. Its CRC-32 is not checked:
  that would mean reading the whole member;
* a **compressed** member is decompressed when it is indexed, one at a time; the zip
  CRC-32 is checked, and memory grows only with the bytes really decompressed.

Pickles are never loaded (``allow_pickle=False`` always): an object array raises
:class:`~coreprune.errors.WeightFileError`. Every ``.npy`` header is bounded to
:data:`MAX_HEADER_SIZE` bytes, and every declared shape must account for exactly the
bytes its member holds.

``bfloat16`` and the ``float8`` types of ``ml_dtypes`` have no ``.npy`` descriptor
(``numpy.save`` silently writes them as opaque ``'<V2'`` voids). This module stores such
an array ``w`` as the raw bits, an unsigned integer array of the same item size, in the
member ``w@bfloat16.npy``; ``numpy.load`` reads it as ``uint16`` under the key
``w@bfloat16``, and this module reads it back as ``bfloat16`` under the name ``w``.

A ``.npy`` file holds one array; its name is the file's stem (``fc.npy`` -> ``"fc"``).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from ..dtypes import ML_FLOAT_NAMES, ml_dtype
from ..errors import WeightFileError
from .base import (
    ExpansionMeter,
    TensorSpec,
    WeightReader,
    check_extent,
    check_shape,
    file_region,
    read_exact,
    spec_of,
)
from .zip_reader import LOCAL_HEADER_SIZE, ZIP_EMPTY_MAGIC, ZIP_LOCAL_MAGIC, ZipArchive, first_member_name

__all__ = ["FORMAT", "EXTENSIONS", "EXTENSION_OPTIONS", "MAX_HEADER_SIZE", "sniff", "open_reader", "write"]

FORMAT = "npz"
EXTENSIONS = (".npz", ".npy")
#: ``save(weights, "x.npy")`` writes a single array.
EXTENSION_OPTIONS = {".npy": {"single": True}}
#: Largest ``.npy`` header accepted, in bytes (NumPy's own default limit).
MAX_HEADER_SIZE = 10000

_NPY_MAGIC = b"\x93NUMPY"
_ALIGN = 64  # writer: member data (after the .npy header, itself a multiple of 64) starts 64-aligned
_PAD_ID = 0x5043  # zip extra-field id of the writer's alignment padding ("CP")
_CHUNK = 1 << 20
_MAX_MEMBER_NAME = 0xFFFF  # the zip format's 16-bit name length
# ml_dtypes types with no .npy descriptor, stored as raw bits under "name@<type>".
_BITS_DTYPES = tuple(sorted(ML_FLOAT_NAMES))
_UINT_OF_SIZE: dict[int, np.dtype] = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16)}


def sniff(head: bytes) -> bool:
    """True if ``head`` (the first bytes of a file) looks like a ``.npy`` array or an ``.npz`` archive.

    A zip archive counts as ``.npz`` unless its first member's name is visible in ``head``
    and does not end with ``.npy`` (a PyTorch zip starts with ``<archive>/data.pkl``).

    Examples
    --------
    >>> sniff(b"\\x93NUMPY\\x01\\x00"), sniff(b"\\x12\\x01\\x00\\x00")
    (True, False)
    """
    if head.startswith(_NPY_MAGIC) or head.startswith(ZIP_EMPTY_MAGIC):
        return True
    if not head.startswith(ZIP_LOCAL_MAGIC):
        return False
    name = first_member_name(head)
    return name is None or name.endswith(b".npy")


def _bits_dtype(name: str) -> np.dtype | None:
    """The ml_dtypes type called ``name`` if this ml_dtypes has it and it is stored as raw bits."""
    return ml_dtype(name) if name in ML_FLOAT_NAMES else None


def _stored_form(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """Member name (without ``.npy``) and the array to write for the tensor ``name``."""
    dtype = array.dtype
    if dtype.hasobject:
        raise WeightFileError(f"tensor {name!r} is an object array; .npz files here never hold pickles")
    if dtype.type.__module__.startswith("ml_dtypes"):
        if dtype.name in ML_FLOAT_NAMES:
            return f"{name}@{dtype.name}", array.view(_UINT_OF_SIZE[dtype.itemsize])
        raise WeightFileError(
            f"tensor {name!r} has dtype {dtype.name}, which .npz cannot store "
            f"(supported ml_dtypes types: {', '.join(t for t in _BITS_DTYPES if ml_dtype(t) is not None)})"
        )
    if "@" in name:
        stem, _, suffix = name.rpartition("@")
        bits = _bits_dtype(suffix)
        if stem and bits is not None and dtype == _UINT_OF_SIZE[bits.itemsize]:
            raise WeightFileError(
                f"tensor {name!r}: an unsigned array named '<name>@{suffix}' would be read back as {suffix} "
                "(this is how .npz stores that type); rename it"
            )
    return name, array


def _logical(path: Path, member: str, dtype: np.dtype) -> tuple[str, np.dtype]:
    """Tensor name and dtype for a member name (``.npy`` stripped) and its stored dtype."""
    stem, sep, suffix = member.rpartition("@")
    bits = _bits_dtype(suffix) if sep and stem else None
    if bits is not None and dtype == _UINT_OF_SIZE.get(bits.itemsize):
        return stem, bits
    if dtype.itemsize == 0:
        raise WeightFileError(f"{path}: array {member!r} has the zero-size dtype {dtype} (corrupted?)")
    return member, dtype


def _parse_npy_header(data: bytes, path: Path, what: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Parse the ``.npy`` header at the start of ``data``.

    Returns ``(shape, fortran_order, dtype, header_length)``; ``header_length`` counts the
    magic, version, length field and header text, i.e. where the array data starts.
    """
    if len(data) < 10 or not data.startswith(_NPY_MAGIC):
        shown = data[:6] if len(data) >= 6 else data
        raise WeightFileError(f"{path}: {what} is not a .npy array (starts with {shown!r})")
    version = (data[6], data[7])
    if version == (1, 0):
        reader = np.lib.format.read_array_header_1_0
        length = int.from_bytes(data[8:10], "little") + 10
    elif version == (2, 0):
        reader = np.lib.format.read_array_header_2_0
        length = int.from_bytes(data[8:12], "little") + 12 if len(data) >= 12 else len(data) + 1
    else:
        raise WeightFileError(f"{path}: {what} uses .npy format version {version}, which is not supported")
    if length > len(data):
        raise WeightFileError(
            f"{path}: {what} has a .npy header of {length} bytes; the limit is {MAX_HEADER_SIZE} "
            "or the data ends inside it (truncated or corrupted)"
        )
    fp = io.BytesIO(data)
    fp.seek(8)
    try:
        with warnings.catch_warnings():
            # Parsing hostile header text can warn about escape sequences; the error below says enough.
            warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
            shape, fortran_order, dtype = reader(fp, max_header_size=MAX_HEADER_SIZE)
    except Exception as e:  # numpy's parser can raise SyntaxError, tokenize.TokenError, ...: none may escape
        raise WeightFileError(f"{path}: {what} has a corrupted .npy header ({type(e).__name__}: {e})") from e
    if dtype.hasobject:
        raise WeightFileError(
            f"{path}: {what} is an object array; pickled data is never loaded (allow_pickle=False)"
        )
    shape = check_shape(path, what, shape, dtype.itemsize)
    return shape, bool(fortran_order), dtype, length


@dataclass(frozen=True)
class _Entry:
    """Where one array lives: its zip member (None for a .npy file), data offset when stored
    (-1 when compressed), .npy header length and the dtype as stored."""

    zinfo: zipfile.ZipInfo | None
    data_offset: int
    header_length: int
    stored_dtype: np.dtype
    fortran: bool


class NpzReader(WeightReader):
    """Lazy reader of an ``.npz`` archive or a single ``.npy`` file.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> np.savez(p, fc=np.ones((2, 3), np.float32))
    >>> with NpzReader(p) as r:
    ...     print(r.spec("fc").shape, type(r["fc"]).__name__)
    (2, 3) memmap
    """

    format = FORMAT

    def __init__(
        self, path: str | os.PathLike, *, mmap: bool = True, max_expansion: int | None = None
    ) -> None:
        super().__init__(path)
        self._entries: dict[str, _Entry] = {}
        self._zip: ZipArchive | None = None
        self._mmap = mmap
        try:
            self._size = os.path.getsize(self.path)
            self._meter = ExpansionMeter(self.path, self._size, max_expansion)
            with open(self.path, "rb") as f:
                head = f.read(len(_NPY_MAGIC))
        except OSError as e:
            raise WeightFileError(f"{self.path}: cannot open ({e.strerror or e})") from e
        if head == _NPY_MAGIC:
            self._open_npy()
        else:
            self._open_npz()

    def _add(self, member: str, shape: tuple[int, ...], entry: _Entry) -> None:
        name, dtype = _logical(self.path, member, entry.stored_dtype)
        if name in self._specs:
            raise WeightFileError(f"{self.path}: the archive holds the array {name!r} twice")
        self._specs[name] = TensorSpec(shape, dtype)
        self._entries[name] = entry

    def _open_npy(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read(12 + MAX_HEADER_SIZE)
        shape, fortran, dtype, length = _parse_npy_header(data, self.path, "the file")
        nbytes = TensorSpec(shape, dtype).nbytes
        check_extent(self.path, "the array data", length, nbytes, self._size)
        if length + nbytes != self._size:
            raise WeightFileError(
                f"{self.path}: {self._size - length - nbytes} bytes follow the array data (corrupted?)"
            )
        self._add(self.path.stem, shape, _Entry(None, length, length, dtype, fortran))

    def _open_npz(self) -> None:
        self._zip = ZipArchive(self.path, ".npz (zip)")
        try:
            for zinfo in self._zip.members:
                self._scan_member(zinfo)
        except BaseException:
            self.close()
            raise

    def _scan_member(self, zinfo: zipfile.ZipInfo) -> None:
        assert self._zip is not None
        path, fname = self.path, zinfo.filename
        if not fname.endswith(".npy"):
            raise WeightFileError(
                f"{path}: member {fname!r} is not a .npy array; this is not a NumPy .npz file"
            )
        what = f"array {fname[:-4]!r}"
        if zinfo.compress_type == zipfile.ZIP_STORED:
            start, length = self._zip.stored_span(zinfo, what)
            head = self._zip.read_span(start, min(length, 12 + MAX_HEADER_SIZE), f"the .npy header of {what}")
        else:
            start = -1
            with self._zip.open_compressed(zinfo, what) as member:
                head = member.read(min(zinfo.file_size, 12 + MAX_HEADER_SIZE))
        shape, fortran, dtype, length = _parse_npy_header(head, path, what)
        nbytes = TensorSpec(shape, dtype).nbytes
        if length + nbytes != zinfo.file_size:
            raise WeightFileError(
                f"{path}: {what} declares shape {shape} of {dtype} ({nbytes} bytes) but its member holds "
                f"{zinfo.file_size - length} data bytes (truncated or corrupted)"
            )
        self._add(
            fname[:-4],
            shape,
            _Entry(zinfo, start + length if start >= 0 else -1, length, dtype, fortran),
        )

    def _read(self, name: str) -> np.ndarray:
        spec, entry = self._specs[name], self._entries[name]
        order: Literal["C", "F"] = "F" if entry.fortran else "C"
        if entry.data_offset >= 0:
            if spec.nbytes == 0:
                return np.empty(spec.shape, spec.dtype, order=order)
            try:
                raw = file_region(self.path, entry.data_offset, spec.nbytes, mmap=self._mmap,
                                  what=f"array {name!r}")
            except (OSError, ValueError) as e:
                raise WeightFileError(f"{self.path}: cannot map array {name!r} ({e})") from e
            return raw.view(spec.dtype).reshape(spec.shape, order=order)
        self._meter.charge(name, spec.nbytes, entry.zinfo.compress_size if entry.zinfo else 0,
                           what=f"array {name!r} (compressed)")
        return self._decompress(name, spec, entry, order)

    def _decompress(self, name: str, spec: TensorSpec, entry: _Entry, order: Literal["C", "F"]) -> np.ndarray:
        if self._zip is None:
            raise WeightFileError(f"{self.path}: the reader is closed")
        assert entry.zinfo is not None
        buf = bytearray()
        with self._zip.open_compressed(entry.zinfo, f"array {name!r}") as member:
            read_exact(member, entry.header_length, self.path, f"the .npy header of {name!r}")
            # Grow with the bytes really decompressed: a lying size field costs nothing.
            while len(buf) < spec.nbytes:
                chunk = member.read(min(_CHUNK, spec.nbytes - len(buf)))
                if not chunk:
                    break
                buf += chunk
            trailing = member.read(1)  # reaching the end makes zipfile check the CRC-32
        if len(buf) != spec.nbytes or trailing:
            raise WeightFileError(
                f"{self.path}: array {name!r} should hold {spec.nbytes} bytes but its member does not "
                "(truncated or corrupted)"
            )
        stored = np.frombuffer(buf, entry.stored_dtype).reshape(spec.shape, order=order)
        return stored.view(spec.dtype) if spec.dtype != entry.stored_dtype else stored

    def close(self) -> None:
        """Close the archive. Arrays already returned stay valid."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None


def open_reader(
    path: str | os.PathLike, *, mmap: bool = True, max_expansion: int | None = None, **options: Any
) -> NpzReader:
    """Open an ``.npz`` archive or a ``.npy`` file lazily.

    Parameters
    ----------
    path : path-like
    mmap : bool
        Serve stored members as memory maps (default) or read each into memory when it is
        indexed (safe against the file changing; see :func:`coreprune.io.base.file_region`).
    max_expansion : int, optional
        Bytes that decompressing members may build beyond their compressed size, all members
        together (default :func:`coreprune.io.base.expansion_budget`).
    **options
        None are accepted.

    Returns
    -------
    NpzReader

    Raises
    ------
    WeightFileError
        Not a zip/``.npy`` file, a member that is not a ``.npy`` array, an object array,
        a header larger than :data:`MAX_HEADER_SIZE`, or a shape that does not match the
        bytes present.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "bias.npy")
    >>> np.save(p, np.arange(3.0))
    >>> with open_reader(p) as r:
    ...     print(list(r), r["bias"].tolist())
    ['bias'] [0.0, 1.0, 2.0]
    """
    if options:
        raise WeightFileError(f"{path}: the npz reader takes no options, got {', '.join(sorted(options))}")
    return NpzReader(path, mmap=mmap, max_expansion=max_expansion)


def _aligned_info(name: str, offset: int) -> zipfile.ZipInfo:
    """A stored ZipInfo whose local extra field pads the member data to a multiple of :data:`_ALIGN`."""
    zinfo = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    zinfo.compress_type = zipfile.ZIP_STORED
    zinfo.external_attr = 0o644 << 16
    try:
        name_len = len(name.encode("ascii"))
    except UnicodeEncodeError:
        name_len = len(name.encode("utf-8"))
    # Local header, name, our padding field (4 + p bytes), and zipfile's forced zip64 extra (20 bytes).
    used = offset + LOCAL_HEADER_SIZE + name_len + 4 + 20
    zinfo.extra = struct.pack("<HH", _PAD_ID, -used % _ALIGN) + b"\0" * (-used % _ALIGN)
    return zinfo


def write(
    weights: Mapping[str, np.ndarray], f: BinaryIO, *, single: bool = False, compressed: bool = False
) -> None:
    """Write ``weights`` as an ``.npz`` archive (or one ``.npy`` array), one array at a time.

    The archive is what ``numpy.savez`` writes and ``numpy.load`` reads: one
    ``<name>.npy`` member per array, in the mapping's order, ``allow_pickle=False``.
    Uncompressed members start on a 64-byte boundary, so memory-mapped arrays are aligned.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Any dtype but object; ``bfloat16``/``float8`` are stored as raw bits (see the module docs).
    f : binary file
        Seekable, opened for writing.
    single : bool
        Write a single ``.npy`` array (``weights`` must hold exactly one; its name is not stored).
    compressed : bool
        Deflate each member, like ``numpy.savez_compressed`` (such members are not memory-mapped
        when read).

    Raises
    ------
    WeightFileError
        An object array, a name that would read back as another dtype, or ``single`` with
        other than one array.

    Examples
    --------
    >>> import io, numpy as np
    >>> buf = io.BytesIO()
    >>> write({"w": np.ones((2, 2), np.float32)}, buf)
    >>> _ = buf.seek(0)
    >>> np.load(buf)["w"].tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    names = list(weights)
    if single:
        if len(names) != 1:
            raise WeightFileError(
                f"a .npy file holds exactly one array but {len(names)} were given; use .npz for several"
            )
        array = _checked_array(weights, names[0])
        member, array = _stored_form(names[0], array)
        if member != names[0]:
            raise WeightFileError(
                f"tensor {names[0]!r}: a .npy file cannot record the dtype {member.rpartition('@')[2]} "
                "(it would read back as raw unsigned bits); save to .npz instead"
            )
        np.lib.format.write_array(f, array, allow_pickle=False)
        return
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    seen: set[str] = set()
    for name in names:  # before anything is written: a zip member name is at most 65,535 bytes
        length = len(_stored_form(name, np.empty(0, spec_of(weights, name).dtype))[0].encode("utf-8",
                                                                                          "surrogatepass"))
        if length + len(".npy") > _MAX_MEMBER_NAME:
            raise WeightFileError(
                f"tensor {name[:60]!r}...: its name is {length} bytes; a zip member name (name + '.npy') "
                f"holds at most {_MAX_MEMBER_NAME} bytes, so .npz cannot store it (use .safetensors or .pt)"
            )
    with zipfile.ZipFile(f, "w", compression=method, allowZip64=True) as zf:
        for name in names:
            spec = spec_of(weights, name)
            if spec.dtype.hasobject:
                raise WeightFileError(
                    f"tensor {name!r} is an object array; .npz files here never hold pickles"
                )
            array = _checked_array(weights, name)
            member, array = _stored_form(name, array)
            if member in seen:
                raise WeightFileError(
                    f"tensor {name!r}: two tensors would be stored as the member {member!r}.npy"
                )
            seen.add(member)
            if compressed:
                zinfo = zipfile.ZipInfo(member + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                zinfo.compress_type = method
                zinfo.external_attr = 0o644 << 16
            else:
                zinfo = _aligned_info(member + ".npy", f.tell())
            with zf.open(zinfo, "w", force_zip64=True) as out:
                np.lib.format.write_array(out, array, allow_pickle=False)


def _checked_array(weights: Mapping[str, Any], name: str) -> np.ndarray:
    value = weights[name]
    if not isinstance(value, np.ndarray):
        raise WeightFileError(f"tensor {name!r} is a {type(value).__name__}, not a numpy.ndarray")
    return value
