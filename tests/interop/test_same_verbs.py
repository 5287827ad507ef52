"""coreprune.torch and coreprune.mxnet: the same verbs, the same signatures, the same mask decisions.

The mask rule has one home (coreprune.masks.check_masks); these tests hold coreprune.apply_masks and
both adapters' attach_masks to it on the same weights: the same masks are accepted with the same
bit-exact result, and the same masks are refused with the same message.
"""

from __future__ import annotations

import inspect
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")
mx = pytest.importorskip("mxnet", reason="needs MXNet")
# Without the frameworks, "torch"/"mxnet" could resolve to the tests/ folders of the same names
# (namespace packages): only real installations have these submodules.
pytest.importorskip("torch.nn", reason="needs PyTorch")
pytest.importorskip("mxnet.gluon", reason="needs MXNet")

import coreprune.mxnet as cpm  # noqa: E402
import coreprune.torch as cpt  # noqa: E402

import coreprune  # noqa: E402
from coreprune.errors import CompressionError  # noqa: E402
from coreprune.load_report import LoadReport  # noqa: E402

VERBS = [
    "input_hessians",
    "to_numpy",
    "load_numpy",
    "attach_masks",
    "attached_masks",
    "reapply_masks",
    "detach_masks",
    "kd_loss",
    "distill_student",
]


def test_both_adapters_export_the_same_names_in_the_same_order():
    assert cpt.__all__ == cpm.__all__
    for name in cpt.__all__:
        assert hasattr(cpt, name) and hasattr(cpm, name), name
    assert set(VERBS) <= set(cpt.__all__)
    assert cpt.LoadReport is cpm.LoadReport is LoadReport


@pytest.mark.parametrize("verb", VERBS)
def test_verbs_have_the_same_signature(verb):
    """Names, kinds and defaults of every parameter; only the framework types in the hints differ."""

    def shape(func):
        return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]

    assert shape(getattr(cpt, verb)) == shape(getattr(cpm, verb))
    assert inspect.isfunction(getattr(cpt, verb)) and inspect.isfunction(getattr(cpm, verb))


def test_to_numpy_copies_in_both_and_only_torch_lends_its_memory():
    net, block = _torch_net(), _mx_net()
    assert all(a.flags.owndata for a in cpt.to_numpy(net).values())
    assert all(a.flags.owndata for a in cpm.to_numpy(block).values())
    view = cpt.to_numpy(net, copy=False)["0.weight"]
    assert np.shares_memory(view, net[0].weight.detach().numpy())
    with pytest.raises(CompressionError, match=r"to_numpy\(copy=False\): MXNet cannot share its memory"):
        cpm.to_numpy(block, copy=False)


# ------------------------------------------------------------------ the one mask rule


def _torch_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))


def _mx_net() -> mx.gluon.nn.HybridSequential:
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Dense(3, in_units=4), mx.gluon.nn.Dense(2, in_units=3))
    net.initialize()
    return net


def _three():
    """The same weights (``0.weight`` .. ``1.bias``) as a dict, a torch module and a Gluon block."""
    weights = {name: array for name, array in cpt.to_numpy(_torch_net()).items()}
    weights["0.weight"][0, 0] = -1.5  # a negative entry to prune: +0.0, not -0.0, everywhere
    net, block = _torch_net(), _mx_net()
    cpt.load_numpy(net, weights)
    cpm.load_numpy(block, weights)
    return weights, net, block


def _bits(weights):
    return {name: array.tobytes() for name, array in weights.items()}


def test_accepted_masks_give_bit_identical_weights_in_all_three():
    weights, net, block = _three()
    masks = {
        "0.weight": np.random.default_rng(0).random((3, 4)) > 0.5,
        "1.bias": np.array([True, False]),
    }
    masks["0.weight"][0, 0] = False
    expected = coreprune.apply_masks(weights, masks)
    assert np.signbit(expected["0.weight"][0, 0]) == np.False_
    cpt.attach_masks(net, masks)
    cpm.attach_masks(block, masks)
    assert _bits(cpt.to_numpy(net)) == _bits(expected)
    assert _bits(cpm.to_numpy(block)) == _bits(expected)
    for adapter, target in ((cpt, net), (cpm, block)):
        got = adapter.attached_masks(target)
        assert list(got) == list(masks)
        for name in masks:
            np.testing.assert_array_equal(got[name], masks[name])
        adapter.detach_masks(target)
        assert adapter.attached_masks(target) == {}
        assert _bits(adapter.to_numpy(target)) == _bits(expected)


BAD_MASKS = {
    "unknown name": {"2.weight": np.ones((2, 3), bool), "0.weight": np.ones((3, 4), bool)},
    "0/1 numbers": {"0.weight": np.ones((3, 4), np.int64)},
    "float mask": {"1.bias": np.array([1.0, 0.0])},
    "transposed": {"0.weight": np.ones((4, 3), bool)},
    "broadcastable": {"0.bias": np.ones((1, 3), bool)},
    "all at once": {
        "fc.weight": np.ones(1, bool),
        "nope": np.ones(1, bool),
        "0.weight": np.ones((3, 4), np.uint8),
        "1.weight": np.ones((3, 2), bool),
    },
    "a list": {"0.weight": [[True] * 4] * 3},
}


@pytest.mark.parametrize("case", list(BAD_MASKS))
def test_refused_masks_give_the_same_error_in_all_three(case):
    weights, net, block = _three()
    masks = BAD_MASKS[case]
    messages = {}
    for verb, call in (
        ("apply_masks", lambda: coreprune.apply_masks(weights, masks)),
        ("attach_masks torch", lambda: cpt.attach_masks(net, masks)),
        ("attach_masks mxnet", lambda: cpm.attach_masks(block, masks)),
    ):
        with pytest.raises(CompressionError) as info:
            call()
        message = str(info.value)
        prefix = verb.split()[0] + ": "
        messages[verb] = message[len(prefix) :] if message.startswith(prefix) else message
    assert len(set(messages.values())) == 1, messages
    # Nothing was attached or changed on refusal.
    assert cpt.attached_masks(net) == {} and cpm.attached_masks(block) == {}
    assert _bits(cpt.to_numpy(net)) == _bits(weights) == _bits(cpm.to_numpy(block))


def _verb_section(doc: str) -> str:
    text = (pathlib.Path(__file__).parents[2] / "docs" / doc).read_text()
    start = text.index("## The verbs: the same in")
    return text[start : text.index("\n## ", start + 1)]


def test_the_verb_table_is_the_same_in_both_docs_and_names_every_export():
    section = _verb_section("torch.md")
    assert section == _verb_section("mxnet.md")
    for name in cpt.__all__:
        assert f"`{name}" in section, name
    for verb in VERBS:  # each row shows the real signature
        parts, star = [], False
        for p in inspect.signature(getattr(cpt, verb)).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY and not star:
                parts.append("*")
                star = True
            default = "" if p.default is inspect.Parameter.empty else "=" + repr(p.default).replace("'", '"')
            parts.append(p.name + default)
        row = f"`{verb}({', '.join(parts)})"
        assert row in section, row
