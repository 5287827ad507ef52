"""coreprune.mxnet conversion: names equal MXNet's own file keys, values round-trip bit for bit.

Every expectation is checked against MXNet itself: the keys and arrays that
``Block.save_parameters``, ``ParameterDict.save`` and ``mx.model.save_checkpoint``
write (read back with ``mx.nd.load``), and NumPy's own casts for dtype conversions.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest

mx = pytest.importorskip("mxnet", reason="needs MXNet")
# Without MXNet, pytest's rootdir on sys.path makes tests/mxnet itself importable as an empty
# namespace package called "mxnet"; a real submodule tells the two apart.
pytest.importorskip("mxnet.gluon", reason="needs MXNet")

import ml_dtypes  # noqa: E402
from coreprune.mxnet import LoadReport, load_numpy, to_numpy  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402
from mxnet import gluon  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

from coreprune.errors import CompressionError  # noqa: E402


class Net(gluon.HybridBlock):
    """Nested on purpose: a named child, a BatchNorm (aux states) and a Sequential inside."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.fc = nn.Dense(5, in_units=4)
            self.bn = nn.BatchNorm(in_channels=5)
            self.head = nn.HybridSequential()
            self.head.add(nn.Dense(3, in_units=5, activation="tanh"), nn.Dense(2, in_units=3))

    def hybrid_forward(self, F, x):
        return self.head(self.bn(self.fc(x)))


def make_net(seed: int = 0, **kwargs) -> Net:
    mx.random.seed(seed)
    net = Net(prefix="net_", **kwargs)
    net.initialize(mx.init.Normal(1.0))
    # Non-trivial running statistics, so aux states are not just zeros and ones.
    net.bn.running_mean.set_data(mx.nd.random.normal(shape=(5,)))
    net.bn.running_var.set_data(mx.nd.random.uniform(0.5, 2.0, shape=(5,)))
    return net


def bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def assert_bit_identical(x: dict, y: dict) -> None:
    assert list(x) == list(y)
    for name in x:
        assert x[name].dtype == y[name].dtype, name
        assert x[name].shape == y[name].shape, name
        assert bits(x[name]) == bits(y[name]), name


# --- names ----------------------------------------------------------------------------------------------


def test_block_names_and_values_equal_save_parameters_file(tmp_path):
    net = make_net()
    path = str(tmp_path / "net.params")
    net.save_parameters(path)
    saved = mx.nd.load(path)
    got = to_numpy(net)
    assert list(got) == [
        "fc.weight", "fc.bias",
        "bn.gamma", "bn.beta", "bn.running_mean", "bn.running_var",
        "head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias",
    ]
    assert sorted(got) == sorted(saved)
    assert_bit_identical(got, {k: saved[k].asnumpy() for k in got})


def test_sequential_and_lone_block_names(tmp_path):
    seq = nn.HybridSequential()
    seq.add(nn.Dense(2, in_units=3), nn.BatchNorm(in_channels=2))
    seq.initialize()
    lone = nn.Dense(2, in_units=3)
    lone.initialize()
    for block, expected in [
        (seq, ["0.weight", "0.bias", "1.gamma", "1.beta", "1.running_mean", "1.running_var"]),
        (lone, ["weight", "bias"]),
    ]:
        path = str(tmp_path / "b.params")
        block.save_parameters(path)
        assert list(to_numpy(block)) == expected
        assert sorted(mx.nd.load(path)) == sorted(expected)


def test_shared_parameters_appear_under_every_name_like_save_parameters(tmp_path):
    class Tied(gluon.HybridBlock):
        def __init__(self):
            super().__init__(prefix="tied_")
            with self.name_scope():
                self.a = nn.Dense(3, in_units=3)
                self.b = nn.Dense(3, in_units=3, params=self.a.collect_params())

        def hybrid_forward(self, F, x):
            return self.b(self.a(x))

    net = Tied()
    net.initialize()
    path = str(tmp_path / "t.params")
    net.save_parameters(path)
    got = to_numpy(net)
    assert sorted(got) == sorted(mx.nd.load(path)) == ["a.bias", "a.weight", "b.bias", "b.weight"]
    assert bits(got["a.weight"]) == bits(got["b.weight"])


def test_parameterdict_uses_global_names_like_its_save(tmp_path):
    net = make_net()
    params = net.collect_params()
    path = str(tmp_path / "pd.params")
    params.save(path)
    saved = mx.nd.load(path)
    got = to_numpy(params)
    assert list(got) == list(params.keys())
    assert "net_dense0_weight" in got and "net_batchnorm0_running_var" in got
    assert_bit_identical(got, {k: saved[k].asnumpy() for k in got})


