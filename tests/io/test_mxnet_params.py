"""MXNet .params reader and writer without MXNet: hand-built records from the format spec.

The real-framework cross-checks live in tests/mxnet/test_params_vs_mxnet.py.
"""

from __future__ import annotations

import struct
import tracemalloc

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mxnet_records import (
    DTYPE_OF_FLAG,
    FLAG,
    MAGIC,
    csr_record,
    dense_record,
    params_file,
    row_sparse_record,
    tshape,
)

import coreprune.io as cio
from coreprune.errors import WeightFileError
from coreprune.io import mxnet_params

WRITABLE = ["float32", "float64", "float16", "uint8", "int32", "int8", "int64", "bool", "bfloat16"]


def _dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _sample(dtype: np.dtype, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.random(shape) > 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -100), min(info.max, 100), size=shape, endpoint=True).astype(dtype)
    return (rng.standard_normal(shape) * 3).astype(dtype)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_writer_matches_the_worked_example_of_the_spec(tmp_path):
    # Part 1.7 of the format notes: mx.nd.save('f.params', {'w': arange(6).reshape(2,3) float32}).
    expected = (
        bytes.fromhex(
            "1201000000000000"
            "0000000000000000"
            "0100000000000000"
            "c9fa93f9"
            "00000000"
            "02000000"
            "0200000000000000"
            "0300000000000000"
            "01000000"
            "00000000"
            "00000000"
        )
        + np.arange(6, dtype="<f4").tobytes()
        + bytes.fromhex("01000000000000000100000000000000")
        + b"w"
    )
    path = tmp_path / "f.params"
    cio.save({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, path)
    assert path.read_bytes() == expected
    assert len(expected) == 105


@pytest.mark.parametrize("name", WRITABLE)
@pytest.mark.parametrize("shape", [(5,), (2, 3), (2, 1, 3, 2)])
def test_round_trip_every_writable_dtype(tmp_path, name, shape):
    array = _sample(_dtype(name), shape)
    path = tmp_path / "w.params"
    cio.save({"t": array}, path)
    # The bytes are exactly the hand-built V2 record of the same array.
    assert path.read_bytes() == params_file([dense_record(array)], ["t"])
    out = cio.load(path)["t"]
    assert out.dtype == array.dtype and out.shape == shape
    np.testing.assert_array_equal(out.view(np.uint8), array.view(np.uint8))


def test_non_contiguous_and_big_endian_inputs_are_written_in_c_order_little_endian(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    weights = {
        "transposed": base.T,
        "strided": base[::2, 1::2],
        "big_endian": base.astype(">f8"),
        "fortran": np.asfortranarray(base.astype(np.int64)),
    }
    path = tmp_path / "w.params"
    cio.save(weights, path)
    expected = params_file(
        [dense_record(np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<"))) for v in weights.values()],
        list(weights),
    )
    assert path.read_bytes() == expected
    out = cio.load(path)
    for name, value in weights.items():
        np.testing.assert_array_equal(out[name], value)


def test_input_mapping_is_not_modified(tmp_path):
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    weights = {"w": array}
    cio.save(weights, tmp_path / "w.params")
    assert list(weights) == ["w"] and weights["w"] is array
    np.testing.assert_array_equal(array, np.arange(6, dtype=np.float32).reshape(2, 3))


def test_default_mode_refuses_0d_with_a_clear_message(tmp_path):
    path = tmp_path / "w.params"
    with pytest.raises(WeightFileError, match=r"w\.params: tensor 'x' is 0-d.*np_shape=True"):
        cio.save({"x": np.array(1.5, np.float32)}, path)
    assert not path.exists() and not list(tmp_path.iterdir())  # nothing half-written left behind


@pytest.mark.parametrize("shape", [(2, 0), (0,), (0, 3)])
def test_default_mode_writes_0size_as_v2_records_and_reads_them_back(tmp_path, shape):
    weights = {"empty": np.zeros(shape, np.float32), "m": np.ones((2, 2), np.float32)}
    path = tmp_path / "w.params"
    cio.save(weights, path)
    # a V2 record of a 0-size array: magic, stype, shape, context and type flag, no data bytes
    records = [dense_record(v, version=2) for v in weights.values()]
    assert path.read_bytes() == params_file(records, list(weights))
    out = cio.load(path)
    assert out["empty"].shape == shape and out["empty"].dtype == np.float32
    np.testing.assert_array_equal(out["m"], weights["m"])
    with cio.open_weights(path) as r:
        assert set(r.versions.values()) == {2}


def test_np_shape_writes_v3_records_for_everything(tmp_path):
    weights = {"scalar": np.array(2.5, np.float64), "empty": np.zeros((0, 3), np.int32), "m": np.ones((2, 2))}
    path = tmp_path / "w.params"
    cio.save(weights, path, np_shape=True)
    expected = params_file([dense_record(v, version=3) for v in weights.values()], list(weights))
    assert path.read_bytes() == expected
    out = cio.load(path)
    for name, value in weights.items():
        assert out[name].shape == value.shape
        np.testing.assert_array_equal(out[name], value)
    with cio.open_weights(path) as r:
        assert set(r.versions.values()) == {3}


@pytest.mark.parametrize(
    "dtype",
    [np.int16, np.uint16, np.uint32, np.uint64, np.complex64, ml_dtypes.float8_e4m3fn, np.float128]
    if hasattr(np, "float128")
    else [np.int16, np.uint16, np.uint32, np.uint64, np.complex64, ml_dtypes.float8_e4m3fn],
)
def test_writer_refuses_dtypes_mxnet_cannot_load(tmp_path, dtype):
    with pytest.raises(WeightFileError, match=r"tensor 'x' has dtype .* MXNet 1\.9\.1 cannot load"):
        cio.save({"x": np.zeros(3, dtype)}, tmp_path / "w.params")


@pytest.mark.parametrize("flag", sorted(DTYPE_OF_FLAG))
@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_reader_understands_every_type_flag_and_record_version(tmp_path, flag, version):
    dtype = DTYPE_OF_FLAG[flag]
    array = _sample(dtype, (3, 2), seed=flag)
    path = _write(tmp_path / "w.params", params_file([dense_record(array, version=version)], ["a"]))
    with cio.open_weights(path) as r:
        assert r.spec("a").dtype == dtype and r.spec("a").shape == (3, 2)
        assert r.versions["a"] == version and r.storage_types["a"] == "default"
        out = r["a"]
        assert isinstance(out, np.memmap)
        np.testing.assert_array_equal(out.view(np.uint8), array.view(np.uint8))


def test_bfloat16_flag_12_gives_the_exact_stored_bits(tmp_path):
    bits = np.array([0x3FC0, 0xC010, 0x7F80, 0xFF80, 0x0000, 0x8000, 0x7FC1, 0x0001], dtype="<u2")
    record = (
        struct.pack("<Ii", MAGIC[2], 0) + tshape(bits.shape) + struct.pack("<iii", 1, 0, 12) + bits.tobytes()
    )
    path = _write(tmp_path / "bf.params", params_file([record], ["b"]))
    out = cio.load(path)["b"]
    assert out.dtype == np.dtype(ml_dtypes.bfloat16)
    assert out.view(np.uint16).tolist() == bits.tolist()
    assert out[:2].astype(np.float32).tolist() == [1.5, -2.25]


def test_list_files_are_named_by_position(tmp_path):
    arrays = [np.arange(3, dtype=np.float32), np.ones((2, 2), np.int8)]
    path = _write(tmp_path / "l.params", params_file([dense_record(a) for a in arrays]))
    out = cio.load(path)
    assert list(out) == ["0", "1"]
    for i, a in enumerate(arrays):
        np.testing.assert_array_equal(out[str(i)], a)


def test_checkpoint_prefixes_and_reserved_field_are_kept(tmp_path):
    records = [dense_record(np.ones(2, np.float32)), dense_record(np.zeros(2, np.float32))]
    path = _write(
        tmp_path / "m-0000.params", params_file(records, ["arg:fc1_weight", "aux:bn0_moving_mean"], 7)
    )
    assert list(cio.load(path)) == ["arg:fc1_weight", "aux:bn0_moving_mean"]


def test_gpu_context_loads_on_cpu(tmp_path):
    path = _write(
        tmp_path / "g.params", params_file([dense_record(np.ones(3, np.float32), dev=(2, 1))], ["g"])
    )
    assert cio.load(path)["g"].tolist() == [1.0, 1.0, 1.0]


def _sparse_dense(dtype=np.float32) -> np.ndarray:
    out = np.zeros((5, 4), dtype)
    out[1, 2], out[3, 0], out[3, 3], out[4, 1] = 1.5, -2, 3, 4
    return out


@pytest.mark.parametrize("stale", [False, True])
def test_csr_and_row_sparse_read_dense_and_as_scipy(tmp_path, stale):
    import scipy.sparse

    dense = _sparse_dense()
    # MXNet may write the storage shape before the data exists: (0,) for csr, too many rows for row_sparse.
    records = [
        csr_record(dense, storage_shape=(0,) if stale else None),
        row_sparse_record(dense, storage_shape=(5, 4) if stale else None),
    ]
    path = _write(tmp_path / "s.params", params_file(records, ["c", "r"]))
    with cio.open_weights(path) as r:
        assert r.storage_types == {"c": "csr", "r": "row_sparse"}
        assert r.spec("c").shape == (5, 4) and r.spec("r").dtype == np.float32
        np.testing.assert_array_equal(r["c"], dense)
        np.testing.assert_array_equal(r["r"], dense)
    with cio.open_weights(path, sparse="scipy") as r:
        c, rs = r["c"], r["r"]
        assert isinstance(c, scipy.sparse.csr_matrix) and isinstance(rs, scipy.sparse.csr_matrix)
        np.testing.assert_array_equal(c.toarray(), dense)
        np.testing.assert_array_equal(rs.toarray(), dense)
        assert c.nnz == 4  # exactly the stored values


def test_row_sparse_of_rank_3_and_all_zero_sparse_arrays(tmp_path):
    dense3 = np.zeros((4, 2, 3), np.float64)
    dense3[2] = np.arange(6).reshape(2, 3)
    empty = np.zeros((3, 3), np.float32)
    path = _write(
        tmp_path / "s.params",
        params_file(
            [row_sparse_record(dense3), csr_record(empty), row_sparse_record(empty)], ["r3", "c0", "r0"]
        ),
    )
    for mode in ("dense", "scipy"):
        out = cio.load(path, sparse=mode)
        assert isinstance(out["r3"], np.ndarray)  # scipy has no rank-3 sparse type: dense either way
        np.testing.assert_array_equal(out["r3"], dense3)
        for name in ("c0", "r0"):
            value = out[name] if mode == "dense" else out[name].toarray()
            np.testing.assert_array_equal(value, empty)


def test_sparse_expansion_budget(tmp_path):
    # 2 of 5,000 float32 stored: 832 bytes (values, indptr, indices) become 20,000 dense, 19,168 more.
    dense = np.zeros((100, 50), np.float32)
    dense[3, 4], dense[99, 49] = 1.5, -2
    path = _write(tmp_path / "s.params", params_file([csr_record(dense)], ["c"]))
    with pytest.raises(WeightFileError, match="build 19168 bytes beyond.*max_expansion.*sparse='scipy'"):
        cio.load(path, max_expansion=19167)
    np.testing.assert_array_equal(cio.load(path, max_expansion=19168)["c"], dense)
    np.testing.assert_array_equal(cio.load(path)["c"], dense)  # the default budget: 128 MiB at least


def test_huge_logical_shapes_of_sparse_arrays_are_bounded_by_the_expansion_budget(tmp_path):
    # One stored row of a (2**40, 3) row_sparse array: a tiny file whose dense form is 12 TiB.
    record = (
        struct.pack("<Ii", MAGIC[2], 1)
        + tshape((1, 3))
        + tshape((2**40, 3))
        + struct.pack("<iii", 1, 0, 0)
        + struct.pack("<i", 6)
        + tshape((1,))
        + np.ones(3, "<f4").tobytes()
        + np.array([2**39], "<i8").tobytes()
    )
    path = _write(tmp_path / "r.params", params_file([record], ["r"]))
    tracemalloc.start()
    try:
        with cio.open_weights(path) as r:
            assert r.spec("r").shape == (2**40, 3)
            with pytest.raises(WeightFileError, match="build 13194139533292 bytes beyond what the file"):
                r["r"]
        with cio.open_weights(path, sparse="scipy") as r:
            with pytest.raises(WeightFileError, match="of csr row pointers"):
                r["r"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def _csr_with(indptr, indices, values, shape):
    return (
        struct.pack("<Ii", MAGIC[2], 2)
        + tshape((len(values),))
        + tshape(shape)
        + struct.pack("<iii", 1, 0, 0)
        + struct.pack("<i", 6)
        + tshape((len(indptr),))
        + struct.pack("<i", 6)
        + tshape((len(indices),))
        + np.asarray(values, "<f4").tobytes()
        + np.asarray(indptr, "<i8").tobytes()
        + np.asarray(indices, "<i8").tobytes()
    )


@pytest.mark.parametrize(
    "indptr, indices",
    [
        ([0, 1, 2], [0, 5]),
        ([0, 2, 1], [0, 1]),
        ([1, 1, 2], [0, 1]),
        ([0, 1, 3], [0, 1]),
        ([0, 1, 2], [-1, 0]),
    ],
)
def test_inconsistent_csr_index_arrays_are_refused(tmp_path, indptr, indices):
    values = [1.0] * len(indices)
    path = _write(tmp_path / "c.params", params_file([_csr_with(indptr, indices, values, (2, 3))], ["c"]))
    with cio.open_weights(path) as r:  # the header is fine; the check happens when the values are read
        for mode in ("dense", "scipy"):
            with pytest.raises(WeightFileError, match="csr array 'c' has inconsistent indptr/indices"):
                cio.load(path, sparse=mode)
        assert r.spec("c").shape == (2, 3)


@pytest.mark.parametrize("rows", [[2, 1], [0, 0], [0, 7], [-1, 0]])
def test_row_sparse_row_ids_must_increase_within_range(tmp_path, rows):
    values = np.ones((2, 3), np.float32)
    record = (
        struct.pack("<Ii", MAGIC[2], 1)
        + tshape((2, 3))
        + tshape((4, 3))
        + struct.pack("<iii", 1, 0, 0)
        + struct.pack("<i", 6)
        + tshape((2,))
        + values.tobytes()
        + np.asarray(rows, "<i8").tobytes()
    )
    path = _write(tmp_path / "r.params", params_file([record], ["r"]))
    with pytest.raises(WeightFileError, match="row_sparse array 'r' has row indices"):
        cio.load(path)


def _header_error(tmp_path, data: bytes, match: str) -> None:
    path = _write(tmp_path / "bad.params", data)
    tracemalloc.start()
    try:
        with pytest.raises(WeightFileError, match=match) as info:
            cio.load(path, format="mxnet")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(info.value).startswith(str(path))
    assert peak < 1 << 20, f"{peak} bytes allocated for a {len(data)}-byte file"


GOOD = dense_record(np.ones((2, 3), np.float32))


@pytest.mark.parametrize(
    "data, match",
    [
        (struct.pack("<QQQ", 0x113, 0, 0) + struct.pack("<Q", 0), "not an MXNet NDArray file"),
        (struct.pack("<QQQ", 0x112, 0, 2**60) + GOOD, r"declares 1152921504606846976 arrays"),
        (params_file([GOOD], ["a", "b"])[:-8], "names for 1 arrays"),
        (struct.pack("<QQQ", 0x112, 0, 1) + GOOD + struct.pack("<QQ", 1, 2**62), "name #0 needs"),
        (params_file([GOOD], ["a"]) + b"junk", "4 unexpected bytes after the last name"),
        (
            params_file([struct.pack("<Ii", MAGIC[2], 0) + struct.pack("<i", 1000) + GOOD[12:]], ["a"]),
            "1000 dim",
        ),
        (
            params_file([struct.pack("<Ii", MAGIC[2], 0) + tshape((2**20, 2**20)) + GOOD[28:]], ["a"]),
            "needs 4398",
        ),
        (
            params_file([struct.pack("<Ii", MAGIC[2], 0) + tshape((2**40, 2**40)) + GOOD[28:]], ["a"]),
            "impossibly",
        ),
        (
            params_file([struct.pack("<Ii", MAGIC[2], 0) + tshape((2, -3)) + GOOD[28:]], ["a"]),
            "negative dims",
        ),
        (params_file([struct.pack("<Ii", MAGIC[2], 0) + tshape(()) + GOOD[28:]], ["a"]), "'none'"),
        (
            params_file([struct.pack("<Ii", MAGIC[3], 0) + tshape((-1, 2)) + GOOD[28:]], ["a"]),
            "unknown shape",
        ),
        (params_file([struct.pack("<Ii", MAGIC[2], 5) + GOOD[8:]], ["a"]), "unknown storage type 5"),
        (params_file([struct.pack("<Ii", MAGIC[3], 2) + GOOD[8:]], ["a"]), "sparse V3 record"),
        (params_file([GOOD[:28] + struct.pack("<iii", 1, 0, 13) + GOOD[40:]], ["a"]), "unknown type flag 13"),
        (
            params_file([GOOD[:28] + struct.pack("<iii", 4, 0, 0) + GOOD[40:]], ["a"]),
            r"unknown device \(4, 0\)",
        ),
        (params_file([struct.pack("<I", 0xDEADBEEF) + GOOD[4:]], ["a"]), "unknown magic 0xdeadbeef"),
        (params_file([GOOD], ["a"])[:-1] + b"\xff", "not UTF-8"),
        (params_file([GOOD, GOOD], ["a", "a"]), "'a' occurs twice"),
        (params_file([GOOD], ["a"])[:70], "the data of array #0 needs 24 bytes"),
    ],
)
def test_corrupted_headers_are_refused_with_small_allocations(tmp_path, data, match):
    _header_error(tmp_path, data, match)


def test_the_uncorrupted_control_file_loads(tmp_path):
    assert cio.load(_write(tmp_path / "ok.params", params_file([GOOD], ["a"])))["a"].shape == (2, 3)


def test_every_truncation_of_a_valid_file_is_refused(scratch):
    dense = _sparse_dense()
    data = params_file(
        [
            dense_record(np.arange(6, dtype=np.float16).reshape(2, 3)),
            csr_record(dense),
            row_sparse_record(dense),
        ],
        ["h", "c", "r"],
    )
    path = scratch / "t.params"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(WeightFileError):
            mxnet_params.open_reader(path)


def test_lazy_open_of_a_4_gib_file_allocates_almost_nothing(tmp_path):
    # A sparse file: a 4 GiB float32 tensor that occupies no disk, followed by a small one and the names.
    big = (2**30,)
    path = tmp_path / "big.params"
    with open(path, "wb") as f:
        f.write(struct.pack("<QQQ", 0x112, 0, 2))
        f.write(struct.pack("<Ii", MAGIC[2], 0) + tshape(big) + struct.pack("<iii", 1, 0, 0))
        f.seek(4 * 2**30, 1)
        f.write(dense_record(np.arange(3, dtype=np.int32)))
        f.write(struct.pack("<Q", 2) + struct.pack("<Q", 3) + b"big" + struct.pack("<Q", 5) + b"small")
    tracemalloc.start()
    try:
        with cio.open_weights(path) as r:
            assert r.spec("big").shape == big and r.nbytes == 4 * 2**30 + 12
            head = r["big"][:4]
            assert isinstance(head, np.memmap) and head.tolist() == [0.0] * 4
            assert r["small"].tolist() == [0, 1, 2]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@given(
    arrays=st.lists(
        st.tuples(
            st.sampled_from(WRITABLE),
            st.lists(st.integers(1, 4), min_size=1, max_size=4),
            st.integers(0, 2**31),
        ),
        max_size=4,
    )
)
def test_round_trip_property(scratch_root, arrays):
    weights = {f"p{i}.w": _sample(_dtype(d), tuple(s), seed) for i, (d, s, seed) in enumerate(arrays)}
    path = scratch_root / "w.params"
    cio.save(weights, path)
    out = cio.load(path)
    assert list(out) == list(weights)
    for name, value in weights.items():
        assert out[name].dtype == value.dtype
        np.testing.assert_array_equal(out[name].view(np.uint8), value.view(np.uint8))


def test_flags_table_matches_the_spec():
    assert {k: v.name for k, v in mxnet_params.TYPE_FLAGS.items()} == {
        k: v.name for k, v in DTYPE_OF_FLAG.items()
    }
    assert sorted(mxnet_params.WRITABLE_FLAGS.values()) == [0, 1, 2, 3, 4, 5, 6, 7, 12]
    assert FLAG["bfloat16"] == 12
