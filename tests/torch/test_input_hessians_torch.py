"""coreprune.torch.input_hessians: each layer's input second moments against a NumPy im2col
reference, the model left as it was, and GPTQ rounding on real architectures."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from coreprune.torch import input_hessians, to_numpy  # noqa: E402
from torch import nn  # noqa: E402

import coreprune as cp  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "structured_models", pathlib.Path(__file__).with_name("structured_models.py"))
sm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sm)


def im2col(x: np.ndarray, k: tuple, stride: tuple, pad: tuple, dilation: tuple, mode: str = "constant"):
    """Patches ``(N * L, C * kh * kw)`` of an NCHW array, loops over output positions."""
    x = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])), mode=mode)
    n, c, h, w = x.shape
    oh = (h - dilation[0] * (k[0] - 1) - 1) // stride[0] + 1
    ow = (w - dilation[1] * (k[1] - 1) - 1) // stride[1] + 1
    rows = []
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                ys = i * stride[0] + dilation[0] * np.arange(k[0])
                xs = j * stride[1] + dilation[1] * np.arange(k[1])
                rows.append(x[b][:, ys][:, :, xs].reshape(-1))
    return np.array(rows, np.float64)


def second_moment(rows: np.ndarray) -> np.ndarray:
    return rows.T @ rows / len(rows)


@pytest.mark.parametrize("conv, pad, mode", [
    (dict(kernel_size=3, stride=2, padding=1), (1, 1), "constant"),
    (dict(kernel_size=(3, 2), stride=(1, 2), padding=(2, 1), dilation=2), (2, 1), "constant"),
    (dict(kernel_size=3, padding="same", padding_mode="reflect"), (1, 1), "reflect"),
    (dict(kernel_size=1), (0, 0), "constant"),
])
def test_conv_patches_match_a_numpy_reference(conv, pad, mode):
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, **conv)
    x = torch.randn(2, 3, 9, 8)
    h = input_hessians(nn.Sequential(layer), x)
    k = layer.kernel_size
    rows = im2col(x.numpy().astype(np.float64), k, layer.stride, pad, layer.dilation, mode)
    np.testing.assert_allclose(h["0.weight"], second_moment(rows), rtol=1e-12, atol=1e-12)
    # the rows are what the weight multiplies: patches @ W.T + b is the layer's output
    weight, bias = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
    out = rows @ weight.reshape(4, -1).T + bias
    want = layer(x).detach().double().numpy().transpose(0, 2, 3, 1).reshape(-1, 4)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_linear_conv1d_batches_and_tuples():
    torch.manual_seed(1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(2, 3, 3, stride=2, padding=1)
            self.fc = nn.Linear(3, 5)

        def forward(self, x, scale=1.0):
            return self.fc(self.conv(x).transpose(1, 2) * scale)

    net = Net()
    xs = [torch.randn(2, 2, 7), torch.randn(3, 2, 7)]
    h = input_hessians(net, [(xs[0], 2.0), (xs[1], 2.0)])
    x = np.concatenate([b.numpy() for b in xs]).astype(np.float64)[:, :, None, :]
    rows = im2col(x, (1, 3), (1, 2), (0, 1), (1, 1))
    np.testing.assert_allclose(h["conv.weight"], second_moment(rows), rtol=1e-12)
    fc_in = np.concatenate([(net.conv(b).transpose(1, 2) * 2.0).detach().numpy().reshape(-1, 3) for b in xs])
    np.testing.assert_allclose(h["fc.weight"], second_moment(fc_in.astype(np.float64)), rtol=1e-6)
    assert list(h) == ["conv.weight", "fc.weight"]


def test_model_is_left_as_it_was():
    torch.manual_seed(2)
    model = sm.MobileNetV2(0.25, 10)
    model.train()
    model.features[1].eval()  # a mixed state, restored as it was
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    input_hessians(model, torch.randn(4, 3, 32, 32))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # running stats too
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_names_and_what_is_left_out():
    torch.manual_seed(3)
    model = sm.MobileNetV2(0.25, 10).eval()
    h = input_hessians(model, torch.randn(2, 3, 32, 32))
    keys = to_numpy(model).keys()
    assert set(h) <= set(keys)
    depthwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and not any(f"{n}.weight" in h for n in depthwise)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    assert {f"{n}.weight" for n in convs} | {"classifier.1.weight"} == set(h)
    # a wrapped model names its layers as its own state dict does
    wrapped = nn.Sequential()
    wrapped.add_module("module", model)
    assert set(input_hessians(wrapped, torch.randn(2, 3, 32, 32))) == {f"module.{n}" for n in h}
    # attention's projections run inside F.multi_head_attention_forward, not through their modules
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    got = input_hessians(layer, torch.randn(2, 5, 16))
    assert set(got) == {"linear1.weight", "linear2.weight"}


def test_errors():
    with pytest.raises(cp.CompressionError, match="torch.nn.Module"):
        input_hessians("model", torch.ones(1))
    with pytest.raises(cp.CompressionError, match="at least one batch"):
        input_hessians(nn.Linear(2, 2), [])
    with pytest.raises(cp.CompressionError, match="iterable of batches"):
        input_hessians(nn.Linear(2, 2), 3)
    with pytest.raises(cp.CompressionError, match="NaN or Inf"):
        input_hessians(nn.Linear(2, 2), torch.full((1, 2), float("nan")))
    # a batch the model refuses: one error with torch's message, and the hooks are gone
    net = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(cp.CompressionError, match="failed on batch 1: .*shapes cannot be multiplied"):
        input_hessians(net, [torch.ones(2, 3), torch.ones(2, 4)])
    assert not net[0]._forward_pre_hooks


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet18"])
def test_gptq_lowers_the_output_error_of_real_architectures(name):
    torch.manual_seed(4)
    model = sm.MobileNetV2(0.5, 10) if name == "mobilenetv2" else sm.resnet18(16, 10)
    x = torch.randn(96, 3, 32, 32)
    model.train()
    with torch.no_grad():
        model(x)  # batch norms hold statistics of inputs like these
    model.eval()
    weights = to_numpy(model)
    h = input_hessians(model, x[:64].split(16))
    held_out = x[64:]

    def mse(q) -> float:
        w = cp.dequantize(q)
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in w.items()})
        with torch.no_grad():
            got = model(held_out)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        with torch.no_grad():
            return float(((got - model(held_out)) ** 2).mean())

    plain = mse(cp.quantize(weights, bits=4))
    gptq = mse(cp.quantize(weights, bits=4, hessians=h))
    assert gptq < 0.8 * plain, (gptq, plain)
