"""``coreprune convert --map``: a Gluon network's file loads strictly into the same PyTorch network, and back.

Both directions are checked by the frameworks themselves: a strict ``load_state_dict`` /
``load_parameters`` (no missing or unexpected names, matching shapes) and equal outputs on
the same input. The CLI runs in-process here (the framework-free runs are in tests/torch
and tests/mxnet).
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet", reason="needs MXNet")
torch = pytest.importorskip("torch", reason="needs PyTorch")
# tests/mxnet and tests/torch are importable namespace packages when tests/ is on sys.path
pytest.importorskip("mxnet.gluon", reason="needs MXNet")
pytest.importorskip("torch.nn", reason="needs PyTorch")

from mxnet import gluon  # noqa: E402

from coreprune.cli import main  # noqa: E402


def gluon_net() -> gluon.HybridBlock:
    net = gluon.nn.HybridSequential()
    net.add(
        gluon.nn.Conv2D(8, 3, padding=1, in_channels=3), gluon.nn.BatchNorm(in_channels=8),
        gluon.nn.Activation("relu"), gluon.nn.Conv2D(16, 3, padding=1, in_channels=8),
        gluon.nn.Activation("relu"), gluon.nn.GlobalAvgPool2D(), gluon.nn.Flatten(),
        gluon.nn.Dense(10, in_units=16),
    )
    return net


def torch_net() -> torch.nn.Module:
    # the same layers at the same indices; Gluon BatchNorm's defaults (eps 1e-5) are torch's
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(16, 10),
    ).eval()


def test_gluon_params_load_strictly_into_torch_with_equal_outputs(tmp_path):
    mx.random.seed(0)
    g = gluon_net()
    g.initialize(mx.init.Xavier())
    with mx.autograd.record(train_mode=True):  # non-trivial running statistics
        g(mx.nd.random.normal(shape=(16, 3, 8, 8)))
    src, dst = tmp_path / "g.params", tmp_path / "t.pt"
    g.save_parameters(str(src))
    assert main(["convert", str(src), str(dst), "--map", "gluon-to-torch", "-q"]) == 0
    t = torch_net()
    t.load_state_dict(torch.load(dst, weights_only=True), strict=True)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    ref = g(mx.nd.array(x)).asnumpy()
    with torch.no_grad():
        got = t(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_torch_state_dict_loads_strictly_into_gluon_with_equal_outputs(tmp_path):
    torch.manual_seed(0)
    t = torch_net().train()
    with torch.no_grad():
        t(torch.randn(16, 3, 8, 8))
    t.eval()
    src, dst = tmp_path / "t.pt", tmp_path / "g.params"
    torch.save(t.state_dict(), src)
    assert main(["convert", str(src), str(dst), "--map", "torch-to-gluon", "-q"]) == 0
    g = gluon_net()
    g.load_parameters(str(dst))  # strict by default: no missing, no extra parameters
    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref = t(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(g(mx.nd.array(x)).asnumpy(), ref, rtol=1e-4, atol=1e-5)
