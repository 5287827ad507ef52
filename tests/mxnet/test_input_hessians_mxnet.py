"""coreprune.mxnet.input_hessians: the second moments of each layer's inputs, checked against NumPy.

Every expected Hessian is computed here independently: the layer's input is re-computed by running
the blocks before it, its patches are taken by a NumPy im2col written in this file (float64), and
``H = rows.T @ rows / len(rows)``. The patches themselves are checked against the layer's own output
(``rows @ W.T + b``), which pins the channel order to ``weight.reshape(out, -1)``.
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet", reason="needs MXNet")
# Without MXNet, pytest's rootdir on sys.path makes tests/mxnet itself importable as an empty
# namespace package called "mxnet"; a real submodule tells the two apart.
pytest.importorskip("mxnet.gluon", reason="needs MXNet")

from coreprune.mxnet import input_hessians, to_numpy  # noqa: E402
from coreprune.mxnet.calibration import _rows  # noqa: E402
from mxnet import gluon  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

import coreprune  # noqa: E402
from coreprune.errors import CompressionError  # noqa: E402


def np_im2col(x: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...], pad: tuple[int, ...],
              dilation: tuple[int, ...]) -> np.ndarray:
    """Patches ``(N * L, C * prod(kernel))`` of an NC(H)W array, each in (C, kh, kw) order, float64."""
    x = np.asarray(x, np.float64)
    if x.ndim == 3:  # 1-D: height 1
        x = x[:, :, None, :]
        kernel, stride, pad, dilation = (1, *kernel), (1, *stride), (0, *pad), (1, *dilation)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, pad, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rows = np.empty((n, oh, ow, c, kh, kw))
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    rows[:, i, j, :, a, b] = xp[:, :, i * sh + a * dh, j * sw + b * dw]
    return rows.reshape(n * oh * ow, c * kh * kw)


def conv_rows(conv: gluon.Block, x: np.ndarray) -> np.ndarray:
    k = conv._kwargs
    return np_im2col(x, k["kernel"], k["stride"], k["pad"], k["dilate"])


def moment(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, np.float64)
    return rows.T @ rows / rows.shape[0]


def conv_net() -> nn.HybridSequential:
    net = nn.HybridSequential()
    net.add(
        nn.Conv2D(6, 3, strides=2, padding=1, in_channels=3),  # 0: stride 2, padding 1
        nn.BatchNorm(in_channels=6),
        nn.Activation("relu"),
        nn.Conv2D(5, 3, padding=2, dilation=2, in_channels=6),  # 3: dilation 2
        nn.Dense(4, in_units=5 * 5 * 5),  # 4: flatten=True
    )
    net.initialize(mx.init.Normal(0.5))
    return net


@pytest.fixture
def x_img() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 3, 9, 9)).astype(np.float32)


def test_dense_matches_numpy_reference():
    fc = nn.Dense(5, in_units=7)
    fc.initialize()
    x = np.random.default_rng(1).standard_normal((11, 7)).astype(np.float32)
    h = input_hessians(fc, x)
    assert list(h) == ["weight"]
    assert h["weight"].dtype == np.float64
    np.testing.assert_allclose(h["weight"], moment(x), rtol=1e-6)


def test_dense_flatten_true_and_false():
    x = np.random.default_rng(2).standard_normal((4, 3, 5)).astype(np.float32)
    flat = nn.Dense(2, in_units=15)  # flatten=True: one row per sample, (3, 5) flattened
    seq = nn.Dense(2, in_units=5, flatten=False)  # one row per position
    flat.initialize()
    seq.initialize()
    np.testing.assert_allclose(input_hessians(flat, x)["weight"], moment(x.reshape(4, 15)), rtol=1e-6)
    np.testing.assert_allclose(input_hessians(seq, x)["weight"], moment(x.reshape(12, 5)), rtol=1e-6)


def test_conv2d_stride_padding_dilation_match_numpy_reference(x_img):
    net = conv_net()
    h = input_hessians(net, x_img)
    assert list(h) == ["0.weight", "3.weight", "4.weight"]
    x = mx.nd.array(x_img)
    with mx.autograd.pause(train_mode=False):
        a2 = net[2](net[1](net[0](x))).asnumpy()
        a3 = net[3](mx.nd.array(a2)).asnumpy()
    np.testing.assert_allclose(h["0.weight"], moment(conv_rows(net[0], x_img)), rtol=1e-6)
    np.testing.assert_allclose(h["3.weight"], moment(conv_rows(net[3], a2)), rtol=1e-6)
    np.testing.assert_allclose(h["4.weight"], moment(a3.reshape(3, -1)), rtol=1e-6)
    for name, conv in (("0.weight", net[0]), ("3.weight", net[3])):
        fan_in = int(np.prod(conv.weight.shape[1:]))
        assert h[name].shape == (fan_in, fan_in)


def test_conv1d_matches_numpy_reference():
    conv = nn.Conv1D(4, 3, strides=2, padding=1, dilation=2, in_channels=3)
    conv.initialize()
    x = np.random.default_rng(3).standard_normal((2, 3, 12)).astype(np.float32)
    h = input_hessians(conv, x)
    np.testing.assert_allclose(h["weight"], moment(conv_rows(conv, x)), rtol=1e-6)


@pytest.mark.parametrize(
    "conv, shape",
    [
        (nn.Conv2D(6, 3, strides=2, padding=1, in_channels=3), (2, 3, 9, 9)),
        (nn.Conv2D(6, (3, 2), padding=(2, 1), dilation=2, in_channels=3), (2, 3, 9, 8)),
        (nn.Conv1D(4, 3, strides=2, padding=1, dilation=2, in_channels=3), (2, 3, 12)),
    ],
    ids=["conv2d-s2-p1", "conv2d-d2", "conv1d"],
)
def test_patches_reproduce_the_layer_output(conv, shape):
    """rows @ W.reshape(out, -1).T + b is the convolution: the patches are in the weight's order."""
    conv.initialize(mx.init.Normal(0.5))
    x = mx.nd.array(np.random.default_rng(4).standard_normal(shape).astype(np.float32))
    out = conv(x).asnumpy()  # (N, out, *spatial)
    w = conv.weight.data().asnumpy().reshape(conv.weight.shape[0], -1).astype(np.float64)
    b = conv.bias.data().asnumpy().astype(np.float64)
    expected = np.moveaxis(out, 1, -1).reshape(-1, out.shape[1])  # (N * L, out), L row-major
    for rows in (_rows(conv, x).asnumpy(), conv_rows(conv, x.asnumpy())):
        np.testing.assert_allclose(rows @ w.T + b, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(_rows(conv, x).asnumpy(), conv_rows(conv, x.asnumpy()))


def test_several_batches_give_the_row_weighted_mean(x_img):
    net = conv_net()
    rng = np.random.default_rng(5)
    parts = [x_img, rng.standard_normal((1, 3, 9, 9)).astype(np.float32)]
    whole = input_hessians(net, np.concatenate(parts))
    split = input_hessians(net, parts)
    sliced = input_hessians(net, np.concatenate(parts), batch_size=2)
    gen = input_hessians(net, (mx.nd.array(p) for p in parts))
    assert list(split) == list(whole) == list(sliced) == list(gen)
    for name in whole:
        for other in (split, sliced, gen):
            np.testing.assert_allclose(other[name], whole[name], rtol=1e-6, atol=1e-12)
    first = moment(conv_rows(net[0], parts[0]))
    second = moment(conv_rows(net[0], parts[1]))
    np.testing.assert_allclose(split["0.weight"], (first * 3 + second * 1) / 4, rtol=1e-6)


def test_tuple_batches_are_positional_arguments():
    class Two(gluon.HybridBlock):
        def __init__(self) -> None:
            super().__init__()
            with self.name_scope():
                self.a = nn.Dense(2, in_units=3)
                self.b = nn.Dense(2, in_units=4)

        def hybrid_forward(self, F, x, y):
            return self.a(x) + self.b(y)

    net = Two()
    net.initialize()
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 4))  # float64: cast to the model's float32
    h = input_hessians(net, [(x, y)])
    sliced = input_hessians(net, [(x, y)], batch_size=2)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    np.testing.assert_allclose(h["a.weight"], moment(x32), rtol=1e-6)
    np.testing.assert_allclose(h["b.weight"], moment(y32), rtol=1e-6)
    for name in h:
        np.testing.assert_allclose(sliced[name], h[name], rtol=1e-6)


