"""``coreprune.mxnet.trace_graph`` of a symbol-API model (``mx.sym`` + Module, and a Gluon model
exported and loaded back with ``mx.model.load_checkpoint``): the graph is keyed as
``to_numpy((arg_params, aux_params))`` (``arg:``/``aux:``), so ``quantize(..., graph=)`` corrects the
biases with no renaming by hand, bit for bit as the Gluon route does for the same model."""

from __future__ import annotations

import importlib.util
import pathlib
import warnings

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
pytest.importorskip("mxnet.gluon", reason="needs a real MXNet installation")
warnings.filterwarnings("ignore", category=DeprecationWarning)

from coreprune.mxnet import to_numpy, trace_graph  # noqa: E402

import coreprune as cp  # noqa: E402
from coreprune.errors import CompressionError  # noqa: E402
from coreprune.io import load  # noqa: E402
from coreprune.structured import graph_from_mxnet_checkpoint, graph_from_mxnet_json  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "structured_models_mx", pathlib.Path(__file__).resolve().parent / "structured_models_mx.py")
smx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(smx)

SHAPE = (1, 3, 8, 8)


def _symbol_model():
    """conv0 -> bn0 (the symbol API's defaults: fixed gamma, eps 1e-3) -> relu -> conv1 (no bias) ->
    bn1 -> relu -> global average pool -> fc -> SoftmaxOutput, with a Module's parameters and
    batch-norm statistics that are not the initial ones."""
    x = mx.sym.var("data")
    x = mx.sym.Convolution(x, num_filter=8, kernel=(3, 3), pad=(1, 1), name="conv0")
    x = mx.sym.Activation(mx.sym.BatchNorm(x, name="bn0"), act_type="relu", name="relu0")
    x = mx.sym.Convolution(x, num_filter=6, kernel=(3, 3), pad=(1, 1), no_bias=True, name="conv1")
    x = mx.sym.BatchNorm(x, fix_gamma=False, eps=1e-4, name="bn1")
    x = mx.sym.Activation(x, act_type="relu", name="relu1")
    x = mx.sym.Pooling(x, kernel=(1, 1), global_pool=True, pool_type="avg", name="pool")
    x = mx.sym.FullyConnected(mx.sym.Flatten(x, name="flat"), num_hidden=10, name="fc")
    sym = mx.sym.SoftmaxOutput(x, name="softmax")
    mod = mx.mod.Module(sym, data_names=["data"], label_names=["softmax_label"])
    mod.bind([("data", SHAPE)], [("softmax_label", (1,))], for_training=False)
    mx.random.seed(0)
    mod.init_params(mx.init.Xavier())
    arg, aux = mod.get_params()
    rng = np.random.default_rng(0)
    for name, value in (*arg.items(), *aux.items()):
        if name.startswith("bn") or name.endswith("bias"):
            low = 0.5 if name.endswith(("gamma", "var")) else -1.0
            value[:] = rng.uniform(low, 2.0, value.shape)
    return sym, arg, aux


def test_a_symbol_s_graph_is_keyed_as_to_numpy_of_its_params():
    sym, arg, aux = _symbol_model()
    graph, weights = trace_graph(sym, mx.nd.zeros(SHAPE), params=(arg, aux))
    expected = to_numpy((arg, aux))
    assert list(weights) == list(expected)
    assert all(np.array_equal(weights[k], expected[k]) for k in expected)
    keys = {k for node in graph for k in node.params.values()}
    assert keys == set(weights)  # every array is a parameter of some node
    assert dict(graph.nodes["bn1"].params) == {
        "weight": "arg:bn1_gamma", "bias": "arg:bn1_beta",
        "running_mean": "aux:bn1_moving_mean", "running_var": "aux:bn1_moving_var"}
    assert dict(graph.nodes["bn0"].attrs) == {"fix_gamma": 1, "eps": float(np.float32(1e-3))}
    assert graph.nodes["bn1"].attrs["eps"] == 1e-4
    assert graph.nodes["softmax_label"].op == "input"  # the label is an input, not a parameter