def test_ndarray_dict_keeps_keys_including_prefixes():
    d = {"arg:fc1_weight": mx.nd.ones((2, 3)), "aux:bn_moving_var": mx.nd.arange(4), "plain": mx.nd.zeros(1)}
    got = to_numpy(d)
    assert list(got) == list(d)
    np.testing.assert_array_equal(got["aux:bn_moving_var"], np.arange(4, dtype=np.float32))


def _checkpoint_module():
    sym = mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=3, name="fc1")
    sym = mx.sym.BatchNorm(sym, name="bn0")
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None)
    mod.bind(data_shapes=[("data", (2, 4))])
    mx.random.seed(3)
    mod.init_params(mx.init.Normal(1.0))
    return sym, mod


def test_arg_aux_pair_matches_checkpoint_file_and_loads_in_place(tmp_path):
    sym, mod = _checkpoint_module()
    prefix = str(tmp_path / "model")
    mx.model.save_checkpoint(prefix, 0, sym, *mod.get_params())
    on_disk = mx.nd.load(prefix + "-0000.params")
    _, arg, aux = mx.model.load_checkpoint(prefix, 0)

    got = to_numpy((arg, aux))
    assert list(got) == [
        "arg:fc1_weight", "arg:fc1_bias", "arg:bn0_gamma", "arg:bn0_beta",
        "aux:bn0_moving_mean", "aux:bn0_moving_var",
    ]
    assert sorted(got) == sorted(on_disk)
    assert_bit_identical(got, {k: on_disk[k].asnumpy() for k in got})

    rng = np.random.default_rng(0)
    new = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in got.items()}
    held = dict(arg), dict(aux)  # the very NDArray objects, to check in-place writes
    assert load_numpy((arg, aux), new).ok
    for prefix_, part in zip(("arg:", "aux:"), held):
        for name, nd in part.items():
            assert (arg if prefix_ == "arg:" else aux)[name] is nd
            assert bits(nd.asnumpy()) == bits(new[prefix_ + name])

    # The written pair is a valid checkpoint again, with exactly the new numbers.
    mx.model.save_checkpoint(prefix, 1, sym, arg, aux)
    reread = mx.nd.load(prefix + "-0001.params")
    assert_bit_identical({k: reread[k].asnumpy() for k in new}, new)


def test_module_get_params_pair_is_accepted():
    _, mod = _checkpoint_module()
    arg, aux = mod.get_params()
    got = to_numpy(mod.get_params())
    assert {k for k in got if k.startswith("arg:")} == {"arg:" + k for k in arg}
    assert {k for k in got if k.startswith("aux:")} == {"aux:" + k for k in aux}


def test_mapping_of_parameters_is_accepted():
    net = make_net()
    params = dict(net._collect_params_with_prefix())
    assert_bit_identical(to_numpy(params), to_numpy(net))


# --- round trip -----------------------------------------------------------------------------------------


def test_round_trip_into_another_block_is_bit_identical_and_computes_the_same():
    src, dst = make_net(0), make_net(1)
    weights = to_numpy(src)
    assert bits(weights["fc.weight"]) != bits(to_numpy(dst)["fc.weight"])
    assert load_numpy(dst, weights) == LoadReport([], [], [])
    assert_bit_identical(to_numpy(dst), weights)
    x = mx.nd.random.normal(shape=(3, 4))
    np.testing.assert_array_equal(src(x).asnumpy(), dst(x).asnumpy())


def test_round_trip_through_save_parameters_file(tmp_path):
    src, dst = make_net(0), make_net(1)
    path = str(tmp_path / "w.params")
    src.save_parameters(path)
    load_numpy(dst, {k: v.asnumpy() for k, v in mx.nd.load(path).items()})
    assert_bit_identical(to_numpy(dst), to_numpy(src))


def test_to_numpy_copies_and_load_numpy_leaves_its_input_alone():
    net = make_net()
    weights = to_numpy(net)
    before = bits(net.fc.weight.data().asnumpy())
    weights["fc.weight"][:] = 7.0
    assert bits(net.fc.weight.data().asnumpy()) == before

    new = {k: np.full(v.shape, 0.25, v.dtype) for k, v in to_numpy(net).items()}
    snapshot = {k: (v, v.copy()) for k, v in new.items()}
    load_numpy(net, new)
    net.fc.weight.set_data(mx.nd.ones(net.fc.weight.shape))  # later changes to the model ...
    for k, (obj, copy) in snapshot.items():  # ... never reach the dict it was loaded from
        assert new[k] is obj
        np.testing.assert_array_equal(obj, copy)


