"""N:M masks from the core keep their pattern while a PyTorch model fine-tunes (attach_masks glue)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from coreprune.torch import attach_masks, attached_masks, mobilenet_student, to_numpy  # noqa: E402

from coreprune.structured import nm_masks  # noqa: E402


@pytest.mark.parametrize("n, m", [(2, 4), (1, 8)])
def test_nm_pattern_survives_fine_tuning(n, m):
    torch.manual_seed(0)
    net = mobilenet_student(1.0)
    # pointwise convs and the classifier have input sizes divisible by 8; depthwise ones (in=1) do not
    pattern = ["blocks.*.pointwise.weight", "classifier.weight"]
    masks = nm_masks(to_numpy(net), n, m, include=pattern)
    attach_masks(net, masks)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    after = to_numpy(net)
    assert {k: v.tolist() for k, v in attached_masks(net).items()} == {
        k: v.tolist() for k, v in masks.items()
    }
    for k, mask in masks.items():
        w = np.moveaxis(after[k], 1, -1).reshape(-1, m)
        assert ((w != 0).sum(1) <= n).all()
        assert np.array_equal(after[k] != 0, mask)  # kept entries trained away from exact zero
