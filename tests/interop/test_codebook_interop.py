"""Centroid fine-tuning gives the same centroids in PyTorch and MXNet for the same weights and data."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")
mx = pytest.importorskip("mxnet", reason="needs MXNet")
pytest.importorskip("torch.nn", reason="needs PyTorch")
pytest.importorskip("mxnet.gluon", reason="needs MXNet")

from coreprune import mxnet as amx  # noqa: E402
from coreprune import torch as atorch  # noqa: E402
from coreprune.gradual import prune_iterative  # noqa: E402
from coreprune.weight_sharing import share_weights  # noqa: E402


def test_same_weights_same_centroid_updates():
    rng = np.random.default_rng(0)
    w = {"0.weight": rng.standard_normal((64, 100)).astype(np.float32) * 0.1,
         "0.bias": np.zeros(64, np.float32),
         "2.weight": rng.standard_normal((10, 64)).astype(np.float32) * 0.1,
         "2.bias": np.zeros(10, np.float32)}
    pruned, masks = prune_iterative(w, {"0.weight": 0.9, "2.weight": 0.7})
    shared = share_weights(pruned, {"0.weight": 5, "2.weight": 4}, masks=masks)
    books = {k: v for k, v in shared.items() if k.endswith("weight")}
    x = rng.standard_normal((16, 100)).astype(np.float32)
    y = rng.integers(0, 10, 16)

    tnet = torch.nn.Sequential(torch.nn.Linear(100, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    atorch.load_numpy(tnet, pruned)
    atorch.attach_codebooks(tnet, books)
    opt = torch.optim.SGD(tnet.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(tnet(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    t_books = atorch.attached_codebooks(tnet)

    mnet = mx.gluon.nn.HybridSequential()
    mnet.add(mx.gluon.nn.Dense(64, in_units=100, activation="relu"), mx.gluon.nn.Dense(10, in_units=64))
    mnet.initialize()
    amx.load_numpy(mnet, {k.replace("2.", "1."): v for k, v in pruned.items()})
    amx.attach_codebooks(mnet, {k.replace("2.", "1."): v for k, v in books.items()})
    params = {k: p for k, p in mnet._collect_params_with_prefix().items() if k.endswith("bias")}
    params.update({k + "_c": p for k, p in amx.codebook.centroid_params(mnet).items()})
    trainer = mx.gluon.Trainer(list(params.values()), "sgd", {"learning_rate": 0.5})
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    for _ in range(3):
        with mx.autograd.record():
            loss = loss_fn(mnet(mx.nd.array(x)), mx.nd.array(y)).mean()
        loss.backward()
        trainer.step(1)
    m_books = amx.attached_codebooks(mnet)

    for name in books:
        got = m_books[name.replace("2.", "1.")]
        assert not np.array_equal(t_books[name].codebook, books[name].codebook)
        np.testing.assert_allclose(got.codebook, t_books[name].codebook, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got.codes[masks[name]], t_books[name].codes[masks[name]])
