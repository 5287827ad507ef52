"""The same numbers in the PyTorch and the Gluon blocks give the same outputs.

Parameters go from a PyTorch ``state_dict`` to a Gluon ``.params`` file written with
``mx.nd.save`` and read with ``load_parameters`` (strict: no missing, no extra name),
so the test also proves that the structural names agree, under this mapping:

* batch norm (``torch.nn.BatchNorm2d`` at path ``P``): ``P.weight -> P.gamma``,
  ``P.bias -> P.beta``, ``P.running_mean`` and ``P.running_var`` unchanged,
  ``P.num_batches_tracked`` dropped (Gluon has no such counter);
* every other tensor (convolution and dense weights and biases): the same name,
  the same layout (OIHW kernels, (out, in) dense weights).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")
mx = pytest.importorskip("mxnet", reason="needs MXNet")
# A framework that is not installed can resolve to the tests/torch or tests/mxnet folder (a namespace
# package, tests/ being on sys.path): only a real installation has these submodules.
pytest.importorskip("torch.nn", reason="needs PyTorch")
pytest.importorskip("mxnet.gluon", reason="needs MXNet")

from coreprune.mxnet import blocks as gb  # noqa: E402
from coreprune.torch import blocks as tb  # noqa: E402

from coreprune import arch  # noqa: E402

_BN_LEAVES = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean", "running_var": "running_var"}


def gluon_name(torch_module: torch.nn.Module, key: str) -> str | None:
    """The Gluon structural name of PyTorch state_dict ``key``; None for num_batches_tracked."""
    path, _, leaf = key.rpartition(".")
    if isinstance(torch_module.get_submodule(path), torch.nn.BatchNorm2d):
        return None if leaf == "num_batches_tracked" else f"{path}.{_BN_LEAVES[leaf]}"
    return key


def _random_state(model: torch.nn.Module, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = {}
    for key, tensor in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        value = rng.uniform(-1, 1, size=tuple(tensor.shape))
        if value.ndim >= 2:  # kernels: unit-variance outputs, so that a 1e-5 tolerance means something
            value *= np.sqrt(6.0 * value.shape[0] / value.size)
        state[key] = value + 1.5 if key.endswith("running_var") else value
    return state


def _load_both(torch_model, gluon_model, state, dtype, tmp_path):
    torch_model.to(torch.float64 if dtype == "float64" else torch.float32)
    full = dict(torch_model.state_dict())
    full.update({k: torch.from_numpy(v.astype(dtype)) for k, v in state.items()})
    torch_model.load_state_dict(full, strict=True)
    torch_model.eval()
    gluon_params = {gluon_name(torch_model, k): mx.nd.array(v, dtype=dtype) for k, v in state.items()}
    path = str(tmp_path / "params")
    mx.nd.save(path, gluon_params)
    gluon_model.cast(dtype)
    gluon_model.load_parameters(path)  # strict: raises on a missing or an extra name
    return gluon_params


_PAIRS = {
    "fire": (
        lambda: tb.Fire(12, 4, 8, 6),
        lambda: gb.Fire(12, 4, 8, 6),
        (2, 12, 7, 7),
        arch.fire_cost(12, 4, 8, 6, 7).params,
    ),
    "depthwise_separable": (
        lambda: tb.DepthwiseSeparable(32, 48, stride=2, alpha=0.75),
        lambda: gb.DepthwiseSeparable(32, 48, stride=2, alpha=0.75),
        (2, 24, 9, 9),
        arch.depthwise_separable_cost(32, 48, 3, 5, alpha=0.75, batch_norm=True).params,
    ),
    "shuffle_unit": (
        lambda: tb.ShuffleUnit(24, 12, 3),
        lambda: gb.ShuffleUnit(24, 12, 3),
        (2, 24, 6, 6),
        arch.shuffle_unit_cost(24, 12, 3, 6).params,
    ),
    "mobilenet_student": (
        lambda: tb.mobilenet_student(0.5),
        lambda: gb.mobilenet_student(0.5),
        (3, 1, 28, 28),
        arch.mobilenet_student_cost(0.5).params,
    ),
    "mobilenet_student_rho": (
        lambda: tb.mobilenet_student(1.0),
        lambda: gb.mobilenet_student(1.0),
        (2, 1, 20, 20),
        arch.mobilenet_student_cost(1.0, rho=20 / 28).params,
    ),
    "squeezenet_student": (
        lambda: tb.squeezenet_student(),
        lambda: gb.squeezenet_student(),
        (3, 1, 28, 28),
        arch.squeezenet_student_cost().params,
    ),
}


@pytest.mark.parametrize("name", sorted(_PAIRS))
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-5)])
@pytest.mark.parametrize("hybridize", [False, True])
def test_same_numbers_same_outputs(name, dtype, tol, hybridize, tmp_path):
    make_torch, make_gluon, shape, predicted = _PAIRS[name]
    torch_model, gluon_model = make_torch(), make_gluon()
    state = _random_state(torch_model, seed=len(name))
    gluon_params = _load_both(torch_model, gluon_model, state, dtype, tmp_path)
    # Same tensors under the mapped names, and both frameworks count what the cost model predicts.
    assert set(gluon_params) == {
        n for n in (gluon_name(torch_model, k) for k in torch_model.state_dict()) if n
    }
    assert tb.num_parameters(torch_model) == gb.num_parameters(gluon_model) == predicted
    if hybridize:
        gluon_model.hybridize()
    x = np.random.default_rng(1).normal(size=shape).astype(dtype)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    got = gluon_model(mx.nd.array(x, dtype=dtype)).asnumpy()  # outside autograd.record(): inference-mode BN
    assert got.dtype == expected.dtype == np.dtype(dtype)
    assert 0.1 < np.abs(expected).max() < 100  # outputs of order 1: the tolerance is meaningful
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


def test_channel_shuffle_agrees_across_frameworks_and_numpy():
    x = np.random.default_rng(2).normal(size=(2, 12, 3, 3)).astype(np.float32)
    for groups in (2, 3, 4):
        from_torch = tb.ChannelShuffle(groups)(torch.from_numpy(x)).numpy()
        from_gluon = gb.ChannelShuffle(groups)(mx.nd.array(x)).asnumpy()
        np.testing.assert_array_equal(from_torch, from_gluon)
        np.testing.assert_array_equal(from_torch, arch.channel_shuffle(x, groups))


def test_gluon_leaf_names_table_agrees_with_the_mapping():
    assert {v: k for k, v in _BN_LEAVES.items()} == gb.TORCH_LEAF_NAMES
