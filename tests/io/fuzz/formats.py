"""Valid files of every format with their bendable structure, and the one-field bends per format.

Each ``*_case`` strategy returns a :class:`Case`: the file bytes, its suffix, what was bent
(``"unchanged"`` for a valid file) and, for a valid file, the arrays it must read back as.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
from _torchpickle import Storage, Tensor, dumps, tensor_of, zip_file
from builders import (
    JSON_VALUES,
    crc,
    hostile_snippets,
    json_leaves,
    numeric_bend,
    pickle_fields,
    rezip,
    set_json_path,
    weights,
    zip_fields,
)
from hypothesis import strategies as st
from mxnet_records import csr_record, dense_record, params_file, row_sparse_record

from coreprune.io import npz_format, safetensors_format

_HOSTILE = hostile_snippets()
_PLACEHOLDER = "@@hostile-value@@"


@dataclass
class Case:
    data: bytes
    suffix: str
    bend: str
    expected: dict[str, np.ndarray] | None = None
    options: dict | None = None


def _unchanged_or(draw: Any) -> bool:
    return draw(st.integers(0, 9)) == 0


# -------------------------------------------------------------------------------------------- torch
_STORAGE = {"float32": "FloatStorage", "float16": "HalfStorage", "float64": "DoubleStorage",
            "int8": "CharStorage", "int64": "LongStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
            "bfloat16": "BFloat16Storage"}


def _torch_object(w: dict[str, np.ndarray], shared: bool) -> tuple[Any, dict[str, np.ndarray]]:
    sd: dict[str, Any] = {}
    expected = {}
    for i, (name, a) in enumerate(w.items()):
        sd[name] = tensor_of(a, str(i), _STORAGE[a.dtype.name])
        expected[name] = a
    if shared:  # two views of one storage: a transpose and a slice
        base = np.arange(12, dtype=np.float32)
        s = Storage(base.tobytes(), "FloatStorage", "shared")
        sd["shared.w"] = Tensor(s, 0, (3, 4), (4, 1))
        sd["shared.wt"] = Tensor(s, 1, (3, 3), (1, 4))
        expected["shared.w"] = base.reshape(3, 4)
        expected["shared.wt"] = np.lib.stride_tricks.as_strided(base[1:], (3, 3), (4, 16))
    return sd, expected


@st.composite
def torch_case(draw: Any) -> Case:
    w = draw(weights())
    sd, expected = _torch_object(w, draw(st.booleans()))
    expected = {f"state_dict.{k}": v for k, v in expected.items()}
    protocol = draw(st.integers(2, 5))
    checkpoint = {"state_dict": sd, "epoch": 3, "x": _PLACEHOLDER}
    kind = draw(st.sampled_from(["unchanged", "tensor", "pickle", "zip", "hostile", "truncate"]))
    bend = "unchanged"
    if kind == "tensor":  # one field of one tensor or storage: offset, size, stride, dtype, numel, key
        tensors = [t for t in sd.values()]
        t = draw(st.sampled_from(tensors))
        what = draw(st.sampled_from(["offset", "shape", "stride", "dtype", "numel", "key", "type"]))
        if what == "offset":
            t.offset = draw(st.sampled_from([1, 2, 7, 2**31, 2**62, 2**63 - 1]))
        elif what == "shape":
            t.shape = draw(st.sampled_from([(2**31, 2**31), (10**6,), (1,) * 40, (3, 0), (2**62, 0, 2**62)]))
            t.stride = (1,) * len(t.shape)
        elif what == "stride":
            t.stride = tuple(draw(st.sampled_from([0, 1, 3, 2**31, 2**62])) for _ in t.stride)
        elif what == "dtype":
            t.dtype = draw(st.sampled_from(["float64", "uint16", "float8_e4m3fn", "complex32", "qint8"]))
        elif what == "numel":
            t.storage.numel = draw(st.sampled_from([0, 1, 2**40, 2**63 - 1]))
        elif what == "key":
            t.storage.key = draw(st.sampled_from(["0", "1", "shared", "../etc/passwd", "\x00"]))
        else:  # the same storage bytes read as another element type
            t.storage.type_name = draw(st.sampled_from(["DoubleStorage", "ByteStorage", "UntypedStorage"]))
        bend = f"tensor {what}"
        expected = None
    body, storages = dumps(checkpoint, protocol=protocol)
    placeholder = pickle.dumps(_PLACEHOLDER, protocol=protocol)[2:-1]
    if protocol >= 4:
        placeholder = placeholder.replace(b"\x94", b"")  # MEMOIZE follows the string
    at = body.find(placeholder)
    if kind == "hostile":
        name = draw(st.sampled_from(sorted(_HOSTILE)))
        body = body[:at] + _HOSTILE[name] + body[at + len(placeholder):]
        bend = f"hostile {name}"
        expected = None
    elif kind == "pickle":
        fields, _ = pickle_fields(body)
        body, bend = draw(numeric_bend(body, fields))
        expected = None
    elif kind == "truncate":
        _, starts = pickle_fields(body)
        cut = draw(st.sampled_from(starts))
        body, bend, expected = body[:cut], f"pickle cut at {cut}", None
    data = zip_file(pickle_bytes=body, storages=storages)
    if kind == "zip":
        data, bend = draw(numeric_bend(data, zip_fields(data)))
        expected = None
    if expected is not None and bend != "unchanged":
        expected = None
    return Case(data, ".pt", f"torch p{protocol} {bend}", expected)


# ---------------------------------------------------------------------------------------------- npz
@st.composite
def npz_case(draw: Any) -> Case:
    w = draw(weights())
    compressed = draw(st.booleans())
    buf = io.BytesIO()
    npz_format.write(w, buf, compressed=compressed)
    data = buf.getvalue()
    kind = draw(st.sampled_from(["unchanged", "zip", "header", "name", "bomb"]))
    if kind == "unchanged":
        return Case(data, ".npz", "npz unchanged", w)
    if kind == "zip":
        data, bend = draw(numeric_bend(data, zip_fields(data)))
        return Case(data, ".npz", f"npz {bend}")
    members = []
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            members.append((info.filename, z.read(info)))
    i = draw(st.integers(0, len(members) - 1))
    name, payload = members[i]
    if kind == "header":
        arr_header_len = struct.unpack_from("<H", payload, 8)[0]
        header = payload[10 : 10 + arr_header_len].decode("latin1")
        field = draw(st.sampled_from(["descr", "shape", "fortran_order"]))
        value = draw(st.sampled_from({
            "descr": ["'<f8'", "'|O'", "'<V0'", "'>i4'", "[('a', '<f4')]", "'<U5'"],
            "shape": ["(2**40,)", "(-1,)", "(1,)*40", "(999999999999,)", "(0,)", "()", "(1.5,)"],
            "fortran_order": ["True", "1", "None"],
        }[field]))
        import ast

        fields = {k: repr(v) for k, v in ast.literal_eval(header.strip()).items()}
        fields[field] = value  # the bent field, as text (it need not be a literal any more)
        header = "{" + ", ".join(f"'{k}': {v}" for k, v in fields.items()) + ", }"
        raw = header.encode("latin1")
        payload = payload[:8] + struct.pack("<H", len(raw)) + raw + payload[10 + arr_header_len:]
        bend = f"npy header {field} := {value}"
    elif kind == "name":
        name = draw(st.sampled_from(["a" * 70000 + ".npy", "x@bfloat16.npy", "\x1b[2J.npy", "../up.npy",
                                     "w.npy", "noext", "a$b$.npy"]))
        bend = f"member name {name[:20]!r}"
    else:  # one member whose size and data are consistent but expand 1000x
        return Case(_npy_zeros_bomb(), ".npz", "npz deflate bomb")
    members[i] = (name, payload)
    try:
        data = rezip(members, zipfile.ZIP_DEFLATED if compressed or kind == "bomb" else zipfile.ZIP_STORED)
    except (struct.error, ValueError) as e:  # zipfile itself refuses the bend: nothing to read
        return Case(data, ".npz", f"npz (bend refused by zipfile: {e})", None)
    return Case(data, ".npz", f"npz {bend}")


_BOMB: list[bytes] = []


def _npy_zeros_bomb() -> bytes:
    """An .npz whose one member is 256 MiB of zeros, deflated to about 250 KiB (built once)."""
    if not _BOMB:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (64 << 20,)})
        _BOMB.append(rezip([("bomb.npy", header.getvalue() + bytes(256 << 20))], zipfile.ZIP_DEFLATED))
    return _BOMB[0]


# -------------------------------------------------------------------------------------- safetensors
@st.composite
def safetensors_case(draw: Any) -> Case:
    w = draw(weights(dtypes=[np.float32, np.float16, np.int64, np.uint8, np.bool_]))
    buf = io.BytesIO()
    safetensors_format.write(w, buf, metadata={"format": "np"})
    data = buf.getvalue()
    kind = draw(st.sampled_from(["unchanged", "length", "header"]))
    if kind == "unchanged":
        return Case(data, ".safetensors", "safetensors unchanged", w)
    if kind == "length":
        data, bend = draw(numeric_bend(data, [(0, "<Q", "header length")]))
        return Case(data, ".safetensors", f"safetensors {bend}")
    n = struct.unpack_from("<Q", data)[0]
    header = json.loads(data[8 : 8 + n])
    path = draw(st.sampled_from(json_leaves(header)))
    value = draw(JSON_VALUES)
    if draw(st.booleans()) and len(path) == 1:  # rename a tensor instead
        new = value if isinstance(value, str) else path[0]
        header = {(new if k == path[0] else k): v for k, v in header.items()}
        bend = f"name {path[0]} := {str(value)[:20]!r}"
    else:
        set_json_path(header, path, value)
        bend = f"{path} := {str(value)[:20]!r}"
    raw = json.dumps(header).encode("utf-8", "surrogatepass")
    return Case(struct.pack("<Q", len(raw)) + raw + data[8 + n :], ".safetensors", f"safetensors {bend}")


# -------------------------------------------------------------------------------------------- mxnet
def mxnet_fields(data: bytes) -> list[tuple[int, str, str]]:
    """Every header field of an NDArray list file, found by walking it as MXNet does."""
    fields = [(0, "<Q", "magic"), (8, "<Q", "reserved"), (16, "<Q", "count")]
    count = struct.unpack_from("<Q", data, 16)[0]
    pos = 24

    def tshape(pos: int, what: str, dim: str = "<q") -> tuple[int, int, int]:
        fields.append((pos, "<i", f"{what} ndim"))
        ndim = struct.unpack_from("<i", data, pos)[0]
        pos += 4
        n = 1
        for k in range(ndim):
            fields.append((pos, dim, f"{what} dim {k}"))
            n *= struct.unpack_from(dim, data, pos)[0]
            pos += struct.calcsize(dim)
        return pos, n, ndim

    sizes = {0: 4, 1: 8, 2: 2, 3: 1, 4: 4, 5: 1, 6: 8, 7: 1, 8: 2, 9: 2, 10: 4, 11: 8, 12: 2}
    for r in range(count):
        what = f"record {r}"
        fields.append((pos, "<I", f"{what} magic"))
        magic = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        stype = 0
        if magic in (0xF993FAC9, 0xF993FACA):
            fields.append((pos, "<i", f"{what} stype"))
            stype = struct.unpack_from("<i", data, pos)[0]
            pos += 4
            if stype:
                pos, _, _ = tshape(pos, f"{what} storage shape")
            pos, n, _ = tshape(pos, f"{what} shape")
        elif magic == 0xF993FAC8:
            pos, n, _ = tshape(pos, f"{what} shape")
        else:
            ndim = magic
            n = 1
            for k in range(ndim):
                fields.append((pos, "<I", f"{what} v0 dim {k}"))
                n *= struct.unpack_from("<I", data, pos)[0]
                pos += 4
        fields += [(pos, "<i", f"{what} dev type"), (pos + 4, "<i", f"{what} dev id"),
                   (pos + 8, "<i", f"{what} flag")]
        flag = struct.unpack_from("<i", data, pos + 8)[0]
        pos += 12
        aux = []
        for k in range({0: 0, 1: 1, 2: 2}[stype]):
            fields.append((pos, "<i", f"{what} aux {k} flag"))
            aflag = struct.unpack_from("<i", data, pos)[0]
            pos, an, _ = tshape(pos + 4, f"{what} aux {k} shape")
            aux.append(an * sizes[aflag])
        if stype:  # the values' count comes from the aux shapes (csr: indices; row_sparse: rows x row)
            n = _sparse_values(data, fields, stype)
        pos += n * sizes[flag] + sum(aux)
    fields.append((pos, "<Q", "name count"))
    names = struct.unpack_from("<Q", data, pos)[0]
    pos += 8
    for k in range(names):
        fields.append((pos, "<Q", f"name {k} length"))
        pos += 8 + struct.unpack_from("<Q", data, pos)[0]
    return fields


def _sparse_values(data: bytes, fields: list, stype: int) -> int:
    """Element count of a sparse record's values, from the aux shapes just parsed."""
    dims = {}
    for off, fmt, what in fields[::-1]:
        if "aux 0 shape dim 0" in what and 0 not in dims:
            dims[0] = struct.unpack_from(fmt, data, off)[0]
        if "aux 1 shape dim 0" in what and 1 not in dims:
            dims[1] = struct.unpack_from(fmt, data, off)[0]
        if " shape dim " in what and "aux" not in what and "storage" not in what:
            dims.setdefault(("shape", what[-1]), struct.unpack_from(fmt, data, off)[0])
        if "magic" in what:
            break
    if stype == 2:
        return dims[1]
    row = 1
    for key, v in dims.items():
        if isinstance(key, tuple) and key[1] != "0":
            row *= v
    return dims[0] * row


