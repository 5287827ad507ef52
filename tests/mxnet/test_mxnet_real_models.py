"""coreprune.mxnet on the models people load: a SymbolBlock imported from HybridBlock.export files,
parameters shared across blocks, deferred initialisation, and a Trainer created before the masks."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet", reason="needs MXNet")
pytest.importorskip("mxnet.gluon", reason="needs MXNet")

import coreprune.mxnet as cpm  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402

import coreprune  # noqa: E402
from coreprune.errors import CompressionError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Cannot decide type:UserWarning")


def _cnn() -> gluon.nn.HybridSequential:
    net = gluon.nn.HybridSequential()
    net.add(
        gluon.nn.Conv2D(6, 3, in_channels=3),
        gluon.nn.BatchNorm(in_channels=6),
        gluon.nn.Activation("relu"),
        gluon.nn.Flatten(),
        gluon.nn.Dense(5, in_units=6 * 6 * 6),
    )
    return net


def _train(net, trainer, x, steps):
    for _ in range(steps):
        with autograd.record():
            loss = net(x).square().mean()
        loss.backward()
        trainer.step(x.shape[0])


def test_symbolblock_imports_takes_masks_and_trains(tmp_path):
    mx.random.seed(0)
    net = _cnn()
    net.initialize(mx.init.Xavier())
    net.hybridize()
    x = mx.nd.random.normal(shape=(4, 3, 8, 8))
    net(x)
    net.export(str(tmp_path / "cnn"))
    sb = gluon.SymbolBlock.imports(
        str(tmp_path / "cnn-symbol.json"), ["data"], str(tmp_path / "cnn-0000.params")
    )
    weights = cpm.to_numpy(sb)
    _, masks = coreprune.prune_magnitude(weights, 0.5, scope="global")
    assert sorted(masks) == sorted(n for n in weights if n.endswith("_weight") and weights[n].ndim >= 2)
    cpm.attach_masks(sb, masks)  # was a TypeError (shape None)
    trainer = gluon.Trainer(sb.collect_params(), "sgd", {"learning_rate": 0.05, "momentum": 0.9})
    _train(sb, trainer, x, 3)
    after = cpm.to_numpy(sb)
    for name, mask in masks.items():
        assert (after[name][~mask] == 0).all(), name
        assert (after[name][mask] != weights[name][mask]).any(), name  # the kept entries trained
    assert sorted(cpm.attached_masks(sb)) == sorted(masks)


def test_shared_parameters_are_one_tensor():
    a = gluon.nn.Dense(8, in_units=8)
    b = gluon.nn.Dense(8, in_units=8, params=a.params)  # shared weights, as in tied layers
    net = gluon.nn.HybridSequential()
    net.add(a, gluon.nn.Dense(8, in_units=8), b)
    net.initialize(mx.init.Xavier())
    weights = cpm.to_numpy(net)
    assert weights["0.weight"] is weights["2.weight"]
    result = coreprune.prune_magnitude(weights, 0.5, scope="global")
    assert result.aliases == {"2.weight": "0.weight"}
    total = coreprune.global_magnitude_threshold(weights, 0.5).total
    assert total == 2 * 64  # the shared matrix counted once
    cpm.attach_masks(net, result.masks)
    np.testing.assert_array_equal(cpm.attached_masks(net)["2.weight"], result.masks["0.weight"])
    changed = {k: v.copy() for k, v in weights.items()}
    changed["2.weight"] = changed["2.weight"] + 1.0
    with pytest.raises(CompressionError, match="one shared parameter but the arrays given for them differ"):
        cpm.load_numpy(net, changed)
    np.testing.assert_array_equal(net[0].weight.data().asnumpy(), net[2].weight.data().asnumpy())


def test_deferred_initialisation_is_explained():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4), gluon.nn.Dense(2))  # no in_units: deferred until the first forward
    net.initialize()
    with pytest.raises(CompressionError, match="not initialised.*run one forward pass first"):
        cpm.to_numpy(net)
    with pytest.raises(CompressionError, match="not initialised.*run one forward pass first"):
        cpm.attach_masks(net, {"0.weight": np.ones((4, 3), bool)})
    net(mx.nd.ones((1, 3)))  # what the message says to do
    _, masks = coreprune.prune_magnitude(cpm.to_numpy(net), 0.5)
    cpm.attach_masks(net, masks)
    assert sorted(cpm.attached_masks(net)) == ["0.weight", "1.weight"]


def test_a_trainer_created_before_the_masks_sees_them():
    mx.random.seed(1)
    net = _cnn()
    net.initialize(mx.init.Xavier())
    x = mx.nd.random.normal(shape=(4, 3, 8, 8))
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.05, "momentum": 0.9})
    _train(net, trainer, x, 2)  # momentum is non-zero everywhere now
    _, masks = coreprune.prune_magnitude(cpm.to_numpy(net), 0.6)
    cpm.attach_masks(net, masks)
    _train(net, trainer, x, 3)  # the same Trainer
    net(x)  # the forward pre-hook zeroes what the old momentum moved
    after = cpm.to_numpy(net)
    for name, mask in masks.items():
        assert (after[name][~mask] == 0).all(), name
    _train(net, trainer, x, 1)
    cpm.reapply_masks(net)  # between a step and the next forward: zero the stored weights on demand
    for name, mask in masks.items():
        assert (cpm.to_numpy(net)[name][~mask] == 0).all(), name


def test_convert_gluon_to_torch_refuses_export_files_and_maps_save_parameters(tmp_path):
    import subprocess
    import sys

    net = _cnn()
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.ones((1, 3, 8, 8)))
    net.export(str(tmp_path / "cnn"))  # arg:/aux: names of symbol nodes
    run = subprocess.run(
        [sys.executable, "-m", "coreprune", "convert", str(tmp_path / "cnn-0000.params"),
         str(tmp_path / "t.pt"), "--map", "gluon-to-torch"], capture_output=True, text=True,
    )
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "symbol-API name" in run.stderr and "save_parameters" in run.stderr
    assert not (tmp_path / "t.pt").exists()
    net.save_parameters(str(tmp_path / "cnn.params"))  # what the message says to do
    run = subprocess.run(
        [sys.executable, "-m", "coreprune", "convert", str(tmp_path / "cnn.params"), str(tmp_path / "t.pt"),
         "--map", "gluon-to-torch"], capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    import coreprune.io as cio

    names = list(cio.load(tmp_path / "t.pt"))
    assert names[:4] == ["0.weight", "0.bias", "1.weight", "1.bias"] and "4.weight" in names


def test_weight_names_select_by_role_on_blocks_and_symbolblocks(tmp_path):
    net = _cnn()
    net.initialize(mx.init.Xavier())
    assert cpm.weight_names(net) == ["0.weight", "4.weight"]
    net.hybridize()
    net(mx.nd.ones((1, 3, 8, 8)))
    net.export(str(tmp_path / "cnn"))
    files = [str(tmp_path / "cnn-symbol.json"), ["data"], str(tmp_path / "cnn-0000.params")]
    sb = gluon.SymbolBlock.imports(*files)
    names = cpm.weight_names(sb)
    assert len(names) == 2 and all(n.endswith("_weight") for n in names)
    assert set(names) <= set(cpm.to_numpy(sb))
