"""coreprune.torch on the architectures people use: attention and transformer encoders (parameters read
by another module), a ViT-style model, tied embeddings, DataParallel / torch.compile prefixes, nested
modules. The reference is always the same model with the masked weights written in as plain weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")

from coreprune.torch import attach_masks, attached_masks, detach_masks, load_numpy, to_numpy  # noqa: E402
from torch import nn  # noqa: E402

from coreprune import prune_magnitude  # noqa: E402
from coreprune.name_mapping import strip_wrapper_prefixes  # noqa: E402


class ViTish(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, 17, d) * 0.1)
        layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 5)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(x), -1, -1), t], 1) + self.pos_embed
        return self.head(self.encoder(t)[:, 0])


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(12, 3, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def _masked_reference(model: nn.Module, pristine: nn.Module) -> nn.Module:
    """``pristine`` (an unmasked copy) with ``model``'s effective (masked) weights written in."""
    ref = copy.deepcopy(pristine)
    load_numpy(ref, to_numpy(model))
    return ref


MODELS = {
    "multihead_attention": (Attention, lambda: torch.randn(4, 7, 12)),
    "vit": (ViTish, lambda: torch.randn(4, 3, 16, 16)),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_masks_reach_parameters_read_by_another_module(kind):
    build, data = MODELS[kind]
    torch.manual_seed(0)
    model = build()
    pristine = copy.deepcopy(model)
    weights = to_numpy(model)
    _, masks = prune_magnitude(weights, 0.6, scope="global")
    assert any("out_proj.weight" in n for n in masks) and any("in_proj_weight" in n for n in masks)
    attach_masks(model, masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = data()
    for _ in range(3):
        model.train()
        ref = _masked_reference(model, pristine)
        out = model(x)
        torch.testing.assert_close(out, ref(x), rtol=0, atol=0)  # the forward uses the masked weights
        loss = out.square().mean()
        opt.zero_grad()
        loss.backward()  # no "backward through the graph a second time"
        opt.step()
    model.eval()
    with torch.no_grad():  # inference: the transformer fast path reads the weights itself
        torch.testing.assert_close(model(x), _masked_reference(model, pristine).eval()(x), rtol=0, atol=0)
    for name, mask in masks.items():
        assert (to_numpy(model)[name][~mask] == 0).all(), name
    detach_masks(model)
    model(x).sum().backward()  # still trains after the masks are gone


def _tied_lm():
    torch.manual_seed(2)
    emb = nn.Embedding(40, 8)
    model = nn.ModuleDict({"embed": emb, "body": nn.Linear(8, 8), "head": nn.Linear(8, 40, bias=False)})
    model.head.weight = emb.weight
    return model


def _lm_forward(model, tokens):
    return model.head(torch.tanh(model.body(model.embed(tokens))))


def test_attach_masks_and_load_numpy_keep_ties():
    model = _tied_lm()
    pristine = copy.deepcopy(model)
    weights = to_numpy(model)
    assert weights["embed.weight"] is weights["head.weight"]  # one array: coreprune counts it once
    result = prune_magnitude(weights, 0.5, scope="global")
    assert result.aliases == {"head.weight": "embed.weight"}
    attach_masks(model, {n: result.masks[n] for n in ("embed.weight", "body.weight")})
    assert model.embed.weight_orig is model.head.weight_orig  # still one Parameter
    assert set(attached_masks(model)) == {"embed.weight", "head.weight", "body.weight"}
    tokens = torch.randint(0, 40, (3, 5))
    out = _lm_forward(model, tokens)
    torch.testing.assert_close(out, _lm_forward(_masked_reference(model, pristine), tokens), rtol=0, atol=0)
    exported = to_numpy(model)
    assert exported["embed.weight"] is exported["head.weight"]
    with pytest.raises(Exception, match="are the same .shared. parameter but got different masks"):
        attach_masks(model, {"embed.weight": result.masks["embed.weight"],
                             "head.weight": ~result.masks["embed.weight"]})
    plain = _tied_lm()
    load_numpy(plain, {k: v.copy() for k, v in exported.items()})
    assert plain.embed.weight is plain.head.weight
    np.testing.assert_array_equal(plain.head.weight.detach().numpy(), exported["embed.weight"])


def test_dataparallel_and_compile_prefixes():
    torch.manual_seed(3)
    plain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    parallel = nn.DataParallel(copy.deepcopy(plain))
    compiled = torch.compile(copy.deepcopy(plain))
    dp_weights = to_numpy(parallel)
    assert list(dp_weights) == ["module.0.weight", "module.0.bias", "module.2.weight", "module.2.bias"]
    assert list(to_numpy(compiled))[0] == "_orig_mod.0.weight"
    stripped = strip_wrapper_prefixes(dp_weights)
    assert list(stripped.values()) == list(to_numpy(plain))
    # a DataParallel checkpoint loads into the plain model, a plain one into the compiled model
    _, masks = prune_magnitude(dp_weights, 0.5)
    target = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    assert load_numpy(target, dp_weights).missing == []
    assert load_numpy(compiled, to_numpy(target)).unexpected == []
    attach_masks(target, masks)  # masks named module.* on the plain model
    attach_masks(compiled, {strip_wrapper_prefixes(masks)[k]: v for k, v in masks.items()})
    x = torch.randn(5, 6)
    torch.testing.assert_close(target(x), compiled._orig_mod(x), rtol=0, atol=0)
    assert sorted(attached_masks(target)) == ["0.weight", "2.weight"]


def test_nested_model_keeps_nested_names():
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.ModuleDict({
            "stem": nn.Conv2d(3, 4, 3),
            "blocks": nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1)),
        }),
    )
    weights = to_numpy(model)
    _, masks = prune_magnitude(weights, 0.5)
    assert sorted(masks) == ["0.blocks.0.weight", "0.blocks.1.weight", "0.stem.weight"]
    attach_masks(model, masks)
    assert sorted(attached_masks(model)) == sorted(masks)
    assert set(to_numpy(model)) == set(weights)
