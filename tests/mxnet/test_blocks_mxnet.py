"""coreprune.mxnet.blocks: outputs against a NumPy reference, sizes against coreprune.arch, names on disk."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet", reason="needs MXNet")
# Without MXNet installed, "mxnet" could resolve to the tests/mxnet folder (a namespace package,
# tests/ being on sys.path): only a real installation has mxnet.gluon.
pytest.importorskip("mxnet.gluon", reason="needs MXNet")

from coreprune.mxnet.blocks import (  # noqa: E402
    ChannelShuffle,
    DepthwiseSeparable,
    Fire,
    ShuffleUnit,
    mobilenet_student,
    num_parameters,
    squeezenet_student,
)
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402

from coreprune import CompressionError, arch  # noqa: E402


def conv2d(x, w, b=None, stride=1, padding=0, groups=1):
    """NumPy reference convolution (cross-correlation, as both frameworks define it), NCHW / OIHW."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_ch, in_per_group, kh, kw = w.shape
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    per_group = out_ch // groups
    out = np.concatenate(
        [
            np.einsum(
                "nchwij,ocij->nohw",
                windows[:, g * in_per_group : (g + 1) * in_per_group],
                w[g * per_group : (g + 1) * per_group],
            )
            for g in range(groups)
        ],
        axis=1,
    )
    return out if b is None else out + b[None, :, None, None]


def bn(x, p, prefix, eps=1e-5):
    shape = (1, -1, 1, 1)
    scale = p[prefix + "gamma"] / np.sqrt(p[prefix + "running_var"] + eps)
    return (x - p[prefix + "running_mean"].reshape(shape)) * scale.reshape(shape) + p[
        prefix + "beta"
    ].reshape(shape)


def relu(x):
    return np.maximum(x, 0.0)


def _randomised(block, seed=0):
    """Initialise in float64 with random weights and BN statistics; return {structural name: array}."""
    block.initialize()
    block.cast("float64")
    rng = np.random.default_rng(seed)
    values = {}
    for name, param in block._collect_params_with_prefix().items():
        value = rng.uniform(-1, 1, size=param.shape)
        if name.endswith("running_var"):
            value = value + 1.5
        param.set_data(mx.nd.array(value, dtype="float64"))
        values[name] = value
    return values


def _macs(block, x):
    """MACs of one sample, counted from the real output shapes with forward hooks."""
    total = [0]

    def hook(b, _inputs, out):
        spatial = out.shape[2] * out.shape[3] if len(out.shape) == 4 else 1
        total[0] += int(np.prod(b.weight.shape)) * spatial

    handles = []

    def visit(b):
        if isinstance(b, (mx.gluon.nn.Conv2D, mx.gluon.nn.Dense)):
            handles.append(b.register_forward_hook(hook))

    block.apply(visit)
    block(x[:1])
    for h in handles:
        h.detach()
    return total[0]


def _nd(x):
    return mx.nd.array(x, dtype="float64")


def test_fire_matches_numpy_reference_and_cost_model():
    fire = Fire(12, 4, 8, 6)
    p = _randomised(fire)
    x = np.random.default_rng(1).normal(size=(2, 12, 5, 5))
    s = relu(conv2d(x, p["squeeze.weight"], p["squeeze.bias"]))
    expected = np.concatenate(
        [
            relu(conv2d(s, p["expand1x1.weight"], p["expand1x1.bias"])),
            relu(conv2d(s, p["expand3x3.weight"], p["expand3x3.bias"], padding=1)),
        ],
        axis=1,
    )
    np.testing.assert_allclose(fire(_nd(x)).asnumpy(), expected, rtol=1e-10, atol=1e-10)
    cost = arch.fire_cost(12, 4, 8, 6, 5)
    assert num_parameters(fire) == cost.params
    assert _macs(fire, _nd(x)) == cost.macs


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hybridize", [False, True])
def test_depthwise_separable_matches_numpy_reference_and_cost_model(alpha, stride, hybridize):
    block = DepthwiseSeparable(32, 48, stride=stride, alpha=alpha)
    p = _randomised(block, seed=2)
    m, n = arch.scale_channels(32, alpha), arch.scale_channels(48, alpha)
    x = np.random.default_rng(3).normal(size=(2, m, 9, 9))
    out = relu(bn(conv2d(x, p["depthwise.weight"], stride=stride, padding=1, groups=m), p, "bn1."))
    expected = relu(bn(conv2d(out, p["pointwise.weight"]), p, "bn2."))
    side = arch.conv_output_size(9, 3, stride, 1)
    cost = arch.depthwise_separable_cost(32, 48, 3, side, alpha=alpha, batch_norm=True)
    assert num_parameters(block) == cost.params
    assert _macs(block, _nd(x)) == cost.macs
    if hybridize:
        block.hybridize()
    got = block(_nd(x)).asnumpy()
    assert got.shape == (2, n, side, side)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
