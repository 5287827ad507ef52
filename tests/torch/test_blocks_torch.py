"""coreprune.torch.blocks: outputs against torch's functional ops, sizes against coreprune.arch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")
# Without torch installed, "torch" could resolve to the tests/torch folder (a namespace package,
# tests/ being on sys.path): only a real installation has torch.nn.
pytest.importorskip("torch.nn", reason="needs PyTorch")
F = torch.nn.functional

from coreprune.torch.blocks import (  # noqa: E402
    ChannelShuffle,
    DepthwiseSeparable,
    Fire,
    ShuffleUnit,
    mobilenet_student,
    num_parameters,
    squeezenet_student,
)

from coreprune import CompressionError, arch  # noqa: E402


def _randomise(module, seed=0):
    """Random weights and batch-norm statistics, so that eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            values = torch.rand(tensor.shape, generator=g, dtype=torch.float64)
            tensor.copy_(values + 0.5 if name.endswith("running_var") else values * 2 - 1)
    return module.double().eval()


def _macs(model, x):
    """MACs of one sample, counted from the real output shapes with forward hooks."""
    total = [0]

    def hook(mod, _inputs, out):
        spatial = out.shape[2] * out.shape[3] if out.dim() == 4 else 1
        total[0] += mod.weight.numel() * spatial

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        model(x[:1])
    for h in handles:
        h.remove()
    return total[0]


def _bn(x, bn):
    shape = (1, -1, 1, 1)
    return (x - bn.running_mean.view(shape)) / torch.sqrt(
        bn.running_var.view(shape) + bn.eps
    ) * bn.weight.view(shape) + bn.bias.view(shape)


def test_fire_matches_functional_composition_and_cost_model():
    fire = _randomise(Fire(12, 4, 8, 6))
    x = torch.randn(2, 12, 5, 5, dtype=torch.float64)
    s = F.relu(F.conv2d(x, fire.squeeze.weight, fire.squeeze.bias))
    expected = torch.cat(
        [
            F.relu(F.conv2d(s, fire.expand1x1.weight, fire.expand1x1.bias)),
            F.relu(F.conv2d(s, fire.expand3x3.weight, fire.expand3x3.bias, padding=1)),
        ],
        1,
    )
    torch.testing.assert_close(fire(x), expected, rtol=1e-12, atol=1e-12)
    assert fire(x).shape == (2, 14, 5, 5)
    cost = arch.fire_cost(12, 4, 8, 6, 5)
    assert num_parameters(fire) == sum(p.numel() for p in fire.parameters()) == cost.params
    assert _macs(fire, x) == cost.macs


@pytest.mark.parametrize("alpha", [1.0, 0.75, 0.5, 0.25])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_separable_matches_functional_composition_and_cost_model(alpha, stride):
    block = _randomise(DepthwiseSeparable(32, 48, stride=stride, alpha=alpha))
    m, n = arch.scale_channels(32, alpha), arch.scale_channels(48, alpha)
    x = torch.randn(2, m, 9, 9, dtype=torch.float64)
    dw = F.conv2d(x, block.depthwise.weight, stride=stride, padding=1, groups=m)
    expected = F.relu(_bn(F.conv2d(F.relu(_bn(dw, block.bn1)), block.pointwise.weight), block.bn2))
    out = block(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    side = arch.conv_output_size(9, 3, stride, 1)
    assert out.shape == (2, n, side, side)
    cost = arch.depthwise_separable_cost(32, 48, 3, side, alpha=alpha, batch_norm=True)
    assert num_parameters(block) == cost.params
    assert _macs(block, x) == cost.macs
    # The depthwise convolution really is one 3x3 filter per channel.
    assert block.depthwise.weight.shape == (m, 1, 3, 3)


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_channel_shuffle_matches_numpy_reference(groups):
    x = torch.randn(2, 12, 3, 4)
    np.testing.assert_array_equal(ChannelShuffle(groups)(x).numpy(), arch.channel_shuffle(x.numpy(), groups))
    with pytest.raises(CompressionError, match="must divide"):
        ChannelShuffle(5)(x)
    with pytest.raises(CompressionError, match="positive integer"):
        ChannelShuffle(0)


def test_shuffle_unit_matches_functional_composition_and_cost_model():
    unit = _randomise(ShuffleUnit(24, 12, groups=3))
    x = torch.randn(2, 24, 6, 6, dtype=torch.float64)
    out = F.relu(_bn(F.conv2d(x, unit.compress.weight, groups=3), unit.bn1))
    out = torch.from_numpy(arch.channel_shuffle(out.detach().numpy(), 3))
    out = _bn(F.conv2d(out, unit.depthwise.weight, padding=1, groups=12), unit.bn2)
    expected = F.relu(_bn(F.conv2d(out, unit.expand.weight, groups=3), unit.bn3) + x)
    torch.testing.assert_close(unit(x).detach(), expected.detach(), rtol=1e-12, atol=1e-12)
    cost = arch.shuffle_unit_cost(24, 12, 3, 6)
    assert num_parameters(unit) == cost.params
    assert _macs(unit, x) == cost.macs


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("rho", [1.0, 0.5, 16 / 28])
def test_mobilenet_student_size_and_macs_match_cost_model(alpha, rho):
    model = mobilenet_student(alpha).eval()
    side = arch.scale_resolution(28, rho)
    out = model(torch.randn(3, 1, side, side))
    assert out.shape == (3, 10)
    cost = arch.mobilenet_student_cost(alpha, rho=rho)
    assert num_parameters(model) == cost.params
    assert _macs(model, torch.randn(1, 1, side, side)) == cost.macs


@pytest.mark.parametrize("num_classes, in_channels, size", [(10, 1, 28), (3, 3, 20)])
def test_squeezenet_student_size_and_macs_match_cost_model(num_classes, in_channels, size):
    model = squeezenet_student(num_classes, in_channels).eval()
    x = torch.randn(2, in_channels, size, size)
    assert model(x).shape == (2, num_classes)
    cost = arch.squeezenet_student_cost(num_classes, in_channels=in_channels, input_size=size)
    assert num_parameters(model) == cost.params
    assert _macs(model, x) == cost.macs


def test_student_structural_names():
    keys = list(mobilenet_student(0.5).state_dict())
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = ["stem.weight"] + [f"bn.{leaf}" for leaf in bn]
    for i in range(len(arch.MOBILENET_STUDENT_BLOCKS)):
        expected += [f"blocks.{i}.depthwise.weight"] + [f"blocks.{i}.bn1.{leaf}" for leaf in bn]
        expected += [f"blocks.{i}.pointwise.weight"] + [f"blocks.{i}.bn2.{leaf}" for leaf in bn]
    assert keys == expected + ["classifier.weight", "classifier.bias"]
    conv = ["weight", "bias"]
    expected = [f"stem.{leaf}" for leaf in conv]
    for fire in ("fire1", "fire2", "fire3"):
        expected += [
            f"{fire}.{part}.{leaf}" for part in ("squeeze", "expand1x1", "expand3x3") for leaf in conv
        ]
    assert list(squeezenet_student().state_dict()) == expected + ["classifier.weight", "classifier.bias"]


def test_students_train():
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for model in (mobilenet_student(0.25), squeezenet_student()):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = []
        for _ in range(8):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0]
