"""Identical weights give identical pruned models from PyTorch and MXNet.

The same architecture is built in both frameworks (tests/torch/structured_models.py and its Gluon
twin tests/mxnet/structured_models_mx.py, attribute for attribute), the torch weights are copied
into the Gluon block, both are pruned with the same settings, and every pruned tensor must be
bit-identical (under the structural name, Gluon's batch-norm leaves renamed to torch's).
"""

from __future__ import annotations

import importlib.util
import pathlib
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mxnet")
pytest.importorskip("mxnet.gluon", reason="needs a real MXNet installation")
warnings.filterwarnings("ignore", category=DeprecationWarning)

import coreprune.mxnet as cmx  # noqa: E402
import coreprune.torch as ctorch  # noqa: E402
from coreprune.mxnet.blocks import TORCH_LEAF_NAMES  # noqa: E402

import coreprune as cp  # noqa: E402

_TESTS = pathlib.Path(__file__).resolve().parents[1]


def _load(path: pathlib.Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sm = _load(_TESTS / "torch" / "structured_models.py", "structured_models")
smx = _load(_TESTS / "mxnet" / "structured_models_mx.py", "structured_models_mx")

PAIRS = {
    "resnet18": (lambda: sm.resnet18(16, 10), lambda: smx.resnet18(16, 10), (1, 3, 32, 32)),
    "resnet50": (lambda: sm.resnet50(8, 10), lambda: smx.resnet50(8, 10), (1, 3, 32, 32)),
    "mobilenetv2": (lambda: sm.MobileNetV2(0.25, 10), lambda: smx.MobileNetV2(0.25, 10), (1, 3, 32, 32)),
    "squeezenet": (lambda: sm.SqueezeNet(10), lambda: smx.SqueezeNet(10), (1, 3, 48, 48)),
    "shufflenet": (sm.ShuffleNetSmall, smx.ShuffleNetSmall, (1, 3, 16, 16)),
    "mobilenet_student": (
        lambda: ctorch.mobilenet_student(0.5),
        lambda: cmx.mobilenet_student(0.5),
        (1, 1, 28, 28),
    ),
}


def _torch_name(structural: str) -> str:
    prefix, _, leaf = structural.rpartition(".")
    return f"{prefix}.{TORCH_LEAF_NAMES.get(leaf, leaf)}"


def _twins(name: str):
    make_torch, make_mx, shape = PAIRS[name]
    torch.manual_seed(0)
    tnet = make_torch().eval()
    gen = torch.Generator().manual_seed(1)
    for m in tnet.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    gnet = make_mx()
    gnet.initialize()
    state = tnet.state_dict()
    structural = gnet._collect_params_with_prefix()
    for key, param in structural.items():
        param.set_data(mx.nd.array(state[_torch_name(key)].numpy()))
    var_to_torch = {p.name: _torch_name(k) for k, p in structural.items()}
    return tnet, gnet, var_to_torch, shape


@pytest.mark.parametrize("settings", [{}, {"round_to": 8}, {"scope": "global", "min_keep": 0.2}], ids=str)
@pytest.mark.parametrize("name", list(PAIRS))
def test_same_pruned_tensors_from_both_frameworks(name, settings):
    tnet, gnet, var_to_torch, shape = _twins(name)
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    pruned_t = ctorch.prune_channels(tnet, torch.from_numpy(x), 0.5, **settings)
    pruned_g = cmx.prune_channels(gnet, mx.nd.array(x), 0.5, **settings)
    ours_t = {k: v.numpy() for k, v in pruned_t.state_dict().items() if not k.endswith("num_batches_tracked")}
    ours_g = {var_to_torch[p.name]: p.data().asnumpy() for p in pruned_g.collect_params().values()}
    assert sorted(ours_t) == sorted(ours_g)
    shrunk = 0
    for k in ours_t:
        assert ours_t[k].shape == ours_g[k].shape, k
        assert np.array_equal(ours_t[k], ours_g[k]), k
        shrunk += ours_t[k].shape != tuple(tnet.state_dict()[k].shape)
    assert shrunk > 0


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "shufflenet"])
def test_same_bias_correction_from_both_frameworks(name):
    """The traced graphs carry the same statistics (ReLU vs clip(0, 6), sums, pooling), so the
    corrected running means are bit-identical under either framework's names."""
    tnet, gnet, _, shape = _twins(name)
    gen = torch.Generator().manual_seed(4)
    for m in tnet.modules():  # non-zero means to correct, the same in both
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
    state = tnet.state_dict()
    for key, param in gnet._collect_params_with_prefix().items():
        param.set_data(mx.nd.array(state[_torch_name(key)].numpy()))
    x = np.zeros(shape, np.float32)
    graph_t, weights_t = ctorch.trace_graph(tnet, torch.from_numpy(x))
    graph_g, weights_g = cmx.trace_graph(gnet, mx.nd.array(x))
    q_t = cp.quantize(weights_t, bits=4, graph=graph_t)
    q_g = cp.quantize(weights_g, bits=4, graph=graph_g)
    assert sorted(map(_torch_name, q_g)) == sorted(k for k in q_t if not k.endswith("num_batches_tracked"))
    corrected = 0
    for key, value in q_g.items():
        ours = q_t[_torch_name(key)]
        if isinstance(value, cp.QuantizedArray):
            assert np.array_equal(value.codes, ours.codes) and np.array_equal(value.scale, ours.scale), key
        else:
            assert np.array_equal(value, ours), key
            corrected += key.endswith("running_mean") and not np.array_equal(value, weights_g[key])
    assert corrected >= 5


