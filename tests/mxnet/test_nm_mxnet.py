"""N:M masks from the core keep their pattern while a Gluon model fine-tunes (attach_masks glue)."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
pytest.importorskip("mxnet.gluon", reason="needs a real MXNet installation")

from coreprune.mxnet import attach_masks, mobilenet_student, to_numpy  # noqa: E402

from coreprune.structured import nm_masks  # noqa: E402


def test_two_four_pattern_survives_fine_tuning():
    mx.random.seed(0)
    net = mobilenet_student(1.0)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    masks = nm_masks(to_numpy(net), 2, 4, include=["blocks.*.pointwise.weight", "classifier.weight"])
    attach_masks(net, masks)
    trainer = mx.gluon.Trainer(
        net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-3}
    )
    loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    x, y = mx.nd.random.normal(shape=(16, 1, 28, 28)), mx.nd.array(np.arange(16) % 10)
    for _ in range(3):
        with mx.autograd.record():
            out = loss(net(x), y)
        out.backward()
        trainer.step(16)
    after = to_numpy(net)
    for k, mask in masks.items():
        assert np.array_equal(after[k] != 0, mask), k
        assert (np.moveaxis(after[k] != 0, 1, -1).reshape(-1, 4).sum(1) == 2).all()
