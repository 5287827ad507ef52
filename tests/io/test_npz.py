""".npz / .npy reader and writer, cross-checked against numpy.save / savez / load."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import coreprune.io as cio
from coreprune.errors import WeightFileError
from coreprune.io import npz_format

NUMPY_DTYPES = [
    "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float16", "float32", "float64", "complex64", "complex128", ">f4", ">i8",
]  # fmt: skip
BITS_DTYPES = [
    d for d in ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz") if hasattr(ml_dtypes, d)
]
SHAPES = [(), (0,), (3, 0), (7,), (2, 3), (2, 1, 3)]


def _sample(dtype: np.dtype, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return np.asarray(rng.random(shape) > 0.5)
    if dtype.kind in "iu":
        return np.asarray(rng.integers(0, 100, size=shape), dtype=dtype)
    if dtype.kind == "c":
        return np.asarray(rng.standard_normal(shape) + 1j * rng.standard_normal(shape), dtype=dtype)
    return np.asarray(rng.standard_normal(shape), dtype=dtype)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    np.testing.assert_array_equal(
        np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8)
    )


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_round_trip_and_numpy_reads_our_files(tmp_path, dtype, compressed):
    weights = {f"t{i}": _sample(np.dtype(dtype), shape, i) for i, shape in enumerate(SHAPES)}
    path = tmp_path / "w.npz"
    cio.save(weights, path, compressed=compressed)
    ours = cio.load(path)
    with np.load(path, allow_pickle=False) as theirs:
        assert list(theirs.files) == list(weights)
        for name, value in weights.items():
            _same(ours[name], value)
            _same(theirs[name], value)
    with zipfile.ZipFile(path) as zf:  # the writer's choice of method is what ends up in the file
        methods = {zi.compress_type for zi in zf.infolist()}
    assert methods == {zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED}


@pytest.mark.parametrize("writer", [np.savez, np.savez_compressed])
def test_files_written_by_numpy_read_equal(tmp_path, writer):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    weights = {
        "c": base,
        "fortran": np.asfortranarray(base),
        "transposed": base.T,
        "strided": base[::2, 1::3],
        "scalar": np.float64(3.25) * np.ones(()),
        "empty": np.zeros((0, 4), np.int16),
        "big_endian": base.astype(">i4"),
        "flags": base > 10,
    }
    path = tmp_path / "np.npz"
    writer(path, **weights)
    positional = tmp_path / "pos.npz"
    writer(positional, base, base.T)
    with cio.open_weights(path) as r:
        assert list(r) == list(weights)
        for name, value in weights.items():
            assert r.spec(name).shape == value.shape and r.spec(name).dtype == value.dtype
            np.testing.assert_array_equal(r[name], value)
            if writer is np.savez and value.size:
                assert isinstance(r[name], np.memmap) and not r[name].flags.writeable
    assert list(cio.load(positional)) == ["arr_0", "arr_1"]


def test_npy_files_are_one_array_named_by_the_file_stem(tmp_path):
    value = np.arange(12, dtype=np.int32).reshape(3, 4)
    np.save(tmp_path / "fc.weight.npy", value)
    out = cio.load(tmp_path / "fc.weight.npy")
    assert list(out) == ["fc.weight"]
    np.testing.assert_array_equal(out["fc.weight"], value)
    np.save(tmp_path / "f.npy", np.asfortranarray(value))
    with cio.open_weights(tmp_path / "f.npy") as r:
        assert isinstance(r["f"], np.memmap) and r["f"].flags.f_contiguous
        np.testing.assert_array_equal(r["f"], value)
    # Our .npy writer: a single array, read back by numpy.load.
    cio.save({"anything": value.T}, tmp_path / "out.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), value.T)
    with pytest.raises(WeightFileError, match=r"two\.npy: a \.npy file holds exactly one array but 2"):
        cio.save({"a": value, "b": value}, tmp_path / "two.npy")


@pytest.mark.parametrize("name", BITS_DTYPES)
def test_ml_dtypes_are_stored_as_raw_bits_under_a_marked_name(tmp_path, name):
    dtype = np.dtype(getattr(ml_dtypes, name))
    value = np.array([[1.0, -2.0, 0.5], [0.25, -0.125, 4.0]], dtype=dtype)
    path = tmp_path / "w.npz"
    cio.save({"fc.weight": value, "fc.bias": value[0].astype(np.float32)}, path)
    with np.load(path) as plain:  # numpy sees the raw bits, under a name that says what they are
        bits = plain[f"fc.weight@{name}"]
    assert bits.dtype == np.dtype(f"u{dtype.itemsize}")
    assert bits.tolist() == value.view(bits.dtype).tolist()
    out = cio.load(path)
    assert list(out) == ["fc.weight", "fc.bias"]
    _same(out["fc.weight"], value)


def test_bits_convention_edge_cases(tmp_path):
    bf = np.ones(2, ml_dtypes.bfloat16)
    # An unsigned array whose name carries the marker would come back as another dtype: refused.
    with pytest.raises(WeightFileError, match="would be read back as bfloat16"):
        cio.save({"x@bfloat16": np.ones(2, np.uint16)}, tmp_path / "a.npz")
    # The marker on a float array, or an unknown marker, is just part of the name.
    cio.save({"x@bfloat16": np.ones(2, np.float32), "y@nonsense": np.ones(2, np.uint16)}, tmp_path / "b.npz")
    assert list(cio.load(tmp_path / "b.npz")) == ["x@bfloat16", "y@nonsense"]
    # A .npy cannot carry the marker (the name is not stored).
    with pytest.raises(WeightFileError, match="cannot record the dtype bfloat16"):
        cio.save({"w": bf}, tmp_path / "w.npy")
    # Both the plain and the marked member would be called "w".
    with zipfile.ZipFile(tmp_path / "dup.npz", "w") as zf:
        for member, value in (("w.npy", np.ones(2, np.float32)), ("w@bfloat16.npy", np.ones(2, np.uint16))):
            with zf.open(member, "w") as f:
                np.lib.format.write_array(f, value)
    with pytest.raises(WeightFileError, match="holds the array 'w' twice"):
        cio.load(tmp_path / "dup.npz")
    if hasattr(ml_dtypes, "int4"):
        with pytest.raises(WeightFileError, match="dtype int4, which .npz cannot store"):
            cio.save({"q": np.zeros(2, ml_dtypes.int4)}, tmp_path / "q.npz")


def test_object_arrays_are_refused_both_ways(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, ok=np.ones(2), bad=np.array([{"a": 1}], dtype=object))
    with pytest.raises(
        WeightFileError, match=r"array 'bad' is an object array; pickled data is never loaded"
    ):
        cio.load(path)
    with pytest.raises(WeightFileError, match="tensor 'o' is an object array"):
        cio.save({"o": np.array([None], dtype=object)}, tmp_path / "o.npz")


def test_members_are_64_byte_aligned_and_archives_deterministic(tmp_path):
    weights = {
        "a": np.ones(3, np.float32),
        "ünïcode": np.arange(5, dtype=np.int64),
        "b" * 77: np.zeros((2, 2)),
    }
    cio.save(weights, tmp_path / "1.npz")
    cio.save(weights, tmp_path / "2.npz")
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
    with cio.open_weights(tmp_path / "1.npz") as r:
        for name in weights:
            m = r[name]
            assert m.offset % 64 == 0, (name, m.offset)
            np.testing.assert_array_equal(m, weights[name])


def test_empty_mapping_gives_an_empty_archive(tmp_path):
    cio.save({}, tmp_path / "e.npz")
    assert cio.load(tmp_path / "e.npz") == {}
    with np.load(tmp_path / "e.npz") as f:
        assert f.files == []


def test_writer_reads_a_lazy_reader_one_tensor_at_a_time(tmp_path):
    weights = {f"w{i}": np.full((4, 4), i, np.float32) for i in range(5)}
    np.savez(tmp_path / "in.npz", **weights)
    with cio.open_weights(tmp_path / "in.npz") as r:
        cio.save(r, tmp_path / "out.npz", inputs=(tmp_path / "in.npz",))
        with pytest.raises(WeightFileError, match="refusing to overwrite the input file"):
            cio.save(r, tmp_path / "in.npz", inputs=(tmp_path / "in.npz",))
    out = cio.load(tmp_path / "out.npz")
    for name, value in weights.items():
        np.testing.assert_array_equal(out[name], value)


def _zip_bytes(members: dict[str, bytes], method=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _npy(value: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, value)
    return buf.getvalue()


def _npy_header(header: str, version=(1, 0)) -> bytes:
    text = header.encode("latin1")
    size = b"<H" if version == (1, 0) else b"<I"
    return b"\x93NUMPY" + bytes(version) + struct.pack(size.decode(), len(text)) + text


def _lying(shape: str, data: bytes = b"\0" * 16) -> bytes:
    return _npy_header(f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}") + data


@pytest.mark.parametrize(
    "members, match",
    [
        ({"w.npy": _lying("(1099511627776,)")}, r"declares shape \(1099511627776,\) .* holds 16 data bytes"),
        ({"w.npy": _lying("(1099511627776, 1099511627776)")}, "impossibly large shape"),
        ({"w.npy": _lying("(2, -3)")}, "invalid shape"),
        ({"w.npy": _lying("(5,)")}, r"declares shape \(5,\)"),
        ({"w.npy": _lying("(3,)")}, r"declares shape \(3,\)"),  # trailing bytes in the member
        (
            {"w.npy": _npy_header("{'descr': 'zz', 'fortran_order': False, 'shape': (1,), }") + b"\0" * 4},
            "header",
        ),
        ({"w.npy": _npy_header("[" * 500 + "]" * 500) + b"\0"}, "corrupted .npy header"),
        ({"w.npy": b"\x93NUMPY\x01\x00\xff\xff" + b" " * 100}, "the limit is 10000"),
        ({"w.npy": b"\x93NUMPY\x09\x00" + b" " * 100}, r"version \(9, 0\)"),
        ({"w.npy": b"not an array"}, "is not a .npy array"),
        ({"notes.txt": b"hello"}, "member 'notes.txt' is not a .npy array"),
    ],
)
def test_corrupted_members_are_refused_with_small_allocations(tmp_path, members, match):
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        path = tmp_path / "bad.npz"
        path.write_bytes(_zip_bytes(members, method))
        tracemalloc.start()
        try:
            with pytest.raises(WeightFileError, match=match) as info:
                cio.load(path, format="npz")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert str(info.value).startswith(str(path))
        assert peak < 1 << 20


def test_npy_file_errors(tmp_path):
    path = tmp_path / "x.npy"
    path.write_bytes(_npy(np.arange(4, dtype=np.float32)) + b"tail")
    with pytest.raises(WeightFileError, match="4 bytes follow the array data"):
        cio.load(path)
    path.write_bytes(_lying("(1099511627776,)"))
    with pytest.raises(WeightFileError, match="the array data needs 4398046511104 bytes"):
        cio.load(path)


def test_corrupted_compressed_data_is_caught_by_crc_or_zlib(tmp_path):
    value = np.arange(1000, dtype=np.float64)
    data = bytearray(_zip_bytes({"w.npy": _npy(value)}, zipfile.ZIP_DEFLATED))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.infolist()[0]
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0x55
    path = tmp_path / "c.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(WeightFileError, match="w"):
        cio.load(path)


def test_disagreeing_local_header_is_refused(tmp_path):
    data = _zip_bytes({"ab.npy": _npy(np.ones(2))})
    path = tmp_path / "h.npz"
    path.write_bytes(data.replace(b"ab.npy", b"xy.npy", 1))  # the local header comes first
    with pytest.raises(WeightFileError, match="local and central zip headers of array 'ab' disagree"):
        cio.load(path)


@pytest.mark.parametrize("compressed", [False, True])
def test_every_truncation_of_a_valid_file_is_refused(scratch, compressed):
    buf = io.BytesIO()
    npz_format.write(
        {"a": np.arange(6, dtype=np.float16), "b": np.ones((2, 2), np.int8)}, buf, compressed=compressed
    )
    data = buf.getvalue()
    path = scratch / "t.npz"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(WeightFileError):
            cio.load(path, format="npz")
    npy = _npy(np.arange(5, dtype=np.int16))
    for cut in range(len(npy)):
        (scratch / "t.npy").write_bytes(npy[:cut])
        with pytest.raises(WeightFileError):
            cio.load(scratch / "t.npy", format="npz")


def test_lazy_open_allocates_almost_nothing(tmp_path):
    # 32 MiB of stored data plus a compressed archive: opening and listing read only headers.
    big = np.zeros((2048, 4096), np.float32)
    np.savez(tmp_path / "big.npz", big=big, small=np.arange(3))
    np.savez_compressed(tmp_path / "bigz.npz", big=big, small=np.arange(3))
    np.save(tmp_path / "big.npy", big)
    del big
    tracemalloc.start()
    try:
        for name in ("big.npz", "big.npy"):
            with cio.open_weights(tmp_path / name) as r:
                spec = r.spec("big")
                assert spec.shape == (2048, 4096) and spec.nbytes == 32 * 2**20
                view = r["big"]
                assert isinstance(view, np.memmap) and float(view[-1, -4:].sum()) == 0.0
        with cio.open_weights(tmp_path / "bigz.npz") as r:
            assert r.spec("big").nbytes == 32 * 2**20
            assert r["small"].tolist() == [0, 1, 2]  # decompresses "small" only
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_compressed_read_grows_with_real_data_only(tmp_path):
    # Both zip headers claim ~4 GiB uncompressed and the .npy header agrees; the stream holds 64 data bytes.
    size = 0xFFFFFFF0
    text = "{{'descr': '|u1', 'fortran_order': False, 'shape': ({},), }}"
    header = _npy_header(text.format(1000000000))  # ten digits, like the final count
    header = _npy_header(text.format(size - len(header)))
    data = bytearray(_zip_bytes({"w.npy": header + b"\0" * 64}, zipfile.ZIP_DEFLATED))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        local = zf.infolist()[0].header_offset
    central = data.rindex(b"PK\x01\x02")
    data[local + 22 : local + 26] = data[central + 24 : central + 28] = struct.pack("<I", size)
    path = tmp_path / "bomb.npz"
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with cio.open_weights(path) as r:
            assert r.spec("w").nbytes == size - len(header)  # the header is consistent with the lie
            with pytest.raises(WeightFileError, match="array 'w'"):
                r["w"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@given(
    arrays=st.lists(
        st.tuples(
            st.sampled_from(NUMPY_DTYPES + BITS_DTYPES),
            st.lists(st.integers(0, 3), max_size=3),
            st.booleans(),
            st.integers(0, 1000),
        ),
        max_size=4,
    ),
    compressed=st.booleans(),
)
def test_round_trip_property(scratch_root, arrays, compressed):
    weights = {}
    for i, (dtype, shape, transpose, seed) in enumerate(arrays):
        dt = np.dtype(getattr(ml_dtypes, dtype)) if dtype in BITS_DTYPES else np.dtype(dtype)
        value = _sample(np.dtype(np.float32) if dtype in BITS_DTYPES else dt, tuple(shape), seed).astype(dt)
        weights[f"layer{i}/w"] = value.T if transpose else value
    path = scratch_root / "w.npz"
    cio.save(weights, path, compressed=compressed)
    out = cio.load(path)
    assert list(out) == list(weights)
    for name, value in weights.items():
        _same(out[name], value)
