"""Hypothesis strategies for valid-looking weight files, and the one-field bends applied to them.

Each ``*_files`` strategy draws a small random set of tensors, writes it in one format (with the
project's writer or with the independent test builders), and returns ``(bytes, suffix, fields)``:
``fields`` lists the binary fields of the container -- ``(offset, struct format, what)`` -- found by
parsing the structure (zip headers, MXNet record headers, safetensors' length prefix, pickle
opcode arguments). :func:`bends` then changes exactly ONE thing: a numeric field set to an
interesting value, a text header field (shape, offsets, dtype, name, nesting) rewritten, a pickle
opcode swapped, truncated or injected with a hostile construction (deep nesting, shared-memo
DAGs, huge ints, colliding hash keys).
"""

from __future__ import annotations

import io
import pickletools
import struct
import zipfile
import zlib
from typing import Any

import ml_dtypes
import numpy as np
from hypothesis import strategies as st

INTERESTING = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x10000, 2**31 - 1, 2**31,
               2**32 - 1, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
_DTYPES = [np.float32, np.float16, np.float64, np.int8, np.int64, np.uint8, np.bool_, ml_dtypes.bfloat16]

Fields = list[tuple[int, str, str]]


# ------------------------------------------------------------------------------------------- tensors
@st.composite
def weights(draw: Any, *, max_tensors: int = 4, dtypes: list | None = None, allow_empty: bool = True) -> dict:
    """A small dict of named arrays: random shapes (0-d, empty, up to rank 3), dtypes, sparsity."""
    count = draw(st.integers(1, max_tensors))
    out = {}
    for i in range(count):
        dtype = np.dtype(draw(st.sampled_from(dtypes or _DTYPES)))
        rank = draw(st.integers(0 if allow_empty else 1, 3))
        shape = tuple(draw(st.integers(0 if allow_empty else 1, 5)) for _ in range(rank))
        seed = draw(st.integers(0, 2**16))
        rng = np.random.default_rng(seed)
        values = rng.standard_normal(shape) * (rng.random(shape) < draw(st.sampled_from([0.1, 0.5, 1.0])))
        name = draw(st.sampled_from(["w", "fc.weight", "layer.0.bias", "bn.running_var", "emb"])) + str(i)
        values = np.asarray(values)
        out[name] = np.asarray(values.astype(dtype) if dtype.kind != "b" else values > 0)
    return out


# -------------------------------------------------------------------------------------------- zips
def zip_fields(data: bytes) -> Fields:
    """Numeric fields of every local header, data descriptor, central entry and end record."""
    fields: Fields = []
    local = [(4, "<H", "version"), (6, "<H", "flags"), (8, "<H", "method"), (14, "<I", "crc"),
             (18, "<I", "compressed size"), (22, "<I", "size"), (26, "<H", "name length"),
             (28, "<H", "extra length")]
    central = [(8, "<H", "flags"), (10, "<H", "method"), (16, "<I", "crc"), (20, "<I", "compressed size"),
               (24, "<I", "size"), (28, "<H", "name length"), (30, "<H", "extra length"),
               (32, "<H", "comment length"), (34, "<H", "disk"), (42, "<I", "local header offset")]
    eocd = [(8, "<H", "entries on disk"), (10, "<H", "entries"), (12, "<I", "directory size"),
            (16, "<I", "directory offset"), (20, "<H", "comment length")]
    eocd64 = [(24, "<Q", "zip64 entries on disk"), (32, "<Q", "zip64 entries"),
              (40, "<Q", "zip64 directory size"), (48, "<Q", "zip64 directory offset")]
    descriptor = [(4, "<I", "descriptor crc"), (8, "<I", "descriptor compressed size"),
                  (12, "<I", "descriptor size")]
    records = [(b"PK\x03\x04", local, "local header"), (b"PK\x01\x02", central, "central entry"),
               (b"PK\x05\x06", eocd, "end record"), (b"PK\x06\x06", eocd64, "zip64 end"),
               (b"PK\x07\x08", descriptor, "data descriptor")]
    for magic, layout, what in records:
        pos = 0
        while (pos := data.find(magic, pos)) >= 0:
            for off, fmt, name in layout:
                if pos + off + struct.calcsize(fmt) <= len(data):
                    fields.append((pos + off, fmt, f"{what}@{pos} {name}"))
            pos += 4
    # zip64 extra fields (id 1) inside headers: their 8-byte sizes and offsets
    pos = 0
    while (pos := data.find(b"\x01\x00\x10\x00", pos)) >= 0:
        for k in range(2):
            if pos + 4 + 8 * (k + 1) <= len(data):
                fields.append((pos + 4 + 8 * k, "<Q", f"zip64 extra@{pos} value {k}"))
        pos += 4
    return fields