@given(
    arrays=st.lists(
        hnp.arrays(
            np.float32,
            hnp.array_shapes(min_dims=1, max_dims=3, max_side=4),
            elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_property_ndarray_dict_round_trip_keeps_every_bit(arrays):
    target = {f"t{i}": mx.nd.zeros(a.shape, dtype="float32") for i, a in enumerate(arrays)}
    weights = {f"t{i}": a for i, a in enumerate(arrays)}
    assert load_numpy(target, weights).ok
    back = to_numpy(target)
    for name, a in weights.items():
        assert bits(back[name]) == bits(a)  # NaN payloads, -0.0 and infinities included


# --- dtypes and contexts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", ["float16", "float32", "float64", "uint8", "int8", "int32", "int64", "bool"]
)
def test_dtypes_round_trip(dtype):
    values = (np.arange(12).reshape(3, 4) % 5 - 1).astype(dtype)
    nd = mx.nd.array(values, dtype=dtype)
    got = to_numpy({"a": nd})["a"]
    assert got.dtype == np.dtype(dtype)
    assert bits(got) == bits(values)
    load_numpy({"a": nd}, {"a": values[::-1].copy()})
    assert np.dtype(nd.dtype) == np.dtype(dtype)
    assert bits(nd.asnumpy()) == bits(values[::-1])


def test_bfloat16_maps_to_ml_dtypes_both_ways():
    f32 = np.array([1.5, -2.25, 3.0e38, 1.0e-3, 0.0], dtype=np.float32)
    nd = mx.nd.cast(mx.nd.array(f32), dtype="bfloat16")
    got = to_numpy({"b": nd})["b"]
    assert got.dtype == np.dtype(ml_dtypes.bfloat16)
    # Same numbers as MXNet's own bf16 -> f32 cast.
    np.testing.assert_array_equal(got.astype(np.float32), mx.nd.cast(nd, dtype="float32").asnumpy())

    new = np.array([0.1, 7.0, -1.0e-5, 65504.0, -3.0], dtype=np.float32)
    load_numpy({"b": nd}, {"b": new})
    assert nd.dtype == np.dtype([("bfloat16", "<u2")])
    expected = new.astype(ml_dtypes.bfloat16)  # round to nearest even, as NumPy/ml_dtypes cast
    assert bits(to_numpy({"b": nd})["b"]) == bits(expected)
    np.testing.assert_array_equal(mx.nd.cast(nd, dtype="float32").asnumpy(), expected.astype(np.float32))


def test_load_casts_to_the_target_dtype_and_keeps_it():
    net = make_net()
    net.cast("float16")  # BatchNorm keeps its own parameters in float32, as MXNet decides
    dtypes = {k: v.dtype for k, v in to_numpy(net).items()}
    assert dtypes["fc.weight"] == np.float16 and dtypes["bn.running_var"] == np.float32
    new = {k: np.random.default_rng(1).standard_normal(v.shape) for k, v in to_numpy(net).items()}  # float64
    load_numpy(net, new)
    got = to_numpy(net)
    for k in new:
        assert got[k].dtype == dtypes[k]
        assert bits(got[k]) == bits(new[k].astype(dtypes[k]))


def test_int_values_load_into_float_but_floats_never_truncate_into_int():
    target = {"f": mx.nd.zeros(3), "i": mx.nd.zeros(3, dtype="int32")}
    load_numpy(target, {"f": np.array([1, 2, 3], dtype=np.int64), "i": np.array([4, 5, 6])})
    assert target["f"].asnumpy().tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(CompressionError, match=r"'i'.*float64.*int32"):
        load_numpy(target, {"f": np.zeros(3, np.float32), "i": np.array([0.5, 1.5, 2.5])})
    # The refusal came before any write: 'f' still holds the previous values.
    assert target["f"].asnumpy().tolist() == [1.0, 2.0, 3.0]


def test_every_context_is_written_and_kept():
    mx.random.seed(0)
    net = nn.Dense(3, in_units=2, prefix="multi_")
    ctxs = [mx.cpu(0), mx.cpu(1)]
    net.initialize(mx.init.Normal(1.0), ctx=ctxs)
    new = {"weight": np.arange(6, dtype=np.float32).reshape(3, 2), "bias": np.ones(3, np.float32)}
    handles = [id(a) for a in net.weight.list_data()]
    load_numpy(net, new)
    assert [a.context for a in net.weight.list_data()] == ctxs
    assert [id(a) for a in net.weight.list_data()] == handles
    for arr in net.weight.list_data():
        assert bits(arr.asnumpy()) == bits(new["weight"])


# --- strictness and errors ------------------------------------------------------------------------------


def test_strict_lists_missing_unexpected_and_mismatched_and_writes_nothing():
    net = make_net()
    before = to_numpy(net)
    weights = dict(before)
    del weights["bn.gamma"]
    weights["extra.weight"] = np.zeros(2, np.float32)
    weights["fc.weight"] = np.zeros((4, 5), np.float32)
    weights["fc.bias"] = np.full(5, 9.0, np.float32)
    with pytest.raises(CompressionError) as info:
        load_numpy(net, weights)
    msg = str(info.value)
    assert "bn.gamma" in msg and "extra.weight" in msg
    assert "fc.weight (expected (5, 4), got (4, 5))" in msg
    assert_bit_identical(to_numpy(net), before)


def test_non_strict_loads_what_matches_and_reports_the_rest():
    net = make_net()
    before = to_numpy(net)
    weights = {
        "fc.bias": np.full(5, 9.0, np.float32),
        "fc.weight": np.zeros((4, 5), np.float32),
        "zzz": np.ones(1),
    }
    report = load_numpy(net, weights, strict=False)
    assert report.unexpected == ["zzz"]
    assert report.mismatched == [("fc.weight", (5, 4), (4, 5))]
    assert set(report.missing) == set(before) - {"fc.bias", "fc.weight"}
    assert not report.ok
    after = to_numpy(net)
    assert after["fc.bias"].tolist() == [9.0] * 5
    assert bits(after["fc.weight"]) == bits(before["fc.weight"])


def test_deferred_initialisation_is_named():
    net = nn.HybridSequential()
    net.add(nn.Dense(3), nn.Dense(2, in_units=3))
    net.initialize()
    # The bias's shape is known up front, so only the weight waits for the first forward pass.
    with pytest.raises(CompressionError, match=r"1 parameter\(s\) not initialised: \['0\.weight'\].*forward"):
        to_numpy(net)
    with pytest.raises(CompressionError, match=r"0\.weight"):
        load_numpy(net, {}, strict=False)
    net(mx.nd.ones((1, 4)))  # the forward pass finishes the deferred initialisation
    assert to_numpy(net)["0.weight"].shape == (3, 4)


def test_uninitialised_parameter_is_named():
    fc = nn.Dense(2, in_units=2)
    with pytest.raises(CompressionError, match="not initialised.*'weight'"):
        to_numpy(fc)


@pytest.mark.parametrize(
    "obj, match",
    [
        (np.zeros(3), "cannot handle a ndarray"),
        ({"w": np.zeros(3)}, r"the mapping\['w'\] is a ndarray, not an mxnet NDArray"),
        ({1: mx.nd.zeros(3)}, "non-string key 1"),
        (({"w": mx.nd.zeros(1)}, {"v": 3}), r"aux_params\['v'\] is a int"),
    ],
)
def test_unsupported_objects_raise(obj, match):
    with pytest.raises(CompressionError, match=match):
        to_numpy(obj)


def test_sparse_arrays_are_refused_with_a_hint():
    sparse = mx.nd.array([[1, 0], [0, 2]]).tostype("row_sparse")
    with pytest.raises(CompressionError, match="'s' is a row_sparse array.*tostype"):
        to_numpy({"s": sparse})
    with pytest.raises(CompressionError, match="row_sparse"):
        load_numpy({"s": sparse}, {"s": np.zeros((2, 2))})


def test_weights_must_be_numpy_arrays():
    with pytest.raises(CompressionError, match=r"weights\['w'\] is a list"):
        load_numpy({"w": mx.nd.zeros(2)}, {"w": [1.0, 2.0]})


def test_docstring_examples_run():
    import coreprune.mxnet.convert as convert
    import coreprune.mxnet.masks as masks

    flags = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
    for module in (convert, masks):
        result = doctest.testmod(module, optionflags=flags)
        assert result.attempted > 0, module.__name__
        assert result.failed == 0, module.__name__


def test_load_after_forward_pass_with_mkldnn_layout():
    # A forward pass leaves conv weights in an MKL-DNN layout on CPU builds; loading NumPy
    # arrays into them must still work and take effect.
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Conv2D(8, 3), mx.gluon.nn.Dense(10))
    net.initialize()
    x = mx.nd.ones((1, 1, 28, 28))
    net(x)
    weights = {k: np.full_like(v, 0.01) for k, v in to_numpy(net).items()}
    load_numpy(net, weights)
    got = to_numpy(net)
    for k in weights:
        np.testing.assert_array_equal(got[k], weights[k])
    conv = np.full((8,), 0.01 * 9 + 0.01, np.float32)  # every conv output is 9 * 0.01 + bias
    expected = 8 * 26 * 26 * conv[0] * 0.01 + 0.01
    np.testing.assert_allclose(net(x).asnumpy(), np.full((1, 10), expected), rtol=1e-5)
