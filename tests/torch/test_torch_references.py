"""The NumPy core against PyTorch's own pruning and quantization functions.

* masks of ``prune_magnitude`` equal ``torch.nn.utils.prune.l1_unstructured`` (scope="layer") and
  ``global_unstructured`` with ``L1Unstructured`` (scope="global") on a small model;
* given the same scale and zero point, the codes of ``quantize`` equal ``torch.quantize_per_channel`` /
  ``torch.quantize_per_tensor`` ``int_repr()``, and the dequantized values of n-bit affine quantization
  equal ``torch.fake_quantize_per_channel_affine``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")
prune = pytest.importorskip("torch.nn.utils.prune", reason="needs torch.nn.utils.prune")

from coreprune import dequantize, prune_magnitude, quantize  # noqa: E402

# the quantized-tensor constructors warn that they are deprecated; they are still the reference here
pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_:UserWarning")

SPARSITIES = [0.0, 0.1, 0.5, 0.73, 0.9, 1.0]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 6, 3, bias=False),
        torch.nn.Flatten(),
        torch.nn.Linear(6 * 4 * 4, 20),
        torch.nn.Linear(20, 5),
    )


def weights_of(model):
    return {name: p.detach().numpy().copy() for name, p in model.state_dict().items()}


def prunable(model):
    return [(name, module) for name, module in model.named_children() if hasattr(module, "weight")]


def assert_no_tie_at_the_cut(magnitudes, k):
    """The reference leaves ties unordered: check the data has none where the cut falls."""
    s = np.sort(magnitudes)
    if 0 < k < s.size:
        assert s[k - 1] < s[k]


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_layer_masks_equal_l1_unstructured(model, sparsity):
    weights = weights_of(model)
    _, masks = prune_magnitude(weights, sparsity)
    reference = copy.deepcopy(model)
    names = []
    for name, module in prunable(reference):
        w = weights[f"{name}.weight"]
        assert_no_tie_at_the_cut(np.abs(w).ravel(), round(sparsity * w.size))
        prune.l1_unstructured(module, "weight", amount=sparsity)
        names.append(f"{name}.weight")
        expected = module.weight_mask.numpy().astype(bool)
        np.testing.assert_array_equal(masks[f"{name}.weight"], expected)
    assert sorted(masks) == sorted(names)


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_global_masks_equal_global_unstructured(model, sparsity):
    weights = weights_of(model)
    _, masks = prune_magnitude(weights, sparsity, scope="global")
    everything = np.concatenate([np.abs(weights[n]).ravel() for n in masks])
    assert_no_tie_at_the_cut(everything, round(sparsity * everything.size))
    reference = copy.deepcopy(model)
    modules = prunable(reference)
    prune.global_unstructured(
        [(module, "weight") for _, module in modules], pruning_method=prune.L1Unstructured, amount=sparsity
    )
    for name, module in modules:
        np.testing.assert_array_equal(masks[f"{name}.weight"], module.weight_mask.numpy().astype(bool))
    removed = sum(int((~m).sum()) for m in masks.values())
    assert removed == round(sparsity * everything.size)


def test_pruned_values_equal_torch_pruned_weights(model):
    weights = weights_of(model)
    pruned, _ = prune_magnitude(weights, 0.6, scope="global")
    reference = copy.deepcopy(model)
    modules = prunable(reference)
    prune.global_unstructured(
        [(module, "weight") for _, module in modules], pruning_method=prune.L1Unstructured, amount=0.6
    )
    for name, module in modules:
        np.testing.assert_array_equal(pruned[f"{name}.weight"], module.weight.detach().numpy())
    assert pruned["0.bias"] is weights["0.bias"]


@pytest.mark.parametrize("seed", range(4))
def test_symmetric_per_channel_codes_equal_quantize_per_channel(seed):
    torch.manual_seed(seed)
    w = torch.randn(16, 4, 3, 3) * (0.05 + seed)
    for axis in (0, 1):
        q = quantize({"w": w.numpy()}, 8, axis=axis)["w"]
        assert int(np.abs(q.codes).max()) == 127  # in qint8's range [-128, 127]
        reference = torch.quantize_per_channel(
            w,
            torch.from_numpy(q.scale.astype(np.float64)),
            torch.zeros(q.scale.size, dtype=torch.long),
            axis,
            torch.qint8,
        )
        np.testing.assert_array_equal(q.codes, reference.int_repr().numpy())
        np.testing.assert_array_equal(q.dequantize(), reference.dequantize().numpy())


@pytest.mark.parametrize("seed", range(4))
def test_full_range_int8_equals_torch_per_channel_symmetric_observer(seed):
    """torch's per-channel symmetric int8: scale max|w| / 127.5 from its observer, codes in [-128, 127]."""
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    torch.manual_seed(seed)
    w = torch.randn(32, 8, 3, 3) * (0.05 + seed)
    w[3, 0, 0, 0] = -w[3].abs().max() * 1.5  # a channel whose peak is negative
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    observer(w)
    scale, zero_point = observer.calculate_qparams()
    reference = torch.quantize_per_channel(w, scale, zero_point, 0, torch.qint8)
    q = quantize({"w": w.numpy()}, 8, axis=0, full_range=True)["w"]
    np.testing.assert_allclose(q.scale, scale.numpy().astype(np.float32), rtol=2**-23, atol=0)
    got = q.codes.astype(np.int16)
    ref = reference.int_repr().numpy().astype(np.int16)
    # torch multiplies by 1/scale, coreprune divides: they differ only at ties such as the negative
    # peak (-127.49999 here, -127.5 there), by one code
    ratio = w.numpy().astype(np.float64) / q.scale.astype(np.float64).reshape(-1, 1, 1, 1)
    differ = got != ref
    assert np.abs(got - ref).max() <= 1
    assert (np.abs(np.abs(ratio[differ]) % 1 - 0.5) < 1e-4).all()
    assert got.min() >= -128 and ref.min() == -128
    np.testing.assert_allclose(q.dequantize(), reference.dequantize().numpy(), rtol=0,
                               atol=float(q.scale.max()))
    restricted = quantize({"w": w.numpy()}, 8, axis=0)["w"]
    assert (q.scale < restricted.scale).all()  # a finer step: 127.5 / 127 times smaller


