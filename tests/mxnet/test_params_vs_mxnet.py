"""coreprune's MXNet .params reader and writer against MXNet 1.9.1 itself.

Files MXNet writes (mx.nd.save, npx.save, Block.save_parameters, save_checkpoint, export)
must read back equal to what mx.nd.load returns; files coreprune writes must load in
mx.nd.load and Block.load_parameters with the same values, byte-identical to MXNet's own.
"""

from __future__ import annotations

import contextlib
import struct

import ml_dtypes
import numpy as np
import pytest

mx = pytest.importorskip("mxnet", reason="needs MXNet")
# Without MXNet installed, "mxnet" can resolve to the tests/mxnet folder as a namespace package.
pytest.importorskip("mxnet.gluon", reason="needs MXNet")

from mxnet import gluon  # noqa: E402

import coreprune.io as cio  # noqa: E402

MX_DTYPES = ["float32", "float64", "float16", "uint8", "int8", "int32", "int64", "bool"]
# What MXNet's Python front end calls bfloat16.
MX_BF16 = np.dtype([("bfloat16", np.uint16)])


def _values(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if dtype in ("uint8", "int8", "int32", "int64"):
        return rng.integers(0, 100, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _mx_numpy(array) -> np.ndarray:
    return array.asnumpy()


@contextlib.contextmanager
def _np_semantics():
    mx.npx.set_np()
    try:
        yield
    finally:
        mx.npx.reset_np()


def _net() -> gluon.nn.HybridSequential:
    net = gluon.nn.HybridSequential()
    net.add(
        gluon.nn.Conv2D(4, 3, in_channels=2),
        gluon.nn.BatchNorm(in_channels=4),
        gluon.nn.Flatten(),
        gluon.nn.Dense(3, in_units=4 * 4 * 4),
    )
    return net


@pytest.mark.parametrize("container", ["dict", "list"])
def test_nd_save_every_dtype_reads_equal_to_nd_load(tmp_path, container):
    shapes = [(5,), (2, 3, 4)]
    arrays = {f"{d}_{len(s)}d": _values(d, s, i) for i, d in enumerate(MX_DTYPES) for s in shapes}
    path = str(tmp_path / "mx.params")
    nds = {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()}
    mx.nd.save(path, nds if container == "dict" else list(nds.values()))
    theirs = mx.nd.load(path)
    ours = cio.load(path)
    if container == "list":
        theirs = {str(i): a for i, a in enumerate(theirs)}
        assert list(ours) == [str(i) for i in range(len(arrays))]
    assert list(ours) == list(theirs)
    for key, nd in theirs.items():
        expected = _mx_numpy(nd)
        assert ours[key].dtype == expected.dtype and ours[key].shape == expected.shape
        np.testing.assert_array_equal(ours[key], expected)


def test_our_writer_is_byte_identical_to_nd_save(tmp_path):
    arrays = {f"w_{d}": _values(d, (3, 2), i) for i, d in enumerate(MX_DTYPES)}
    mx.nd.save(str(tmp_path / "mx.params"), {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()})
    cio.save(arrays, tmp_path / "ours.params")
    assert (tmp_path / "ours.params").read_bytes() == (tmp_path / "mx.params").read_bytes()


def test_a_saved_slice_holds_only_its_elements(tmp_path):
    full = mx.nd.array(np.arange(24, dtype=np.float32).reshape(6, 4))
    path = str(tmp_path / "slice.params")
    mx.nd.save(path, {"s": full[2:4]})
    np.testing.assert_array_equal(cio.load(path)["s"], np.arange(8, 16, dtype=np.float32).reshape(2, 4))


@pytest.mark.parametrize("wait", [True, False])
def test_sparse_arrays_read_equal_dense_and_as_scipy(tmp_path, wait):
    dense = np.zeros((5, 4), np.float32)
    dense[0, 1], dense[2, 0], dense[2, 3], dense[4, 2] = 1.5, -2, 3, 4
    csr, rsp = mx.nd.array(dense).tostype("csr"), mx.nd.array(dense).tostype("row_sparse")
    rsp3 = mx.nd.array(np.stack([dense, -dense]).transpose(1, 0, 2)).tostype("row_sparse")
    if wait:  # without it MXNet may write a stale storage shape (see the format notes); both must read right
        for a in (csr, rsp, rsp3):
            a.wait_to_read()
    path = str(tmp_path / "sparse.params")
    mx.nd.save(path, {"csr": csr, "rsp": rsp, "rsp3": rsp3})
    theirs = {k: v.asnumpy() for k, v in mx.nd.load(path).items()}
    ours = cio.load(path)
    with cio.open_weights(path, sparse="scipy") as r:
        assert r.storage_types == {"csr": "csr", "rsp": "row_sparse", "rsp3": "row_sparse"}
        as_scipy = {k: r[k] for k in r}
    for key, expected in theirs.items():
        np.testing.assert_array_equal(ours[key], expected)
        value = as_scipy[key]
        np.testing.assert_array_equal(value if isinstance(value, np.ndarray) else value.toarray(), expected)
    loaded = mx.nd.load(path)["csr"]
    np.testing.assert_array_equal(as_scipy["csr"].indptr, loaded.indptr.asnumpy())
    np.testing.assert_array_equal(as_scipy["csr"].indices, loaded.indices.asnumpy())


def test_npx_save_v3_records_with_0d_and_empty_arrays(tmp_path):
    path = str(tmp_path / "v3.params")
    with _np_semantics():
        arrays = {
            "scalar": mx.np.array(3.5, dtype="float64"),
            "empty": mx.np.zeros((0, 3), dtype="int32"),
            "matrix": mx.np.array(np.arange(6, dtype=np.float16).reshape(2, 3)),
        }
        mx.npx.save(path, arrays)
        theirs = {k: v.asnumpy() for k, v in mx.npx.load(path).items()}
    with cio.open_weights(path) as r:
        assert set(r.versions.values()) == {3}
        for key, expected in theirs.items():
            assert r[key].shape == expected.shape and r[key].dtype == expected.dtype
            np.testing.assert_array_equal(r[key], expected)
    # And the other way: our np_shape=True file loads under NumPy semantics.
    cio.save({k: np.asarray(v) for k, v in theirs.items()}, tmp_path / "ours.params", np_shape=True)
    assert (tmp_path / "ours.params").read_bytes() == (tmp_path / "v3.params").read_bytes()


def test_block_save_parameters_reads_equal(tmp_path):
    net = _net()
    net.initialize(mx.init.Xavier())
    net(mx.nd.ones((1, 2, 6, 6)))
    path = str(tmp_path / "net.params")
    net.save_parameters(path)
    ours = cio.load(path)
    assert list(ours) == ["0.weight", "0.bias", "1.gamma", "1.beta", "1.running_mean", "1.running_var",
                          "3.weight", "3.bias"]  # fmt: skip
    for key, nd in mx.nd.load(path).items():
        np.testing.assert_array_equal(ours[key], nd.asnumpy())


def test_checkpoint_and_export_keep_arg_and_aux_prefixes(tmp_path):
    data = mx.sym.var("data")
    fc = mx.sym.FullyConnected(data, num_hidden=3, name="fc1")
    sym = mx.sym.BatchNorm(fc, name="bn0")
    arg = {"fc1_weight": mx.nd.array(_values("float32", (3, 4))), "fc1_bias": mx.nd.zeros(3)}
    aux = {"bn0_moving_mean": mx.nd.ones(3), "bn0_moving_var": mx.nd.ones(3) * 2}
    prefix = str(tmp_path / "model")
    mx.model.save_checkpoint(prefix, 7, sym, arg, aux)
    ours = cio.load(prefix + "-0007.params")
    assert sorted(ours) == ["arg:fc1_bias", "arg:fc1_weight", "aux:bn0_moving_mean", "aux:bn0_moving_var"]
    for key, nd in mx.nd.load(prefix + "-0007.params").items():
        np.testing.assert_array_equal(ours[key], nd.asnumpy())
    net = _net()
    net.initialize()
    net.hybridize()
    net(mx.nd.ones((1, 2, 6, 6)))
    net.export(str(tmp_path / "exp"), epoch=1)
    exported = cio.load(tmp_path / "exp-0001.params")
    assert all(k.startswith(("arg:", "aux:")) for k in exported)
    assert any(k.startswith("aux:") and k.endswith("running_var") for k in exported)
    for key, nd in mx.nd.load(str(tmp_path / "exp-0001.params")).items():
        np.testing.assert_array_equal(exported[key], nd.asnumpy())


def test_our_files_load_in_nd_load_for_every_dtype_and_layout(tmp_path):
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    weights = {f"{d}": _values(d, (3, 4), i) for i, d in enumerate(MX_DTYPES)}
    weights.update(transposed=base.T, strided=base[::2, 1::2], big_endian=base.astype(">f4"), row=base[1])
    path = tmp_path / "ours.params"
    cio.save(weights, path)
    loaded = mx.nd.load(str(path))
    assert list(loaded) == list(weights)
    for key, value in weights.items():
        got = loaded[key].asnumpy()
        assert got.dtype == value.dtype.newbyteorder("=") and got.shape == value.shape
        np.testing.assert_array_equal(got, value)


def test_shared_parameters_and_shared_storage(tmp_path):
    # Gluon parameters shared between two layers: stored twice, or once with deduplicate=True.
    net = gluon.nn.HybridSequential()
    first = gluon.nn.Dense(4, in_units=4)
    net.add(first, gluon.nn.Dense(4, in_units=4, params=first.params))
    net.initialize()
    net(mx.nd.ones((1, 4)))
    for dedup in (False, True):
        path = str(tmp_path / f"shared_{dedup}.params")
        net.save_parameters(path, deduplicate=dedup)
        theirs = mx.nd.load(path)
        ours = cio.load(path)
        assert list(ours) == list(theirs) and len(ours) == (2 if dedup else 4)
        for key, nd in theirs.items():
            np.testing.assert_array_equal(ours[key], nd.asnumpy())
    # NumPy views of one buffer, written by coreprune, load as independent arrays in MXNet.
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    views = {"base": base, "rows": base[1:3], "cols": base[:, ::2], "t": base.T}
    cio.save(views, tmp_path / "views.params")
    for key, nd in mx.nd.load(str(tmp_path / "views.params")).items():
        np.testing.assert_array_equal(nd.asnumpy(), views[key])


def test_block_load_parameters_reads_our_files(tmp_path):
    net = _net()
    net.initialize(mx.init.Xavier())
    net(mx.nd.ones((1, 2, 6, 6)))
    net.save_parameters(str(tmp_path / "orig.params"))
    changed = {k: (v * 2 + 1).astype(v.dtype) for k, v in cio.load(tmp_path / "orig.params").items()}
    for np_shape in (False, True):
        path = tmp_path / f"ours_{np_shape}.params"
        cio.save(changed, path, np_shape=np_shape)
        fresh = _net()
        scope = mx.util.np_shape(True) if np_shape else contextlib.nullcontext()
        with scope:  # V3 records need NumPy-shape semantics in MXNet
            fresh.load_parameters(str(path))
        params = {k: v.data().asnumpy() for k, v in fresh.collect_params().items()}
        for structural, param in zip(changed, params.values()):
            np.testing.assert_allclose(param, changed[structural], rtol=0, atol=0)


def test_bfloat16_both_ways(tmp_path):
    floats = np.array([1.5, -2.25, 3.0, 0.1, -0.0, 65504.0, 1e-30], np.float32)
    # MXNet writes bfloat16 (flag 12) ...
    mx.nd.save(str(tmp_path / "mx.params"), {"b": mx.nd.amp_cast(mx.nd.array(floats), dtype=MX_BF16)})
    theirs = mx.nd.load(str(tmp_path / "mx.params"))["b"]
    ours = cio.load(tmp_path / "mx.params")["b"]
    assert ours.dtype == np.dtype(ml_dtypes.bfloat16)
    assert ours.view(np.uint16).tolist() == theirs.asnumpy().view(np.uint16).tolist()
    np.testing.assert_array_equal(ours.astype(np.float32), mx.nd.amp_cast(theirs, dtype="float32").asnumpy())
    # ... and reads ours, bit for bit.
    bits = np.array([0x3FC0, 0xC010, 0x7F80, 0xFF80, 0x0000, 0x8000, 0x0001], np.uint16)
    cio.save({"b": bits.view(ml_dtypes.bfloat16)}, tmp_path / "ours.params")
    back = mx.nd.load(str(tmp_path / "ours.params"))["b"]
    assert back.dtype == MX_BF16
    assert back.asnumpy().view(np.uint16).tolist() == bits.tolist()
    assert mx.nd.amp_cast(back, dtype="float32").asnumpy()[:2].tolist() == [1.5, -2.25]


def test_hand_built_v0_v1_records_read_like_mxnet(tmp_path):
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    tail = struct.pack("<iii", 1, 0, 0) + data.tobytes()
    v0 = struct.pack("<III", 2, 2, 3) + tail
    v1 = struct.pack("<Iiqq", 0xF993FAC8, 2, 2, 3) + tail
    names = b"".join(struct.pack("<Q", 2) + n for n in (b"v0", b"v1"))
    path = tmp_path / "legacy.params"
    path.write_bytes(struct.pack("<QQQ", 0x112, 0, 2) + v0 + v1 + struct.pack("<Q", 2) + names)
    theirs = mx.nd.load(str(path))
    with cio.open_weights(path) as r:
        assert r.versions == {"v0": 0, "v1": 1}
        for key in ("v0", "v1"):
            np.testing.assert_array_equal(r[key], theirs[key].asnumpy())


@pytest.mark.parametrize("shape", [(2, 0), (0,), (0, 3)])
def test_zero_size_arrays_as_mx_nd_save_writes_them(tmp_path, shape):
    # mx.nd.save writes 0-size arrays as V2 (legacy-shape) records; mx.nd.load reads them back.
    path = str(tmp_path / "theirs.params")
    arrays = {
        "empty": mx.nd.array(np.zeros(shape, np.float32)),
        "matrix": mx.nd.array(np.arange(4.0).reshape(2, 2)),
    }
    mx.nd.save(path, arrays)
    theirs = {k: v.asnumpy() for k, v in mx.nd.load(path).items()}
    assert theirs["empty"].shape == shape
    ours = cio.load(path)
    for key, expected in theirs.items():
        assert ours[key].shape == expected.shape and ours[key].dtype == expected.dtype
        np.testing.assert_array_equal(ours[key], expected)
    # and back: coreprune's default writer gives MXNet's bytes, which mx.nd.load reads
    cio.save({k: np.asarray(v) for k, v in ours.items()}, tmp_path / "ours.params")
    assert (tmp_path / "ours.params").read_bytes() == (tmp_path / "theirs.params").read_bytes()
    again = mx.nd.load(str(tmp_path / "ours.params"))
    assert again["empty"].shape == shape
