"""coreprune's pruning, run through coreprune.torch, against torch.nn.utils.prune on the same weights.

coreprune.prune_magnitude computes masks on NumPy arrays; torch.nn.utils.prune.l1_unstructured and
global_unstructured compute them on the module. With continuous random weights (no ties in |w|)
both must remove exactly the same entries, and attach_masks must then make the module behave as
torch's own pruning does.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")

from coreprune.torch import attach_masks, attached_masks, load_numpy, to_numpy  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

import coreprune  # noqa: E402


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)
    )


PRUNABLE = ["0.weight", "4.weight"]  # coreprune's default selection: floating tensors with ndim >= 2


def copied(weights):
    return {k: v.copy() for k, v in weights.items()}


@pytest.mark.parametrize("amount", [0.1, 0.37, 0.5, 0.9])
def test_layer_masks_match_torch_l1_unstructured(amount):
    net, reference = small_net(), small_net()
    pruned, masks = coreprune.prune_magnitude(to_numpy(net), amount)
    assert sorted(masks) == sorted(PRUNABLE)
    for name in PRUNABLE:
        prune.l1_unstructured(reference.get_submodule(name.rpartition(".")[0]), "weight", amount=amount)
    torch_masks = attached_masks(reference)
    for name in PRUNABLE:
        np.testing.assert_array_equal(masks[name], torch_masks[name], err_msg=name)
    attach_masks(net, masks)
    ours, theirs = to_numpy(net), to_numpy(reference)
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
        np.testing.assert_array_equal(ours[name], pruned[name], err_msg=name)


def test_global_masks_match_torch_global_unstructured():
    net, reference = small_net(), small_net()
    _, masks = coreprune.prune_magnitude(to_numpy(net), 0.6, scope="global")
    prune.global_unstructured(
        [(reference[0], "weight"), (reference[4], "weight")], pruning_method=prune.L1Unstructured, amount=0.6
    )
    torch_masks = attached_masks(reference)
    for name in PRUNABLE:
        np.testing.assert_array_equal(masks[name], torch_masks[name], err_msg=name)
    removed = sum(int((~m).sum()) for m in masks.values())
    assert removed == round(0.6 * sum(m.size for m in masks.values()))


def test_fine_tuning_keeps_coreprune_sparsity_and_apply_masks_agrees():
    net = small_net()
    _, masks = coreprune.prune_magnitude(to_numpy(net), 0.5)
    attach_masks(net, masks)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    weights = copied(to_numpy(net))
    stats = coreprune.sparsity(weights)
    for name in PRUNABLE:
        assert stats["per_tensor"][name] == round(0.5 * masks[name].size) / masks[name].size
    # Re-applying the same masks on the NumPy side changes nothing: the zeros survived training.
    reapplied = coreprune.apply_masks(weights, attached_masks(net))
    for name in weights:
        np.testing.assert_array_equal(reapplied[name], weights[name], err_msg=name)
    # The pruned, fine-tuned weights load into a fresh, unpruned module of the same architecture.
    fresh = small_net(seed=1)
    load_numpy(fresh, weights)
    prune_free = to_numpy(fresh)
    for name in weights:
        np.testing.assert_array_equal(prune_free[name], weights[name], err_msg=name)
