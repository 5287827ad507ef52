"""coreprune's structured pruning against Torch-Pruning (DepGraph), the peer library, on the same models.

Same model, same weights, same importance (group L2: Torch-Pruning's
``GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None)``), same ratio, the classifier
kept: the pruned ``state_dict`` s must be equal, tensor for tensor. Two documented differences:

* Torch-Pruning leaves depthwise convolutions' filters out of the group magnitude; coreprune's
  ``"l2"`` counts them. With an importance function that leaves them out too, MobileNetV2's
  pruned dicts are equal.
* At a concatenation (SqueezeNet's Fire) Torch-Pruning prunes each concatenated conv by the ratio
  on its own; coreprune ranks the concatenated channels as one group, so the two expands may keep
  different counts (their sum is the same).
"""

from __future__ import annotations

import copy
import importlib.util
import pathlib
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tp = pytest.importorskip("torch_pruning", reason="torch-pruning==1.6.1 is not installed")

from coreprune.torch.structured import prune_channels, trace_graph  # noqa: E402

from coreprune.structured import group_importance  # noqa: E402

_HERE = pathlib.Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("structured_models", _HERE / "structured_models.py")
sm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sm)


def _torch_pruning(model, x, ignored, round_to=None):
    model = copy.deepcopy(model)
    imp = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None)
    pruner = tp.pruner.MagnitudePruner(
        model, x, importance=imp, pruning_ratio=0.5, ignored_layers=[ignored(model)], round_to=round_to
    )
    pruner.step()
    return model.state_dict()


def _assert_same(ours, theirs):
    assert list(ours) == list(theirs)
    for k in ours:
        assert ours[k].shape == theirs[k].shape, k
        assert torch.equal(ours[k], theirs[k]), k


@pytest.mark.parametrize("round_to", [None, 8])
@pytest.mark.parametrize(
    "factory", [lambda: sm.resnet18(16, 10), lambda: sm.resnet50(8, 10)], ids=["r18", "r50"]
)
def test_resnet_prunes_to_the_same_dict_as_torch_pruning(factory, round_to):
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(1, 3, 32, 32)
    ours = prune_channels(model, x, 0.5, round_to=round_to or 1).state_dict()
    _assert_same(ours, _torch_pruning(model, x, lambda m: m.fc, round_to))


def test_mobilenetv2_matches_when_depthwise_filters_are_left_out_of_the_score():
    torch.manual_seed(0)
    model = sm.MobileNetV2(0.25, 10).eval()
    x = torch.randn(1, 3, 32, 32)
    graph, _ = trace_graph(model, x)
    depthwise = {n.name for n in graph if n.op == "conv" and n.attrs.get("groups", 1) > 1}

    def l2_without_depthwise(group, weights):
        units = tuple(
            replace(
                u, slices=tuple(s for s in u.slices if not (s.kind == "producer" and s.node in depthwise))
            )
            for u in group.units
        )
        return group_importance(replace(group, units=units), weights, "l2")

    ours = prune_channels(model, x, 0.5, importance=l2_without_depthwise).state_dict()
    _assert_same(ours, _torch_pruning(model, x, lambda m: m.classifier[1]))
    # With coreprune's own "l2" (depthwise filters counted) the shapes agree but some choices differ.
    plain = prune_channels(model, x, 0.5).state_dict()
    theirs = _torch_pruning(model, x, lambda m: m.classifier[1])
    assert all(plain[k].shape == theirs[k].shape for k in plain)
    assert any(not torch.equal(plain[k], theirs[k]) for k in plain)


def test_squeezenet_fire_concat_is_ranked_jointly():
    torch.manual_seed(0)
    model = sm.SqueezeNet(10).eval()
    x = torch.randn(1, 3, 48, 48)
    ours = prune_channels(model, x, 0.5).state_dict()
    theirs = _torch_pruning(model, x, lambda m: m.classifier[1])
    for i in (3, 4, 6, 7, 9, 10, 11, 12):
        e1, e3 = f"features.{i}.expand1x1.weight", f"features.{i}.expand3x3.weight"
        assert theirs[e1].shape[0] == model.features[i].expand1x1.out_channels // 2
        assert ours[e1].shape[0] + ours[e3].shape[0] == theirs[e1].shape[0] + theirs[e3].shape[0]
        assert np.array_equal(
            ours[f"features.{i}.squeeze.weight"].shape, theirs[f"features.{i}.squeeze.weight"].shape
        )
