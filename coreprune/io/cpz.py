"""The ``.cpz`` compressed weight format: n-bit codes bit-packed, pruned tensors sparse, exact round trip.

``save_compressed(weights, path)`` writes a mapping whose values are NumPy arrays or
:class:`~coreprune.quantization.QuantizedArray`; ``load_compressed(path)`` gives back
the same values: QuantizedArrays with identical codes, scales, zero points and
parameters, arrays bit for bit (``-0.0``, NaN payloads, bfloat16, 0-d and empty
arrays included).

Each tensor is stored in the layout :mod:`coreprune.layout_planner` picks (full, bitmask, csr or nm);
:func:`~coreprune.layout_planner.encoded_nbytes` is its honest size. A file adds 40 bytes of header and
footer, at most 7 bytes of alignment per blob and a JSON manifest of roughly 200 bytes per tensor. The
byte layout is documented in ``docs/compressed-format.md``.

Through :mod:`coreprune.io` (``load``, ``open_weights``, ``convert``), a ``.cpz``
file reads as plain dense arrays: quantized tensors come back dequantized.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .._fast.blocked import block_ranges, run_parallel
from ..errors import CompressionError, WeightFileError
from ..layout_planner import (
    Value,
    _dtype_name,
    _fill_codes,
    _little,
    _param_shape,
    _parse_dtype,
    _plan_value,
)
from ..nm_layout import (
    MAX_GROUP,
    NM_INDEXES,
    decode_nm_index,
    encode_nm_index,
    gather_nm,
    nm_index_nbytes,
    nm_positions,
    nm_select,
    scatter_nm,
)
from ..packing import pack_bits, unpack_bits
from ..quant_layout import layout_problem
from ..quantization import QuantizedArray
from ..weight_sharing import CodebookArray
from . import cpz_codebook
from . import structure as _st
from .base import (
    CPZ_EXPANSION_RATIO,
    MAX_NDIM,
    ExpansionMeter,
    TensorSpec,
    WeightReader,
    atomic_write,
    check_extent,
    check_names_encodable,
    check_shape,
    element_count,
    read_exact,
)

__all__ = [
    "save_compressed",
    "load_compressed",
    "CpzReader",
    "FORMAT",
    "EXTENSIONS",
    "MAGIC",
    "VERSION",
    "sniff",
    "open_reader",
    "write",
]

FORMAT = "cpz"
EXTENSIONS = (".cpz",)
#: First 8 bytes of every file. The high byte and CR LF / Ctrl-Z catch text-mode transfers (as PNG does).
MAGIC = b"\x89CPZ\r\n\x1a\n"
#: Format version written in the header and the manifest; readers refuse newer versions.
VERSION = 1
_HEADER = struct.Struct("<8sII")  # magic, version, reserved (0)
_FOOTER = struct.Struct("<QQI4s")  # manifest offset, manifest length, manifest crc32, end magic
_END_MAGIC = b"CPZE"
_ALIGN = 8
# A declared tensor larger than this is a lie (numpy could not index it anyway).
_MAX_NBYTES = 1 << 62

_CODE_DTYPES = frozenset(["int8", "int16", "uint8", "uint16"])


def _le(dtype: np.dtype) -> np.dtype:
    """``dtype`` with little-endian byte order (how blobs are stored)."""
    return dtype.newbyteorder("<") if dtype.itemsize > 1 and dtype.byteorder != "|" else dtype


def _native(a: np.ndarray) -> np.ndarray:
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def _bytes_of(a: np.ndarray) -> memoryview:
    """The raw bytes of a contiguous array, without a copy (works for ml_dtypes too)."""
    # NumPy's stubs give ndarray the buffer protocol (__buffer__) only for Python >= 3.12
    return memoryview(a.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ csr index


def _compact(flat: np.ndarray, stored: np.ndarray, nnz: int) -> np.ndarray:
    """``flat[stored]`` (the same elements in the same order), in blocks on every core.

    NumPy's boolean indexing branches on every element and runs ~5x slower on a random mask than
    ``np.compress`` (positions, then a gather), which also writes each block's piece in place.
    """
    spans = block_ranges(flat.size)
    counts = run_parallel(spans, lambda span: int(np.count_nonzero(stored[span[0] : span[1]])))
    starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).tolist()
    assert starts[-1] == nnz, (starts[-1], nnz)  # the planner counted the same mask
    out = np.empty(nnz, flat.dtype)

    def piece(i: int) -> None:
        s, e = spans[i]
        np.compress(stored[s:e], flat[s:e], out=out[starts[i] : starts[i + 1]])

    run_parallel(range(len(spans)), piece)
    return out


def _encode_gaps(gaps: np.ndarray, width: int, entries: int) -> np.ndarray:
    """The csr index stream (see the module docstring) of the stored elements' ``gaps``."""
    escape = (1 << width) - 1
    if entries == gaps.size:  # no gap needs an escape entry
        return gaps.astype(f"<u{width // 8}")
    out = np.full(entries, escape, dtype=f"<u{width // 8}")
    last = np.cumsum(gaps // escape + 1) - 1  # where each stored element's own entry goes
    out[last] = gaps % escape
    return out


def _decode_gaps(index: np.ndarray, width: int, n: int, nnz: int, where: str) -> np.ndarray:
    """Flat positions of the stored elements, validated against ``n`` and ``nnz``."""
    escape = (1 << width) - 1
    entries = index.astype(np.int64)
    final = entries != escape
    if int(np.count_nonzero(final)) != nnz:
        raise _fail(where, f"the index names {int(np.count_nonzero(final))} elements, not {nnz}")
    if entries.size and not final[-1]:
        raise _fail(where, "the index ends with an escape entry")
    positions = np.cumsum(entries + final)[final] - 1
    if positions.size and int(positions[-1]) >= n:
        raise _fail(where, f"the index points past the tensor's {n} elements")
    return positions


# ----------------------------------------------------------------------------------------------- writer


class _CountingWriter:
    """Writes to a binary file, counting the offset (no ``tell``: works on pipes) and aligning blobs."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.offset = 0

    def write(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        self.offset += memoryview(data).nbytes

    def blob(self, data: np.ndarray) -> list[int]:
        """Write ``data``'s raw bytes at the next aligned offset; return ``[offset, length, crc32]``."""
        pad = -self.offset % _ALIGN
        if pad:
            self.write(b"\0" * pad)
        raw = _bytes_of(np.ascontiguousarray(data))
        entry = [self.offset, raw.nbytes, zlib.crc32(raw)]
        self.write(raw)
        return entry


def _write_codebook(out: _CountingWriter, name: str, value: CodebookArray, entropy: bool) -> dict[str, Any]:
    meta, data = cpz_codebook.encode(value, entropy=entropy)
    entry: dict[str, Any] = {"name": name, **meta, "shape": list(value.shape),
                             "dtype": _dtype_name(value.dtype, name)}
    entry["blobs"] = {role: out.blob(b) for role, b in data.items()}
    return entry


def _write_tensor(out: _CountingWriter, name: str, value: Value, entropy: bool = True) -> dict[str, Any]:
    if isinstance(value, CodebookArray):
        return _write_codebook(out, name, value, entropy)
    plan, stored, flat, positions, gaps = _plan_value(value, name)
    entry: dict[str, Any] = {"name": name, "layout": plan.layout}
    blobs: dict[str, list[int]] = {}
    kept = flat
    if plan.layout == "nm":
        assert stored is not None
        entry.update(n=plan.n, m=plan.m, index=plan.index)
        selected = nm_select(stored.reshape(value.shape), plan.n, plan.m)
        positions = nm_positions(stored, plan.n, plan.m, selected)
        blobs["index"] = out.blob(encode_nm_index(positions, plan.n, plan.m, plan.index))
        kept = gather_nm(flat.reshape(value.shape), selected, plan.m)
    elif plan.layout != "full":
        assert stored is not None
        entry["nnz"] = plan.nnz
        if plan.layout == "bitmask":
            blobs["mask"] = out.blob(np.packbits(stored, bitorder="little"))
            kept = _compact(flat, stored, plan.nnz)
        else:
            assert positions is not None and gaps is not None  # the planner sized csr from them
            entry["width"] = plan.width
            entry["entries"] = plan.entries
            blobs["index"] = out.blob(_encode_gaps(gaps, plan.width, plan.entries))
            kept = flat.take(positions)  # the planner's positions: no second pass over the mask
    if isinstance(value, QuantizedArray):
        entry.update(
            kind="quantized",
            shape=list(value.shape),
            dtype=_dtype_name(value.dtype, name),
            bits=value.bits,
            symmetric=value.symmetric,
            axis=value.axis,
            group_size=value.group_size,
            code_dtype=value.codes.dtype.name,
        )
        if value.flatten:  # written only when set: files of the other layouts stay as they were
            entry["flatten"] = True
        blobs["codes"] = out.blob(pack_bits(kept, value.bits))
        if value.scale.dtype == np.float16:  # written only when set, as "flatten"
            entry["scale_dtype"] = "float16"
        blobs["scale"] = out.blob(_little(value.scale))
        if value.zero_point is not None:
            blobs["zero_point"] = out.blob(_little(value.zero_point))
    else:
        entry.update(kind="dense", shape=list(value.shape), dtype=_dtype_name(value.dtype, name))
        blobs["values"] = out.blob(kept)
    entry["blobs"] = blobs
    return entry


def write(
    weights: Mapping[str, Value],
    f: BinaryIO,
    *,
    metadata: Mapping[str, str] | None = None,
    entropy: bool = True,
    structure: Any = None,
) -> None:
    """Write ``weights`` to the open binary file ``f`` in the ``.cpz`` format, one tensor at a time.

    The :mod:`coreprune.io` writer interface; most callers want :func:`save_compressed`.
    Blobs are written as each tensor is read, the manifest last, so a lazy
    :class:`~coreprune.io.base.WeightReader` is streamed with one tensor in memory.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray or QuantizedArray]
    f : binary file opened for writing
    metadata : Mapping[str, str], optional
        Free text stored in the manifest (provenance, settings).
    entropy : bool, default True
        Store :class:`~coreprune.weight_sharing.CodebookArray` values in the entropy-coded
        ``"ans"`` codebook layout (else ``"packed"``); other values are unaffected.
    structure : object, optional
        A checkpoint's nesting (``reader.structure``, :mod:`coreprune.io.structure`), stored in
        the manifest so that ``open_weights(path).structure`` and ``.extras`` give it back.

    Raises
    ------
    CompressionError
        A name that is not a string, a value that is neither an array nor a QuantizedArray,
        a dtype the format cannot store, metadata that is not ``str -> str``, or a structure
        holding a value JSON cannot (see :func:`coreprune.io.structure.check_writable`).

    Examples
    --------
    >>> import io, numpy as np
    >>> buf = io.BytesIO()
    >>> write({"w": np.arange(4, dtype=np.int16)}, buf)
    >>> buf.getvalue()[:4]
    b'\\x89CPZ'
    """
    if not isinstance(weights, Mapping):
        raise CompressionError(f"weights must be a mapping of name -> array, got {type(weights).__name__}")
    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise CompressionError(f"metadata must map str to str; got {k!r}: {type(v).__name__}")
    check_names_encodable(weights, ".cpz")
    if structure is not None:
        _st.check_writable(structure, list(weights), ".cpz")
    out = _CountingWriter(f)
    out.write(_HEADER.pack(MAGIC, VERSION, 0))
    tensors = []
    for name in weights:
        if not isinstance(name, str):
            raise CompressionError(f"weights has a non-string key {name!r}; names must be str")
        tensors.append(_write_tensor(out, name, weights[name], entropy))
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "metadata": meta, "tensors": tensors}
    if structure is not None:  # an optional key: readers that predate it ignore it
        doc["structure"] = structure
    manifest = json.dumps(
        doc,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode("utf-8")
    offset = out.offset
    out.write(manifest)
    out.write(_FOOTER.pack(offset, len(manifest), zlib.crc32(manifest), _END_MAGIC))


def save_compressed(
    weights: Mapping[str, Value],
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
    inputs: tuple[str | os.PathLike, ...] = (),
    entropy: bool = True,
    structure: Any = None,
) -> None:
    """Write arrays and QuantizedArrays to a ``.cpz`` file, atomically.

    Quantized codes are bit-packed at their bit width; a tensor with many zeros (or
    many codes of 0.0) stores only the others plus a bitmask or a gap index, whichever
    is smaller (see :func:`coreprune.encoded_nbytes`); everything else is stored as is.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray or QuantizedArray]
        Any mapping, a lazy reader included (values are read one at a time).
    path : path-like
        Destination, conventionally ``*.cpz``.
    metadata : Mapping[str, str], optional
        Free text kept in the manifest; ``open_weights(path).metadata`` reads it back.
    inputs : tuple of path-like
        Files that must not be overwritten (the files being read).
    entropy : bool, default True
        Entropy-code the codes and index gaps of
        :class:`~coreprune.weight_sharing.CodebookArray` values (the ``"ans"`` codebook layout,
        :mod:`coreprune.io.cpz_codebook`); False bit-packs them (``"packed"``).
    structure : object, optional
        A nested checkpoint's structure to keep (see :func:`write`).

    Raises
    ------
    CompressionError
        A value the format cannot store (see :func:`write`).
    WeightFileError
        ``path`` is one of ``inputs`` or its folder does not exist.

    Examples
    --------
    >>> import numpy as np, tempfile, os, coreprune
    >>> w = {"fc.weight": np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8), "step": np.array(3)}
    >>> q = coreprune.quantize(w, bits=4, axis=0)
    >>> p = os.path.join(tempfile.mkdtemp(), "m.cpz")
    >>> save_compressed(q, p)
    >>> back = load_compressed(p)
    >>> bool(np.array_equal(back["fc.weight"].codes, q["fc.weight"].codes)), back["step"].tolist()
    (True, 3)
    """
    with atomic_write(path, inputs=inputs) as f:
        write(weights, f, metadata=metadata, entropy=entropy, structure=structure)


# ----------------------------------------------------------------------------------------------- reader


def sniff(head: bytes) -> bool:
    """True when ``head`` (the first bytes of a file) starts with the ``.cpz`` magic.

    Examples
    --------
    >>> sniff(MAGIC + b"rest"), sniff(b"PK\\x03\\x04")
    (True, False)
    """
    return head.startswith(MAGIC)


def _fail(where: str, problem: str) -> WeightFileError:
    return WeightFileError(f"{where}: {problem} (corrupted or not written by coreprune)")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _field(entry: Mapping[str, Any], key: str, kind: Any, where: str, *, optional: bool = False) -> Any:
    if key not in entry:
        if optional:
            return None
        raise _fail(where, f"manifest entry lacks {key!r}")
    value = entry[key]
    if optional and value is None:
        return None
    ok = _is_int(value) if kind is int else isinstance(value, kind)
    if not ok:
        raise _fail(where, f"manifest field {key!r} has the wrong type ({type(value).__name__})")
    return value


@dataclass(frozen=True)
class _Entry:
    """One validated manifest entry."""

    name: str
    kind: str
    layout: str
    shape: tuple[int, ...]
    dtype: np.dtype
    nnz: int
    width: int
    entries: int
    blobs: dict[str, tuple[int, int, int]]
    bits: int = 0
    symmetric: bool = True
    axis: int | None = None
    group_size: int | None = None
    code_dtype: np.dtype | None = None
    flatten: bool = False
    scale_dtype: np.dtype = np.dtype(np.float32)
    gap_width: int = 0
    nm: tuple[int, int, str] | None = None  # layout "nm": (n, m, index encoding)


def _validate_entry(raw: object, path: Path, data_end: int) -> _Entry:
    if not isinstance(raw, dict):
        raise _fail(str(path), "a manifest tensor entry is not an object")
    name = _field(raw, "name", str, str(path))
    where = f"{path}: tensor {name!r}"
    kind = _field(raw, "kind", str, where)
    layout = _field(raw, "layout", str, where)
    if kind == "codebook":
        return _validate_codebook(raw, path, where, data_end)
    if kind not in ("dense", "quantized") or layout not in ("full", "bitmask", "csr", "nm"):
        raise _fail(where, f"unknown kind/layout {kind!r}/{layout!r}")
    shape_raw = _field(raw, "shape", list, where)
    dtype = _parse_dtype(raw.get("dtype"), where)
    if len(shape_raw) > MAX_NDIM or not all(_is_int(d) and d >= 0 for d in shape_raw):
        shown = shape_raw if len(shape_raw) <= 8 else [*shape_raw[:8], "..."]
        raise _fail(where, f"bad shape {shown!r:.200} ({len(shape_raw)} dims; at most {MAX_NDIM} "
                           "non-negative integers)")
    shape = check_shape(path, f"tensor {name!r:.80}", shape_raw, dtype.itemsize)
    n = element_count(shape)
    if n * dtype.itemsize >= _MAX_NBYTES:
        raise _fail(where, f"declared shape {shape} is impossibly large")
    blobs_raw = _field(raw, "blobs", dict, where)
    blobs: dict[str, tuple[int, int, int]] = {}
    for role, b in blobs_raw.items():
        if not (isinstance(b, list) and len(b) == 3 and all(_is_int(x) and x >= 0 for x in b)):
            raise _fail(where, f"bad blob record {role!r:.40}: {b!r:.80}")
        check_extent(path, f"tensor {name!r} blob {role!r}", b[0], b[1], data_end)
        if b[0] < _HEADER.size:
            raise _fail(where, f"blob {role!r} overlaps the header")
        blobs[role] = (b[0], b[1], b[2])

    nnz, width, entries = n, 0, 0
    nm: tuple[int, int, str] | None = None
    if layout == "nm":
        nm_n, nm_m = _field(raw, "n", int, where), _field(raw, "m", int, where)
        index = _field(raw, "index", str, where)
        if len(shape) < 2 or not 1 <= nm_n < nm_m <= MAX_GROUP or shape[1] % nm_m or index not in NM_INDEXES:
            raise _fail(where, f"bad N:M layout ({nm_n!r}:{nm_m!r}, index {index!r:.20}) for shape {shape}")
        nm = (nm_n, nm_m, index)
        nnz = n // nm_m * nm_n
    elif layout != "full":
        nnz = _field(raw, "nnz", int, where)
        if not 0 <= nnz <= n:
            raise _fail(where, f"nnz {nnz} is not in [0, {n}]")
    if layout == "csr":
        width = _field(raw, "width", int, where)
        entries = _field(raw, "entries", int, where)
        if width not in (8, 16) or entries < nnz:
            raise _fail(where, f"bad csr index (width {width}, {entries} entries for {nnz} elements)")

    extra: dict[str, Any] = {}
    expected: dict[str, int] = {}
    if kind == "quantized":
        bits = _field(raw, "bits", int, where)
        symmetric = _field(raw, "symmetric", bool, where)
        axis = _field(raw, "axis", int, where, optional=True)
        group_size = _field(raw, "group_size", int, where, optional=True)
        flatten = raw.get("flatten", False)
        scale_name = raw.get("scale_dtype", "float32")
        if scale_name not in ("float32", "float16"):
            raise _fail(where, f"bad scale_dtype {scale_name!r:.40} (float32 or float16)")
        scale_dtype = np.dtype(scale_name)
        code_name = _field(raw, "code_dtype", str, where)
        if code_name not in _CODE_DTYPES or not 1 <= bits <= 16 or 8 * np.dtype(code_name).itemsize < bits:
            raise _fail(where, f"bad quantization parameters (bits {bits}, codes {code_name})")
        if axis is not None and not 0 <= axis < len(shape):
            raise _fail(where, f"axis {axis} out of range for shape {shape}")
        problem = layout_problem(shape, axis, group_size, flatten)
        if problem:
            raise _fail(where, f"layout (axis {axis}, group_size {group_size}, flatten {flatten!r}) does not "
                               f"fit shape {shape}: {problem}")
        if bits == 1 and layout != "full":
            raise _fail(where, "1-bit codes have no sparse layout")
        params = element_count(_param_shape(shape, axis, group_size, flatten))
        expected["codes"] = math.ceil(nnz * bits / 8)
        expected["scale"] = params * scale_dtype.itemsize
        if not symmetric:
            expected["zero_point"] = params * np.dtype(code_name).itemsize
        extra = dict(
            bits=bits, symmetric=symmetric, axis=axis, group_size=group_size, code_dtype=np.dtype(code_name),
            flatten=flatten, scale_dtype=scale_dtype,
        )
    else:
        expected["values"] = nnz * dtype.itemsize
    if layout == "bitmask":
        expected["mask"] = math.ceil(n / 8)
    elif layout == "csr":
        expected["index"] = entries * width // 8
    elif nm is not None:
        expected["index"] = nm_index_nbytes(nm[2], nm[0], nm[1], n // nm[1])
        extra["nm"] = nm
    if set(blobs) != set(expected):
        raise _fail(where, f"blobs {sorted(blobs)} do not match the layout (want {sorted(expected)})")
    for role, length in expected.items():
        if blobs[role][1] != length:
            raise _fail(where, f"blob {role!r} has {blobs[role][1]} bytes, the shape says {length}")
    return _Entry(name, kind, layout, shape, dtype, nnz, width, entries, blobs, **extra)


def _validate_codebook(raw: dict, path: Path, where: str, data_end: int) -> _Entry:
    name = raw["name"]
    layout = _field(raw, "layout", str, where)
    shape_raw = _field(raw, "shape", list, where)
    if not all(_is_int(d) and d >= 0 for d in shape_raw):
        raise _fail(where, f"bad shape {shape_raw!r}")
    shape = tuple(shape_raw)
    n = element_count(shape)
    dtype = _parse_dtype(raw.get("dtype"), where)
    if n * dtype.itemsize >= _MAX_NBYTES:
        raise _fail(where, f"declared shape {shape} is impossibly large")
    bits, nnz = _field(raw, "bits", int, where), _field(raw, "nnz", int, where)
    width, entries = _field(raw, "gap_width", int, where), _field(raw, "entries", int, where)
    expected = cpz_codebook.expected_blobs(layout, bits, nnz, width, entries, n, where)
    blobs_raw = _field(raw, "blobs", dict, where)
    if set(blobs_raw) != set(expected):
        raise _fail(where, f"blobs {sorted(blobs_raw)} do not match the layout (want {sorted(expected)})")
    blobs: dict[str, tuple[int, int, int]] = {}
    for role, b in blobs_raw.items():
        if not (isinstance(b, list) and len(b) == 3 and all(_is_int(x) and x >= 0 for x in b)):
            raise _fail(where, f"bad blob record {role!r}: {b!r}")
        check_extent(path, f"tensor {name!r} blob {role!r}", b[0], b[1], data_end)
        if b[0] < _HEADER.size:
            raise _fail(where, f"blob {role!r} overlaps the header")
        if expected[role] >= 0 and b[1] != expected[role]:
            raise _fail(where, f"blob {role!r} has {b[1]} bytes, the shape says {expected[role]}")
        blobs[role] = (b[0], b[1], b[2])
    return _Entry(name, "codebook", layout, shape, dtype, nnz, 0, entries, blobs, bits=bits, gap_width=width)


class CpzReader(WeightReader):
    """Lazy reader of a ``.cpz`` file.

    ``reader[name]`` gives a dense array (quantized tensors dequantized to their original
    dtype), so that a ``.cpz`` file reads like any other weight file;
    :meth:`raw` gives exactly the stored value (a QuantizedArray for quantized tensors).
    The manifest is validated completely when the reader opens; each blob's CRC-32 is
    checked when it is read. ``metadata`` holds the manifest's free-text metadata
    (``dict[str, str]``, empty if none); ``structure`` the nesting of the checkpoint the file was
    written from (None if flat), and ``extras`` that checkpoint's non-tensor values by dotted name.

    Examples
    --------
    >>> import numpy as np, tempfile, os, coreprune
    >>> p = os.path.join(tempfile.mkdtemp(), "m.cpz")
    >>> save_compressed(coreprune.quantize({"w": np.ones((2, 4), np.float32)}, bits=8), p)
    >>> with CpzReader(p) as r:
    ...     print(type(r.raw("w")).__name__, r["w"].dtype, r.spec("w").shape, r.storage("w")["kind"])
    QuantizedArray float32 (2, 4) quantized
    """

    format = FORMAT

    def __init__(self, path: str | os.PathLike, *, max_expansion: int | None = None) -> None:
        super().__init__(path)
        try:
            self._f: io.BufferedReader | None = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise WeightFileError(f"{self.path}: cannot open ({e.strerror or e})") from None
        try:
            self._meter = ExpansionMeter(
                self.path, os.fstat(self._f.fileno()).st_size, max_expansion, ratio=CPZ_EXPANSION_RATIO
            )
            self._entries = self._read_manifest()
        except BaseException:
            self.close()
            raise
        self._specs = {name: TensorSpec(e.shape, e.dtype) for name, e in self._entries.items()}

    def _read_manifest(self) -> dict[str, _Entry]:
        f = self._file
        where = str(self.path)
        size = os.fstat(f.fileno()).st_size
        if size < _HEADER.size + _FOOTER.size:
            raise _fail(where, f"file has {size} bytes, too short for a .cpz file")
        magic, version, _ = _HEADER.unpack(read_exact(f, _HEADER.size, where, "the header"))
        if magic != MAGIC:
            raise _fail(where, "bad magic bytes")
        if version > VERSION:
            raise WeightFileError(
                f"{where}: .cpz format version {version} is newer than this coreprune reads ({VERSION}); "
                "upgrade coreprune"
            )
        if version < 1:
            raise _fail(where, f"bad format version {version}")
        f.seek(size - _FOOTER.size)
        offset, length, crc, end = _FOOTER.unpack(read_exact(f, _FOOTER.size, where, "the footer"))
        if end != _END_MAGIC:
            raise _fail(where, "bad footer (truncated?)")
        if offset < _HEADER.size or offset + length != size - _FOOTER.size:
            raise _fail(where, f"manifest at {offset} (+{length} bytes) does not end at the footer")
        f.seek(offset)
        text = read_exact(f, length, where, "the manifest")
        if zlib.crc32(text) != crc:
            raise _fail(where, "manifest checksum mismatch")
        try:
            manifest = json.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: hostile nesting
            raise _fail(where, f"manifest is not JSON ({type(e).__name__})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise _fail(where, "manifest is not a .cpz manifest")
        if manifest.get("version") != version:
            found = manifest.get("version")
            raise _fail(where, f"manifest version {found!r} differs from the header's {version}")
        meta = manifest.get("metadata", {})
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise _fail(where, "metadata is not an object of strings")
        self.metadata = dict(meta)
        tensors = manifest.get("tensors")
        if not isinstance(tensors, list):
            raise _fail(where, "manifest has no tensor list")
        entries: dict[str, _Entry] = {}
        for raw in tensors:
            entry = _validate_entry(raw, self.path, offset)
            if entry.name in entries:
                raise _fail(where, f"tensor {entry.name!r} appears twice")
            entries[entry.name] = entry
        if "structure" in manifest:
            self.structure = _st.validate(manifest["structure"], entries, where)
            self.extras = _st.extras_of(self.structure)
        return entries

    @property
    def _file(self) -> io.BufferedReader:
        if self._f is None:
            raise WeightFileError(f"{self.path}: the reader is closed")
        return self._f

    def storage(self, name: str) -> dict[str, Any]:
        """How ``name`` is stored, from the manifest.

        Returns
        -------
        dict
            ``kind`` (``"dense"`` or ``"quantized"``), ``layout`` (``"full"``, ``"bitmask"``,
            ``"csr"``, ``"nm"``), ``bits`` (None for dense), ``stored_nbytes`` (its blobs' bytes,
            which is its :func:`coreprune.encoded_nbytes`) and ``blob_nbytes`` (role -> bytes:
            ``values``, ``codes``, ``index``, ``mask``, ``scale``, ``codebook`` ...).
        """
        e = self._entry(name)
        return {
            "kind": e.kind,
            "layout": e.layout,
            "bits": e.bits if e.kind in ("quantized", "codebook") else None,
            "stored_nbytes": sum(b[1] for b in e.blobs.values()),
            "blob_nbytes": {role: b[1] for role, b in e.blobs.items()},
        }

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(name) from None

    def _blob(self, e: _Entry, role: str, dtype: np.dtype) -> np.ndarray:
        offset, length, crc = e.blobs[role]
        f = self._file
        f.seek(offset)
        buf = bytearray(length)
        if f.readinto(buf) != length:
            raise _fail(f"{self.path}: tensor {e.name!r}", f"file ends inside blob {role!r}")
        if zlib.crc32(buf) != crc:
            raise _fail(f"{self.path}: tensor {e.name!r}", f"checksum mismatch in blob {role!r}")
        return np.frombuffer(buf, dtype=_le(dtype))

    def _positions(self, e: _Entry) -> np.ndarray:
        """Flat positions of the stored elements (bitmask or csr layout)."""
        n = element_count(e.shape)
        where = f"{self.path}: tensor {e.name!r}"
        if e.layout == "bitmask":
            bits = np.unpackbits(self._blob(e, "mask", np.dtype(np.uint8)), bitorder="little")
            if bits[n:].any():
                raise _fail(where, "mask padding bits are set")
            positions = np.flatnonzero(bits[:n])
            if positions.size != e.nnz:
                raise _fail(where, f"the mask names {positions.size} elements, not {e.nnz}")
            return positions
        index = self._blob(e, "index", np.dtype(f"<u{e.width // 8}"))
        return _decode_gaps(index, e.width, n, e.nnz, where)

    def raw(self, name: str) -> Value | CodebookArray:
        """The value exactly as saved: an array, or a QuantizedArray for quantized tensors.

        Raises
        ------
        KeyError
            No such tensor.
        WeightFileError
            The tensor's bytes are corrupted (checksum, index or parameters).
        """
        e = self._entry(name)
        if e.kind == "codebook":
            return cpz_codebook.decode(
                lambda role: self._blob(e, role, np.dtype(np.uint8)), layout=e.layout, shape=e.shape,
                dtype=e.dtype, bits=e.bits, nnz=e.nnz, gap_width=e.gap_width, entries=e.entries,
                where=f"{self.path}: tensor {name!r}",
            )
        n = element_count(e.shape)
        # Sparse layouts and bit-packed codes expand: charge the dense result before allocating it.
        itemsize = max(e.dtype.itemsize, e.code_dtype.itemsize if e.code_dtype is not None else 0)
        self._meter.charge(name, n * itemsize, sum(b[1] for b in e.blobs.values()),
                           what=f"tensor {name!r:.80} ({e.kind}, {e.layout}, shape {e.shape})")
        where = f"{self.path}: tensor {name!r}"
        nm_pos, run = None, 1
        if e.nm is not None:
            run = e.nm[1]
            try:
                nm_pos = decode_nm_index(self._blob(e, "index", np.dtype(np.uint8)), *e.nm, n // run)
            except CompressionError as err:
                raise _fail(where, str(err)) from None
        positions = None if e.layout in ("full", "nm") else self._positions(e)
        if e.kind == "dense":
            values = self._blob(e, "values", e.dtype)
            if nm_pos is not None:
                out = scatter_nm(values, nm_pos, np.zeros((), values.dtype), e.shape, run)
                return _native(np.ascontiguousarray(out))
            if positions is None:
                return _native(values).reshape(e.shape)
            out = np.zeros(n, dtype=e.dtype)
            out[positions] = values
            return _native(out).reshape(e.shape)

        assert e.code_dtype is not None
        packed = self._blob(e, "codes", np.dtype(np.uint8))
        try:
            codes = unpack_bits(packed, e.bits, e.nnz, e.code_dtype)
        except CompressionError as err:
            raise _fail(where, str(err)) from None
        pshape = _param_shape(e.shape, e.axis, e.group_size, e.flatten)
        scale = _native(self._blob(e, "scale", e.scale_dtype)).reshape(pshape)
        zero_point = None
        if not e.symmetric:
            zero_point = _native(self._blob(e, "zero_point", e.code_dtype)).reshape(pshape)
        try:
            if nm_pos is not None:
                fill = _fill_codes(e.bits, e.symmetric, zero_point, e.axis, e.group_size, e.shape, e.flatten)
                assert fill is not None  # bits == 1 has no sparse layout (validated)
                codes = np.ascontiguousarray(scatter_nm(codes, nm_pos, np.asarray(fill, e.code_dtype),
                                                        e.shape, run))
            elif positions is not None:
                fill = _fill_codes(e.bits, e.symmetric, zero_point, e.axis, e.group_size, e.shape, e.flatten)
                assert fill is not None  # bits == 1 has no sparse layout (validated)
                full = np.empty(n, e.code_dtype)
                full[...] = fill
                full[positions] = codes
                codes = full
            return QuantizedArray(
                codes=codes.reshape(e.shape), scale=scale, zero_point=zero_point, bits=e.bits,
                symmetric=e.symmetric, axis=e.axis, group_size=e.group_size, shape=e.shape, dtype=e.dtype,
                flatten=e.flatten,
            )
        except CompressionError as err:
            raise _fail(where, str(err)) from None

    def _read(self, name: str) -> np.ndarray:
        value = self.raw(name)
        return value.dequantize() if isinstance(value, (QuantizedArray, CodebookArray)) else value

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def open_reader(
    path: str | os.PathLike, *, max_expansion: int | None = None, mmap: bool = True, **options: Any
) -> CpzReader:
    """Open a ``.cpz`` file lazily (the :mod:`coreprune.io` reader interface).

    Parameters
    ----------
    path : path-like
    max_expansion : int, optional
        Bytes that sparse layouts and packed codes may expand to beyond the bytes stored, all
        tensors together (default :func:`coreprune.io.base.expansion_budget`).
    mmap : bool
        Accepted for the common reader interface; ``.cpz`` blobs are always read, never mapped.

    Raises
    ------
    WeightFileError
        Any other option, or a file that cannot be opened or is not a valid ``.cpz``.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "m.cpz")
    >>> save_compressed({"w": np.zeros((3, 3), np.float16)}, p)
    >>> with open_reader(p) as r:
    ...     print(r.spec("w"), r.storage("w")["layout"])
    TensorSpec(shape=(3, 3), dtype=dtype('float16')) csr
    """
    if options:
        raise WeightFileError(f"{path}: the cpz reader takes no options, got {', '.join(sorted(options))}")
    return CpzReader(path, max_expansion=max_expansion)


def load_compressed(
    path: str | os.PathLike, *, max_expansion: int | None = None
) -> dict[str, Value | CodebookArray]:
    """Read a ``.cpz`` file: arrays and QuantizedArrays exactly as :func:`save_compressed` wrote them.

    Parameters
    ----------
    path : path-like
    max_expansion : int, optional
        Bytes the sparse layouts and packed codes may expand to beyond the bytes stored
        (default :func:`coreprune.io.base.expansion_budget`).

    Returns
    -------
    dict of str to numpy.ndarray or QuantizedArray

    Raises
    ------
    WeightFileError
        Missing, truncated, corrupted or not a ``.cpz`` file; the message starts with the path.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "m.cpz")
    >>> save_compressed({"b": np.array([0.0, -0.0, 2.5], np.float32)}, p)
    >>> np.signbit(load_compressed(p)["b"]).tolist()
    [False, True, False]
    """
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"{path}: no such file")
    with CpzReader(path, max_expansion=max_expansion) as reader:
        return {name: reader.raw(name) for name in reader}
