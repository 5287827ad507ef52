"""safetensors files, read lazily (memory maps) and written one tensor at a time, in NumPy.

File layout::

    u64 N (little-endian) | N bytes of UTF-8 JSON, padded with spaces | data

The JSON object maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets relative to the start of the data region) and may hold ``"__metadata__"``, a
string-to-string map, which the reader puts in ``reader.metadata``.

Reading checks what the safetensors specification requires: the header fits in the file
and is at most :data:`MAX_HEADER_SIZE` bytes, starts with ``{``, is valid JSON with no
duplicate keys; every dtype is known; every ``end - begin`` equals the byte size of the
shape; and the tensors tile the data region exactly, with no gap, overlap or trailing
byte. Each tensor is then a read-only ``numpy.memmap`` at its offset.

dtypes: ``BOOL U8 I8 U16 I16 F16 BF16 U32 I32 F32 U64 I64 F64 C64`` and the float8 types
``F8_E4M3 F8_E5M2 F8_E4M3FNUZ F8_E5M2FNUZ F8_E8M0`` (as ``ml_dtypes`` types; ``F8_E8M0``
needs an ``ml_dtypes`` that has ``float8_e8m0fnu``). The packed 4- and 6-bit types are refused.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

from ..dtypes import safetensors_dtypes
from ..errors import WeightFileError
from .base import (
    TensorSpec,
    WeightReader,
    check_extent,
    check_shape,
    declared_little_endian,
    file_region,
    read_exact,
    spec_of,
    write_c_order,
)

__all__ = [
    "FORMAT",
    "EXTENSIONS",
    "MAX_HEADER_SIZE",
    "DTYPES",
    "sniff",
    "open_reader",
    "write",
    "SafetensorsReader",
]

FORMAT = "safetensors"
EXTENSIONS = (".safetensors",)
#: Largest JSON header accepted, in bytes (the reference implementation's limit).
MAX_HEADER_SIZE = 100_000_000

_PACKED = ("F4", "F6_E2M3", "F6_E3M2")


#: safetensors dtype string -> numpy dtype (little-endian), for the types this ml_dtypes provides
DTYPES: dict[str, np.dtype] = safetensors_dtypes()
_CODES: dict[str, str] = {dt.name: code for code, dt in DTYPES.items()}


def sniff(head: bytes) -> bool:
    """True if ``head`` starts with a plausible header length followed by ``{``.

    Examples
    --------
    >>> sniff(b"\\x02\\x00\\x00\\x00\\x00\\x00\\x00\\x00{}"), sniff(b"PK\\x03\\x04")
    (True, False)
    """
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= MAX_HEADER_SIZE


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _not_json(token: str) -> None:
    raise ValueError(f"{token} is not valid JSON")


class SafetensorsReader(WeightReader):
    """Lazy reader of a safetensors file.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> with open(p, "wb") as f:
    ...     write({"w": np.ones((2, 3), np.float16)}, f, metadata={"format": "np"})
    >>> with SafetensorsReader(p) as r:
    ...     print(r.spec("w").shape, type(r["w"]).__name__, r.metadata)
    (2, 3) memmap {'format': 'np'}
    """

    format = FORMAT

    def __init__(self, path: str | os.PathLike, *, mmap: bool = True) -> None:
        super().__init__(path)
        self._mmap = mmap
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                if size < 8:
                    raise WeightFileError(f"{self.path}: {size} bytes is too short for a safetensors file")
                n = int.from_bytes(f.read(8), "little")
                if n > MAX_HEADER_SIZE:
                    raise WeightFileError(
                        f"{self.path}: the header claims {n} bytes; the limit is {MAX_HEADER_SIZE} "
                        "(corrupted?)"
                    )
                check_extent(self.path, "the JSON header", 8, n, size)
                raw = read_exact(f, n, self.path, "the JSON header")
        except OSError as e:
            raise WeightFileError(f"{self.path}: cannot read ({e.strerror or e})") from e
        self._data_start = 8 + n
        self._offsets: dict[str, int] = {}
        self._parse(raw, size - self._data_start)

    def _parse(self, raw: bytes, data_size: int) -> None:
        path = self.path
        if not raw.startswith(b"{"):
            raise WeightFileError(f"{path}: the header does not start with '{{' (not a safetensors file?)")
        try:
            header = json.loads(
                raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_not_json
            )
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise WeightFileError(f"{path}: the header is not valid JSON ({e})") from e
        if not isinstance(header, dict):
            raise WeightFileError(f"{path}: the header is a JSON {type(header).__name__}, not an object")
        metadata = header.pop("__metadata__", None)
        if metadata is not None:
            if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
                raise WeightFileError(f"{path}: __metadata__ must map strings to strings")
            self.metadata = dict(metadata)
        extents = []
        for name, info in header.items():
            what = f"tensor {name!r}"
            if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
                raise WeightFileError(f"{path}: {what} needs exactly the keys dtype, shape, data_offsets")
            code = info["dtype"]
            if not isinstance(code, str) or code not in DTYPES:
                why = "packed sub-byte types are not supported" if code in _PACKED else "unknown dtype"
                raise WeightFileError(
                    f"{path}: {what} has dtype {code!r} ({why}; supported: {', '.join(DTYPES)})"
                )
            dtype = DTYPES[code]
            shape = check_shape(path, what, info["shape"], dtype.itemsize)
            offsets = info["data_offsets"]
            if (
                not isinstance(offsets, list)
                or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
                or offsets[0] > offsets[1]
            ):
                raise WeightFileError(f"{path}: {what} has invalid data_offsets {offsets!r}")
            spec = TensorSpec(shape, dtype)
            if offsets[1] - offsets[0] != spec.nbytes:
                raise WeightFileError(
                    f"{path}: {what} of shape {shape} and dtype {code} needs {spec.nbytes} bytes but its "
                    f"data_offsets span {offsets[1] - offsets[0]}"
                )
            self._specs[name] = spec
            self._offsets[name] = offsets[0]
            extents.append((offsets[0], offsets[1], name))
        end = 0
        for begin, stop, name in sorted(extents):
            if begin != end:
                gap = (
                    "overlaps the previous tensor" if begin < end else f"leaves a gap of {begin - end} bytes"
                )
                raise WeightFileError(f"{path}: tensor {name!r} at data offset {begin} {gap} (corrupted)")
            end = stop
        if end != data_size:
            raise WeightFileError(
                f"{path}: the tensors cover {end} bytes but the data region holds {data_size} "
                "(truncated or corrupted)"
            )

    def _read(self, name: str) -> np.ndarray:
        spec = self._specs[name]
        if spec.nbytes == 0:
            return np.empty(spec.shape, spec.dtype)
        raw = file_region(self.path, self._data_start + self._offsets[name], spec.nbytes, mmap=self._mmap,
                          what=f"tensor {name!r:.80}")
        return raw.view(spec.dtype).reshape(spec.shape)


def open_reader(
    path: str | os.PathLike, *, mmap: bool = True, max_expansion: int | None = None, **options: Any
) -> SafetensorsReader:
    """Open a safetensors file lazily.

    Parameters
    ----------
    path : path-like
    mmap : bool
        Serve tensors as memory maps (default) or read each into memory when it is indexed
        (safe against the file changing; see :func:`coreprune.io.base.file_region`).
    max_expansion : int, optional
        Accepted for the common reader interface: safetensors data never expands.
    **options
        None other are accepted.

    Returns
    -------
    SafetensorsReader
        ``metadata`` holds the file's ``__metadata__``, if any.

    Raises
    ------
    WeightFileError
        Header too large or past the end of the file, invalid JSON, unknown dtype, offsets
        that do not match the shapes or do not tile the data region.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> with open(p, "wb") as f:
    ...     write({"b": np.arange(3, dtype=np.int64)}, f)
    >>> with open_reader(p) as r:
    ...     print(r["b"].tolist())
    [0, 1, 2]
    """
    if options:
        given = ", ".join(sorted(options))
        raise WeightFileError(f"{path}: the safetensors reader takes no options, got {given}")
    return SafetensorsReader(path, mmap=mmap)


def write(
    weights: Mapping[str, np.ndarray], f: BinaryIO, *, metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``weights`` as a safetensors file, one tensor at a time.

    The header lists the tensors in the mapping's order; in the data region they are laid
    out by decreasing item size (as the reference implementation does), so that with the
    header padded to a multiple of 8 bytes every tensor is aligned to its item size.
    Values are written little-endian in C order, whatever their layout in memory.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        dtypes listed in :data:`DTYPES`.
    f : binary file
    metadata : Mapping[str, str], optional
        Stored as ``__metadata__``.

    Raises
    ------
    WeightFileError
        An unsupported dtype, the reserved name ``__metadata__``, or metadata that is not
        string-to-string.

    Examples
    --------
    >>> import io, numpy as np
    >>> buf = io.BytesIO()
    >>> write({"w": np.zeros(2, np.float32)}, buf)
    >>> raw = buf.getvalue()
    >>> raw[8:8 + int.from_bytes(raw[:8], "little")].decode().rstrip()
    '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    """
    names = list(weights)
    header: dict[str, Any] = {}
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise WeightFileError("safetensors metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    specs = {}
    for name in names:
        if name == "__metadata__":
            raise WeightFileError("'__metadata__' is reserved in safetensors and cannot name a tensor")
        spec = spec_of(weights, name)
        if spec.dtype.name not in _CODES:
            raise WeightFileError(
                f"tensor {name!r} has dtype {spec.dtype}, which safetensors cannot store "
                f"(supported: {', '.join(_CODES)})"
            )
        specs[name] = spec
    position = {name: i for i, name in enumerate(names)}
    layout = sorted(names, key=lambda n: (-specs[n].dtype.itemsize, position[n]))
    offsets, end = {}, 0
    for name in layout:
        offsets[name] = (end, end + specs[name].nbytes)
        end += specs[name].nbytes
    for name in names:
        spec = specs[name]
        header[name] = {
            "dtype": _CODES[spec.dtype.name],
            "shape": list(spec.shape),
            "data_offsets": list(offsets[name]),
        }
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for name in layout:
        array = weights[name]
        spec = specs[name]
        array = declared_little_endian(name, array, spec)
        write_c_order(f, array)
