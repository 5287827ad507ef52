"""Centroid fine-tuning in MXNet: gradients summed per cluster, masks kept, codebooks read back."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet", reason="needs MXNet")
pytest.importorskip("mxnet.gluon", reason="needs MXNet")

from coreprune.mxnet import (  # noqa: E402
    attach_codebooks,
    attached_codebooks,
    detach_codebooks,
    to_numpy,
)
from coreprune.mxnet.codebook import centroid_params  # noqa: E402

from coreprune import CompressionError  # noqa: E402
from coreprune.weight_sharing import centroid_gradients, share_weights  # noqa: E402


def _net(seed=0):
    mx.random.seed(seed)
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Dense(40, in_units=30, activation="relu"), mx.gluon.nn.Dense(10, in_units=40))
    net.initialize(mx.init.Xavier())
    return net


def _shared(net, bits=3):
    w = to_numpy(net)
    for k in ("0.weight", "1.weight"):
        w[k][np.abs(w[k]) < 0.1] = 0
    return share_weights(w, bits)


def test_centroid_grads_are_cluster_sums_of_the_weight_grads():
    net = _net()
    shared = _shared(net)
    attach_codebooks(net, {k: v for k, v in shared.items() if k.endswith("weight")})
    x = mx.nd.array(np.random.default_rng(0).standard_normal((5, 30)))
    with mx.autograd.record():
        loss = net(x).square().sum()
    loss.backward()
    for name, param in centroid_params(net).items():
        weight_grad = dict(net._collect_params_with_prefix())[name].grad().asnumpy()
        expected = centroid_gradients(weight_grad, shared[name])
        np.testing.assert_allclose(param.list_grad()[0].asnumpy(), expected, rtol=1e-5, atol=1e-6)


def test_training_moves_centroids_only_and_keeps_masks():
    net = _net(1)
    shared = _shared(net)
    attach_codebooks(net, {"0.weight": shared["0.weight"], "1.weight": shared["1.weight"]})
    params = {k: p for k, p in net._collect_params_with_prefix().items() if not k.endswith("weight")}
    params.update({k + "_centroids": p for k, p in centroid_params(net).items()})
    trainer = mx.gluon.Trainer(list(params.values()), "adam", {"learning_rate": 0.05, "wd": 1e-3})
    rng = np.random.default_rng(1)
    for _ in range(5):
        with mx.autograd.record():
            loss = net(mx.nd.array(rng.standard_normal((8, 30)))).square().mean()
        loss.backward()
        trainer.step(8)
    books = attached_codebooks(net)
    for name in ("0.weight", "1.weight"):
        assert books[name].codebook.size == 8
        np.testing.assert_array_equal(books[name].mask, shared[name].mask)
        assert not np.array_equal(books[name].codebook, shared[name].codebook)
    detach_codebooks(net)
    after = to_numpy(net)
    for name in ("0.weight", "1.weight"):
        np.testing.assert_array_equal(after[name], books[name].dequantize())
        assert np.all(after[name][~shared[name].mask] == 0)
    assert attached_codebooks(net) == {}


def test_bad_inputs_raise_before_anything_changes():
    net = _net()
    shared = _shared(net)
    with pytest.raises(CompressionError):
        attach_codebooks(net, {"0.weight": shared["0.weight"], "nope.weight": shared["1.weight"]})
    assert centroid_params(net) == {}
    with pytest.raises(CompressionError):
        attach_codebooks(net, {"0.weight": shared["1.weight"]})
    with pytest.raises(CompressionError):
        attach_codebooks(net, {"0.weight": to_numpy(net)["0.weight"]})
