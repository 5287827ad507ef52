"""Cross-checks with the real PyTorch: files torch writes read back equal to ``torch.load``, and files
coreprune writes load in ``torch.load(weights_only=True)`` (mmap on and off) bit for bit.

Covers every dtype, 0-d, empty, shared-storage and non-contiguous tensors, Parameters, nested
checkpoints, the legacy layout, CRC-less files, TorchScript archives and pickled modules.
"""

from __future__ import annotations

import collections

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")

from coreprune.errors import UnsafePickleError, WeightFileError  # noqa: E402
from coreprune.io import torch_format as tf  # noqa: E402

# torch dtype -> the NumPy dtype coreprune reads it as
DTYPES = {
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.float16: np.dtype(np.float16),
    torch.bfloat16: np.dtype(ml_dtypes.bfloat16),
    torch.int8: np.dtype(np.int8),
    torch.int16: np.dtype(np.int16),
    torch.int32: np.dtype(np.int32),
    torch.int64: np.dtype(np.int64),
    torch.uint8: np.dtype(np.uint8),
    torch.bool: np.dtype(np.bool_),
    torch.complex64: np.dtype(np.complex64),
    torch.complex128: np.dtype(np.complex128),
    torch.uint16: np.dtype(np.uint16),
    torch.uint32: np.dtype(np.uint32),
    torch.uint64: np.dtype(np.uint64),
    torch.float8_e4m3fn: np.dtype(ml_dtypes.float8_e4m3fn),
    torch.float8_e5m2: np.dtype(ml_dtypes.float8_e5m2),
}
# Dtypes the legacy layout cannot hold (torch's own legacy loader fails on UntypedStorage).
LEGACY_DTYPES = [
    d for d in DTYPES if d not in (torch.uint16, torch.uint32, torch.uint64) and "float8" not in str(d)
]


def as_numpy(t) -> np.ndarray:
    """torch tensor -> NumPy with the same bits (bfloat16 / float8 through a same-width integer view)."""
    t = t.detach().resolve_conj().resolve_neg().contiguous()
    dtype = DTYPES[t.dtype]
    if dtype.isbuiltin == 1:
        return t.numpy().copy()
    carrier = {1: torch.uint8, 2: torch.int16}[dtype.itemsize]
    return t.view(carrier).numpy().view(dtype).copy()


def from_numpy(a: np.ndarray):
    dtype = {v: k for k, v in DTYPES.items()}[a.dtype]
    if a.dtype.isbuiltin == 1:
        return torch.from_numpy(np.ascontiguousarray(a))
    carrier = {1: np.uint8, 2: np.int16}[a.dtype.itemsize]
    return torch.from_numpy(np.ascontiguousarray(a).view(carrier)).view(dtype)


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.ascontiguousarray(a).tobytes() == b.tobytes()


def make(dtype, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_complex:
        return torch.randn(shape, dtype=dtype, generator=g)
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 3).to(dtype)
    if dtype in (torch.uint16, torch.uint32, torch.uint64):
        return torch.randint(0, 2**15, shape, generator=g, dtype=torch.int64).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -(2**31)), min(info.max, 2**31 - 1), shape, generator=g, dtype=dtype)


def zoo(dtypes) -> dict:
    """Every dtype, plus 0-d, empty, shared-storage and non-contiguous tensors."""
    sd = {}
    for i, d in enumerate(dtypes):
        name = str(d).split(".")[1]
        sd[name] = make(d, (3, 4), seed=i)
        sd[f"{name}.0d"] = make(d, (), seed=i + 100)
        sd[f"{name}.empty"] = make(d, (0, 3), seed=i)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd.update(
        {
            "shared.full": base,
            "shared.row": base[2],  # offset 12 into the same storage
            "shared.t": base.t(),  # transposed view: stride (1, 6)
            "shared.cols": base[:, 1:5:2],  # sliced with offset and step
            "expanded": torch.tensor([1.5]).expand(3, 4),  # stride 0
            "conj": torch.randn(3, dtype=torch.complex64).conj(),  # conj bit, stored un-conjugated
            "neg": torch.randn(3, dtype=torch.complex64).conj().imag,  # neg bit
        }
    )
    return sd


def check_reader_matches(path, expected: dict) -> None:
    with tf.open_reader(path) as r:
        assert sorted(r) == sorted(expected)
        for name, t in expected.items():
            got = r[name]
            assert r.spec(name).shape == tuple(t.shape) and r.spec(name).dtype == DTYPES[t.dtype], name
            assert bits_equal(got, as_numpy(t)), name


