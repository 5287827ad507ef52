"""coreprune.torch.input_hessians and coreprune.mxnet.input_hessians agree on identical networks.

The same small net (Conv2d 3->8 k3 s1 p1, ReLU, flatten, Linear) is built in both frameworks with
identical weights and run on identical float32 inputs. The first layer sees the raw input in both,
so its patches, and therefore its Hessian and its GPTQ codes, must be bit-identical; the later
layer sees each framework's own float32 convolution output, which may differ in the last ulp, so
its Hessian agrees to rtol 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")
mx = pytest.importorskip("mxnet", reason="needs MXNet")
# Without the frameworks, "torch"/"mxnet" could resolve to the tests/ folders of the same names
# (namespace packages): only real installations have these submodules.
pytest.importorskip("torch.nn", reason="needs PyTorch")
pytest.importorskip("mxnet.gluon", reason="needs MXNet")

import coreprune.mxnet as cpm  # noqa: E402
import coreprune.torch as cpt  # noqa: E402

import coreprune  # noqa: E402


def _nets() -> tuple[torch.nn.Module, mx.gluon.Block]:
    torch.manual_seed(0)
    tnet = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=1, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 5),
    )
    mnet = mx.gluon.nn.HybridSequential()
    mnet.add(
        mx.gluon.nn.Conv2D(8, 3, strides=1, padding=1, in_channels=3),
        mx.gluon.nn.Activation("relu"),
        mx.gluon.nn.Flatten(),
        mx.gluon.nn.Dense(5, in_units=8 * 6 * 6),
    )
    mnet.initialize()
    report = cpm.load_numpy(mnet, cpt.to_numpy(tnet))  # the same structural names in both
    assert not (report.missing or report.unexpected or report.mismatched)
    return tnet, mnet


def test_same_hessians_and_same_first_layer_codes():
    tnet, mnet = _nets()
    x = np.random.default_rng(0).standard_normal((4, 3, 6, 6)).astype(np.float32)
    batches = [x[:3], x[3:]]
    ht = cpt.input_hessians(tnet, [torch.from_numpy(b) for b in batches])
    hm = cpm.input_hessians(mnet, [mx.nd.array(b) for b in batches])

    assert list(ht) == list(hm) == ["0.weight", "3.weight"]
    np.testing.assert_array_equal(hm["0.weight"], ht["0.weight"])  # the raw input: bit-identical
    np.testing.assert_allclose(hm["3.weight"], ht["3.weight"], rtol=1e-5, atol=1e-7)

    wt, wm = cpt.to_numpy(tnet), cpm.to_numpy(mnet)
    qt = coreprune.quantize(wt, bits=4, hessians=ht)
    qm = coreprune.quantize(wm, bits=4, hessians=hm)
    np.testing.assert_array_equal(qm["0.weight"].codes, qt["0.weight"].codes)
    np.testing.assert_array_equal(qm["0.weight"].scale, qt["0.weight"].scale)
