"""Structured channel pruning of MXNet models (Gluon blocks and symbol-API checkpoints).

As for PyTorch: zero every slice of the channels a plan removes in a model with random weights and
batch-norm statistics; the dense model then computes what the pruned ``SymbolBlock`` computes, and
``"l2"`` importance picks exactly those channels.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import warnings

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
pytest.importorskip("mxnet.gluon", reason="needs a real MXNet installation")
warnings.filterwarnings("ignore", category=DeprecationWarning)

from coreprune.mxnet import mobilenet_student, squeezenet_student  # noqa: E402
from coreprune.mxnet.structured import block_symbol, prune_channels, prune_checkpoint  # noqa: E402

from coreprune.errors import CompressionError  # noqa: E402
from coreprune.structured import coupling_groups, graph_from_mxnet_json, select_units, zero_units  # noqa: E402

_HERE = pathlib.Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("structured_models_mx", _HERE / "structured_models_mx.py")
smx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(smx)

MODELS = {
    "resnet18": (lambda: smx.resnet18(16, 10), (2, 3, 32, 32)),
    "resnet50": (lambda: smx.resnet50(8, 10), (2, 3, 32, 32)),
    "mobilenetv2": (lambda: smx.MobileNetV2(0.25, 10), (2, 3, 32, 32)),
    "squeezenet": (lambda: smx.SqueezeNet(10), (2, 3, 48, 48)),
    "shufflenet": (lambda: smx.ShuffleNetSmall(), (2, 3, 16, 16)),
    "mobilenet_student": (lambda: mobilenet_student(0.5), (2, 1, 28, 28)),
    "squeezenet_student": (lambda: squeezenet_student(), (2, 1, 28, 28)),
}


def _build(name: str, seed: int = 0):
    mx.random.seed(seed)
    factory, shape = MODELS[name]
    net = factory()
    net.initialize(mx.init.Xavier())
    rng = np.random.default_rng(seed)
    for p in net.collect_params().values():
        n = p.shape[0]
        if p.name.endswith("_gamma") or p.name.endswith("_running_var"):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, n)))
        elif p.name.endswith("_beta") or p.name.endswith("_running_mean") or p.name.endswith("_bias"):
            p.set_data(mx.nd.array(rng.normal(size=n)))
    return net, mx.nd.array(rng.normal(size=shape))


def _zero_removed(net, x, amount):
    js, arg, aux = block_symbol(net)
    weights = {**arg, **aux}
    groups = coupling_groups(graph_from_mxnet_json(js, weights, {"data": x.shape}), weights)
    keep = select_units(groups, weights, amount)
    zeroed = zero_units(weights, groups, keep)
    for g in groups:
        for u in np.setdiff1d(np.arange(len(g)), keep[g.name]):
            for s in g.units[u].slices:
                if s.kind == "consumer":
                    index = [slice(None)] * zeroed[s.key].ndim
                    index[s.axis] = s.index
                    zeroed[s.key][tuple(index)] = 0
    for p in net.collect_params().values():
        if p.name in zeroed:
            p.set_data(mx.nd.array(zeroed[p.name], dtype=p.dtype))


@pytest.mark.parametrize("name", list(MODELS))
def test_pruning_zero_channels_leaves_outputs_unchanged(name):
    net, x = _build(name)
    dense_before = net(x).asnumpy()
    _zero_removed(net, x, 0.5)
    expected = net(x).asnumpy()
    small = prune_channels(net, x, 0.5)
    got = small(x).asnumpy()
    n_dense = sum(p.data().size for p in net.collect_params().values())
    n_small = sum(p.data().size for p in small.collect_params().values())
    assert n_small < n_dense
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(dense_before, expected, atol=1e-3)


def test_block_is_not_modified_and_not_hybridized():
    net, x = _build("resnet18")
    before = {k: p.data().asnumpy().copy() for k, p in net.collect_params().items()}
    prune_channels(net, x, 0.5)
    assert all(np.array_equal(before[k], p.data().asnumpy()) for k, p in net.collect_params().items())
    assert not net._active


def test_symbol_checkpoint_round_trip(tmp_path):
    net, x = _build("mobilenetv2")
    net.hybridize()
    expected_shape = net(x).shape
    net.export(str(tmp_path / "mv2"))
    files_before = {f: os.path.getmtime(tmp_path / f) for f in os.listdir(tmp_path)}
    prune_checkpoint(str(tmp_path / "mv2"), 0, str(tmp_path / "small"), 0.5, {"data": x.shape}, round_to=4)
    assert {f: os.path.getmtime(tmp_path / f) for f in files_before} == files_before
    small = mx.gluon.SymbolBlock.imports(
        str(tmp_path / "small-symbol.json"), ["data"], str(tmp_path / "small-0000.params")
    )
    assert small(x).shape == expected_shape
    sym, arg, aux = mx.model.load_checkpoint(str(tmp_path / "small"), 0)
    dense = mx.model.load_checkpoint(str(tmp_path / "mv2"), 0)[1]
    assert sum(v.size for v in arg.values()) < 0.5 * sum(v.size for v in dense.values())
    with pytest.raises(CompressionError, match="must differ"):
        prune_checkpoint(str(tmp_path / "mv2"), 0, str(tmp_path / "mv2"), 0.5, {"data": x.shape})


class _Transposed(mx.gluon.HybridBlock):
    def __init__(self, **kw):
        super().__init__(**kw)
        with self.name_scope():
            self.conv = mx.gluon.nn.Conv2D(8, 1, in_channels=3)

    def hybrid_forward(self, F, x):
        return F.transpose(self.conv(x), axes=(0, 2, 3, 1))


class _PReLU(mx.gluon.HybridBlock):
    def __init__(self, **kw):
        super().__init__(**kw)
        with self.name_scope():
            self.conv = mx.gluon.nn.Conv2D(8, 1, in_channels=3)
            self.act = mx.gluon.nn.PReLU()
            self.out = mx.gluon.nn.Conv2D(2, 1, in_channels=8)

    def hybrid_forward(self, F, x):
        return self.out(self.act(self.conv(x)))


@pytest.mark.parametrize("block, match", [(_Transposed(), r"transpose.*not supported"), (_PReLU(), r"PReLU")])
def test_unsupported_operators_are_refused_by_name(block, match):
    block.initialize()
    with pytest.raises(CompressionError, match=match):
        prune_channels(block, mx.nd.zeros((1, 3, 4, 4)), 0.5)


def test_trace_graph_names_and_statistics_attrs():
    from coreprune.mxnet import to_numpy, trace_graph

    net = smx.MobileNetV2(0.25, 10)
    net.initialize()
    graph, weights = trace_graph(net, mx.nd.zeros((1, 3, 32, 32)))
    assert weights.keys() == to_numpy(net).keys()  # structural names, as the converter gives them
    keys = {k for node in graph for k in node.params.values()}
    assert keys <= weights.keys() and len(keys) == len(weights)
    fns = [dict(node.attrs).get("fn") for node in graph if node.op in ("identity", "add")]
    assert fns.count("clip") == sum(isinstance(b, smx.ReLU6) for b in _blocks(net)) > 0
    assert "sum" in fns and "pool" in fns and "copy" in fns  # residuals, global pooling, dropout
    assert all("fix_gamma" not in node.attrs for node in graph if node.op == "batchnorm")  # Gluon's


def _blocks(block):
    yield block
    for child in block._children.values():
        yield from _blocks(child)


def test_symbol_batch_norm_fixes_gamma_by_default():
    data = mx.sym.var("data")
    net = mx.sym.BatchNorm(mx.sym.Convolution(data, num_filter=4, kernel=(1, 1), name="c"), name="bn")
    out = mx.sym.BatchNorm(net, fix_gamma=False, name="bn2")
    shapes = {"c_weight": (4, 2, 1, 1), "c_bias": (4,)}
    for name in ("bn", "bn2"):
        shapes.update({f"{name}_{r}": (4,) for r in ("gamma", "beta", "moving_mean", "moving_var")})
    weights = {k: np.ones(v, np.float32) for k, v in shapes.items()}
    graph = graph_from_mxnet_json(out.tojson(), weights, {"data": (1, 2, 8, 8)})
    assert dict(graph.nodes["bn"].attrs).get("fix_gamma") == 1
    assert "fix_gamma" not in graph.nodes["bn2"].attrs


def _documented_eps() -> float:
    """The default eps in MXNet's own BatchNorm docstring (1.9.1: 0.0010000000474974513)."""
    doc = mx.sym.BatchNorm.__doc__
    return float(doc[doc.index("eps : double, optional, default=") :].split("=", 1)[1].split()[0])


