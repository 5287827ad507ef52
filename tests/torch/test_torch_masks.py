"""coreprune.torch.attach_masks / attached_masks: PyTorch's own pruning hooks keep zeros through training.

The reference is ``torch.nn.utils.prune`` itself (``is_pruned``, ``remove``, ``l1_unstructured``) and
real optimizer steps (SGD with momentum and weight decay, Adam, AdamW): no hook or optimizer is mocked.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")

import ml_dtypes  # noqa: E402
from coreprune.torch import (  # noqa: E402
    attach_masks,
    attached_masks,
    detach_masks,
    load_numpy,
    reapply_masks,
    to_numpy,
)
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

from coreprune.errors import CompressionError  # noqa: E402


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    )


def random_masks(net: nn.Module, keep: float = 0.5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: rng.random(tuple(p.shape)) < keep for name, p in net.named_parameters() if p.ndim >= 2
    }


def train(net: nn.Module, opt: torch.optim.Optimizer, steps: int = 5, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 3, 8, 8, generator=gen), torch.randn(8, 5, generator=gen)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()


def test_attach_installs_torch_pruning_with_the_given_masks():
    net = small_net()
    masks = random_masks(net)
    assert attach_masks(net, masks) is net
    assert prune.is_pruned(net)
    for name, mask in masks.items():
        path, _, attr = name.rpartition(".")
        sub = net.get_submodule(path)
        assert isinstance(getattr(sub, attr + "_orig"), nn.Parameter)
        assert attr not in sub._parameters
        np.testing.assert_array_equal(getattr(sub, attr + "_mask").numpy(), mask.astype(np.float32))
        assert np.all(getattr(sub, attr).detach().numpy()[~mask] == 0)
        assert np.all(getattr(sub, attr).detach().numpy()[mask] != 0)  # random init has no exact zeros


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.05),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
        lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.05),
        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.05),
    ],
    ids=["sgd-momentum-wd", "sgd-nesterov", "adam-wd", "adamw"],
)
def test_pruned_entries_stay_exactly_zero_while_the_rest_trains(make_opt):
    net = small_net()
    masks = random_masks(net, keep=0.4)
    before = {k: v.copy() for k, v in to_numpy(net).items()}
    attach_masks(net, masks)
    train(net, make_opt(net.parameters()), steps=6)
    after = to_numpy(net)
    for name, mask in masks.items():
        assert np.all(after[name][~mask] == 0.0), name
        assert np.all(after[name][mask] != before[name][mask]), f"kept entries of {name} did not train"
        # The hook recomputes weight from weight_orig on every forward: check what the model really uses.
        path, _, attr = name.rpartition(".")
        net(torch.zeros(1, 3, 8, 8))
        assert torch.all(getattr(net.get_submodule(path), attr)[torch.from_numpy(~mask)] == 0)
    # Unmasked tensors (biases, BatchNorm) train normally.
    assert not np.array_equal(after["4.bias"], before["4.bias"])
    assert not np.array_equal(after["1.running_mean"], before["1.running_mean"])


def test_optimizer_built_before_attaching_keeps_working():
    net = small_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    weight = net[4].weight
    masks = {"4.weight": random_masks(net)["4.weight"]}
    attach_masks(net, masks)
    assert net[4].weight_orig is weight  # the same Parameter object the optimizer holds
    before = weight.detach().clone()
    train(net, opt)
    assert not torch.equal(weight, before)
    assert np.all(to_numpy(net)["4.weight"][~masks["4.weight"]] == 0)


def test_prune_remove_makes_the_zeros_permanent():
    net = small_net()
    masks = random_masks(net)
    attach_masks(net, masks)
    train(net, torch.optim.Adam(net.parameters(), lr=0.01))
    effective = {k: v.copy() for k, v in to_numpy(net).items()}
    for name in masks:
        path, _, attr = name.rpartition(".")
        prune.remove(net.get_submodule(path), attr)
    assert not prune.is_pruned(net)
    assert list(to_numpy(net)) == list(net.state_dict())
    for name, mask in masks.items():
        weight = dict(net.named_parameters())[name]
        assert isinstance(weight, nn.Parameter)
        np.testing.assert_array_equal(weight.detach().numpy(), effective[name])
        assert np.all(weight.detach().numpy()[~mask] == 0)


def test_freeze_stops_the_masked_parameters_only():
    net = small_net()
    masks = {"0.weight": random_masks(net)["0.weight"]}
    before = {k: v.copy() for k, v in to_numpy(net).items()}
    attach_masks(net, masks, freeze=True)
    assert net[0].weight_orig.requires_grad is False
    assert net[4].weight.requires_grad is True
    train(net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9))
    after = to_numpy(net)
    np.testing.assert_array_equal(after["0.weight"], np.where(masks["0.weight"], before["0.weight"], 0))
    assert not np.array_equal(after["4.weight"], before["4.weight"])


def test_numeric_masks_are_refused_and_mask_ne_0_is_the_conversion():
    layer = nn.Linear(3, 2)
    numeric = np.array([[1, 0, 1], [0, 1, 1]], np.int8)
    with pytest.raises(CompressionError, match="mask 'weight' has dtype int8, expected bool"):
        attach_masks(layer, {"weight": numeric})
    with pytest.raises(CompressionError, match="mask 'bias' has dtype bfloat16, expected bool"):
        attach_masks(layer, {"bias": np.array([1.0, 0.0], ml_dtypes.bfloat16)})
    assert not prune.is_pruned(layer)
    attach_masks(layer, {"weight": numeric != 0})
    assert (to_numpy(layer)["weight"] == 0).tolist() == [[False, True, False], [True, False, False]]


def test_masks_are_copied_not_aliased():
    layer = nn.Linear(3, 2)
    mask = np.ones((2, 3), bool)
    attach_masks(layer, {"weight": mask})
    assert mask.all()  # not modified
    mask[:] = False
    layer(torch.ones(1, 3))
    assert torch.all(layer.weight_mask == 1) and torch.all(layer.weight != 0)


def test_attaching_twice_replaces_the_mask_as_in_mxnet():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 3.0, -4.0]]))
    attach_masks(layer, {"weight": np.array([[True, True, False, True]])})
    attach_masks(layer, {"weight": np.array([[True, False, True, True]])})
    assert attached_masks(layer)["weight"].tolist() == [[True, False, True, True]]
    # The entry the first mask pruned stays 0 (not its old 3.0) but trains again.
    assert to_numpy(layer)["weight"].tolist() == [[1.0, 0.0, 0.0, -4.0]]
    assert len([h for h in layer._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]) == 1
    layer(torch.ones(1, 4)).sum().backward()
    assert layer.weight_orig.grad.tolist() == [[1.0, 0.0, 1.0, 1.0]]


def test_attach_replaces_a_mask_set_by_torch_pruning():
    layer = nn.Linear(4, 1, bias=False)
    prune.l1_unstructured(layer, "weight", amount=2)
    attach_masks(layer, {"weight": np.ones((1, 4), bool)})
    assert attached_masks(layer)["weight"].all()


def test_attached_masks_reads_torch_l1_unstructured():
    net = small_net()
    prune.l1_unstructured(net[0], "weight", amount=0.3)
    prune.l1_unstructured(net[4], "weight", amount=0.6)
    masks = attached_masks(net)
    assert list(masks) == ["0.weight", "4.weight"]
    for name, mask in masks.items():
        path = name.rpartition(".")[0]
        assert mask.dtype == np.bool_
        np.testing.assert_array_equal(mask, net.get_submodule(path).weight_mask.numpy() == 1)
    assert int((~masks["4.weight"]).sum()) == round(0.6 * 720)
    assert attached_masks(small_net()) == {}


def test_masks_round_trip_to_another_module():
    source, target = small_net(0), small_net(1)
    masks = random_masks(source, seed=3)
    attach_masks(source, masks)
    attach_masks(target, attached_masks(source))
    for name, mask in attached_masks(target).items():
        np.testing.assert_array_equal(mask, masks[name])
    # Weights loaded into the pruned target follow its masks.
    load_numpy(target, {k: v.copy() for k, v in to_numpy(source).items()})
    for name, array in to_numpy(target).items():
        np.testing.assert_array_equal(array, to_numpy(source)[name], err_msg=name)


def test_unknown_names_are_listed_and_nothing_is_attached():
    net = small_net()
    masks = random_masks(net)
    masks["features.0.weight"] = np.ones((2, 2), bool)
    masks["0.gamma"] = np.ones(4, bool)
    with pytest.raises(CompressionError) as info:
        attach_masks(net, masks)
    message = str(info.value)
    assert "no tensor named 'features.0.weight', '0.gamma'" in message
    assert "the names are: 0.weight, 0.bias" in message
    assert not prune.is_pruned(net)
    attach_masks(net, {"4.weight": np.ones((5, 144), bool)})
    with pytest.raises(CompressionError, match=r"the names are: 0.weight, 0.bias, .*, 4.bias, 4.weight\)$"):
        attach_masks(net, {"4.gamma": np.ones(5, bool)})  # listed under the names attach_masks accepts


def test_buffer_names_shape_mismatches_and_bad_values_are_refused():
    net = small_net()
    with pytest.raises(CompressionError, match="'1.running_mean' is a buffer, not a parameter"):
        attach_masks(net, {"1.running_mean": np.ones(4, bool), "0.weight": np.ones((4, 3, 3, 3), bool)})
    bad = {"4.weight": np.ones((5, 10), bool), "0.weight": np.full((4, 3, 3, 3), 0.5)}
    with pytest.raises(CompressionError) as info:
        attach_masks(net, bad)
    message = str(info.value)
    assert "mask '4.weight' has shape (5, 10), the tensor (5, 144)" in message
    assert "mask '0.weight' has dtype float64, expected bool" in message
    assert not prune.is_pruned(net)


def test_pruning_bookkeeping_names_are_refused():
    layer = nn.Linear(2, 2)
    attach_masks(layer, {"weight": np.eye(2, dtype=bool)})
    for name in ("weight_orig", "weight_mask"):
        with pytest.raises(CompressionError, match=f"'{name}' is pruning bookkeeping.*'weight'"):
            attach_masks(layer, {name: np.ones((2, 2), bool)})


def test_wrong_arguments_are_refused():
    with pytest.raises(CompressionError, match="torch.nn.Module"):
        attach_masks({"weight": torch.zeros(2)}, {"weight": np.ones(2, bool)})
    with pytest.raises(CompressionError, match=r"\['weight'\] is a torch.Tensor"):
        attach_masks(nn.Linear(2, 2), {"weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(CompressionError, match="torch.nn.Module"):
        attached_masks({"weight": torch.zeros(2)})


def test_bfloat16_module_keeps_zeros_under_adam():
    net = small_net().to(torch.bfloat16)
    masks = random_masks(net)
    attach_masks(net, masks)
    assert net[0].weight_mask.dtype == torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=gen).to(torch.bfloat16)
    opt = torch.optim.Adam(net.parameters(), lr=0.01, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        net(x).float().pow(2).mean().backward()
        opt.step()
    out = to_numpy(net)
    for name, mask in masks.items():
        assert out[name].dtype == ml_dtypes.bfloat16
        assert np.all(out[name][~mask].astype(np.float32) == 0)


@given(seed=st.integers(0, 2**16), keep=st.floats(0.0, 1.0))
def test_effective_weight_is_orig_times_mask_property(seed, keep):
    """For any mask, to_numpy gives weight_orig where kept and exactly 0 elsewhere."""
    torch.manual_seed(seed)
    layer = nn.Linear(6, 4)
    mask = np.random.default_rng(seed).random((4, 6)) < keep
    attach_masks(layer, {"weight": mask})
    orig = layer.weight_orig.detach().numpy().copy()
    np.testing.assert_array_equal(to_numpy(layer)["weight"], np.where(mask, orig, np.float32(0)))
    np.testing.assert_array_equal(attached_masks(layer)["weight"], mask)


def test_reapply_masks_zeroes_the_stored_orig_and_recomputes_weight():
    layer = nn.Linear(3, 2)
    mask = np.array([[True, False, True], [False, True, True]])
    attach_masks(layer, {"weight": mask})
    assert np.all(layer.weight_orig.detach().numpy()[~mask] == 0)  # zeroed at attach, as in MXNet
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, weight_decay=0.5)
    with torch.no_grad():
        layer.weight_orig.fill_(2.0)  # moved behind the mask's back
    opt.step()
    assert reapply_masks(layer) is layer
    orig = layer.weight_orig.detach().numpy()
    np.testing.assert_array_equal(orig, np.where(mask, 2.0, 0.0).astype(np.float32))
    np.testing.assert_array_equal(layer.weight.detach().numpy(), orig)
    assert not np.signbit(orig[~mask]).any()


def test_detach_masks_makes_pruning_permanent_like_prune_remove():
    net, reference = small_net(), small_net()
    masks = random_masks(net)
    params_before = {name: p for name, p in net.named_parameters()}
    attach_masks(net, masks, freeze=True)
    attach_masks(reference, masks)
    assert not net[0].weight_orig.requires_grad
    assert detach_masks(net) is net
    assert not prune.is_pruned(net) and not attached_masks(net)
    for name, p in net.named_parameters():
        assert p is params_before[name] and p.requires_grad, name  # same objects, trainable again
    for name in masks:  # torch's own prune.remove gives the same values
        path, _, attr = name.rpartition(".")
        prune.remove(reference.get_submodule(path), attr)
    for name, array in to_numpy(net).items():
        np.testing.assert_array_equal(array, to_numpy(reference)[name], err_msg=name)
    for name, mask in masks.items():
        weight = to_numpy(net)[name]
        assert np.all(weight[~mask] == 0) and not np.signbit(weight[~mask]).any()  # +0.0, as in MXNet
    assert detach_masks(net) is net  # nothing left to detach


def test_freeze_false_on_reattach_restores_requires_grad():
    layer = nn.Linear(2, 2)
    layer.bias.requires_grad_(False)
    attach_masks(layer, {"weight": np.eye(2, dtype=bool), "bias": np.ones(2, bool)}, freeze=True)
    attach_masks(layer, {"weight": np.eye(2, dtype=bool), "bias": np.ones(2, bool)})
    assert layer.weight_orig.requires_grad and not layer.bias_orig.requires_grad
    detach_masks(layer)
    assert layer.weight.requires_grad and not layer.bias.requires_grad


def test_shared_modules_and_tied_parameters_take_one_mask():
    shared = nn.Linear(3, 3)
    net = nn.Sequential(shared, nn.Tanh(), shared)  # one submodule under the names 0 and 2
    mask = np.eye(3, dtype=bool)
    attach_masks(net, {"0.weight": mask, "2.weight": mask})
    assert sum(isinstance(h, prune.BasePruningMethod) for h in shared._forward_pre_hooks.values()) == 1
    np.testing.assert_array_equal(to_numpy(net)["2.weight"] != 0, mask)
    with pytest.raises(CompressionError, match="'0.weight' and '2.weight' are the same .*different masks"):
        attach_masks(net, {"0.weight": mask, "2.weight": ~mask})
    np.testing.assert_array_equal(attached_masks(net)["0.weight"], mask)  # unchanged by the refusal
    detach_masks(net)
    assert not prune.is_pruned(net)
    np.testing.assert_array_equal(shared.weight.detach().numpy() != 0, mask)