def test_hybridized_model_same_result_and_left_as_it_was(x_img):
    net = conv_net()
    with mx.autograd.record():  # move the running statistics away from their initial values
        loss = net(mx.nd.array(x_img)).sum()
    loss.backward()
    plain = input_hessians(net, x_img)

    net.hybridize(static_alloc=True)
    net(mx.nd.array(x_img))
    before = {k: v.copy() for k, v in to_numpy(net).items()}
    blocks = [net, *net._children.values()]
    flags = [(b._active, list(b._flags), b._cached_op) for b in blocks]
    assert net._cached_op is not None
    hybrid = input_hessians(net, x_img)

    assert list(hybrid) == list(plain)
    for name in plain:
        np.testing.assert_allclose(hybrid[name], plain[name], rtol=1e-6, atol=1e-12)
    for block, (active, opts, op) in zip(blocks, flags):
        assert block._active is active is True
        assert block._flags == opts
        assert block._cached_op is op  # the same cached graph, not rebuilt
        assert not block._forward_pre_hooks
    after = to_numpy(net)
    assert list(after) == list(before)
    for name in before:  # weights and BatchNorm running statistics untouched
        np.testing.assert_array_equal(after[name], before[name])
    assert not np.allclose(before["1.running_mean"], 0)  # the statistics were really moved earlier


def test_children_with_their_own_hybridize_state_are_restored(x_img):
    net = conv_net()
    net[3].hybridize()  # only one child hybridized
    net(mx.nd.array(x_img))
    op = net[3]._cached_op
    input_hessians(net, x_img)
    assert [b._active for b in net._children.values()] == [False, False, False, True, False]
    assert net._active is False and net[3]._cached_op is op