def test_batch_norm_epsilon_from_the_symbol_or_mxnet_s_default():
    data = mx.sym.var("data")
    plain = mx.sym.BatchNorm(data, fix_gamma=False, name="plain")  # no eps attr in its JSON
    out = mx.sym.BatchNorm(plain, fix_gamma=False, eps=2e-4, name="given")
    weights = {f"{n}_{r}": np.ones(3, np.float32) for n in ("plain", "given")
               for r in ("gamma", "beta", "moving_mean", "moving_var")}
    assert "eps" not in (json.loads(out.tojson())["nodes"][5].get("attrs") or {})
    graph = graph_from_mxnet_json(out.tojson(), weights, {"data": (1, 3, 4, 4)})
    assert graph.nodes["plain"].attrs["eps"] == _documented_eps() == np.float32(1e-3)
    assert graph.nodes["given"].attrs["eps"] == 2e-4

    # MXNet itself normalises with that default: (x - mean) / sqrt(var + eps), var = 1e-4
    x, var = mx.nd.array(np.full((1, 3, 1, 1), 0.1, np.float32)), mx.nd.full((3,), 1e-4)
    y = mx.nd.BatchNorm(x, mx.nd.ones(3), mx.nd.zeros(3), mx.nd.zeros(3), var, fix_gamma=False).asnumpy()
    np.testing.assert_allclose(y, 0.1 / np.sqrt(1e-4 + graph.nodes["plain"].attrs["eps"]), rtol=1e-5)

    bad = json.loads(out.tojson())
    bad["nodes"][5]["attrs"] = {"fix_gamma": "False", "eps": "small"}
    with pytest.raises(CompressionError, match="eps must be a finite number >= 0, got 'small'"):
        graph_from_mxnet_json(bad, weights, {"data": (1, 3, 4, 4)})


def test_gluon_batch_norm_writes_its_epsilon():
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.BatchNorm(in_channels=3), mx.gluon.nn.BatchNorm(in_channels=3, epsilon=1e-3))
    net.initialize()
    from coreprune.mxnet import trace_graph

    graph, _ = trace_graph(net, mx.nd.zeros((1, 3, 4, 4)))
    assert [n.attrs["eps"] for n in graph if n.op == "batchnorm"] == [1e-5, 1e-3]
