"""The default selection (include=None) on the state dicts of real architectures: the weights of conv,
linear, embedding and attention layers, not weight norm's g, class tokens, position embeddings, pruning
masks, GPT-2's causal-mask buffer or normalisation parameters."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")
prune = pytest.importorskip("torch.nn.utils.prune", reason="needs torch.nn.utils.prune")

from coreprune import prune_magnitude, quantize, select  # noqa: E402


class TinyViT(torch.nn.Module):
    """A ViT: patch conv, class token, raw position embedding, an encoder, a 2-D norm scale, a head."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.patch_embed = torch.nn.Conv2d(3, d, 4, stride=4)
        self.cls_token = torch.nn.Parameter(torch.randn(1, 1, d))
        self.pos_embed = torch.nn.Parameter(torch.randn(1, 17, d))
        self.encoder = torch.nn.TransformerEncoder(
            torch.nn.TransformerEncoderLayer(d, 2, 32, batch_first=True), num_layers=1
        )
        self.norm = torch.nn.LayerNorm(d)
        self.post_norm = torch.nn.Parameter(torch.ones(1, d))  # a norm scale stored 2-D
        self.head = torch.nn.Linear(d, 1)  # one output: a (1, d) weight, still a weight

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(x), -1, -1), t], 1) + self.pos_embed
        return self.head(self.norm(self.encoder(t))[:, 0] * self.post_norm)


class GPT2Attention(torch.nn.Module):
    def __init__(self, d: int = 8, n: int = 6) -> None:
        super().__init__()
        self.c_attn = torch.nn.Linear(d, 3 * d)
        self.register_buffer("bias", torch.tril(torch.ones(n, n)).view(1, 1, n, n))  # a mask, float
        self.ln_1 = torch.nn.LayerNorm(d)


def _state(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def test_vit_default_selection_is_its_layer_weights():
    model = TinyViT()
    model(torch.randn(2, 3, 16, 16))
    state = _state(model)
    assert state["post_norm"].shape == (1, 16) and state["cls_token"].ndim == 3
    assert select(state) == [
        "patch_embed.weight",
        "encoder.layers.0.self_attn.in_proj_weight",
        "encoder.layers.0.self_attn.out_proj.weight",
        "encoder.layers.0.linear1.weight",
        "encoder.layers.0.linear2.weight",
        "head.weight",
    ]
    pruned, _ = prune_magnitude(state, 0.5)
    np.testing.assert_array_equal(pruned["pos_embed"], state["pos_embed"])
    assert quantize(state, 8)["cls_token"] is state["cls_token"]


@pytest.mark.parametrize("new_api", [False, True])
def test_weight_norm_magnitude_is_not_selected(new_api):
    conv = torch.nn.Conv2d(3, 8, 3)
    if new_api:
        conv = torch.nn.utils.parametrizations.weight_norm(conv)
        g, v = "parametrizations.weight.original0", "parametrizations.weight.original1"
    else:
        with pytest.warns(FutureWarning):
            conv = torch.nn.utils.weight_norm(conv)
        g, v = "weight_g", "weight_v"
    state = _state(conv)
    assert state[g].shape == (8, 1, 1, 1)
    assert select(state) == [v]


def test_pruning_masks_and_gpt2_mask_buffer_are_not_selected():
    lin = torch.nn.Linear(6, 4)
    prune.l1_unstructured(lin, "weight", amount=0.5)
    state = _state(lin)
    assert state["weight_mask"].dtype == np.float32  # torch keeps masks as float buffers
    assert select(state) == ["weight_orig"]
    attn = _state(GPT2Attention())
    assert attn["bias"].shape == (1, 1, 6, 6)
    assert select(attn) == ["c_attn.weight"]


def test_bert_style_embeddings_are_weights():
    emb = torch.nn.ModuleDict({
        "word_embeddings": torch.nn.Embedding(30, 8),
        "position_embeddings": torch.nn.Embedding(12, 8),
        "LayerNorm": torch.nn.LayerNorm(8),
    })
    assert select(_state(emb)) == ["word_embeddings.weight", "position_embeddings.weight"]


def test_weight_names_select_by_role_on_a_vit():
    from coreprune.torch import to_numpy, weight_names

    model = TinyViT()
    names = weight_names(model)
    assert names == [
        "patch_embed.weight",
        "encoder.layers.0.self_attn.in_proj_weight",
        "encoder.layers.0.self_attn.out_proj.weight",
        "encoder.layers.0.linear1.weight",
        "encoder.layers.0.linear2.weight",
        "head.weight",
    ]
    weights = to_numpy(model)
    _, masks = prune_magnitude(weights, 0.5, include=names)
    assert list(masks) == names
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv2d(3, 8, 3))
    assert weight_names(conv) == ["parametrizations.weight.original1"]