def test_hooks_removed_and_hybridization_restored_when_a_batch_fails(x_img):
    net = conv_net()
    net.hybridize()
    net(mx.nd.array(x_img))
    with pytest.raises(CompressionError, match="failed on batch 1"):  # the Dense's in_units
        input_hessians(net, [x_img, np.ones((1, 3, 7, 7), np.float32)])
    for block in [net, *net._children.values()]:
        assert not block._forward_pre_hooks
        assert block._active is True


def test_names_match_to_numpy_and_gptq_beats_round_to_nearest():
    class Net(gluon.HybridBlock):
        def __init__(self) -> None:
            super().__init__()
            with self.name_scope():
                self.body = nn.HybridSequential()
                self.body.add(nn.Dense(32, in_units=64, use_bias=False))

        def hybrid_forward(self, F, x):
            return self.body(x)

    net = Net()
    net.initialize(mx.init.Normal(0.1))
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((512, 64)) @ rng.standard_normal((64, 64))).astype(np.float32)  # correlated
    h = input_hessians(net, x)
    weights = to_numpy(net)
    assert list(h) == ["body.0.weight"] and set(h) <= set(weights)

    w = weights["body.0.weight"].astype(np.float64)

    def output_error(q: dict) -> float:
        wq = coreprune.dequantize(q)["body.0.weight"].astype(np.float64)
        return float(np.mean(np.sum(((wq - w) @ x.T.astype(np.float64)) ** 2, axis=0)))

    rtn = output_error(coreprune.quantize(weights, bits=4))
    gptq = output_error(coreprune.quantize(weights, bits=4, hessians=h))
    assert gptq < 0.8 * rtn


def test_shared_weight_gets_the_moments_of_both_uses():
    net = nn.HybridSequential()
    first = nn.Dense(4, in_units=4, activation="tanh")
    net.add(first, nn.Dense(4, in_units=4, params=first.params))
    net.initialize()
    x = np.random.default_rng(7).standard_normal((5, 4)).astype(np.float32)
    h = input_hessians(net, x)
    assert list(h) == [n for n in to_numpy(net) if n.endswith("weight")] == ["0.weight", "1.weight"]
    with mx.autograd.pause():
        y = first(mx.nd.array(x)).asnumpy()
    np.testing.assert_allclose(h["0.weight"], moment(np.concatenate([x, y])), rtol=1e-6)
    np.testing.assert_array_equal(h["1.weight"], h["0.weight"])


def test_depthwise_and_transposed_skipped_layer_not_reached_absent():
    class Net(gluon.HybridBlock):
        def __init__(self) -> None:
            super().__init__()
            with self.name_scope():
                self.dw = nn.Conv2D(4, 3, padding=1, groups=4, in_channels=4)
                self.up = nn.Conv2DTranspose(4, 2, strides=2, in_channels=4)
                self.pw = nn.Conv2D(4, 1, in_channels=4)
                self.unused = nn.Dense(3, in_units=4)

        def hybrid_forward(self, F, x):
            return self.pw(self.up(self.dw(x)))

    net = Net()
    net.initialize()
    h = input_hessians(net, np.ones((1, 4, 5, 5), np.float32))
    assert list(h) == ["pw.weight"]


def test_nhwc_conv_refused():
    conv = nn.Conv2D(4, 3, layout="NHWC", in_channels=3)
    conv.initialize()
    with pytest.raises(CompressionError, match="layout 'NHWC'"):
        input_hessians(conv, np.ones((1, 5, 5, 3), np.float32))  # refused before anything runs
    assert not conv._forward_pre_hooks


@pytest.mark.parametrize(
    "model, inputs, kwargs, match",
    [
        ("not a block", np.ones((1, 3)), {}, "must be a gluon Block"),
        (None, [], {}, "at least one batch"),
        (None, 3, {}, "iterable of batches"),
        (None, "abc", {}, "iterable of batches"),
        (None, [[1.0, 2.0, 3.0]], {}, "holds a float"),
        (None, [()], {}, "batch 0 is empty"),
        (None, np.array([["a", "b", "c"]]), {}, "not numbers"),
        (None, np.ones((1, 3)), {"batch_size": 0}, "batch_size"),
        (None, np.ones((1, 3)), {"batch_size": True}, "batch_size"),
        (None, [(np.ones((2, 3)), np.ones((1, 3)))], {"batch_size": 1}, "same first axis"),
        (None, np.ones((1, 4)), {}, "failed on batch 0"),
        (None, np.full((1, 3), np.nan), {}, "NaN"),
    ],
)
def test_bad_input_raises_compression_error(model, inputs, kwargs, match):
    if model is None:
        model = nn.Dense(2, in_units=3)
        model.initialize()
    with pytest.raises(CompressionError, match=match):
        input_hessians(model, inputs, **kwargs)


def test_uninitialised_model_refused():
    fc = nn.Dense(2)
    fc.initialize()  # deferred: in_units unknown until a forward pass
    with pytest.raises(CompressionError, match="not initialised"):
        input_hessians(fc, np.ones((1, 3), np.float32))
