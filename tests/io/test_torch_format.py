"""The PyTorch file format without torch: round trips, layout, nested names, laziness, broken files.

Files come from our writer or from ``_torchpickle`` (the byte layout torch writes, spelled by
hand); tests/torch/test_torch_files.py checks both directions against the real framework.
"""

from __future__ import annotations

import collections
import io
import os
import struct
import tracemalloc
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from _torchpickle import Global, Storage, Tensor, dumps, legacy_file, tensor_of, zip_file  # noqa: E402
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import coreprune.io as cio  # noqa: E402
from coreprune.errors import CompressionError, UnsafePickleError, WeightFileError  # noqa: E402
from coreprune.io import torch_format as tf  # noqa: E402

ALL_DTYPES = [
    np.float32,
    np.float64,
    np.float16,
    ml_dtypes.bfloat16,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
    np.complex64,
    np.complex128,
    ml_dtypes.float8_e4m3fn,
    ml_dtypes.float8_e5m2,
]


def sample(dtype, shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return np.asarray(rng.random(shape) > 0.5)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    return rng.standard_normal(shape).astype(np.float32).astype(dtype)


def save_bytes(weights, **options) -> bytes:
    buf = io.BytesIO()
    tf.write(weights, buf, **options)
    return buf.getvalue()


def put(tmp_path: Path, data: bytes, name: str = "w.pt") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bits (NaN-safe, bfloat16 included)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


# -- writer -> reader ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_dtype_round_trips_bit_exact(tmp_path, dtype):
    weights = {"a": sample(dtype, (3, 4)), "zero_d": sample(dtype, ()), "empty": sample(dtype, (0, 5))}
    p = put(tmp_path, save_bytes(weights))
    with tf.open_reader(p) as r:
        assert list(r) == ["a", "zero_d", "empty"]
        for name, value in weights.items():
            assert r.spec(name) == cio.TensorSpec(value.shape, np.dtype(dtype))
            assert same(r[name], value), name


def test_non_contiguous_and_big_endian_inputs_are_written_in_c_order(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    weights = {
        "t": base.T,
        "slice": base[1:3, ::2],
        "be": np.arange(5, dtype=">i4"),
        "bec": np.array([1 + 2j, -3j], dtype=">c8"),
    }
    p = put(tmp_path, save_bytes(weights))
    with tf.open_reader(p) as r:
        assert same(r["t"], np.ascontiguousarray(base.T))
        assert same(r["slice"], np.ascontiguousarray(base[1:3, ::2]))
        assert r["be"].tolist() == [0, 1, 2, 3, 4] and r["be"].dtype == np.dtype("i4")
        assert r["bec"].tolist() == [1 + 2j, -3j]


def test_written_zip_matches_the_layout_torch_reads(tmp_path):
    weights = {"w": np.ones((3, 5), np.float32), "b": np.arange(7, dtype=np.int64)}
    data = save_bytes(weights, archive_name="model")
    z = zipfile.ZipFile(io.BytesIO(data))
    assert z.namelist() == [
        "model/data.pkl",
        "model/byteorder",
        "model/data/0",
        "model/data/1",
        "model/version",
    ]
    assert z.testzip() is None  # every CRC is right
    assert z.read("model/version") == b"3\n" and z.read("model/byteorder") == b"little"
    for info in z.infolist():
        assert info.compress_type == zipfile.ZIP_STORED
        name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
        assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
    assert z.read("model/data/0") == weights["w"].tobytes()
    assert data.endswith(b"\x00\x00") and b"PK\x06\x06" in data  # zip64 end records, as torch writes them
    # The pickle uses only protocol-2 opcodes and the allowlisted globals.
    import pickletools

    ops = {op.name for op, _, _ in pickletools.genops(z.read("model/data.pkl"))}
    assert ops <= {
        "PROTO",
        "GLOBAL",
        "BINPUT",
        "BINGET",
        "EMPTY_TUPLE",
        "REDUCE",
        "MARK",
        "BINUNICODE",
        "TUPLE",
        "BINPERSID",
        "BININT1",
        "BININT2",
        "BININT",
        "LONG1",
        "TUPLE1",
        "TUPLE2",
        "TUPLE3",
        "NEWFALSE",
        "SETITEMS",
        "STOP",
    }


def test_forced_zip64_records_still_read(tmp_path, monkeypatch):
    monkeypatch.setattr(tf, "_ZIP64_LIMIT", 16)  # every record and offset past it takes the zip64 path
    weights = {"w": np.arange(10, dtype=np.float32), "small": np.ones(2, np.int8)}
    data = save_bytes(weights)
    z = zipfile.ZipFile(io.BytesIO(data))
    assert z.testzip() is None
    assert z.read("archive/data/0") == weights["w"].tobytes()
    with tf.open_reader(put(tmp_path, data)) as r:
        assert same(r["w"], weights["w"]) and same(r["small"], weights["small"])


def test_many_tensors_use_long_memo_and_batched_setitems(tmp_path):
    weights = {f"layer{i}.w": np.full((2,), i, np.int32) for i in range(1100)}
    with tf.open_reader(put(tmp_path, save_bytes(weights))) as r:
        assert len(r) == 1100 and r["layer1099.w"].tolist() == [1099, 1099]


def test_writer_refuses_bad_input():
    with pytest.raises(CompressionError, match="'s'.*cannot be stored"):
        tf.write({"s": np.array(["a"])}, io.BytesIO())
    with pytest.raises(CompressionError, match="archive_name"):
        tf.write({"a": np.ones(1)}, io.BytesIO(), archive_name="../x")
    with pytest.raises(CompressionError, match="string names"):
        tf.write({1: np.ones(1)}, io.BytesIO())


def test_writer_does_not_modify_its_input():
    weights = {"a": np.arange(6, dtype=np.float32).reshape(2, 3).T}
    before = weights["a"].copy()
    tf.write(weights, io.BytesIO())
    assert same(weights["a"], before) and not weights["a"].flags.c_contiguous


@given(
    hnp.arrays(
        st.sampled_from([np.float32, np.int16, np.uint8, np.complex64, np.bool_]),
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4),
    )
)
def test_property_round_trip(array):
    data = save_bytes({"x": array})
    # A fixed path per process: hypothesis examples may not use the function-scoped tmp_path.
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.pt"
        p.write_bytes(data)
        with tf.open_reader(p) as r:
            assert same(r["x"], array)


# -- io integration, laziness --------------------------------------------------------------------------
def test_io_save_and_load(tmp_path):
    p = tmp_path / "m.pth"
    weights = {"conv.weight": sample(np.float32, (2, 1, 3, 3)), "bn.num_batches_tracked": np.array(5)}
    cio.save(weights, p, format="torch")
    loaded = cio.load(p, format="torch")
    assert all(same(loaded[k], v) for k, v in weights.items())
    assert not any(isinstance(v, np.memmap) for v in loaded.values())


def test_detect_format_by_extension_and_magic(tmp_path):
    for ext in tf.EXTENSIONS:
        p = tmp_path / f"m{ext}"
        p.write_bytes(save_bytes({"w": np.ones(2, np.float32)}))
        assert cio.detect_format(p) == "torch"
        assert cio.load(p)["w"].tolist() == [1.0, 1.0]
    legacy = tmp_path / "old.pt"
    legacy.write_bytes(legacy_file({"w": tensor_of(np.ones(2, np.float32), "1", "FloatStorage")}))
    assert cio.detect_format(legacy) == "torch"


def test_reader_serves_read_only_memory_maps_and_shares_storages(tmp_path):
    data = np.arange(12, dtype=np.float32).tobytes()
    s = Storage(data, "FloatStorage", "0")
    obj = {
        "full": Tensor(s, 0, (3, 4), (4, 1)),
        "t": Tensor(s, 0, (4, 3), (1, 4)),
        "row": Tensor(s, 4, (4,), (1,)),
    }
    p = put(tmp_path, zip_file(obj))
    with tf.open_reader(p) as r:
        full, t, row = r["full"], r["t"], r["row"]
    ref = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert same(full, ref) and np.array_equal(t, ref.T) and same(row, ref[1])
    assert isinstance(full, np.memmap) and not full.flags.writeable
    assert np.shares_memory(full, t) and np.shares_memory(full, row)  # one mapping, three views
    with pytest.raises(ValueError):
        full[0, 0] = 1.0


def test_inspecting_a_large_file_reads_only_its_pickle(tmp_path):
    p = tmp_path / "big.pt"
    big = np.zeros((8, 1024, 1024), np.float32)  # 32 MiB
    with open(p, "wb") as f:
        tf.write({"big": big, "b": np.ones(3, np.float32)}, f)
    del big
    tracemalloc.start()
    try:
        with tf.open_reader(p) as r:
            assert r.spec("big").nbytes == 32 * 2**20
            assert float(r["big"][7, 1023, 1023]) == 0.0
            assert r.nbytes == 32 * 2**20 + 12
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak


def test_writing_from_a_reader_holds_one_tensor_at_a_time(tmp_path):
    src = tmp_path / "src.pt"
    with open(src, "wb") as f:
        tf.write({f"w{i}": np.full((1024, 1024), i, np.float32) for i in range(4)}, f)  # 4 x 4 MiB
    tracemalloc.start()
    try:
        with tf.open_reader(src) as r, open(tmp_path / "dst.pt", "wb") as f:
            tf.write(r, f)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, peak  # less than one tensor: the mapped bytes are written as they are
    with tf.open_reader(tmp_path / "dst.pt") as r:
        assert [float(r[f"w{i}"][5, 5]) for i in range(4)] == [0.0, 1.0, 2.0, 3.0]


# -- reading what torch writes (spelled by hand) -------------------------------------------------------
def test_nested_checkpoint_is_flattened_and_extras_reported(tmp_path):
    w = tensor_of(np.ones((2, 2), np.float32), "0", "FloatStorage")
    step = tensor_of(np.array(7.0, np.float32), "1", "FloatStorage")
    sd = collections.OrderedDict([("fc.weight", w)])
    ckpt = {
        "state_dict": sd,
        "epoch": 3,
        "best": 0.25,
        "name": "run",
        "flag": None,
        "optimizer": {"state": {0: {"step": step}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "layers": [tensor_of(np.zeros(1, np.int64), "2", "LongStorage")],
        "hist": (1, 2),
        "empty": {},
        "blob": b"\x00\xff",
        "dtype": Global("torch", "float16"),
    }
    p = put(tmp_path, zip_file(ckpt))
    with tf.open_reader(p) as r:
        assert list(r) == ["state_dict.fc.weight", "optimizer.state.0.step", "layers.0"]
        assert r["state_dict.fc.weight"].tolist() == [[1.0, 1.0], [1.0, 1.0]]
        assert float(r["optimizer.state.0.step"]) == 7.0
        assert r.extras == {
            "epoch": 3,
            "best": 0.25,
            "name": "run",
            "flag": None,
            "optimizer.param_groups": [{"lr": 0.1, "params": [0]}],
            "hist": (1, 2),
            "empty": {},
            "blob": b"\x00\xff",
            "dtype": "torch.float16",
        }
    with pytest.warns(UserWarning, match="non-tensor value"):
        loaded = cio.load(p, format="torch")
    assert sorted(loaded) == ["layers.0", "optimizer.state.0.step", "state_dict.fc.weight"]


def test_bare_tensor_and_bare_value(tmp_path):
    with tf.open_reader(
        put(tmp_path, zip_file(tensor_of(np.arange(3, dtype=np.int16), "0", "ShortStorage")))
    ) as r:
        assert list(r) == [tf.ROOT_TENSOR] and r[tf.ROOT_TENSOR].tolist() == [0, 1, 2]
    with tf.open_reader(put(tmp_path, zip_file(42), "v.pt")) as r:
        assert len(r) == 0 and r.extras == {tf.ROOT_VALUE: 42}


def test_state_dict_metadata_parameters_conj_neg_and_v3(tmp_path):
    sd = collections.OrderedDict()
    sd["p"] = tensor_of(np.arange(4, dtype=np.float32), "0", "FloatStorage")
    sd["p"].parameter = True
    c = tensor_of(np.array([1 + 2j, 3 - 1j], np.complex64), "1", "ComplexFloatStorage")
    c.metadata = {"conj": True}
    sd["c"] = c
    n = tensor_of(np.array([1.0, -2.0], np.float32), "2", "FloatStorage")
    n.metadata = {"neg": True}
    sd["n"] = n
    u = np.array([1, 65535], np.uint16)
    sd["u16"] = Tensor(Storage(u.tobytes(), "UntypedStorage", "3", itemsize=1), 0, (2,), (1,), dtype="uint16")
    sd._metadata = collections.OrderedDict({"": {"version": 1}})  # torch pickles this with BUILD
    p = put(tmp_path, zip_file(sd))
    with tf.open_reader(p) as r:
        assert r.parameters == frozenset({"p"})
        assert r["c"].tolist() == [1 - 2j, 3 + 1j]
        assert r["n"].tolist() == [-1.0, 2.0]
        assert r["u16"].dtype == np.uint16 and r["u16"].tolist() == [1, 65535]
        assert r.extras == {}


def test_big_endian_files_read_as_native_values(tmp_path):
    values = {
        "f": np.array([1.5, -2.0], ">f4"),
        "c": np.array([1 + 2j], ">c16"),
        "i": np.arange(3, dtype=">i8"),
    }
    names = {"f": "FloatStorage", "c": "ComplexDoubleStorage", "i": "LongStorage"}
    obj = {}
    for i, (k, v) in enumerate(values.items()):
        storage = Storage(v.tobytes(), names[k], str(i), itemsize=v.itemsize)
        obj[k] = Tensor(storage, 0, v.shape, (1,))
    with tf.open_reader(put(tmp_path, zip_file(obj, byteorder=b"big"))) as r:
        assert r.byteorder == "big"
        for k, v in values.items():
            assert r[k].dtype.isnative and r[k].tolist() == v.tolist()
    with tf.open_reader(put(tmp_path, legacy_file(obj, little_endian=False), "l.pt")) as r:
        assert r.layout == "legacy" and r["f"].tolist() == [1.5, -2.0] and r["i"].tolist() == [0, 1, 2]


def test_legacy_layout_with_shared_storage_and_views(tmp_path):
    data = np.arange(10, dtype=np.float64)
    root = Storage(data.tobytes(), "DoubleStorage", "140", itemsize=8)
    view = Storage(data.tobytes(), "DoubleStorage", "140", view=("141", 2, 5), itemsize=8)
    obj = {"all": Tensor(root, 0, (10,), (1,)), "mid": Tensor(view, 1, (2, 2), (2, 1)), "step": 5}
    p = put(tmp_path, legacy_file(obj))
    with tf.open_reader(p) as r:
        assert r.layout == "legacy" and r.extras == {"step": 5}
        assert r["all"].tolist() == data.tolist()
        assert r["mid"].tolist() == [[3.0, 4.0], [5.0, 6.0]]  # view starts at 2, tensor offset 1
        assert np.shares_memory(r["all"], r["mid"])


def test_uncrc_zip_reads(tmp_path):
    """torch writes CRC 0 with compute_crc32=False; zipfile.read fails on such files, this reader does not."""
    data = bytearray(save_bytes({"w": np.arange(4, dtype=np.float32)}))
    pos = 0  # zero the CRC of every central-directory entry
    while (pos := data.find(b"PK\x01\x02", pos)) >= 0:
        data[pos + 16 : pos + 20] = b"\x00\x00\x00\x00"
        pos += 4
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(bytes(data))).read("archive/data/0")
    with tf.open_reader(put(tmp_path, bytes(data))) as r:
        assert r["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


# -- refusals ------------------------------------------------------------------------------------------
def test_torchscript_archive_is_refused_with_advice(tmp_path):
    body, storages = dumps({"w": tensor_of(np.ones(1, np.float32), "0", "FloatStorage")})
    data = zip_file(
        pickle_bytes=body, storages=storages, extra={"constants.pkl": b"\x80\x02).", "code/m.py": b""}
    )
    with pytest.raises(
        WeightFileError, match=r"TorchScript archive \(written by torch.jit.save\).*state_dict"
    ):
        tf.open_reader(put(tmp_path, data))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: b"", "not a torch.save file"),
        (lambda: b"\x80\x02}q\x00.", "bare pickle"),
        (lambda: zip_file(1, folder="x").replace(b"x/", b"x_"), "not in a folder"),
        (
            lambda: zip_file(pickle_bytes=b"\x80\x02K\x01.", storages={}, folder="a").replace(
                b"a/data.pkl", b"a/other.pk"
            ),
            "without a/data.pkl",
        ),
        (
            lambda: zip_file(
                {"w": tensor_of(np.ones(2), "0", "DoubleStorage")}, compression=zipfile.ZIP_DEFLATED
            ),
            "compressed",
        ),
        (
            lambda: zip_file({"w": tensor_of(np.ones(2), "0", "DoubleStorage")}, byteorder=b"middle"),
            "byteorder",
        ),
        (
            lambda: zip_file(
                pickle_bytes=dumps({"w": tensor_of(np.ones(2), "0", "DoubleStorage")})[0], storages={}
            ),
            "no record holds it",
        ),
        (
            lambda: zip_file(
                pickle_bytes=dumps({"w": tensor_of(np.ones(4), "0", "DoubleStorage")})[0],
                storages={"0": Storage(b"\x00" * 16)},
            ),
            "declares 32 bytes",
        ),
        (lambda: zip_file({"w": Tensor(Storage(bytes(16)), 2, (2, 2), (2, 1))}), "reaches element 5"),
        (lambda: zip_file({"w": Tensor(Storage(bytes(16)), 0, (2**40,), (0,))}), "larger than the file"),
        (lambda: zip_file({"w": Tensor(Storage(bytes(16)), 0, (2,), (1, 1))}), "different lengths"),
        (lambda: zip_file({"w": Tensor(Storage(bytes(16)), -1, (2,), (1,))}), "offset must be an integer"),
        (lambda: zip_file({"w": Tensor(Storage(bytes(16)), 0, (2,), (-1,))}), "stride entry must be"),
        (
            lambda: zip_file({"w": Tensor(Storage(bytes(2)), 0, (2,), (1,), dtype="complex32")}),
            "NumPy has no",
        ),
        (
            lambda: zip_file(
                {
                    "a.b": tensor_of(np.ones(1), "0", "DoubleStorage"),
                    "a": {"b": tensor_of(np.ones(1), "1", "DoubleStorage")},
                }
            ),
            "two tensors map",
        ),
        (lambda: zip_file({(1, 2): 3}), "tuple key"),
        (lambda: legacy_file({"w": 1}).replace(b"\xe9\x03", b"\xea\x03", 1), "protocol version"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_broken_files_give_clear_errors(tmp_path, make, message):
    p = put(tmp_path, make())
    with pytest.raises(WeightFileError, match=message) as e:
        tf.open_reader(p)
    assert str(e.value).startswith(str(p))


def test_legacy_storage_counts_are_checked(tmp_path):
    obj = {"w": tensor_of(np.arange(3, dtype=np.float32), "7", "FloatStorage")}
    data = legacy_file(obj)
    bad = data.replace(
        struct.pack("<q", 3) + np.arange(3, dtype=np.float32).tobytes(),
        struct.pack("<q", 4) + np.arange(3, dtype=np.float32).tobytes(),
    )
    with pytest.raises(WeightFileError, match="holds 4 elements but the pickle declares 3"):
        tf.open_reader(put(tmp_path, bad))
    with pytest.raises(WeightFileError, match="truncated"):
        tf.open_reader(put(tmp_path, data[:-2], "t.pt"))
    with pytest.raises(WeightFileError, match="no tensor uses"):
        tf.open_reader(put(tmp_path, legacy_file(obj, keys=["7", "8"]), "k.pt"))


def test_cyclic_and_exponential_containers_are_refused(tmp_path):
    # L = [L]: a list that holds itself, written with the memo (BINPUT 0 ... BINGET 0 APPEND)
    cyclic = b"\x80\x02]q\x00h\x00a."
    with pytest.raises(WeightFileError, match="refer to themselves"):
        tf.open_reader(put(tmp_path, zip_file(pickle_bytes=cyclic, storages={})))
    # 40 levels of [x, x]: 2**40 paths from 200 bytes
    body = bytearray(b"\x80\x02K\x01")
    for _ in range(40):
        body += b"q\x00h\x00\x86"  # BINPUT 0, BINGET 0, TUPLE2
    body += b"."
    with pytest.raises(WeightFileError, match="refer to themselves"):
        tf.open_reader(put(tmp_path, zip_file(pickle_bytes=bytes(body), storages={}), "e.pt"))


def test_unsafe_pickle_in_a_zip_names_the_global(tmp_path):
    body = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R."
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        tf.open_reader(put(tmp_path, zip_file(pickle_bytes=body, storages={})))


def test_sniff():
    assert tf.sniff(zip_file({"a": 1})[:64])
    assert tf.sniff(legacy_file({"a": 1})[:64])
    assert not tf.sniff(b"PK\x03\x04" + bytes(22) + struct.pack("<HH", 5, 0) + b"a.npy")
    assert not tf.sniff(b"\x80\x02}q\x00.")
    assert not tf.sniff(b"\x93NUMPY")


def test_unknown_option_is_refused(tmp_path):
    p = put(tmp_path, save_bytes({"a": np.ones(1)}))
    with pytest.raises(WeightFileError, match="unknown option"):
        tf.open_reader(p, sparse="scipy")


def test_missing_file(tmp_path):
    with pytest.raises(WeightFileError, match="cannot open"):
        tf.open_reader(tmp_path / "nope.pt")
    assert os.path.exists(tmp_path)