@pytest.mark.parametrize("name, layers", [("resnet18", 15), ("mobilenetv2", 34), ("shufflenet", 1)])
def test_same_estimated_hessians_from_both_frameworks(name, layers):
    """coreprune.estimate_hessians reads only the traced graph and the weights: the two
    frameworks' graphs give bit-identical data-free moments, and the same GPTQ codes."""
    tnet, gnet, _, shape = _twins(name)
    x = np.zeros(shape, np.float32)
    graph_t, weights_t = ctorch.trace_graph(tnet, torch.from_numpy(x))
    graph_g, weights_g = cmx.trace_graph(gnet, mx.nd.array(x))
    h_t = cp.estimate_hessians(graph_t, weights_t)
    h_g = cp.estimate_hessians(graph_g, weights_g)
    assert sorted(map(_torch_name, h_g)) == sorted(h_t) and len(h_t) == layers, sorted(h_t)
    for key, value in h_g.items():
        assert np.array_equal(value, h_t[_torch_name(key)]), key
    q_t = cp.quantize(weights_t, bits=4, hessians=h_t, graph=graph_t)
    q_g = cp.quantize(weights_g, bits=4, hessians=h_g, graph=graph_g)
    for key, value in q_g.items():
        if isinstance(value, cp.QuantizedArray):
            assert np.array_equal(value.codes, q_t[_torch_name(key)].codes), key


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "gelu"])
def test_smooth_activations_give_the_same_statistics_in_both_frameworks(act):
    """Sigmoid, tanh and GELU (the activations both frameworks name as one op) carry the batch
    norms' statistics in both traced graphs: the bias correction and the estimated moments of
    the layers after them are bit-identical."""
    torch.manual_seed(1)
    t_act = {"sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh, "gelu": torch.nn.GELU}[act]
    tnet = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), t_act(),
        torch.nn.Conv2d(8, 8, 1), torch.nn.BatchNorm2d(8), t_act(), torch.nn.Conv2d(8, 4, 1)).eval()
    gen = torch.Generator().manual_seed(2)
    for m in tnet.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(8, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(8, generator=gen))
                m.running_mean.copy_(torch.randn(8, generator=gen))
                m.running_var.copy_(torch.rand(8, generator=gen) + 0.5)

    def g_act():
        return mx.gluon.nn.GELU() if act == "gelu" else mx.gluon.nn.Activation(act)

    gnet = mx.gluon.nn.HybridSequential()
    gnet.add(mx.gluon.nn.Conv2D(8, 3, padding=1, use_bias=False, in_channels=3),
             mx.gluon.nn.BatchNorm(in_channels=8), g_act(),
             mx.gluon.nn.Conv2D(8, 1, in_channels=8), mx.gluon.nn.BatchNorm(in_channels=8), g_act(),
             mx.gluon.nn.Conv2D(4, 1, in_channels=8))
    gnet.initialize()
    state = tnet.state_dict()
    for key, param in gnet._collect_params_with_prefix().items():
        param.set_data(mx.nd.array(state[_torch_name(key)].numpy()))
    x = np.zeros((1, 3, 6, 6), np.float32)
    graph_t, weights_t = ctorch.trace_graph(tnet, torch.from_numpy(x))
    graph_g, weights_g = cmx.trace_graph(gnet, mx.nd.array(x))
    assert [n.attrs.get("fn") for n in graph_t if n.op == "identity"] == [act, act]
    assert [n.attrs.get("fn") for n in graph_g if n.op == "identity"] == [act, act]
    q_t = cp.quantize(weights_t, bits=4, graph=graph_t, hessians=cp.estimate_hessians(graph_t, weights_t))
    q_g = cp.quantize(weights_g, bits=4, graph=graph_g, hessians=cp.estimate_hessians(graph_g, weights_g))
    assert sorted(cp.estimate_hessians(graph_g, weights_g)) == ["3.weight", "6.weight"]
    moved = 0
    for key, value in q_g.items():
        ours = q_t[_torch_name(key)]
        if isinstance(value, cp.QuantizedArray):
            assert np.array_equal(value.codes, ours.codes), key
        else:
            assert np.array_equal(value, ours), key
            moved += key.endswith("bias") and not np.array_equal(value, weights_g[key])
    assert moved == 2  # the two 1x1 convolutions after an activation
