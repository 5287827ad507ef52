"""README.md's "PyTorch in ten lines" runs as written and does what its comments say."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")

from torch.nn.utils import prune  # noqa: E402


def test_the_pytorch_sample_runs_and_keeps_its_promises(run_readme_block):
    ns, printed = run_readme_block("PyTorch in ten lines")
    model, masks, q, cpt = ns["model"], ns["masks"], ns["q"], ns["cpt"]
    assert prune.is_pruned(model) and set(cpt.attached_masks(model)) == set(masks)
    final = cpt.to_numpy(model)
    for name, mask in masks.items():
        assert abs((~mask).mean() - 0.9) < 0.01, name  # "90% of each weight tensor -> 0"
        assert np.all(final[name][~mask] == 0), name  # zeros survive loading the dequantized weights
    n_bytes = sum(v.nbytes for v in q.values())
    assert printed == f"{n_bytes} bytes\n"
    float_bytes = sum(v.nbytes for v in final.values())
    assert n_bytes < float_bytes / 3  # int8 codes: about a quarter of float32