@pytest.mark.parametrize("hybridize", [False, True])
def test_channel_shuffle_matches_numpy_reference(groups, hybridize):
    x = np.random.default_rng(4).normal(size=(2, 12, 3, 4)).astype(np.float32)
    shuffle = ChannelShuffle(groups)
    if hybridize:
        shuffle.hybridize()
    np.testing.assert_array_equal(shuffle(mx.nd.array(x)).asnumpy(), arch.channel_shuffle(x, groups))


def test_channel_shuffle_rejects_bad_groups():
    with pytest.raises(CompressionError, match="must divide"):
        ChannelShuffle(5)(mx.nd.zeros((1, 12, 2, 2)))
    with pytest.raises(CompressionError, match="positive integer"):
        ChannelShuffle(0)


def test_shuffle_unit_matches_numpy_reference_and_cost_model():
    unit = ShuffleUnit(24, 12, groups=3)
    p = _randomised(unit, seed=5)
    x = np.random.default_rng(6).normal(size=(2, 24, 6, 6))
    out = arch.channel_shuffle(relu(bn(conv2d(x, p["compress.weight"], groups=3), p, "bn1.")), 3)
    out = bn(conv2d(out, p["depthwise.weight"], padding=1, groups=12), p, "bn2.")
    expected = relu(bn(conv2d(out, p["expand.weight"], groups=3), p, "bn3.") + x)
    np.testing.assert_allclose(unit(_nd(x)).asnumpy(), expected, rtol=1e-10, atol=1e-10)
    cost = arch.shuffle_unit_cost(24, 12, 3, 6)
    assert num_parameters(unit) == cost.params
    assert _macs(unit, _nd(x)) == cost.macs


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("rho", [1.0, 0.5, 16 / 28])
def test_mobilenet_student_size_and_macs_match_cost_model(alpha, rho):
    net = mobilenet_student(alpha)
    cost = arch.mobilenet_student_cost(alpha, rho=rho)
    assert num_parameters(net) == cost.params  # known before initialisation
    net.initialize()
    side = arch.scale_resolution(28, rho)
    x = mx.nd.random.normal(shape=(3, 1, side, side))
    assert net(x).shape == (3, 10)
    assert _macs(net, x) == cost.macs


@pytest.mark.parametrize("num_classes, in_channels, size", [(10, 1, 28), (3, 3, 20)])
def test_squeezenet_student_size_and_macs_match_cost_model(num_classes, in_channels, size):
    net = squeezenet_student(num_classes, in_channels)
    net.initialize()
    x = mx.nd.random.normal(shape=(2, in_channels, size, size))
    assert net(x).shape == (2, num_classes)
    cost = arch.squeezenet_student_cost(num_classes, in_channels=in_channels, input_size=size)
    assert num_parameters(net) == cost.params
    assert _macs(net, x) == cost.macs


def test_students_structural_names_on_disk(tmp_path):
    bn_leaves = ["gamma", "beta", "running_mean", "running_var"]
    expected = ["stem.weight"] + [f"bn.{leaf}" for leaf in bn_leaves]
    for i in range(len(arch.MOBILENET_STUDENT_BLOCKS)):
        expected += [f"blocks.{i}.depthwise.weight"] + [f"blocks.{i}.bn1.{leaf}" for leaf in bn_leaves]
        expected += [f"blocks.{i}.pointwise.weight"] + [f"blocks.{i}.bn2.{leaf}" for leaf in bn_leaves]
    expected += ["classifier.weight", "classifier.bias"]
    net = mobilenet_student(0.5)
    net.initialize()
    net.save_parameters(str(tmp_path / "m.params"))
    assert sorted(mx.nd.load(str(tmp_path / "m.params"))) == sorted(expected)

    conv = ["weight", "bias"]
    expected = [f"stem.{leaf}" for leaf in conv]
    for fire in ("fire1", "fire2", "fire3"):
        expected += [
            f"{fire}.{part}.{leaf}" for part in ("squeeze", "expand1x1", "expand3x3") for leaf in conv
        ]
    net = squeezenet_student()
    net.initialize()
    net.save_parameters(str(tmp_path / "s.params"))
    assert sorted(mx.nd.load(str(tmp_path / "s.params"))) == sorted(
        expected + ["classifier.weight", "classifier.bias"]
    )


def test_students_train():
    mx.random.seed(0)
    x, y = mx.nd.random.normal(shape=(8, 1, 8, 8)), mx.nd.array(np.arange(8) % 10)
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    for net in (mobilenet_student(0.25), squeezenet_student()):
        net.initialize(mx.init.Xavier())
        net.hybridize()
        trainer = mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
        losses = []
        for _ in range(8):
            with mx.autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(8)
            losses.append(float(loss.mean().asscalar()))
        assert losses[-1] < losses[0]
