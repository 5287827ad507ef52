"""coreprune.mxnet.attach_masks under real Gluon Trainer steps.

The reference for "the right training trajectory" is written here with plain MXNet:
the same network, its pruned weights zeroed by hand and each gradient multiplied by
the mask before ``trainer.step``. The adapter-managed network must follow it bit for
bit, keep its pruned entries at exactly zero (stored weights read with ``to_numpy``,
and the weights each forward pass sees), and keep training the other entries.
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet", reason="needs MXNet")
# Without MXNet, pytest's rootdir on sys.path makes tests/mxnet itself importable as an empty
# namespace package called "mxnet"; a real submodule tells the two apart.
pytest.importorskip("mxnet.gluon", reason="needs MXNet")

from coreprune.mxnet import attach_masks, attached_masks, detach_masks, reapply_masks, to_numpy  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

from coreprune.errors import CompressionError  # noqa: E402

OPTIMIZERS = [
    ("sgd", {"learning_rate": 0.1, "momentum": 0.9, "wd": 0.01}),
    ("adam", {"learning_rate": 0.05, "wd": 0.01}),
    ("rmsprop", {"learning_rate": 0.01, "gamma1": 0.9}),
]

RNG = np.random.default_rng(1234)
X = mx.nd.array(RNG.standard_normal((16, 5)))
Y = mx.nd.array(RNG.standard_normal((16, 3)))
MASKS = {
    "0.weight": RNG.random((6, 5)) > 0.5,
    "1.weight": RNG.random((3, 6)) > 0.3,
}


def make_mlp(hybridize: bool = False, ctx=None) -> nn.HybridSequential:
    mx.random.seed(7)
    net = nn.HybridSequential(prefix="mlp_")
    with net.name_scope():
        net.add(nn.Dense(6, in_units=5, activation="tanh"), nn.Dense(3, in_units=6))
    net.initialize(mx.init.Normal(0.5), ctx=ctx)
    if hybridize:
        net.hybridize()
    return net


def step(net, trainer, x=X, y=Y) -> None:
    with autograd.record():
        loss = gluon.loss.L2Loss()(net(x), y)
    loss.backward()
    trainer.step(x.shape[0])


def reference_run(optimizer, kwargs, steps, hybridize):
    """Masked training written out by hand in plain MXNet: zero the weights, mask each gradient."""
    net = make_mlp(hybridize)
    params = dict(net._collect_params_with_prefix())
    for name, mask in MASKS.items():
        params[name].set_data(params[name].data() * mx.nd.array(mask))
    trainer = gluon.Trainer(net.collect_params(), optimizer, dict(kwargs))
    history = []
    for _ in range(steps):
        with autograd.record():
            loss = gluon.loss.L2Loss()(net(X), Y)
        loss.backward()
        for name, mask in MASKS.items():
            grad = params[name].grad()
            grad[:] = grad * mx.nd.array(mask)
        trainer.step(X.shape[0])
        history.append(to_numpy(net))
    return history


def assert_pruned_zero(weights, masks=MASKS):
    for name, mask in masks.items():
        pruned = weights[name][~mask]
        assert pruned.size > 0
        assert np.all(pruned == 0), f"{name}: {np.count_nonzero(pruned)} pruned entries are non-zero"


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("optimizer, kwargs", OPTIMIZERS, ids=[o for o, _ in OPTIMIZERS])
def test_pruned_entries_stay_zero_and_the_rest_follows_the_reference(optimizer, kwargs, hybridize):
    steps = 6
    net = make_mlp(hybridize)
    initial = to_numpy(net)
    assert attach_masks(net, MASKS) is net
    trainer = gluon.Trainer(net.collect_params(), optimizer, dict(kwargs))
    expected = reference_run(optimizer, kwargs, steps, hybridize)
    for i in range(steps):
        step(net, trainer)
        stored = to_numpy(net)
        assert_pruned_zero(stored)  # after every step, not only at the end
        for name in stored:
            np.testing.assert_array_equal(stored[name], expected[i][name], err_msg=f"step {i} {name}")
    final = to_numpy(net)
    for name, mask in MASKS.items():  # the kept entries really trained
        assert np.all(final[name][mask] != initial[name][mask])
    assert np.all(final["0.bias"] != initial["0.bias"])


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_forward_always_sees_zeros_even_with_stale_momentum(hybridize):
    net = make_mlp(hybridize)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    for _ in range(3):  # momentum builds up at every entry before pruning
        step(net, trainer)
    attach_masks(net, MASKS)

    seen = []
    net.register_forward_pre_hook(lambda block, _inputs: seen.append(to_numpy(block)))  # runs after ours
    drifted = False
    for _ in range(4):
        step(net, trainer)
        stored = to_numpy(net)
        drifted |= any(np.any(stored[n][~m] != 0) for n, m in MASKS.items())
    assert drifted, "the stale momentum should move stored pruned weights between steps"
    assert len(seen) == 4
    for weights in seen:
        assert_pruned_zero(weights)

    # Forward output equals a NumPy forward pass with the masked weights.
    w = {k: v.astype(np.float64) for k, v in to_numpy(reapply_masks(net)).items()}
    assert_pruned_zero(to_numpy(net))
    x = X.asnumpy().astype(np.float64)
    out = np.tanh(x @ w["0.weight"].T + w["0.bias"]) @ w["1.weight"].T + w["1.bias"]
    np.testing.assert_allclose(net(X).asnumpy(), out, rtol=1e-5, atol=1e-6)

    detach_masks(net)
    assert_pruned_zero(to_numpy(net))


def test_parameterdict_target_uses_global_names():
    net = make_mlp()
    params = net.collect_params()
    masks = {"mlp_dense0_weight": MASKS["0.weight"]}
    attach_masks(params, masks)
    trainer = gluon.Trainer(params, "adam", {"learning_rate": 0.05})
    for _ in range(3):
        step(net, trainer)
        assert_pruned_zero(to_numpy(params), masks)


def test_several_contexts_and_kvstore_keep_zeros_everywhere():
    ctxs = [mx.cpu(0), mx.cpu(1)]
    net = make_mlp(ctx=ctxs)
    attach_masks(net, MASKS)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9, "wd": 0.01})
    xs = gluon.utils.split_and_load(X, ctxs)
    ys = gluon.utils.split_and_load(Y, ctxs)
    for _ in range(3):
        with autograd.record():
            losses = [gluon.loss.L2Loss()(net(x), y) for x, y in zip(xs, ys)]
        autograd.backward(losses)
        trainer.step(X.shape[0])
        params = dict(net._collect_params_with_prefix())
        for name, mask in MASKS.items():
            for arr in params[name].list_data():
                assert np.all(arr.asnumpy()[~mask] == 0), (name, arr.context)


def test_freeze_stops_the_whole_tensor_and_detach_restores_training():
    net = make_mlp()
    masks = {"0.weight": MASKS["0.weight"]}
    attach_masks(net, masks, freeze=True)
    assert net[0].weight.grad_req == "null"
    frozen = to_numpy(net)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    for _ in range(3):
        step(net, trainer)
    after = to_numpy(net)
    np.testing.assert_array_equal(after["0.weight"], frozen["0.weight"])  # kept entries frozen too
    assert_pruned_zero(after, masks)
    assert np.all(after["1.weight"] != frozen["1.weight"])  # the rest trains

    detach_masks(net)
    assert net[0].weight.grad_req == "write"
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    step(net, trainer)
    moved = to_numpy(net)["0.weight"]
    assert np.all(moved != frozen["0.weight"])  # pruned entries included: they are ordinary zeros now


def test_freeze_in_a_hybridized_block():
    net = make_mlp(hybridize=True)
    step(net, gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1}))  # builds the cached graph
    attach_masks(net, MASKS, freeze=True)
    frozen = to_numpy(net)
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.1})
    for _ in range(2):
        step(net, trainer)
    after = to_numpy(net)
    for name in MASKS:
        np.testing.assert_array_equal(after[name], frozen[name])
    assert_pruned_zero(after)
    assert np.all(after["1.bias"] != frozen["1.bias"])


def test_detach_removes_the_hook_and_the_gradient_mask():
    net = make_mlp()
    attach_masks(net, MASKS)
    weight = net[0].weight
    assert "list_grad" in vars(weight)
    assert detach_masks(net) is net
    assert "list_grad" not in vars(weight)
    weight.set_data(mx.nd.ones(weight.shape))
    net(X)  # no hook any more: the ones survive a forward pass
    assert np.all(to_numpy(net)["0.weight"] == 1)
    # detaching twice, or a model without masks, is harmless
    detach_masks(net)
    detach_masks(make_mlp())


def test_attaching_again_replaces_the_mask():
    net = make_mlp()
    attach_masks(net, {"0.weight": MASKS["0.weight"]})
    everything = np.ones((6, 5), dtype=bool)
    attach_masks(net, {"0.weight": everything})  # un-prune: the zeros may train again
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    step(net, trainer)
    assert np.all(to_numpy(net)["0.weight"] != 0)


def test_integer_masks_are_refused_and_mask_ne_0_is_the_conversion():
    net = make_mlp()
    numeric = MASKS["0.weight"].astype(np.uint8)
    with pytest.raises(CompressionError, match="mask '0.weight' has dtype uint8, expected bool"):
        attach_masks(net, {"0.weight": numeric})
    assert attached_masks(net) == {}
    attach_masks(net, {"0.weight": numeric != 0})
    assert_pruned_zero(to_numpy(net), {"0.weight": MASKS["0.weight"]})


@pytest.mark.parametrize(
    "masks, match",
    [
        ({"0.wieght": np.ones((6, 5), bool)}, r"no tensor named '0.wieght' \(the names are: 0.weight,"),
        ({"0.weight": np.ones((5, 6), bool)}, r"shape \(5, 6\), the tensor \(6, 5\)"),
        ({"0.weight": np.full((6, 5), 2)}, "has dtype int64, expected bool"),
        ({"0.weight": [[1, 0]]}, r"masks\['0.weight'\] is a list"),
    ],
)
def test_bad_masks_raise(masks, match):
    with pytest.raises(CompressionError, match=match):
        attach_masks(make_mlp(), masks)


def test_targets_that_cannot_train_or_are_not_ready_raise():
    with pytest.raises(CompressionError, match="plain NDArrays"):
        attach_masks({"w": mx.nd.zeros((2, 2))}, {"w": np.ones((2, 2), bool)})
    with pytest.raises(CompressionError, match="needs a gluon Block"):
        attach_masks(({}, {}), {})
    deferred = nn.Dense(3)
    deferred.initialize()
    with pytest.raises(CompressionError, match=r"not initialised: \['weight'\]"):
        attach_masks(deferred, {"weight": np.ones((3, 4), bool)})
    emb = nn.Embedding(4, 2, sparse_grad=True)
    emb.initialize()
    with pytest.raises(CompressionError, match="sparse"):
        attach_masks(emb, {"weight": np.ones((4, 2), bool)})


def test_shared_parameter_needs_one_mask():
    a = nn.Dense(2, in_units=2, prefix="a_")
    seq = nn.HybridSequential()
    seq.add(a, nn.Dense(2, in_units=2, params=a.collect_params()))
    seq.initialize()
    with pytest.raises(CompressionError, match="same \\(shared\\) parameter"):
        attach_masks(seq, {"0.weight": np.eye(2, dtype=bool), "1.weight": np.ones((2, 2), bool)})
    attach_masks(seq, {"0.weight": np.eye(2, dtype=bool), "1.weight": np.eye(2, dtype=bool)})
    w = to_numpy(seq)["1.weight"]
    assert w[0, 1] == 0 and w[1, 0] == 0 and w[0, 0] != 0 and w[1, 1] != 0


def test_attached_masks_reads_back_what_was_attached_under_the_targets_names():
    net = make_mlp()
    assert attached_masks(net) == {}
    attach_masks(net, MASKS)
    got = attached_masks(net)
    assert list(got) == [n for n in to_numpy(net) if n in MASKS]
    for name, mask in MASKS.items():
        np.testing.assert_array_equal(got[name], mask)
    got["0.weight"][:] = True  # a copy: the attached mask is unchanged
    np.testing.assert_array_equal(attached_masks(net)["0.weight"], MASKS["0.weight"])
    by_global = attached_masks(net.collect_params())
    assert sorted(by_global) == sorted(net[i].weight.name for i in (0, 1) if f"{i}.weight" in MASKS)
    other = make_mlp()
    attach_masks(other, attached_masks(net))
    assert_pruned_zero(to_numpy(other))
    detach_masks(net)
    assert attached_masks(net) == {}