# ------------------------------------------------------------------------------------------ pickles
_ARG_WIDTH = {"BININT": "<i", "BININT1": "<B", "BININT2": "<H", "BINGET": "<B", "LONG_BINGET": "<I",
              "BINPUT": "<B", "LONG_BINPUT": "<I", "BINUNICODE": "<I", "SHORT_BINUNICODE": "<B",
              "BINBYTES": "<I", "SHORT_BINBYTES": "<B", "BINUNICODE8": "<Q", "BINBYTES8": "<Q",
              "FRAME": "<Q", "LONG1": "<B", "LONG4": "<i", "PROTO": "<B", "BINSTRING": "<i",
              "SHORT_BINSTRING": "<B", "BYTEARRAY8": "<Q"}


def pickle_fields(data: bytes, base: int = 0) -> tuple[Fields, list[int]]:
    """Argument fields of every opcode with a numeric argument, and every opcode's position."""
    fields: Fields = []
    starts: list[int] = []
    try:
        for op, _arg, pos in pickletools.genops(data):
            starts.append(base + pos)
            fmt = _ARG_WIDTH.get(op.name)
            if fmt is not None:
                fields.append((base + pos + 1, fmt, f"pickle {op.name}@{pos}"))
    except Exception:  # a bent pickle: what was parsed so far is enough
        pass
    return fields, starts


def _memo_dag(levels: int, first: int = 0) -> bytes:
    """t_k = (t_{k-1}, t_{k-1}) through the memo (7 bytes a level, 2**levels leaves when expanded).

    Pushes one value, t_{levels-1}; uses memo slots ``first .. first + levels - 1``.
    """
    out = b")q" + bytes([first]) + b"0"
    for k in range(first + 1, first + levels):
        out += b"h" + bytes([k - 1]) + b"h" + bytes([k - 1]) + b"\x86q" + bytes([k]) + b"0"
    return out + b"h" + bytes([first + levels - 1])


def hostile_snippets() -> dict[str, bytes]:
    """Pickle fragments that each push ONE value, for injection at an opcode boundary."""
    P = 2**61 - 1
    colliding = b"".join(b"\x8a\x0a" + (i * P + 5).to_bytes(10, "little", signed=True) + b"K\x01"
                         for i in range(1, 3000))
    return {
        "deep tuples": b")" + b"\x85" * 200_000,
        "deep lists": b"]" * 50_000 + b"a" * 49_999,
        "deep frozenset": b"(" + b")" + b"\x85" * 100_000 + b"\x91",
        "hash DAG as key": b"}" + _memo_dag(60) + b"K\x01s",
        "DAG in set": b"(" + _memo_dag(60) + b"\x91",
        "equal DAGs compared": b"}" + _memo_dag(40) + b"K\x01s" + _memo_dag(40, 100) + b"K\x02s",
        "huge int": b"\x8b" + (100_000).to_bytes(4, "little") + b"\x7f" * 100_000,
        "5000-digit int": b"\x8b" + (2100).to_bytes(4, "little") + b"\x11" * 2100,
        "colliding int keys": b"}(" + colliding + b"u",
        "amplified bytearray": b"B" + struct.pack("<I", 1 << 16) + b"x" * (1 << 16) + b"q\x010]("
        + b"c__builtin__\nbytearray\nh\x01\x85R" * 2000 + b"e",
        "amplified set": b"(" + b"K\x01" * 5000 + b"lq\x020]("
        + b"c__builtin__\nset\nh\x02\x85R" * 3000 + b"e",
        "many globals": b"(" + b"ctorch\nfloat32\n" * 2000 + b"l",
    }


# -------------------------------------------------------------------------------------------- bends
def bend_field(data: bytes, field: tuple[int, str, str], value: int) -> bytes:
    off, fmt, _ = field
    width = struct.calcsize(fmt)
    signed = fmt[-1].islower()
    bits = 8 * width
    v = value % (1 << bits)
    if signed and v >= 1 << (bits - 1):
        v -= 1 << bits
    out = bytearray(data)
    struct.pack_into(fmt, out, off, v)
    return bytes(out)


@st.composite
def numeric_bend(draw: Any, data: bytes, fields: Fields) -> tuple[bytes, str]:
    if not fields:
        return data, "unchanged"
    field = draw(st.sampled_from(fields))
    original = struct.unpack_from(field[1], data, field[0])[0]
    value = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(-4, 4).map(lambda d: original + d)))
    return bend_field(data, field, value), f"{field[2]} := {value}"


def rezip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, payload in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, payload, compress_type=compression)
    return buf.getvalue()


def set_json_path(doc: Any, path: list, value: Any) -> Any:
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def json_leaves(doc: Any, prefix: list | None = None) -> list[list]:
    """Paths to every value in a JSON document (objects and lists included)."""
    prefix = prefix or []
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += json_leaves(v, [*prefix, k])
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += json_leaves(v, [*prefix, i])
    return out


JSON_VALUES = st.one_of(
    st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, 2**70, 10**400, 1.5, None, True, "", "F32", "bogus",
                     "float32", [], [0], [2**62, 2**62], [1] * 40, [0, 2**64], {}, "x" * 70000,
                     "\ud800", "\x1b[31mred\x1b[0m", "a$b$", [[[[[[[[]]]]]]]]]),
    st.integers(-10, 10**6),
    st.lists(st.integers(-2, 2**33), max_size=6),
)


def crc(data: bytes) -> int:
    return zlib.crc32(data)