# -- torch writes, coreprune reads ---------------------------------------------------------------------
def test_zip_files_from_torch_read_equal_to_torch_load(tmp_path):
    p = tmp_path / "zoo.pt"
    torch.save(zoo(DTYPES), p)
    check_reader_matches(p, torch.load(p, weights_only=True))
    with tf.open_reader(p) as r:  # shared storage stays shared
        assert np.shares_memory(r["shared.full"], r["shared.t"])


def test_legacy_files_from_torch_read_equal_to_torch_load(tmp_path):
    p = tmp_path / "old.pt"
    torch.save(zoo(LEGACY_DTYPES), p, _use_new_zipfile_serialization=False)
    check_reader_matches(p, torch.load(p, weights_only=True))
    with tf.open_reader(p) as r:
        assert r.layout == "legacy"


def test_legacy_v3_dtypes_read_although_torch_cannot(tmp_path):
    t = torch.tensor([1, 65535, 7], dtype=torch.uint16)
    p = tmp_path / "u16.pt"
    torch.save({"u": t}, p, _use_new_zipfile_serialization=False)
    with tf.open_reader(p) as r:
        assert r["u"].dtype == np.uint16 and r["u"].tolist() == [1, 65535, 7]


def test_files_without_crc_read(tmp_path):
    from torch.utils.serialization import config

    p = tmp_path / "nocrc.pt"
    sd = zoo([torch.float32, torch.bfloat16, torch.int64])
    old = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        torch.save(sd, p)
    finally:
        config.save.compute_crc32 = old
    check_reader_matches(p, torch.load(p, weights_only=True))


def test_module_state_dict_with_parameters_and_buffers(tmp_path):
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(2, 3)
    )
    p = tmp_path / "model.pt"
    torch.save(model.state_dict(keep_vars=True), p)  # Parameters pickled with _rebuild_parameter
    expected = torch.load(p, weights_only=True)
    check_reader_matches(p, expected)
    with tf.open_reader(p) as r:
        assert r.parameters == {name for name, v in expected.items() if isinstance(v, torch.nn.Parameter)}
        assert "1.num_batches_tracked" in r and "1.num_batches_tracked" not in r.parameters
        assert r.extras == {}


def test_nested_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    ckpt = {
        "state_dict": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "tag": "best",
        "history": [0.5, 0.25],
        "shape": torch.Size([2, 3]),
        "blob": b"\x00\x01",
    }
    p = tmp_path / "ckpt.pth"
    torch.save(ckpt, p)
    loaded = torch.load(p, weights_only=True)
    with tf.open_reader(p) as r:
        assert bits_equal(r["state_dict.weight"], as_numpy(loaded["state_dict"]["weight"]))
        assert bits_equal(
            r["optimizer.state.0.exp_avg"], as_numpy(loaded["optimizer"]["state"][0]["exp_avg"])
        )
        assert bits_equal(r["optimizer.state.0.step"], as_numpy(loaded["optimizer"]["state"][0]["step"]))
        assert r.extras["epoch"] == 3 and r.extras["tag"] == "best" and r.extras["history"] == [0.5, 0.25]
        assert r.extras["shape"] == (2, 3) and r.extras["blob"] == b"\x00\x01"
        groups = r.extras["optimizer.param_groups"]
        assert groups[0]["lr"] == 0.01 and groups[0]["params"] == [0, 1]
        tensors = {k for k in r}
    expected = {f"state_dict.{k}" for k in loaded["state_dict"]} | {
        f"optimizer.state.{i}.{k}" for i, s in loaded["optimizer"]["state"].items() for k in s
    }
    assert tensors == expected


def test_bare_tensor_and_list_of_tensors(tmp_path):
    torch.save(torch.arange(5), tmp_path / "t.pt")
    torch.save([torch.ones(2), (torch.zeros(1), 3)], tmp_path / "l.pt")
    with tf.open_reader(tmp_path / "t.pt") as r:
        assert r[tf.ROOT_TENSOR].tolist() == [0, 1, 2, 3, 4]
    with tf.open_reader(tmp_path / "l.pt") as r:
        assert sorted(r) == ["0", "1.0"] and r.extras == {"1.1": 3}