@pytest.mark.parametrize("seed", range(4))
def test_affine_per_tensor_codes_equal_quantize_per_tensor(seed):
    torch.manual_seed(seed)
    w = torch.randn(32, 24) * (0.05 + seed) + 0.3 * seed
    q = quantize({"w": w.numpy()}, 8, symmetric=False, group_size=None)["w"]
    reference = torch.quantize_per_tensor(w, float(q.scale), int(q.zero_point), torch.quint8)
    np.testing.assert_array_equal(q.codes, reference.int_repr().numpy())
    np.testing.assert_array_equal(q.dequantize(), reference.dequantize().numpy())


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_affine_n_bit_dequantization_equals_fake_quantize(bits):
    torch.manual_seed(bits)
    w = torch.randn(12, 30) + 0.2
    q = quantize({"w": w.numpy()}, bits, symmetric=False, axis=0)["w"]
    scale = torch.from_numpy(q.scale.astype(np.float32))  # float16 scales below 8 bits: exact in float32
    reference = torch.fake_quantize_per_channel_affine(
        w, scale, torch.from_numpy(q.zero_point.astype(np.int32)), 0, 0, 2**bits - 1
    )
    np.testing.assert_array_equal(dequantize({"w": q})["w"], reference.numpy())
    q = quantize({"w": w.numpy()}, bits, symmetric=False, group_size=None)["w"]
    reference = torch.fake_quantize_per_tensor_affine(w, float(q.scale), int(q.zero_point), 0, 2**bits - 1)
    np.testing.assert_array_equal(q.dequantize(), reference.numpy())
