"""Hand-built MXNet NDArray-list files for the tests, written straight from the format spec.

Independent of ``coreprune.io.mxnet_params``: the type-flag table and the record layouts
are spelled out here again, so that a mistake in the module is not mirrored in its tests.
"""

from __future__ import annotations

import struct

import ml_dtypes
import numpy as np

LIST_MAGIC = 0x112
MAGIC = {1: 0xF993FAC8, 2: 0xF993FAC9, 3: 0xF993FACA}
FLAG = {
    "float32": 0,
    "float64": 1,
    "float16": 2,
    "uint8": 3,
    "int32": 4,
    "int8": 5,
    "int64": 6,
    "bool": 7,
    "int16": 8,
    "uint16": 9,
    "uint32": 10,
    "uint64": 11,
    "bfloat16": 12,
}
DTYPE_OF_FLAG = {v: np.dtype(ml_dtypes.bfloat16 if k == "bfloat16" else k) for k, v in FLAG.items()}


def tshape(dims, dim_format: str = "<q") -> bytes:
    return struct.pack("<i", len(dims)) + b"".join(struct.pack(dim_format, int(d)) for d in dims)


def _tail(array: np.ndarray, dev: tuple[int, int], flag: int | None) -> bytes:
    flag = FLAG[array.dtype.name] if flag is None else flag
    return struct.pack("<iii", dev[0], dev[1], flag)


def dense_record(array: np.ndarray, version: int = 2, dev=(1, 0), flag: int | None = None) -> bytes:
    """One dense record of ``array`` (little-endian, C order) in record version 0-3."""
    data = array.tobytes(order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    if version == 0:
        head = struct.pack("<I", array.ndim) + b"".join(struct.pack("<I", d) for d in array.shape)
    elif version == 1:
        head = struct.pack("<I", MAGIC[1]) + tshape(array.shape)
    else:
        head = struct.pack("<Ii", MAGIC[version], 0) + tshape(array.shape)
    return head + _tail(array, dev, flag) + data


def row_sparse_record(dense: np.ndarray, storage_shape=None) -> bytes:
    """A row_sparse record: the rows of ``dense`` that hold a non-zero, with int64 row ids."""
    rows = np.flatnonzero(dense.reshape(dense.shape[0], -1).any(axis=1)).astype(np.int64)
    values = np.ascontiguousarray(dense[rows])
    sshape = values.shape if storage_shape is None else storage_shape
    return (
        struct.pack("<Ii", MAGIC[2], 1)
        + tshape(sshape)
        + tshape(dense.shape)
        + _tail(dense, (1, 0), None)
        + struct.pack("<i", FLAG["int64"])
        + tshape(rows.shape)
        + values.tobytes()
        + rows.tobytes()
    )


def csr_record(dense: np.ndarray, storage_shape=None) -> bytes:
    """A csr record of the 2-D ``dense``: values, then int64 indptr, then int64 column indices."""
    rows, cols = np.nonzero(dense)
    values = np.ascontiguousarray(dense[rows, cols])
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=dense.shape[0]))]).astype(np.int64)
    indices = cols.astype(np.int64)
    sshape = values.shape if storage_shape is None else storage_shape
    return (
        struct.pack("<Ii", MAGIC[2], 2)
        + tshape(sshape)
        + tshape(dense.shape)
        + _tail(dense, (1, 0), None)
        + struct.pack("<i", FLAG["int64"])
        + tshape(indptr.shape)
        + struct.pack("<i", FLAG["int64"])
        + tshape(indices.shape)
        + values.tobytes()
        + indptr.tobytes()
        + indices.tobytes()
    )


def params_file(records: list[bytes], names: list[str] | None = None, reserved: int = 0) -> bytes:
    """The list container: magic, reserved, count, records, then names (none for a list file)."""
    out = struct.pack("<QQQ", LIST_MAGIC, reserved, len(records)) + b"".join(records)
    names = names or []
    out += struct.pack("<Q", len(names))
    for name in names:
        raw = name.encode("utf-8")
        out += struct.pack("<Q", len(raw)) + raw
    return out