@st.composite
def mxnet_case(draw: Any) -> Case:
    w = draw(weights(dtypes=[np.float32, np.float16, np.int64, np.uint8], allow_empty=False))
    dense = np.zeros((4, 3), np.float32)
    dense[1, 2], dense[3, 0] = 2.5, -1
    records = [dense_record(a, version=draw(st.sampled_from([0, 1, 2, 3]))) for a in w.values()]
    names = list(w)
    expected: dict[str, np.ndarray] = dict(w)
    if draw(st.booleans()):
        records += [csr_record(dense), row_sparse_record(dense)]
        names += ["csr", "rsp"]
        expected.update(csr=dense, rsp=dense)
    data = params_file(records, names)
    if _unchanged_or(draw):
        return Case(data, ".params", "mxnet unchanged", expected)
    data, bend = draw(numeric_bend(data, mxnet_fields(data)))
    return Case(data, ".params", f"mxnet {bend}")


# ---------------------------------------------------------------------------------------------- cpz
@st.composite
def cpz_case(draw: Any) -> Case:
    import coreprune
    from coreprune.io.cpz import _FOOTER

    w = draw(weights(dtypes=[np.float32, np.float16, np.int8]))
    if draw(st.booleans()):  # an N:M-pruned tensor: the "nm" layout and its fields
        from coreprune.structured import nm_masks

        n, m = draw(st.sampled_from([(2, 4), (1, 4), (4, 8)]))
        dense = np.random.default_rng(draw(st.integers(0, 9))).standard_normal((4, 16)).astype(np.float32)
        w["nm.weight"] = np.where(nm_masks({"w": dense}, n, m)["w"], dense, np.float32(0))
    if draw(st.booleans()):
        floats = {k: v for k, v in w.items() if v.dtype.kind == "f" and v.ndim >= 1}
        if floats:
            bits = draw(st.sampled_from([1, 3, 4, 8]))
            group_size = draw(st.sampled_from(["auto", 4]))  # groups below 8 bits: float16 scales
            w.update(coreprune.quantize(floats, bits=bits, group_size=group_size, include=lambda *_: True))
    buf = io.BytesIO()
    from coreprune.io import cpz

    cpz.write(w, buf)
    data = buf.getvalue()
    kind = draw(st.sampled_from(["unchanged", "manifest", "binary"]))
    if kind == "unchanged":
        return Case(data, ".cpz", "cpz unchanged", None)
    offset, length, _, end = _FOOTER.unpack_from(data, len(data) - _FOOTER.size)
    if kind == "binary":
        fields = [(8, "<I", "version"), (len(data) - _FOOTER.size, "<Q", "manifest offset"),
                  (len(data) - _FOOTER.size + 8, "<Q", "manifest length")]
        data, bend = draw(numeric_bend(data, fields))
        return Case(data, ".cpz", f"cpz {bend}")
    manifest = json.loads(data[offset : offset + length])
    path = draw(st.sampled_from(json_leaves(manifest)))
    value = draw(JSON_VALUES)
    set_json_path(manifest, path, value)
    text = json.dumps(manifest).encode("utf-8", "surrogatepass")
    body = data[:offset]
    footer = _FOOTER.pack(offset, len(text), crc(text), end)
    return Case(body + text + footer, ".cpz", f"cpz {path} := {str(value)[:30]!r}")


# ------------------------------------------------------------------------------------- legacy torch
@st.composite
def torch_legacy_case(draw: Any) -> Case:
    from _torchpickle import legacy_file

    w = draw(weights(dtypes=[np.float32, np.int64, np.uint8]))
    sd, expected = _torch_object(w, draw(st.booleans()))
    expected = {f"state_dict.{k}": v for k, v in expected.items()}
    data = legacy_file({"state_dict": sd})
    if _unchanged_or(draw):
        return Case(data, ".pt", "legacy unchanged", expected)
    fields, pos = [], 0
    for _ in range(5):
        f, starts = pickle_fields(data[pos:], pos)
        fields += f
        if not starts:
            break
        try:
            import pickletools

            last = max(p for _, _, p in pickletools.genops(data[pos:]))
        except Exception:
            break
        pos += last + 1
    data, bend = draw(numeric_bend(data, fields))
    return Case(data, ".pt", f"legacy {bend}")


FORMATS = {
    "torch": torch_case,
    "torch-legacy": torch_legacy_case,
    "npz": npz_case,
    "safetensors": safetensors_case,
    "mxnet": mxnet_case,
    "cpz": cpz_case,
}
