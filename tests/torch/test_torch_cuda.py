"""coreprune.torch on CUDA: arrays are host copies, loads and masks stay on the tensor's device.

Skipped where no CUDA device is visible; run them on a GPU machine.
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
    input_hessians,
    load_numpy,
    reapply_masks,
    to_numpy,
)
from torch import nn  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def small_net(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    )
    with torch.no_grad():
        net(torch.randn(2, 3, 8, 8))  # training-mode forward: BatchNorm buffers move off their defaults
    return net.to(device="cuda", dtype=dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    sizes = {2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.view(sizes[t.element_size()]) if t.is_floating_point() else t


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_on_cuda_is_bit_identical_and_stays_on_the_device(dtype):
    source, target = small_net(0, dtype), small_net(1, dtype)
    weights = to_numpy(source)
    expected = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16}
    assert weights["0.weight"].dtype == expected[dtype]
    before = target.state_dict(keep_vars=True)
    load_numpy(target, weights)
    after = target.state_dict(keep_vars=True)
    for name, tensor in source.state_dict().items():
        assert after[name] is before[name], name
        assert after[name].device.type == "cuda" and after[name].dtype == tensor.dtype, name
        assert torch.equal(bits(after[name]), bits(tensor)), name


@pytest.mark.parametrize("copy", [True, False])
def test_cuda_arrays_are_host_copies(copy):
    net = small_net()
    weights = to_numpy(net, copy=copy)  # copy=False cannot view device memory: a host copy too
    weights["4.bias"][:] = 42.0
    assert not torch.any(net[4].bias == 42.0)
    np.testing.assert_array_equal(to_numpy(net)["4.weight"], net[4].weight.detach().cpu().numpy())


def test_attach_masks_on_cuda_keeps_zeros_through_training():
    net = small_net()
    rng = np.random.default_rng(0)
    masks = {name: rng.random(tuple(p.shape)) < 0.5 for name, p in net.named_parameters() if p.ndim >= 2}
    before = {k: v.copy() for k, v in to_numpy(net).items()}
    attach_masks(net, masks)
    assert prune.is_pruned(net)
    assert net[0].weight_mask.device.type == "cuda" and net[4].weight_orig.device.type == "cuda"
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    x, y = torch.randn(8, 3, 8, 8, device="cuda"), torch.randn(8, 5, device="cuda")
    for _ in range(5):
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    after = to_numpy(net)
    for name, mask in masks.items():
        assert np.all(after[name][~mask] == 0), name
        assert np.all(after[name][mask] != before[name][mask]), name
    for name, mask in attached_masks(net).items():
        np.testing.assert_array_equal(mask, masks[name])


def test_load_into_pruned_cuda_module_keeps_the_mask():
    net = small_net()
    mask = np.zeros((5, 144), bool)
    mask[::2] = True
    attach_masks(net, {"4.weight": mask})
    weights = {k: v.copy() for k, v in to_numpy(net).items()}
    weights["4.weight"] = np.ones((5, 144), np.float32)
    load_numpy(net, weights)
    assert net[4].weight_orig.device.type == "cuda"
    np.testing.assert_array_equal(to_numpy(net)["4.weight"], mask.astype(np.float32))


def test_reapply_and_detach_masks_stay_on_the_device():
    net = small_net()
    mask = np.zeros((5, 144), bool)
    mask[1::2] = True
    attach_masks(net, {"4.weight": mask}, freeze=True)
    with torch.no_grad():
        net[4].weight_orig.fill_(-1.0)
    reapply_masks(net)
    assert net[4].weight_orig.device.type == "cuda"
    np.testing.assert_array_equal(net[4].weight_orig.detach().cpu().numpy(), np.where(mask, -1.0, 0.0))
    detach_masks(net)
    weight = net[4].weight
    assert not prune.is_pruned(net) and weight.device.type == "cuda" and weight.requires_grad
    values = weight.detach().cpu().numpy()
    assert np.all(values[~mask] == 0) and not np.signbit(values[~mask]).any()


def test_attention_masks_ties_and_prefixes_stay_on_the_device():
    from coreprune import prune_magnitude

    torch.manual_seed(0)
    attn = nn.MultiheadAttention(8, 2, batch_first=True)
    emb = nn.Embedding(20, 8)
    model = nn.ModuleDict({"attn": attn, "embed": emb, "head": nn.Linear(8, 20, bias=False)})
    model.head.weight = emb.weight
    model = nn.DataParallel(model.cuda()).module  # a DataParallel-era model, back on its own
    weights = to_numpy(model)
    assert weights["embed.weight"] is weights["head.weight"]
    _, masks = prune_magnitude(weights, 0.5, scope="global")
    attach_masks(model, {"module." + k: v for k, v in masks.items()})  # prefixed names understood
    x = model.embed(torch.randint(0, 20, (2, 5), device="cuda"))
    out = model.head(model.attn(x, x, x, need_weights=False)[0])
    out.square().mean().backward()
    for name, tensor in model.state_dict().items():
        assert tensor.device.type == "cuda", name
    assert model.embed.weight_orig is model.head.weight_orig
    load_numpy(model, to_numpy(model))
    detach_masks(model)
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert model.embed.weight is model.head.weight


def test_input_hessians_of_a_cuda_model_match_the_cpu_and_leave_it_on_the_device():
    net = small_net(4).eval()
    x = torch.randn(6, 3, 8, 8)
    on_gpu = input_hessians(net, x.cuda())
    assert all(p.device.type == "cuda" for p in net.parameters())
    on_cpu = input_hessians(net.cpu(), x)
    assert list(on_gpu) == list(on_cpu) == ["0.weight", "4.weight"]
    np.testing.assert_array_equal(on_gpu["0.weight"], on_cpu["0.weight"])  # the raw input's patches
    np.testing.assert_allclose(on_gpu["4.weight"], on_cpu["4.weight"], rtol=1e-4, atol=1e-6)
