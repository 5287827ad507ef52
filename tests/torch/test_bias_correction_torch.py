"""Bias correction through coreprune.torch.trace_graph: the statistics attrs the tracer writes, and
the mean output shift of real architectures (MobileNetV2, ResNet-18) with batch-norm statistics
gathered on the inputs they are then measured on."""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from coreprune.torch import load_numpy, to_numpy, trace_graph  # noqa: E402
from torch import nn  # noqa: E402

import coreprune as cp  # noqa: E402
from coreprune.structured import Graph  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "structured_models", pathlib.Path(__file__).with_name("structured_models.py"))
sm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sm)


class _Ops(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.r6 = nn.ReLU6()
        self.drop = nn.Dropout(0.5)
        self.pool = nn.AvgPool2d(2)
        self.maxpool = nn.MaxPool2d(2)
        self.sig = nn.Sigmoid()

    def forward(self, x):
        b = self.bn(x)
        relu6 = self.r6(b)
        relu = F.relu(b)
        clamp = torch.clamp(b, min=-1.0, max=2.0)
        clamp_lo = b.clamp(min=0.5)
        total = relu6 + relu
        diff = relu6 - relu
        scaled = relu6 * 2.0
        dropped = self.drop(relu)
        pooled = self.pool(dropped)
        maxed = self.maxpool(relu)
        spatial = clamp.mean(dim=(2, 3))
        return total, diff, scaled, pooled, maxed, spatial, self.sig(clamp_lo)


def test_trace_graph_writes_how_each_op_moves_the_statistics():
    graph, _ = trace_graph(_Ops().eval(), torch.zeros(1, 4, 8, 8))
    attrs = {node.name: dict(node.attrs) for node in graph}
    assert attrs["r6"] == {"fn": "clip", "lo": 0.0, "hi": 6.0}
    assert attrs["relu"] == {"fn": "clip", "lo": 0.0, "hi": float("inf")}
    assert attrs["clamp"] == {"fn": "clip", "lo": -1.0, "hi": 2.0}
    assert attrs["clamp_1"] == {"fn": "clip", "lo": 0.5, "hi": float("inf")}
    assert attrs["add"] == {"fn": "sum"}
    assert attrs["sub"] == {}  # a difference is not a sum
    assert attrs["mul"] == {}  # a scalar product changes the mean
    assert attrs["drop"] == {"fn": "copy"}
    assert attrs["pool"] == {"fn": "pool"}
    assert attrs["maxpool"] == {}  # a maximum raises the mean
    assert attrs["mean"] == {"fn": "pool"}
    assert attrs["sig"] == {"fn": "sigmoid"}


class _Smooth(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.acts = nn.ModuleList([nn.Sigmoid(), nn.Tanh(), nn.GELU(), nn.GELU(approximate="tanh"),
                                   nn.SiLU(), nn.Hardswish(), nn.Mish()])

    def forward(self, x):
        outs = [act(x) for act in self.acts]
        return (*outs, torch.sigmoid(x), F.silu(x), F.gelu(x), F.hardswish(x), x.tanh(), x.sigmoid(),
                F.softplus(x))


def test_trace_graph_names_the_smooth_activations():
    graph, _ = trace_graph(_Smooth().eval(), torch.zeros(1, 4, 8, 8))
    fns = [dict(node.attrs).get("fn") for node in graph if node.op == "identity"]
    # Mish and softplus have no rule: no statistics after them
    assert fns == ["sigmoid", "tanh", "gelu", "gelu", "silu", "hardswish", None,
                   "sigmoid", "silu", "gelu", "hardswish", "tanh", "sigmoid", None]


def _calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """``model`` whose batch norms hold the exact statistics of ``x`` (cumulative average, one pass),
    with random affine parameters so that the means to correct are not all zero."""
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.5 + 0.5)
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def _with_activation(model: nn.Module, make) -> nn.Module:
    """``model`` with every ReLU6 replaced by ``make()`` (MobileNetV3 / EfficientNet-style)."""
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(parent, child_name, make())
    return model


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet18", "mobilenetv2-hardswish", "mobilenetv2-silu"])
def test_bias_correction_shrinks_the_mean_output_shift(name):
    torch.manual_seed(0)
    model = sm.MobileNetV2(0.5, 10) if name.startswith("mobilenetv2") else sm.resnet18(16, 10)
    if name.endswith("hardswish"):
        model = _with_activation(model, nn.Hardswish)
    elif name.endswith("silu"):
        model = _with_activation(model, nn.SiLU)
    # ResNet-18 at 64 x 64, not 32 x 32: its last maps would be 4 x 4, where most taps of a 3 x 3
    # kernel read the zero padding, which the correction does not model (docs/quantization.md)
    x = torch.randn(256, 3, *((32, 32) if name.startswith("mobilenetv2") else (64, 64)))
    model = _calibrated(model, x)
    graph, weights = trace_graph(model, x[:1])
    assert weights.keys() == to_numpy(model).keys()

    def logits(w: dict) -> np.ndarray:
        load_numpy(model, cp.dequantize(w))
        with torch.no_grad():
            return model(x).double().numpy()

    ref = logits(weights)
    # nearest rounding in both: balanced rounding (the default for conv kernels) already takes part
    # of the mean shift, and this test is about the correction
    plain = cp.quantize(weights, bits=3, rounding="half_even")
    fixed = cp.quantize(weights, bits=3, rounding="half_even", graph=graph)
    shift_plain = np.abs((logits(plain) - ref).mean(0)).mean()
    shift_fixed = np.abs((logits(fixed) - ref).mean(0)).mean()
    err_plain = np.square(logits(plain) - ref).mean()
    err_fixed = np.square(logits(fixed) - ref).mean()
    # measured: mean shift 0.21 -> 0.08 (MobileNetV2), 0.42 -> 0.21 (ResNet-18); squared error
    # 0.47 -> 0.34, 0.34 -> 0.17
    assert shift_fixed < 0.7 * shift_plain, (shift_plain, shift_fixed)
    assert err_fixed < 0.85 * err_plain, (err_plain, err_fixed)
    corrected = [k for k in weights
                 if k.endswith("running_mean") and not np.array_equal(fixed[k], weights[k])]
    assert len(corrected) >= 10  # every conv's batch norm whose input statistics are known


class _SamePadConv(nn.Conv2d):
    """TensorFlow-style 'SAME' convolution as the EfficientNet ports write it."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.static_padding = nn.ZeroPad2d((1, 1, 1, 1))

    def forward(self, x):
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride)


class _StdConv(nn.Conv2d):
    """Weight standardisation: its weight is not what it applies, so it must not be one plain conv."""

    def forward(self, x):
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_padded_conv_subclasses_are_one_conv_other_subclasses_are_not():
    padded = nn.Sequential(_SamePadConv(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), _SamePadConv(8, 4, 3))
    graph, _ = trace_graph(padded.eval(), torch.zeros(1, 3, 8, 8))
    assert [n.op for n in graph] == ["input", "conv", "batchnorm", "identity", "conv"]
    with pytest.raises(cp.CompressionError, match="outside its module"):
        trace_graph(nn.Sequential(_StdConv(3, 8, 3)).eval(), torch.zeros(1, 3, 8, 8))


def test_batch_norm_epsilon_is_the_module_s():
    """EfficientNet and other TensorFlow ports use eps=1e-3; with running variances near it, the
    output spread (and a ReLU's mean) is far from what 1e-5 gives. Checked against torch's own
    batch norm on inputs that have its running statistics."""
    model = nn.Sequential(nn.BatchNorm2d(4, eps=1e-3), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    rv, rm = torch.tensor([1e-4, 5e-4, 1e-3, 1.0]), torch.tensor([0.01, -0.02, 0.0, 1.0])
    gamma, beta = torch.tensor([1.0, 2.0, 0.5, 1.5]), torch.tensor([0.2, -0.1, 0.3, 0.0])
    with torch.no_grad():
        for param, value in zip(("running_var", "running_mean", "weight", "bias"), (rv, rm, gamma, beta)):
            getattr(model[0], param).copy_(value)
    model.eval()
    graph, weights = trace_graph(model, torch.zeros(1, 4, 2, 2))
    assert graph.nodes["0"].attrs["eps"] == 1e-3 and graph.nodes["3"].attrs["eps"] == 1e-5
    stats = cp.channel_statistics(graph, weights)
    g2, v = gamma.double().numpy() ** 2, rv.double().numpy()
    np.testing.assert_allclose(stats["0"][1], g2 * v / (v + 1e-3), rtol=1e-6)

    x = rm[:, None, None] + rv.sqrt()[:, None, None] * torch.randn(200_000, 4, 1, 1,
                                                                   generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        bn_out = model[0](x).double().numpy()[:, :, 0, 0]
    np.testing.assert_allclose(stats["0"][1], bn_out.var(0), rtol=0.02)
    np.testing.assert_allclose(stats["_1"][0], np.maximum(bn_out, 0).mean(0), atol=0.01)

    # the same graph without the attr assumes 1e-5: about 11x the variance where var = 1e-4
    plain = Graph([dataclasses.replace(n, attrs={}) if n.op == "batchnorm" else n for n in graph],
                  graph.outputs)
    ratio = cp.channel_statistics(plain, weights)["0"][1] / stats["0"][1]
    np.testing.assert_allclose(ratio, (v + 1e-3) / (v + 1e-5), rtol=1e-6)
    assert ratio[0] > 10
