"""Global pruning of a tied-embedding transformer language model against torch's global_unstructured.

The embedding and the output layer share one Parameter. torch.nn.utils.prune.global_unstructured is
given each Parameter once (as ``named_parameters`` lists them); coreprune gets the state dict, where
the tied matrix appears under both names, and must count it once and give both names torch's mask.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")
prune = pytest.importorskip("torch.nn.utils.prune", reason="needs torch.nn.utils.prune")

from coreprune import prune_magnitude  # noqa: E402


class TinyLM(torch.nn.Module):
    def __init__(self, vocab: int = 50, d: int = 16) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.encoder = torch.nn.TransformerEncoder(
            torch.nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=32, batch_first=True), num_layers=2
        )
        self.head = torch.nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied
        # TransformerEncoder deep-copies its layer: redraw every value so that no two layers tie in |w|
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn_like(p))

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)))


def _weights(model):
    """(module, attribute) of every weight matrix, each Parameter once, in named_parameters order."""
    owner = {}
    for mod_name, module in model.named_modules():
        for attr, p in module.named_parameters(recurse=False):
            if p.dim() >= 2:
                owner.setdefault(id(p), (module, attr, f"{mod_name}.{attr}" if mod_name else attr))
    return [owner[id(p)] for _, p in model.named_parameters() if id(p) in owner]


@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.8, 0.95])
def test_tied_lm_global_masks_equal_torch_global_unstructured(sparsity):
    torch.manual_seed(1)
    model = TinyLM()
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert np.shares_memory(state["embed.weight"], state["head.weight"])
    targets = _weights(model)
    names = [t[2] for t in targets] + ["head.weight"]
    result = prune_magnitude(state, sparsity, scope="global", include=names)
    assert result.aliases == {"head.weight": "embed.weight"}
    prune.global_unstructured([(m, a) for m, a, _ in targets], prune.L1Unstructured, amount=sparsity)
    for module, attr, name in targets:
        expected = getattr(module, f"{attr}_mask").numpy().astype(bool)
        np.testing.assert_array_equal(result.masks[name], expected, err_msg=name)
    np.testing.assert_array_equal(result.masks["head.weight"], model.embed.weight_mask.numpy().astype(bool))
    # counted twice (the bug this guards against), the masks would differ from torch's
    untied = {k: np.array(v) for k, v in state.items()}
    twice = prune_magnitude(untied, sparsity, scope="global", include=names)
    assert not np.array_equal(twice.masks["embed.weight"], result.masks["embed.weight"])


@pytest.mark.parametrize("mmap", [True, False])
def test_tied_checkpoint_loaded_from_a_file_stays_tied_and_is_counted_once(tmp_path, mmap):
    """torch.save keeps the tie (one storage under two names); coreprune.io.load must too."""
    import coreprune.io as cio

    torch.manual_seed(2)
    model = TinyLM()
    path = tmp_path / "tied.pt"
    torch.save(model.state_dict(), path)
    state = cio.load(path, mmap=mmap)
    emb, head = state["embed.weight"], state["head.weight"]
    assert not isinstance(emb, np.memmap) and emb.flags.owndata is False  # a view of one in-memory copy
    assert np.shares_memory(emb, head)
    assert emb.__array_interface__ == head.__array_interface__  # the same elements, not an overlap
    # the unique storages, not the names: loading duplicates nothing
    bases = {id(a.base) for a in (emb, head)}
    assert len(bases) == 1
    targets = _weights(model)
    names = [t[2] for t in targets] + ["head.weight"]
    result = prune_magnitude(state, 0.6, scope="global", include=names)
    assert result.aliases == {"head.weight": "embed.weight"}
    np.testing.assert_array_equal(result.masks["head.weight"], result.masks["embed.weight"])
    np.testing.assert_array_equal(result.pruned["head.weight"], result.pruned["embed.weight"])
    kept = sum(int(result.masks[n].sum()) for n in names[:-1])  # each Parameter once
    total = sum(state[n].size for n in names[:-1])
    assert kept == total - round(0.6 * total)
    prune.global_unstructured([(m, a) for m, a, _ in targets], prune.L1Unstructured, amount=0.6)
    for module, attr, name in targets:
        expected = getattr(module, f"{attr}_mask").numpy().astype(bool)
        np.testing.assert_array_equal(result.masks[name], expected, err_msg=name)
