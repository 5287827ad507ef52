"""safetensors reader and writer, cross-checked against the safetensors package (its Rust core)."""

from __future__ import annotations

import json
import struct
import tracemalloc

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import coreprune.io as cio
from coreprune.errors import WeightFileError
from coreprune.io import safetensors_format

# numpy dtype name -> the safetensors header string, from the specification (not from the module).
SPEC_CODES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "uint16": "U16", "int16": "I16", "float16": "F16",
    "bfloat16": "BF16", "uint32": "U32", "int32": "I32", "float32": "F32", "uint64": "U64", "int64": "I64",
    "float64": "F64", "complex64": "C64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ", "float8_e8m0fnu": "F8_E8M0",
}  # fmt: skip
DTYPES = [n for n in SPEC_CODES if not n.startswith(("bfloat", "float8")) or hasattr(ml_dtypes, n)]
NUMPY_ONLY = [n for n in DTYPES if not n.startswith(("bfloat", "float8"))]  # what safetensors.numpy handles
SHAPES = [(), (0,), (2, 0, 3), (5,), (2, 3), (3, 1, 2)]


def _dtype(name: str) -> np.dtype:
    return np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)


def _sample(name: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    dtype = _dtype(name)
    rng = np.random.default_rng(seed)
    if dtype.kind == "b":
        return np.asarray(rng.random(shape) > 0.5)
    if dtype.kind in "iu":
        return np.asarray(rng.integers(0, 100, size=shape), dtype=dtype)
    if dtype.kind == "c":
        return np.asarray(rng.standard_normal(shape) + 1j * rng.standard_normal(shape), dtype=dtype)
    # float8_e8m0fnu holds powers of two only; the others round what they cannot hold.
    return np.asarray(2.0 ** rng.integers(-4, 4, size=shape) * rng.choice([-1, 1], size=shape)).astype(dtype)


def _bits(a: np.ndarray) -> bytes:
    a = np.asarray(a)
    return a.astype(a.dtype.newbyteorder("<")).tobytes(order="C")


@pytest.fixture
def reference():
    return pytest.importorskip(
        "safetensors", reason="the safetensors package is the reference implementation"
    )


@pytest.mark.parametrize("name", DTYPES)
def test_round_trip_every_dtype_and_the_reference_reads_it(tmp_path, reference, name):
    weights = {f"t{i}": _sample(name, s, i) for i, s in enumerate(SHAPES)}
    weights["transposed"] = _sample(name, (3, 4), 9).T
    path = tmp_path / "w.safetensors"
    cio.save(weights, path)
    ours = cio.load(path)
    theirs = dict(reference.deserialize(path.read_bytes()))
    assert list(ours) == list(weights)
    for key, value in weights.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape
        assert _bits(ours[key]) == _bits(value)
        assert theirs[key]["dtype"] == SPEC_CODES[name] and tuple(theirs[key]["shape"]) == value.shape
        assert bytes(theirs[key]["data"]) == _bits(value)


@pytest.mark.parametrize("name", DTYPES)
def test_files_written_by_the_reference_read_equal(tmp_path, reference, name):
    arrays = {f"x{i}": np.ascontiguousarray(_sample(name, s, i)) for i, s in enumerate(SHAPES)}
    specs = {
        key: reference.TensorSpec(dtype=name, shape=list(a.shape), data_ptr=a.ctypes.data, data_len=a.nbytes)
        for key, a in arrays.items()
    }
    path = tmp_path / "ref.safetensors"
    path.write_bytes(reference.serialize(specs, {"framework": "none"}))
    with cio.open_weights(path) as r:
        assert r.metadata == {"framework": "none"} and r.extras == {}
        for key, value in arrays.items():
            assert r.spec(key).dtype == value.dtype and r.spec(key).shape == value.shape
            out = r[key]
            assert _bits(out) == _bits(value)
            if value.size:
                assert isinstance(out, np.memmap) and not out.flags.writeable


def test_numpy_front_end_of_the_reference_agrees_both_ways(tmp_path, reference):
    import safetensors.numpy as stnp

    weights = {n: _sample(n, (2, 3), i) for i, n in enumerate(NUMPY_ONLY)}
    weights["big_endian"] = np.arange(4, dtype=">i4")
    cio.save(weights, tmp_path / "ours.safetensors")
    loaded = stnp.load_file(str(tmp_path / "ours.safetensors"))
    for key, value in weights.items():
        np.testing.assert_array_equal(loaded[key], value)
    stnp.save_file(
        {k: v for k, v in weights.items() if k != "big_endian"}, str(tmp_path / "theirs.safetensors")
    )
    ours = cio.load(tmp_path / "theirs.safetensors")
    for key in loaded:
        if key != "big_endian":
            np.testing.assert_array_equal(ours[key], weights[key])


def test_layout_is_aligned_padded_and_in_input_order(tmp_path):
    weights = {"byte": np.ones(3, np.uint8), "half": np.ones(3, np.float16), "double": np.ones(3, np.float64)}
    path = tmp_path / "w.safetensors"
    cio.save(weights, path, metadata={"note": "x"})
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0 and raw[8 + n - 1 : 8 + n] in (b" ", b"}")
    header = json.loads(raw[8 : 8 + n])
    assert list(header) == ["__metadata__", "byte", "half", "double"]  # header keeps the caller's order
    assert header["double"]["data_offsets"] == [0, 24]  # data: largest item size first
    for key, value in weights.items():
        assert header[key]["data_offsets"][0] % value.dtype.itemsize == 0


def test_metadata_and_names_are_validated_when_writing(tmp_path):
    with pytest.raises(WeightFileError, match="metadata must map strings to strings"):
        cio.save({"a": np.ones(1)}, tmp_path / "m.safetensors", metadata={"epoch": 3})
    with pytest.raises(WeightFileError, match="'__metadata__' is reserved"):
        cio.save({"__metadata__": np.ones(1)}, tmp_path / "m.safetensors")
    with pytest.raises(WeightFileError, match=r"m\.safetensors: tensor 'c' has dtype complex128"):
        cio.save({"c": np.ones(1, np.complex128)}, tmp_path / "m.safetensors")
    assert not list(tmp_path.iterdir())


def _file(header: dict | bytes, data: bytes = b"", pad: bool = True) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def _t(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x05\x00", "too short"),
        (struct.pack("<Q", 2**40) + b"{}", "the header claims 1099511627776 bytes"),
        (struct.pack("<Q", 64) + b"{}", "the JSON header needs 64 bytes"),
        (_file(b'  {"a": 1}'), "does not start with"),
        (_file(b"{not json}"), "not valid JSON"),
        (_file(b"[" * 100000 + b"]" * 100000, pad=False), "does not start with|not valid JSON"),
        (_file(b'{"a": ' + b"[" * 50000 + b"]" * 50000 + b"}"), "not valid JSON|needs exactly the keys"),
        (_file(b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 0]}}'), "not valid JSON"),
        (_file(b'{"a": 1, "a": 2}'), "duplicate key 'a'"),
        (_file(b"[1, 2]"), "does not start with"),
        (_file({"__metadata__": {"k": 1}}), "__metadata__ must map strings to strings"),
        (_file({"a": {"dtype": "F32", "shape": [2]}}), "needs exactly the keys"),
        (_file({"a": _t("F128")}, b"\0" * 8), "unknown dtype"),
        (_file({"a": _t("F4", offsets=(0, 1))}, b"\0"), "packed sub-byte types are not supported"),
        (_file({"a": _t(shape=(2, -1))}, b"\0" * 8), "invalid shape"),
        (_file({"a": _t(shape=(True, 2))}, b"\0" * 8), "invalid shape"),
        (
            _file({"a": _t(shape=(2**40,), offsets=(0, 2**42))}, b"\0" * 8),
            r"the tensors cover 4398046511104 bytes",
        ),
        (_file({"a": _t(shape=(2**40, 2**40), offsets=(0, 8))}, b"\0" * 8), "impossibly large shape"),
        (_file({"a": _t(shape=(3,))}, b"\0" * 8), "needs 12 bytes but its data_offsets span 8"),
        (_file({"a": _t(offsets=(8, 0))}, b"\0" * 8), "invalid data_offsets"),
        (_file({"a": _t(offsets=(0, 8.0))}, b"\0" * 8), "invalid data_offsets"),
        (_file({"a": _t(offsets=(4, 12))}, b"\0" * 12), "leaves a gap of 4 bytes"),
        (_file({"a": _t(), "b": _t(offsets=(4, 12))}, b"\0" * 12), "overlaps the previous tensor"),
        (_file({"a": _t()}, b"\0" * 9), "cover 8 bytes but the data region holds 9"),
        (_file({"a": _t()}, b"\0" * 7), "cover 8 bytes but the data region holds 7"),
        (
            _file(b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'[:-1] + b"\xff"),
            "not valid JSON",
        ),
    ],
)
def test_corrupted_files_are_refused_with_small_allocations(tmp_path, data, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(WeightFileError, match=match) as info:
            cio.load(path, format="safetensors")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(info.value).startswith(str(path))
    assert peak < (1 << 20) + 8 * len(data)  # parsing the JSON text itself is allowed


def test_the_uncorrupted_control_file_loads(tmp_path):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(_file({"a": _t(), "z": _t(shape=(0, 5), offsets=(8, 8))}, np.ones(2, "<f4").tobytes()))
    out = cio.load(path)
    assert out["a"].tolist() == [1.0, 1.0] and out["z"].shape == (0, 5)


def test_every_truncation_of_a_valid_file_is_refused(scratch):
    path = scratch / "t.safetensors"
    cio.save({"a": np.arange(3, dtype=np.float32), "b": np.ones((2, 2), np.int8)}, path)
    data = path.read_bytes()
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(WeightFileError):
            cio.load(path, format="safetensors")


def test_lazy_open_of_a_4_gib_file_allocates_almost_nothing(tmp_path):
    header = {"big": _t("F32", (2**30,), (0, 2**32)), "small": _t("I8", (3,), (2**32, 2**32 + 3))}
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.write(_file(header))
        f.seek(2**32, 1)  # a sparse file: the 4 GiB occupy no disk
        f.write(bytes([1, 2, 3]))
    tracemalloc.start()
    try:
        with cio.open_weights(path) as r:
            assert r.spec("big").nbytes == 2**32
            tail = r["big"][-2:]
            assert isinstance(tail, np.memmap) and tail.tolist() == [0.0, 0.0]
            assert r["small"].tolist() == [1, 2, 3]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_sniff():
    assert safetensors_format.sniff(_file({"a": _t()}))
    assert not safetensors_format.sniff(struct.pack("<Q", 2**40) + b"{")
    assert not safetensors_format.sniff(b"PK\x03\x04" + b"\0" * 20)


@given(
    arrays=st.lists(
        st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 3), max_size=3), st.booleans()),
        max_size=5,
    ),
    metadata=st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)
def test_round_trip_property(scratch_root, arrays, metadata):
    weights = {}
    for i, (name, shape, transpose) in enumerate(arrays):
        value = _sample(name, tuple(shape), i)
        weights[f"ñame.{i}"] = value.T if transpose else value
    path = scratch_root / "w.safetensors"
    cio.save(weights, path, metadata=metadata)
    with cio.open_weights(path) as r:
        assert list(r) == list(weights)
        assert r.metadata == (metadata or {})
        for key, value in weights.items():
            assert r[key].dtype == value.dtype and _bits(r[key]) == _bits(value)