def test_quantize_with_a_symbol_s_graph_corrects_as_the_hand_renamed_route():
    sym, arg, aux = _symbol_model()
    graph, weights = trace_graph(sym, mx.nd.zeros(SHAPE), params=(arg, aux))
    fixed = cp.quantize(weights, bits=4, graph=graph)
    plain = cp.quantize(weights, bits=4)
    moved = {k for k in weights
             if k.endswith(("bias", "moving_mean")) and not np.array_equal(fixed[k], plain[k])}
    # conv1's shift goes into bn1's running mean, fc's into its bias; conv0 reads the data (unknown)
    assert moved == {"aux:bn1_moving_mean", "arg:fc_bias"}

    # the same model renamed by hand, as before: variable names and graph_from_mxnet_json
    by_var = {k.split(":", 1)[1]: v for k, v in weights.items()}
    shapes = {"data": SHAPE, "softmax_label": (1,)}
    by_hand = cp.quantize(by_var, bits=4, graph=graph_from_mxnet_json(sym.tojson(), by_var, shapes))
    for key, value in fixed.items():
        ours = by_hand[key.split(":", 1)[1]]
        assert np.array_equal(cp.dequantize({key: value})[key], cp.dequantize({key: ours})[key]), key


def _exported(tmp_path):
    """A hybridized Gluon MobileNetV2 (ReLU6, residual sums, global pooling) with random batch-norm
    statistics, exported and loaded back as a symbol-API checkpoint."""
    mx.random.seed(1)
    net = smx.MobileNetV2(0.25, 10)
    net.initialize(mx.init.Xavier())
    rng = np.random.default_rng(1)
    for p in net.collect_params().values():
        if p.name.endswith(("_gamma", "_running_var")):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape[0])))
        elif p.name.endswith(("_beta", "_running_mean", "_bias")):
            p.set_data(mx.nd.array(rng.normal(size=p.shape[0])))
    x = mx.nd.zeros((1, 3, 32, 32))
    net.hybridize()
    net(x)
    net.export(str(tmp_path / "mv2"))
    return net, x, mx.model.load_checkpoint(str(tmp_path / "mv2"), 0)


def test_an_exported_checkpoint_corrects_bit_for_bit_as_the_gluon_block(tmp_path):
    net, x, (sym, arg, aux) = _exported(tmp_path)
    graph_s, weights_s = trace_graph(sym, x, params=(arg, aux))
    graph_g, weights_g = trace_graph(net, x)
    file_name = {key: ("aux:" if p.name in aux else "arg:") + p.name
                 for key, p in net._collect_params_with_prefix().items()}
    assert sorted(file_name[k] for k in weights_g) == sorted(weights_s)
    q_s = cp.quantize(weights_s, bits=4, graph=graph_s)
    q_g = cp.quantize(weights_g, bits=4, graph=graph_g)
    plain = cp.quantize(weights_s, bits=4)
    corrected = 0
    for key, value in q_g.items():
        ours = q_s[file_name[key]]
        if isinstance(value, cp.QuantizedArray):
            assert np.array_equal(value.codes, ours.codes) and np.array_equal(value.scale, ours.scale), key
        else:
            assert value.dtype == ours.dtype and np.array_equal(value, ours), key
            corrected += not np.array_equal(ours, plain[file_name[key]])
    assert corrected >= 20  # measured 52: running means (and the classifier bias) behind known inputs

    # without MXNet: the files as coreprune.io reads them give the same graph
    files = graph_from_mxnet_checkpoint((tmp_path / "mv2-symbol.json").read_text(),
                                        load(str(tmp_path / "mv2-0000.params")), {"data": x.shape})
    assert list(files) == list(graph_s)  # Node equality: names, ops, channels, params, attrs


def test_params_go_with_a_symbol_and_only_with_a_symbol():
    sym, arg, aux = _symbol_model()
    with pytest.raises(CompressionError, match=r"a symbol holds no weights; give them as params="):
        trace_graph(sym, mx.nd.zeros(SHAPE))
    net = mx.gluon.nn.Dense(2, in_units=3)
    net.initialize()
    with pytest.raises(CompressionError, match="params= is for a symbol"):
        trace_graph(net, mx.nd.zeros((1, 3)), params=(arg, aux))
    missing = {k: v for k, v in arg.items() if k != "conv1_weight"}
    with pytest.raises(CompressionError, match=r"\(Convolution\): its parameter 'conv1_weight' is not"):
        trace_graph(sym, mx.nd.zeros(SHAPE), params=(missing, aux))


def test_a_symbol_with_two_data_inputs_is_refused():
    a, b = mx.sym.var("data"), mx.sym.var("data2")
    sym = mx.sym.FullyConnected(a, num_hidden=2, name="fa") + mx.sym.FullyConnected(b, num_hidden=2,
                                                                                    name="fb")
    arg = {f"{n}_{r}": mx.nd.ones((2, 3) if r == "weight" else (2,)) for n in ("fa", "fb")
           for r in ("weight", "bias")}
    with pytest.raises(CompressionError, match=r"one data input is supported; .* reads \['data', 'data2'\]"):
        trace_graph(sym, mx.nd.zeros((1, 3)), params=(arg, {}))
