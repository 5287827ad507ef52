"""The source project's LeNet in PyTorch and in MXNet: one dict of weights, one function.

Both ``lenet()`` builders name their parameters alike (``conv1.weight`` ...). The
same random numbers are loaded into both; the adapters must export them as equal
dicts (same keys, bit-identical arrays), coreprune must then give bit-identical
results on either export, and the two networks must compute the same logits
(to 1e-5) before and after the compressed weights are loaded back.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")
mx = pytest.importorskip("mxnet", reason="needs MXNet")
# Without a framework, pytest's rootdir on sys.path makes tests/torch or tests/mxnet importable as an
# empty namespace package of that name; a real submodule tells them apart.
pytest.importorskip("torch.nn", reason="needs PyTorch")
pytest.importorskip("mxnet.gluon", reason="needs MXNet")

from coreprune_digits.mxnet_models import lenet as mx_lenet  # noqa: E402
from coreprune_digits.torch_models import lenet as torch_lenet  # noqa: E402

import coreprune  # noqa: E402
from coreprune import mxnet as amx  # noqa: E402
from coreprune import torch as atorch  # noqa: E402

NAMES = [
    "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
    "dense1.weight", "dense1.bias", "dense2.weight", "dense2.bias",
]
ATOL = RTOL = 1e-5


def random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """He-scaled normal weights and small biases, so that activations stay O(1) through the net."""
    rng = np.random.default_rng(seed)
    shapes = {
        "conv1.weight": (20, 1, 5, 5), "conv1.bias": (20,),
        "conv2.weight": (50, 20, 3, 3), "conv2.bias": (50,),
        "dense1.weight": (128, 1250), "dense1.bias": (128,),
        "dense2.weight": (10, 128), "dense2.bias": (10,),
    }
    out = {}
    for name, shape in shapes.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 10
        out[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return out


def batch(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((4, 1, 28, 28), dtype=np.float32)


def torch_logits(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    net.eval()
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def mx_logits(net, x: np.ndarray) -> np.ndarray:
    return net(mx.nd.array(x)).asnumpy()


def bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def assert_bit_identical(x: dict, y: dict) -> None:
    assert list(x) == list(y)
    for name in x:
        assert x[name].dtype == y[name].dtype and x[name].shape == y[name].shape, name
        assert bits(x[name]) == bits(y[name]), name


def test_both_models_have_the_same_names_shapes_and_dtypes():
    tnet, mnet = torch_lenet(), mx_lenet()
    tstate = tnet.state_dict()
    mstate = amx.to_numpy(mnet)
    assert list(tstate) == list(mstate) == NAMES
    for name in NAMES:
        assert tuple(tstate[name].shape) == mstate[name].shape, name
        assert tstate[name].dtype == torch.float32 and mstate[name].dtype == np.float32


def test_same_weights_give_the_same_logits_through_the_frameworks_own_loaders():
    """Checks the layouts (conv OIHW, dense (out,in), NCHW flatten) without coreprune.torch."""
    weights = random_weights()
    tnet, mnet = torch_lenet(), mx_lenet()
    tnet.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    assert amx.load_numpy(mnet, weights).ok
    x = batch()
    t, m = torch_logits(tnet, x), mx_logits(mnet, x)
    assert t.shape == m.shape == (4, 10)
    assert np.abs(t).max() > 0.1  # a real signal, not zeros
    np.testing.assert_allclose(m, t, rtol=RTOL, atol=ATOL)
    # A transposed dense1 (wrong flatten order) would not agree: the check has teeth.
    tnet.dense1.weight.data = torch.from_numpy(
        weights["dense1.weight"].reshape(128, 50, 5, 5).transpose(0, 1, 3, 2).reshape(128, 1250).copy()
    )
    assert not np.allclose(torch_logits(tnet, x), m, rtol=RTOL, atol=ATOL)


def test_adapters_export_equal_dicts():
    weights = random_weights()
    tnet, mnet = torch_lenet(), mx_lenet()
    assert atorch.load_numpy(tnet, weights).missing == []
    assert amx.load_numpy(mnet, weights).ok
    from_torch, from_mx = atorch.to_numpy(tnet), amx.to_numpy(mnet)
    assert_bit_identical(from_torch, from_mx)
    assert_bit_identical(from_mx, weights)


def _prune_threshold(w):
    return coreprune.prune_threshold(w, 0.05)


def _prune_layer(w):
    return coreprune.prune_magnitude(w, 0.7, scope="layer")


def _prune_global(w):
    return coreprune.prune_magnitude(w, 0.5, scope="global")


PRUNERS = [_prune_threshold, _prune_layer, _prune_global]
QUANTIZERS = [
    {"bits": 8},
    {"bits": 4, "axis": 0},
    {"bits": 6, "symmetric": False},
    {"bits": 1},
]


def _exports(seed: int = 0):
    weights = random_weights(seed)
    tnet, mnet = torch_lenet(), mx_lenet()
    atorch.load_numpy(tnet, weights)
    amx.load_numpy(mnet, weights)
    # Copies: what each adapter exported must not change when the nets are written later.
    return tnet, mnet, atorch.to_numpy(tnet), amx.to_numpy(mnet)


def _load_back_and_compare(tnet, mnet, compressed: dict) -> None:
    atorch.load_numpy(tnet, compressed)
    assert amx.load_numpy(mnet, compressed).ok
    assert_bit_identical(atorch.to_numpy(tnet), compressed)
    assert_bit_identical(amx.to_numpy(mnet), compressed)
    x = batch()
    np.testing.assert_allclose(mx_logits(mnet, x), torch_logits(tnet, x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("prune", PRUNERS, ids=lambda f: f.__name__.lstrip("_"))
def test_pruning_is_identical_on_both_exports_and_both_nets_agree_after_loading(prune):
    tnet, mnet, wt, wm = _exports()
    before = mx_logits(mnet, batch())
    pruned_t, masks_t = prune(wt)
    pruned_m, masks_m = prune(wm)
    assert_bit_identical(pruned_t, pruned_m)
    assert_bit_identical(masks_t, masks_m)
    assert any(not m.all() for m in masks_m.values())  # something was really pruned
    for name, mask in masks_m.items():
        assert np.all(pruned_m[name][~mask] == 0)
    _load_back_and_compare(tnet, mnet, pruned_m)
    assert not np.allclose(mx_logits(mnet, batch()), before)  # the pruning changed the function


@pytest.mark.parametrize("kwargs", QUANTIZERS, ids=lambda k: "-".join(f"{a}{b}" for a, b in k.items()))
def test_quantization_is_identical_on_both_exports_and_both_nets_agree_after_loading(kwargs):
    tnet, mnet, wt, wm = _exports()
    qt = coreprune.quantize(wt, **kwargs)
    qm = coreprune.quantize(wm, **kwargs)
    assert list(qt) == list(qm) == NAMES
    quantized = [n for n in NAMES if isinstance(qm[n], coreprune.QuantizedArray)]
    assert quantized == ["conv1.weight", "conv2.weight", "dense1.weight", "dense2.weight"]
    for name in NAMES:
        a, b = qt[name], qm[name]
        if name not in quantized:
            assert bits(a) == bits(b)
            continue
        assert (a.bits, a.symmetric, a.axis, a.group_size, a.shape, a.dtype) == (
            b.bits, b.symmetric, b.axis, b.group_size, b.shape, b.dtype
        )
        assert a.codes.dtype == b.codes.dtype and bits(a.codes) == bits(b.codes), name
        assert a.scale.dtype == b.scale.dtype and bits(a.scale) == bits(b.scale), name
        if a.zero_point is None:
            assert b.zero_point is None
        else:
            assert bits(a.zero_point) == bits(b.zero_point), name
    deq_t, deq_m = coreprune.dequantize(qt), coreprune.dequantize(qm)
    assert_bit_identical(deq_t, deq_m)
    _load_back_and_compare(tnet, mnet, deq_m)
