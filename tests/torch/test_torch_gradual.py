"""prune_iterative(mode="remaining") against repeated torch.nn.utils.prune calls (PruningContainer)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")
from torch.nn.utils import prune  # noqa: E402

from coreprune.gradual import prune_iterative, remaining_amounts, sparsity_schedule  # noqa: E402


@pytest.mark.parametrize("kind", ["cubic", "linear", "one-shot"])
def test_remaining_mode_equals_repeated_l1_unstructured(kind):
    torch.manual_seed(0)
    layers = {"fc1": torch.nn.Linear(300, 100), "conv": torch.nn.Conv2d(20, 50, 5)}
    amounts = remaining_amounts(sparsity_schedule(0.9, 5, kind=kind))
    for name, layer in layers.items():
        w = {f"{name}.weight": layer.weight.detach().numpy().copy()}
        masks = None
        for a in amounts:
            prune.l1_unstructured(layer, "weight", amount=a)  # a PruningContainer after the first call
            w, masks = prune_iterative(w, a, masks=masks, mode="remaining")
            np.testing.assert_array_equal(masks[f"{name}.weight"], layer.weight_mask.numpy() != 0)
            np.testing.assert_array_equal(w[f"{name}.weight"], layer.weight.detach().numpy())
        # torch really stacked the steps (the semantics under test), not one method replacing another
        assert any(isinstance(h, prune.PruningContainer) for h in layer._forward_pre_hooks.values())
