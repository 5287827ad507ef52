"""Structured channel pruning of PyTorch models: exactness, rebuild, checkpoints, refusals, Torch-Pruning.

The central check: zero every slice of the channels a plan removes (filters, biases, batch-norm
scale and shift, consumers' input columns) in a model with random weights and random batch-norm
statistics; the dense model then computes exactly what the pruned one computes, and ``"l2"``
importance must pick exactly those channels. Any wrong coupling (a residual tie missed, a concat
offset off by one, a depthwise conv left unshrunk) changes the outputs or fails to run.
"""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch.fx")

from coreprune.torch import load_numpy, mobilenet_student, squeezenet_student  # noqa: E402
from coreprune.torch.structured import load_pruned, prune_channels, trace_graph  # noqa: E402
from torch import nn  # noqa: E402

from coreprune.errors import CompressionError  # noqa: E402
from coreprune.structured import coupling_groups, select_units, zero_units  # noqa: E402

_HERE = pathlib.Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("structured_models", _HERE / "structured_models.py")
sm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sm)

MODELS = {
    "resnet18": (lambda: sm.resnet18(16, 10), (2, 3, 32, 32)),
    "resnet50": (lambda: sm.resnet50(8, 10), (2, 3, 32, 32)),
    "mobilenetv2": (lambda: sm.MobileNetV2(0.25, 10), (2, 3, 32, 32)),
    "squeezenet": (lambda: sm.SqueezeNet(10), (2, 3, 48, 48)),
    "shufflenet": (lambda: sm.ShuffleNetSmall(), (2, 3, 16, 16)),
    "mobilenet_student": (lambda: mobilenet_student(0.5), (2, 1, 28, 28)),
    "squeezenet_student": (lambda: squeezenet_student(), (2, 1, 28, 28)),
}


def _randomise_bn(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def _build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    factory, shape = MODELS[name]
    model = factory().eval()
    _randomise_bn(model, seed)
    return model, torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 1))


def _zero_removed(model: nn.Module, x: torch.Tensor, amount: float) -> tuple[nn.Module, dict]:
    """A copy of ``model`` whose channels that an l2 plan at ``amount`` removes are all-zero."""
    graph, weights = trace_graph(model, x)
    groups = coupling_groups(graph, weights)
    keep = select_units(groups, weights, amount)
    zeroed = zero_units(weights, groups, keep)
    for g in groups:
        dropped = np.setdiff1d(np.arange(len(g)), keep[g.name])
        for u in dropped:
            for s in g.units[u].slices:
                if s.kind == "consumer":
                    index = [slice(None)] * zeroed[s.key].ndim
                    index[s.axis] = s.index
                    zeroed[s.key][tuple(index)] = 0
    import copy

    twin = copy.deepcopy(model)
    load_numpy(twin, zeroed)
    return twin, keep


@pytest.mark.parametrize("name", list(MODELS))
def test_pruning_zero_channels_leaves_outputs_unchanged(name):
    model, x = _build(name)
    twin, keep = _zero_removed(model, x, 0.5)
    with torch.no_grad():
        expected = twin(x)
    pruned = prune_channels(twin, x, 0.5).eval()
    with torch.no_grad():
        got = pruned(x)
    n_dense = sum(p.numel() for p in twin.parameters())
    n_pruned = sum(p.numel() for p in pruned.parameters())
    assert n_pruned < n_dense
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # The result is a different function from the dense model's own (the test is not vacuous).
    with torch.no_grad():
        assert not torch.allclose(model(x), expected, atol=1e-3)


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "squeezenet"])
def test_input_model_is_not_modified_and_shapes_shrink(name):
    model, x = _build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune_channels(model, x, 0.5, round_to=4)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    originals = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert any(a.out_channels < b.out_channels for a, b in zip(convs, originals))
    # round_to counts the units of a group: for a Fire, the two expands' concatenated width.
    fires = [m for m in pruned.modules() if hasattr(m, "expand1x1")]
    fire_convs = {id(c) for f in fires for c in (f.expand1x1, f.expand3x3)}
    for a, b in zip(convs, originals):
        if a.out_channels < b.out_channels and id(a) not in fire_convs:
            assert a.out_channels % 4 == 0
    for f in fires:
        assert (f.expand1x1.out_channels + f.expand3x3.out_channels) % 4 == 0


def test_resnet_residual_channels_are_pruned_together():
    model, x = _build("resnet18")
    pruned = prune_channels(model, x, 0.5)
    # Every block of a stage adds into the same tensor: its output width is one number.
    for stage in (pruned.layer1, pruned.layer2, pruned.layer3, pruned.layer4):
        widths = {blk.conv2.out_channels for blk in stage} | {blk.bn2.num_features for blk in stage}
        assert len(widths) == 1
    assert pruned.fc.in_features == pruned.layer4[1].conv2.out_channels == 64
    assert pruned.fc.out_features == 10


def test_depthwise_follows_its_input_and_fire_concat_offsets():
    model, x = _build("mobilenetv2")
    pruned = prune_channels(model, x, 0.5)
    for m in pruned.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels
    model, x = _build("squeezenet")
    pruned = prune_channels(model, x, 0.5)
    fires = [m for m in pruned.features if hasattr(m, "expand1x1")]
    for f, nxt in zip(fires, fires[1:]):
        assert nxt.squeeze.in_channels == f.expand1x1.out_channels + f.expand3x3.out_channels


