"""coreprune.torch.to_numpy / load_numpy: names, dtypes, aliasing, in-place loading, errors.

The references are PyTorch itself: ``state_dict()`` for names and values, tensor bits for bit
exactness, ``Tensor.copy_``/``Tensor.to`` for casts, data pointers for aliasing.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")

import ml_dtypes  # noqa: E402
from coreprune.torch import LoadReport, attach_masks, load_numpy, to_numpy  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

import coreprune  # noqa: E402
from coreprune.errors import CompressionError  # noqa: E402

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def small_net(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Conv + BatchNorm + Linear, after one training-mode forward so BN buffers are not at defaults."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    )
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 3, 8, 8))
    return net.to(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a tensor as integers (bit-exact comparison, NaN payloads and -0.0 included)."""
    t = t.detach().cpu()
    return t if not t.is_floating_point() else t.view(_INT_OF_SIZE[t.element_size()])


def assert_state_bit_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(bits(sa[name]), bits(sb[name])), name


def data_ptr(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def copied(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in weights.items()}


# ---------------------------------------------------------------- to_numpy


def test_names_and_values_are_the_state_dict():
    net = small_net()
    weights = to_numpy(net)
    state = net.state_dict()
    assert list(weights) == list(state)  # parameters and buffers, state_dict order
    assert "1.num_batches_tracked" in weights and "1.running_var" in weights
    for name, t in state.items():
        assert isinstance(weights[name], np.ndarray)
        assert weights[name].shape == tuple(t.shape)
        np.testing.assert_array_equal(weights[name], t.numpy())
    assert weights["1.num_batches_tracked"].dtype == np.int64
    assert int(weights["1.num_batches_tracked"]) == 1
    assert not np.all(weights["1.running_mean"] == 0)


def test_round_trip_is_bit_identical():
    source, target = small_net(seed=0), small_net(seed=1)
    assert not torch.equal(source[0].weight, target[0].weight)
    report = load_numpy(target, copied(to_numpy(source)))
    assert report == LoadReport([], [], [])
    assert_state_bit_equal(source, target)


def test_state_dict_mapping_converts_like_the_module():
    net = small_net()
    from_module, from_mapping = to_numpy(net), to_numpy(net.state_dict())
    assert list(from_module) == list(from_mapping)
    for name in from_module:
        np.testing.assert_array_equal(from_module[name], from_mapping[name])


def test_arrays_are_copies_by_default():
    net = small_net()
    weights = to_numpy(net)
    assert all(array.flags.owndata for array in weights.values())
    assert not np.shares_memory(weights["0.weight"], net[0].weight.detach().numpy())
    before = net[4].bias.detach().clone()
    weights["4.bias"][:] = 99.0
    assert torch.equal(net[4].bias.detach(), before)
    with torch.no_grad():
        net[0].weight.zero_()
    assert np.any(weights["0.weight"] != 0)


def test_copy_must_be_a_bool():
    with pytest.raises(CompressionError, match="copy must be True or False"):
        to_numpy(small_net(), copy="no")


def test_cpu_arrays_alias_the_tensors_both_ways_with_copy_false():
    net = small_net()
    weights = to_numpy(net, copy=False)
    conv = net[0].weight
    assert data_ptr(weights["0.weight"]) == conv.data_ptr()
    with torch.no_grad():
        conv[0, 0, 0, 0] = 123.0
    assert weights["0.weight"][0, 0, 0, 0] == 123.0
    weights["4.bias"][1] = -7.0
    assert net[4].bias[1].item() == -7.0


def test_parameter_with_requires_grad_in_a_mapping_converts():
    p = nn.Parameter(torch.arange(3.0))
    out = to_numpy({"p": p}, copy=False)
    assert out["p"].tolist() == [0.0, 1.0, 2.0]
    assert data_ptr(out["p"]) == p.data_ptr()


def test_non_contiguous_parameter_is_a_strided_view_and_loads_back():
    layer = nn.Linear(3, 4)
    layer.weight = nn.Parameter(torch.randn(3, 4).t())  # (4, 3) transposed view
    assert not layer.weight.is_contiguous()
    array = to_numpy(layer, copy=False)["weight"]
    np.testing.assert_array_equal(array, layer.weight.detach().numpy())
    assert not array.flags.c_contiguous
    assert data_ptr(array) == layer.weight.data_ptr()
    strides, weight = layer.weight.stride(), layer.weight
    new = np.arange(12, dtype=np.float32).reshape(4, 3)
    load_numpy(layer, {"weight": new, "bias": np.zeros(4, np.float32)})
    assert layer.weight is weight and layer.weight.stride() == strides
    assert layer.weight.tolist() == new.tolist()


def test_offset_slice_view_aliases():
    base = torch.arange(10.0)
    view = base[2:8:2]
    out = to_numpy({"v": view}, copy=False)["v"]
    assert out.tolist() == [2.0, 4.0, 6.0]
    base[4] = 40.0
    assert out.tolist() == [2.0, 40.0, 6.0]


@pytest.mark.parametrize(
    "tdtype, ndtype",
    [
        (torch.float16, np.dtype(np.float16)),
        (torch.bfloat16, np.dtype(ml_dtypes.bfloat16)),
        (torch.float64, np.dtype(np.float64)),
    ],
)
def test_low_and_high_precision_modules_round_trip_bit_exactly(tdtype, ndtype):
    source, target = small_net(0, tdtype), small_net(1, tdtype)
    weights = to_numpy(source, copy=False)
    assert weights["0.weight"].dtype == ndtype
    assert weights["1.num_batches_tracked"].dtype == np.int64
    assert data_ptr(weights["0.weight"]) == source[0].weight.data_ptr()  # zero-copy, bf16 included
    copies = to_numpy(source)
    assert copies["0.weight"].dtype == ndtype and copies["0.weight"].flags.owndata
    np.testing.assert_array_equal(copies["0.weight"].view(np.uint8), weights["0.weight"].view(np.uint8))
    load_numpy(target, copied(weights))
    assert_state_bit_equal(source, target)
    assert target[0].weight.dtype == tdtype


def test_bfloat16_values_and_bits_match_torch():
    t = torch.tensor([1.0, -2.5, 3.140625, 1e-38, float("inf"), -0.0], dtype=torch.bfloat16)
    out = to_numpy({"t": t})["t"]
    assert out.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(out.view(np.int16), t.view(torch.int16).numpy())
    np.testing.assert_array_equal(out.astype(np.float32), t.float().numpy())


_FLOAT8 = [
    name
    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")
    if hasattr(torch, name) and hasattr(ml_dtypes, name)
]


@pytest.mark.parametrize("name", _FLOAT8)
def test_float8_all_bit_patterns_agree_with_torch(name):
    tdtype, ndtype = getattr(torch, name), getattr(ml_dtypes, name)
    raw = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    out = to_numpy({"x": raw.view(tdtype)})["x"]
    assert out.dtype == ndtype
    np.testing.assert_array_equal(out.view(np.uint8), raw.numpy())
    ours, theirs = out.astype(np.float32), raw.view(tdtype).float().numpy()
    assert np.array_equal(ours, theirs, equal_nan=True)  # ml_dtypes' decoding == torch's decoding
    target = {"x": torch.zeros(256, dtype=tdtype)}
    load_numpy(target, {"x": out.copy()})
    assert torch.equal(target["x"].view(torch.uint8), raw)


def test_other_dtypes_map_naturally():
    tensors = {
        "bool": torch.tensor([True, False]),
        "uint8": torch.tensor([0, 255], dtype=torch.uint8),
        "int8": torch.tensor([-128, 127], dtype=torch.int8),
        "int32": torch.tensor([1, 2], dtype=torch.int32),
        "int64": torch.tensor([2**40], dtype=torch.int64),
        "float64": torch.tensor([0.1], dtype=torch.float64),
        "complex64": torch.tensor([1 + 2j], dtype=torch.complex64),
        "complex128": torch.tensor([1 - 2j], dtype=torch.complex128),
        "scalar": torch.tensor(3.5),
    }
    out = to_numpy(tensors)
    expected = {"scalar": "float32"}
    for name, array in out.items():
        assert array.dtype.name == expected.get(name, name)
        assert array.tolist() == tensors[name].tolist()
    assert out["scalar"].shape == ()


def test_conjugate_view_is_resolved():
    t = torch.tensor([1 + 1j, 2 - 3j]).conj()
    assert to_numpy({"c": t})["c"].tolist() == [1 - 1j, 2 + 3j]


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch warns that quantized tensors are deprecated
def test_quantized_tensor_is_refused_by_name():
    q = torch.quantize_per_tensor(torch.rand(3), 0.1, 0, torch.quint8)
    with pytest.raises(CompressionError, match=r"'q'.*quantized.*dequantize"):
        to_numpy({"q": q})


def test_sparse_tensor_is_refused_by_name():
    with pytest.raises(CompressionError, match=r"'s'.*layout.*to_dense"):
        to_numpy({"s": torch.eye(3).to_sparse()})


def test_meta_tensor_is_refused_by_name():
    with pytest.raises(CompressionError, match=r"'m'.*meta"):
        to_numpy({"m": torch.empty(2, device="meta")})


@pytest.mark.filterwarnings("ignore::UserWarning")  # "ComplexHalf support is experimental"
def test_dtype_without_numpy_twin_is_refused_by_name():
    with pytest.raises(CompressionError, match=r"'c' has dtype torch.complex32, which has no NumPy"):
        to_numpy({"c": torch.zeros(2, dtype=torch.complex32)})


@pytest.mark.parametrize(
    "bad, pattern",
    [
        ({"a": torch.zeros(1), "b": np.zeros(1)}, r"\['b'\] is a ndarray, not a torch.Tensor"),
        ({"a": [1.0]}, r"\['a'\] is a list"),
        ({1: torch.zeros(1)}, "non-string key 1"),
    ],
)
def test_mapping_with_non_tensors_is_refused_by_name(bad, pattern):
    with pytest.raises(CompressionError, match=pattern):
        to_numpy(bad)


def test_wrong_object_is_refused():
    with pytest.raises(CompressionError, match="list"):
        to_numpy([torch.zeros(1)])


def test_non_tensor_extra_state_is_refused_by_name():
    class WithExtra(nn.Linear):
        def get_extra_state(self):
            return {"note": 1}

        def set_extra_state(self, state):
            self.note = state

    with pytest.raises(CompressionError, match=r"'_extra_state'\] is a dict"):
        to_numpy(WithExtra(2, 2))


def test_parametrize_parametrizations_keep_their_state_dict_names():
    layer = nn.utils.parametrizations.weight_norm(nn.Linear(3, 2))
    weights = to_numpy(layer)
    assert list(weights) == list(layer.state_dict())
    assert "parametrizations.weight.original0" in weights
    other = nn.utils.parametrizations.weight_norm(nn.Linear(3, 2))
    load_numpy(other, copied(weights))
    assert torch.equal(other.weight, layer.weight)


# ---------------------------------------------------------------- load_numpy


def test_load_keeps_parameter_objects_dtype_device_and_requires_grad():
    net = small_net()
    net[4].bias.requires_grad_(False)
    state = net.state_dict(keep_vars=True)
    before = {name: (t, t.dtype, t.device, t.requires_grad) for name, t in state.items()}
    load_numpy(net, copied(to_numpy(small_net(seed=3))))
    after = net.state_dict(keep_vars=True)
    for name, (t, dtype, device, requires_grad) in before.items():
        assert after[name] is t, name
        assert (t.dtype, t.device, t.requires_grad) == (dtype, device, requires_grad), name
    assert list(net.parameters())[0] is before["0.weight"][0]


def test_optimizer_built_before_loading_still_trains_the_loaded_values():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    new = {"weight": np.full((2, 3), 2.0, np.float32), "bias": np.zeros(2, np.float32)}
    load_numpy(layer, new)
    x = torch.ones(1, 3)
    layer(x).sum().backward()  # d/dW = 1 everywhere
    opt.step()
    assert layer.weight.tolist() == [[1.5] * 3] * 2


def test_float64_arrays_are_cast_to_the_tensor_dtype():
    layer = nn.Linear(3, 2)
    w = np.array([[0.1, 0.2, 0.3], [1 / 3, 2 / 3, 1e-40]])  # float64, last value underflows in float32
    load_numpy(layer, {"weight": w, "bias": np.array([1, 2])})  # int64 bias
    assert layer.weight.dtype == torch.float32 and layer.bias.dtype == torch.float32
    np.testing.assert_array_equal(layer.weight.detach().numpy(), w.astype(np.float32))
    assert layer.bias.tolist() == [1.0, 2.0]


def test_bfloat16_array_into_float32_module_and_back():
    layer = nn.Linear(2, 1, bias=False)
    w = np.array([[1.5, -0.00390625]], dtype=ml_dtypes.bfloat16)
    load_numpy(layer, {"weight": w})
    assert layer.weight.dtype == torch.float32
    assert layer.weight.tolist() == [[1.5, -0.00390625]]
    bf = nn.Linear(2, 1, bias=False).to(torch.bfloat16)
    load_numpy(bf, {"weight": np.array([[0.1, 0.2]])})  # float64 -> bfloat16 rounds like torch
    expected = torch.tensor([[0.1, 0.2]], dtype=torch.float64).to(torch.bfloat16)
    assert torch.equal(bits(bf.weight), bits(expected))


def test_ml_dtypes_float_without_torch_twin_loads_through_float32():
    if not hasattr(ml_dtypes, "float8_e3m4"):
        pytest.skip("ml_dtypes too old for float8_e3m4")
    w = np.array([0.5, -1.25, 3.0], dtype=ml_dtypes.float8_e3m4)
    target = {"w": torch.zeros(3)}
    load_numpy(target, {"w": w})
    assert target["w"].tolist() == [0.5, -1.25, 3.0]


def test_float_into_integer_buffer_truncates_like_copy_():
    bn = nn.BatchNorm1d(2)
    weights = copied(to_numpy(bn))
    weights["num_batches_tracked"] = np.array(7.9)
    load_numpy(bn, weights)
    reference = torch.tensor(0, dtype=torch.int64).copy_(torch.tensor(7.9, dtype=torch.float64))
    assert bn.num_batches_tracked.dtype == torch.int64
    assert bn.num_batches_tracked.item() == reference.item() == 7


def test_complex_into_real_is_refused_and_nothing_is_written():
    layer = nn.Linear(2, 1)
    before = copy.deepcopy(layer)
    with pytest.raises(CompressionError, match=r"'weight'.*complex"):
        load_numpy(layer, {"bias": np.array([5.0]), "weight": np.array([[1 + 1j, 2]])})
    assert_state_bit_equal(before, layer)


def test_unusual_array_layouts_load_without_warnings():
    reversed_ = np.arange(6, dtype=np.float32)[::-1]  # negative stride
    big_endian = np.arange(6, dtype=">f4")
    read_only = np.arange(6, dtype=np.float32)
    read_only.flags.writeable = False
    broadcast = np.broadcast_to(np.float32(2.0), (6,))  # zero stride, read-only
    for array in (reversed_, big_endian, read_only, broadcast):
        target = {"x": torch.zeros(6)}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_numpy(target, {"x": array})
        assert target["x"].tolist() == np.asarray(array, dtype=np.float32).tolist()


def test_inputs_are_not_modified():
    net = small_net()
    weights = copied(to_numpy(small_net(seed=5)))
    weights["0.weight"] = weights["0.weight"].astype(ml_dtypes.bfloat16)
    snapshot = copied(weights)
    load_numpy(net, weights)
    for name in weights:
        assert weights[name].dtype == snapshot[name].dtype
        assert weights[name].tobytes() == snapshot[name].tobytes()
    with torch.no_grad():
        net[0].weight.zero_()
    np.testing.assert_array_equal(weights["0.weight"], snapshot["0.weight"])  # no aliasing after load


def test_strict_mismatch_lists_every_problem_and_writes_nothing():
    net = small_net()
    before = copy.deepcopy(net)
    weights = copied(to_numpy(small_net(seed=2)))
    del weights["1.running_var"], weights["4.bias"]
    weights["head.weight"] = np.zeros(3, np.float32)
    weights["0.weight"] = np.zeros((4, 3, 5, 5), np.float32)
    with pytest.raises(CompressionError) as info:
        load_numpy(net, weights)
    message = str(info.value)
    assert "missing" in message and "'1.running_var'" not in message  # names listed plainly
    assert "1.running_var" in message and "4.bias" in message
    assert "unexpected" in message and "head.weight" in message
    assert "0.weight (expected (4, 3, 3, 3), got (4, 3, 5, 5))" in message
    assert_state_bit_equal(before, net)


def test_non_strict_loads_what_matches_and_reports_the_rest():
    net, source = small_net(), small_net(seed=2)
    before = copy.deepcopy(net)
    weights = copied(to_numpy(source))
    del weights["1.running_var"]
    weights["head.weight"] = np.zeros(3, np.float32)
    weights["0.weight"] = np.zeros((4, 3, 5, 5), np.float32)
    report = load_numpy(net, weights, strict=False)
    assert report.missing == ["1.running_var"]
    assert report.unexpected == ["head.weight"]
    assert report.mismatched == [("0.weight", (4, 3, 3, 3), (4, 3, 5, 5))]
    missing, unexpected, mismatched = report  # unpacks like torch's load_state_dict result
    assert missing == ["1.running_var"]
    assert torch.equal(net[0].weight, before[0].weight)
    assert torch.equal(net[1].running_var, before[1].running_var)
    assert torch.equal(net[4].weight, source[4].weight)
    assert torch.equal(net[1].running_mean, source[1].running_mean)


@pytest.mark.parametrize(
    "value, pattern",
    [
        (torch.zeros(2), r"\['bias'\] is a torch.Tensor.*to_numpy"),
        ([0.0, 0.0], r"\['bias'\] is a list, not a numpy.ndarray"),
    ],
)
def test_non_array_values_are_refused_by_name(value, pattern):
    layer = nn.Linear(2, 2)
    with pytest.raises(CompressionError, match=pattern):
        load_numpy(layer, {"weight": np.zeros((2, 2)), "bias": value})


def test_quantized_array_must_be_dequantized_first():
    layer = nn.Linear(4, 2)
    q = coreprune.quantize(copied(to_numpy(layer)), 8)
    assert isinstance(q["weight"], coreprune.QuantizedArray)
    with pytest.raises(CompressionError, match=r"\['weight'\] is a QuantizedArray.*dequantize"):
        load_numpy(layer, q)
    load_numpy(layer, coreprune.dequantize(q))
    np.testing.assert_array_equal(layer.weight.detach().numpy(), q["weight"].dequantize())


def test_wrong_target_is_refused():
    with pytest.raises(CompressionError, match="torch.nn.Module or a mapping"):
        load_numpy([torch.zeros(1)], {})


def test_mapping_target_is_written_in_place():
    net = small_net()
    state = net.state_dict()  # detached tensors sharing the module's storage
    source = small_net(seed=4)
    load_numpy(state, copied(to_numpy(source)))
    assert_state_bit_equal(source, net)


def test_tied_weights_are_exported_under_both_names_and_must_agree():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(5, 3)
            self.head = nn.Linear(3, 5, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    weights = to_numpy(model)
    assert list(weights) == ["embed.weight", "head.weight"]
    same = copied(weights)
    same["head.weight"] = same["embed.weight"] = np.ones((5, 3), np.float32)
    load_numpy(model, same)
    assert model.head.weight.sum().item() == 15.0
    different = copied(same)
    different["head.weight"] = np.zeros((5, 3), np.float32)
    with pytest.raises(CompressionError, match="'embed.weight' and 'head.weight' are one tied tensor"):
        load_numpy(model, different)
    assert model.embed.weight.sum().item() == 15.0


_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.uint8, torch.bool]


@given(
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=3),
    dtype=st.sampled_from(_DTYPES),
    seed=st.integers(0, 2**16),
    transpose=st.booleans(),
)
def test_round_trip_property(shape, dtype, seed, transpose):
    """Any dense tensor -> array -> fresh tensor of the same dtype/layout is bit-identical."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=gen, dtype=torch.float64) * 100
    tensor = values.to(dtype)
    if transpose and tensor.ndim >= 2:
        tensor = tensor.transpose(0, 1)  # non-contiguous view
    array = to_numpy({"t": tensor}, copy=False)["t"]
    assert array.shape == tuple(tensor.shape)
    if tensor.numel():
        assert data_ptr(array) == tensor.data_ptr()
    copy = to_numpy({"t": tensor})["t"]
    assert copy.dtype == array.dtype and not np.shares_memory(copy, array)
    assert copy.tobytes() == np.ascontiguousarray(array).tobytes()
    target = {"t": torch.empty_like(tensor).zero_()}
    load_numpy(target, {"t": array.copy()})
    assert torch.equal(bits(target["t"]), bits(tensor))


# ---------------------------------------------------------------- modules pruned with torch.nn.utils.prune


def test_pruned_module_exports_plain_names_with_effective_values():
    net = small_net()
    mask = np.random.default_rng(0).random((4, 3, 3, 3)) > 0.5
    attach_masks(net, {"0.weight": mask})
    torch.nn.utils.prune.l1_unstructured(net[4], "weight", amount=0.3)
    weights = to_numpy(net)
    assert list(weights) == [
        "0.bias", "0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
        "1.num_batches_tracked", "4.bias", "4.weight",
    ]  # where prune.remove puts them
    assert not any(k.endswith(("_orig", "_mask")) for k in weights)
    weights = copied(weights)
    assert np.all(weights["0.weight"][~mask] == 0)
    np.testing.assert_array_equal(weights["0.weight"][mask], net[0].weight_orig.detach().numpy()[mask])
    prune.remove(net[0], "weight")  # (a pruned module cannot be deep-copied: its weight is not a leaf)
    prune.remove(net[4], "weight")
    reference = net.state_dict()
    assert list(weights) == list(reference)
    for name, array in weights.items():
        np.testing.assert_array_equal(array, reference[name].numpy(), err_msg=name)


def test_effective_values_are_current_after_an_optimizer_step():
    net = small_net()
    attach_masks(net, {"4.weight": np.ones((5, 144), bool)})
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()  # net[4].weight (the attribute) is stale until the next forward
    np.testing.assert_array_equal(to_numpy(net)["4.weight"], net[4].weight_orig.detach().numpy())


def test_load_into_pruned_module_writes_orig_and_keeps_the_mask():
    net = small_net()
    mask = np.zeros((5, 144), bool)
    mask[:, ::2] = True
    attach_masks(net, {"4.weight": mask})
    orig, mask_buffer = net[4].weight_orig, net[4].weight_mask
    weights = copied(to_numpy(net))
    weights["4.weight"] = np.full((5, 144), 3.0, np.float32)
    report = load_numpy(net, weights)
    assert report == LoadReport([], [], [])
    assert net[4].weight_orig is orig and net[4].weight_mask is mask_buffer
    assert torch.all(orig == 3.0)
    assert prune.is_pruned(net)
    # The effective weight is refreshed right away and after a forward: masked entries stay zero.
    for _ in range(2):
        effective = net[4].weight.detach().numpy()
        assert np.all(effective[mask] == 3.0) and np.all(effective[~mask] == 0.0)
        net(torch.randn(1, 3, 8, 8))
    np.testing.assert_array_equal(to_numpy(net)["4.weight"], np.where(mask, 3.0, 0.0).astype(np.float32))


def test_pruning_bookkeeping_names_are_not_loadable():
    layer = nn.Linear(2, 2)
    attach_masks(layer, {"weight": np.eye(2, dtype=bool)})
    report = load_numpy(layer, {"weight_orig": np.zeros((2, 2)), "bias": np.zeros(2)}, strict=False)
    assert report.unexpected == ["weight_orig"] and report.missing == ["weight"]