def test_pickle_protocol_4_reads(tmp_path):
    p = tmp_path / "p4.pt"
    sd = {"w": torch.randn(2, 3), "b": torch.ones(3, dtype=torch.bfloat16)}
    torch.save(sd, p, pickle_protocol=4)
    check_reader_matches(p, sd)


# -- coreprune writes, torch reads ---------------------------------------------------------------------
@pytest.mark.parametrize("mmap", [False, True])
def test_our_files_load_in_torch_weights_only_bit_exact(tmp_path, mmap):
    weights = {name: as_numpy(t) for name, t in zoo(DTYPES).items()}
    weights["fortran"] = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))
    weights["strided"] = np.arange(20, dtype=np.int32)[::3]
    p = tmp_path / "ours.pt"
    with open(p, "wb") as f:
        tf.write(weights, f, archive_name="ours")
    loaded = torch.load(p, weights_only=True, mmap=mmap)
    assert type(loaded) is collections.OrderedDict and list(loaded) == list(weights)
    for name, value in weights.items():
        t = loaded[name]
        assert t.dtype == {v: k for k, v in DTYPES.items()}[value.dtype] and not t.requires_grad, name
        assert tuple(t.shape) == value.shape and t.is_contiguous(), name
        assert bits_equal(as_numpy(t), value), name


@pytest.mark.parametrize("mmap", [False, True])
def test_zip64_records_load_in_torch(tmp_path, monkeypatch, mmap):
    """The zip64 path (records or offsets past 4 GiB) with the threshold lowered so every record takes it."""
    monkeypatch.setattr(tf, "_ZIP64_LIMIT", 16)
    weights = {
        "a": np.arange(10, dtype=np.float32),
        "b": np.ones(3, np.int8),
        "c": np.arange(6.0).reshape(2, 3),
    }
    p = tmp_path / "z64.pt"
    with open(p, "wb") as f:
        tf.write(weights, f)
    loaded = torch.load(p, weights_only=True, mmap=mmap)
    assert all(bits_equal(loaded[k].numpy(), v) for k, v in weights.items())


def test_our_files_load_into_a_module(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    weights = {k: v.detach().numpy() * 2 for k, v in model.state_dict().items()}
    p = tmp_path / "w.pt"
    with open(p, "wb") as f:
        tf.write(weights, f)
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    fresh.load_state_dict(torch.load(p, weights_only=True))
    for k, v in fresh.state_dict().items():
        assert np.array_equal(v.numpy(), weights[k])


def test_round_trip_through_both(tmp_path):
    """torch -> coreprune reader -> coreprune writer (streaming from the reader) -> torch: unchanged bits."""
    src, dst = tmp_path / "src.pt", tmp_path / "dst.pt"
    sd = zoo(DTYPES)
    torch.save(sd, src)
    with tf.open_reader(src) as r, open(dst, "wb") as f:
        tf.write(r, f)
    back = torch.load(dst, weights_only=True)
    for name, t in sd.items():
        assert bits_equal(as_numpy(back[name]), as_numpy(t)), name


def test_bfloat16_bits_match_torch_rounding():
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    x[:4] = [np.inf, -np.inf, 0.0, -0.0]
    ours = x.astype(ml_dtypes.bfloat16)
    theirs = as_numpy(torch.from_numpy(x).to(torch.bfloat16))
    assert bits_equal(ours, theirs)


# -- refusals -------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_is_refused(tmp_path):
    p = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), p)
    with pytest.raises(
        WeightFileError, match=r"TorchScript archive.*torch\.jit\.load\(path\)\.state_dict\(\)"
    ):
        tf.open_reader(p)


def test_pickled_module_is_refused_naming_the_class(tmp_path):
    p = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), p)
    with pytest.raises(UnsafePickleError, match=r"torch\.nn\.modules\.linear\.Linear"):
        tf.open_reader(p)
    legacy = tmp_path / "model_legacy.pt"
    torch.save(torch.nn.Linear(2, 2), legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafePickleError, match=r"torch\.nn\.modules\.linear\.Linear"):
        tf.open_reader(legacy)


def test_torch_refuses_what_we_refuse(tmp_path):
    """The corpus is not stricter than it needs to be: torch's weights-only loader refuses it too."""
    import os

    class Evil:
        def __reduce__(self):
            return os.system, ("true",)

    p = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "evil": Evil()}, p)
    with pytest.raises(Exception, match="system"):
        torch.load(p, weights_only=True)
    with pytest.raises(UnsafePickleError, match=r"(posix|os)\.system"):
        tf.open_reader(p)