def test_checkpoint_loads_into_rebuilt_model_in_a_fresh_process(tmp_path):
    model, x = _build("resnet18")
    pruned = prune_channels(model, x, 0.5).eval()
    torch.save(pruned.state_dict(), tmp_path / "pruned.pt")
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(pruned(x), tmp_path / "y.pt")
    script = textwrap.dedent(
        f"""
        import importlib.util, torch
        from coreprune.torch.structured import load_pruned
        spec = importlib.util.spec_from_file_location("sm", {str(_HERE / "structured_models.py")!r})
        sm = importlib.util.module_from_spec(spec); spec.loader.exec_module(sm)
        model = load_pruned(sm.resnet18(16, 10), torch.load({str(tmp_path / "pruned.pt")!r})).eval()
        with torch.no_grad():
            y = model(torch.load({str(tmp_path / "x.pt")!r}))
        assert torch.equal(y, torch.load({str(tmp_path / "y.pt")!r}))
        print("ok", model.layer1[0].conv1.out_channels)
        """
    )
    # cwd outside the source tree: `python -c` puts the cwd first on sys.path.
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "8"]


def test_load_pruned_refuses_a_foreign_checkpoint():
    model, x = _build("resnet18")
    state = prune_channels(model, x, 0.5).state_dict()
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CompressionError, match="unexpected"):
        load_pruned(model, state)


def test_global_scope_and_floors():
    model, x = _build("resnet50")
    pruned = prune_channels(model, x, 0.5, scope="global", min_keep=0.25)
    for a, b in zip(pruned.modules(), model.modules()):
        if isinstance(a, nn.Conv2d):
            assert (
                a.out_channels >= max(1, int(np.ceil(0.25 * b.out_channels)))
                or a.out_channels == b.out_channels
            )
    n0 = sum(p.numel() for p in model.parameters())
    n1 = sum(p.numel() for p in pruned.parameters())
    assert n1 < 0.6 * n0


def test_user_importance_and_bn_scale():
    model, x = _build("resnet18")
    calls = []

    def first_half(group, weights):
        calls.append(group.name)
        return -np.arange(len(group), dtype=float)  # earlier units more important

    pruned = prune_channels(model, x, 0.5, importance=first_half)
    assert "conv1" in calls
    torch.testing.assert_close(pruned.layer1[0].conv1.weight, model.layer1[0].conv1.weight[:8, :8])
    by_bn = prune_channels(model, x, 0.5, importance="bn_scale")
    gamma = model.layer1[0].bn1.weight.detach().abs()
    kept = torch.sort(torch.argsort(gamma, stable=True)[8:]).values
    torch.testing.assert_close(by_bn.layer1[0].bn1.weight, model.layer1[0].bn1.weight[kept])


class _Slicer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return self.conv(x)[:, :4]


class _Transposer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc(self.conv(x).permute(0, 2, 3, 1)[..., :5])


class _HardCoded(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)).view(-1, 8))


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.conv(self.conv(x))


@pytest.mark.parametrize(
    "module, match",
    [
        (_Slicer(), r"layer 'getitem'.*indexing a tensor"),
        (_Transposer(), r"layer 'permute'.*not supported"),
        (nn.Sequential(nn.ConvTranspose2d(3, 4, 2)), r"layer '_0'.*ConvTranspose2d"),
        (_Shared(), r"called more than once"),
    ],
)
def test_unsupported_layers_are_refused_by_name(module, match):
    x = torch.zeros(1, module.conv.in_channels if hasattr(module, "conv") else 3, 4, 4)
    with pytest.raises(CompressionError, match=match):
        prune_channels(module, x, 0.5)


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else x


def test_untraceable_control_flow_is_refused():
    with pytest.raises(CompressionError, match="torch.fx cannot trace _Branchy"):
        prune_channels(_Branchy(), torch.zeros(1, 3, 4, 4), 0.5)


def test_forward_with_hard_coded_channels_is_refused():
    # view(-1, 8) passes the trace as a flatten of the kept axis, but the pruned model cannot run.
    with pytest.raises(CompressionError):
        prune_channels(_HardCoded(), torch.zeros(2, 3, 4, 4), 0.5)


def test_bad_amount_is_refused():
    model, x = _build("resnet18")
    for bad in (1.0, -0.1, "half", True):
        with pytest.raises(CompressionError, match="amount"):
            prune_channels(model, x, bad)


class _ShapeUser(nn.Module):
    """Common forward idioms: sizes read from the tensor, upsampling, a functional flatten by view."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 16, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = nn.functional.interpolate(y, scale_factor=2)
        y = nn.functional.max_pool2d(y, 4)
        return self.fc(y.view(x.shape[0], -1) + y.reshape(x.size(0), -1))


def test_size_reads_upsampling_and_view_flatten():
    torch.manual_seed(0)
    model = _ShapeUser().eval()
    _randomise_bn(model, 0)
    x = torch.randn(2, 3, 8, 8)
    twin, _ = _zero_removed(model, x, 0.5)
    pruned = prune_channels(twin, x, 0.5)
    assert pruned.conv.out_channels == 4 and pruned.fc.in_features == 4 * 16
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), twin(x), rtol=1e-5, atol=1e-5)
