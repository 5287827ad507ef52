"""Issue 11, one test per failure class that the format readers share (see docs/security.md).

Each test fails without its fix: storage views checked against their storage (class 2), shared
storage kept shared on load and overlapping views bounded (3), names on save (4), .cpz manifests
checked before allocating (5), one expansion budget (6), reading without mmap when a file changes
underneath (8) and the explicit allowlist for unknown globals (11).
"""

from __future__ import annotations

import io
import json
import os
import tracemalloc
import zlib

import numpy as np
import pytest
from _torchpickle import Global, Storage, Tensor, legacy_file, zip_file

import coreprune.io as cio
from coreprune.errors import UnsafePickleError, WeightFileError
from coreprune.io import cpz, npz_format
from coreprune.io.pickle_vm import PickledObject


def _put(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


# -- class 2: a storage read with two element sizes -----------------------------------------------
def test_one_storage_viewed_as_float32_then_float64_reads_both_views(tmp_path):
    raw = np.arange(3, dtype=np.float32).tobytes()  # 12 bytes: three float32, one whole float64
    as_float = Storage(raw, "FloatStorage", "0")
    as_double = Storage(raw, "DoubleStorage", "0", itemsize=8, numel=1)
    p = _put(tmp_path, "two.pt", zip_file({"f": Tensor(as_float, 0, (3,), (1,)),
                                           "d": Tensor(as_double, 0, (1,), (1,))}))
    with cio.open_weights(p) as r:
        f, d = r["f"], r["d"]  # the 12-byte record mapped for float32 first (the old code: ValueError)
        assert f.tolist() == [0.0, 1.0, 2.0]
        assert d.tobytes() == raw[:8]
    with cio.open_weights(p) as r:
        assert r["d"].tobytes() == raw[:8] and r["f"].tolist() == [0.0, 1.0, 2.0]


def test_strided_view_refuses_a_view_past_its_storage():
    from coreprune.io.base import strided_view

    buf = np.zeros(12, np.uint8)
    assert strided_view("f.pt", "t", buf, np.dtype("f4"), (3,), 0, (4,)).shape == (3,)
    for shape, offset, strides in [((3,), 4, (4,)), ((2, 2), 0, (8, 4)), ((4,), 0, (4,))]:
        with pytest.raises(WeightFileError, match="reaches byte"):
            strided_view("f.pt", "t", buf, np.dtype("f4"), shape, offset, strides)


# -- class 3: one storage under many names ----------------------------------------------------------
def _shared_file(tmp_path, names: int, nbytes: int):
    s = Storage(np.arange(nbytes // 4, dtype=np.float32).tobytes(), "FloatStorage", "0")
    return _put(tmp_path, "shared.pt", zip_file({f"w{i}": Tensor(s, 0, (nbytes // 4,), (1,))
                                                 for i in range(names)}))


def test_load_keeps_shared_storage_shared(tmp_path):
    p = _shared_file(tmp_path, 64, 1 << 20)  # 1 MiB under 64 names: 64 MiB if each were copied
    tracemalloc.start()
    try:
        out = cio.load(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(out) == 64 and np.shares_memory(out["w0"], out["w63"])
    assert out["w5"][-1] == (1 << 18) - 1 and not isinstance(out["w5"], np.memmap)
    assert peak < 4 << 20, peak
    for mmap in (True, False):
        with cio.open_weights(p, mmap=mmap) as r:
            assert np.shares_memory(r["w0"], r["w1"])


def test_materialising_overlapping_views_is_bounded_by_the_expansion_budget(tmp_path):
    p = _shared_file(tmp_path, 64, 1 << 20)
    with cio.open_weights(p, max_expansion=10 << 20) as r, pytest.raises(WeightFileError,
                                                                         match="expansion budget"):
        for name in r:
            np.array(r[name])  # what a command does with each tensor
    with cio.open_weights(p, max_expansion=64 << 20) as r:
        assert sum(np.array(r[n]).nbytes for n in r) == 64 << 20  # raising the budget reads them all


# -- class 4: names ---------------------------------------------------------------------------------
def test_npz_member_names_over_65535_bytes_are_refused_by_name(tmp_path):
    with pytest.raises(WeightFileError, match="70000 bytes.*at most 65535"):
        cio.save({"a" * 70000: np.zeros(2)}, tmp_path / "x.npz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".params", ".cpz"])
def test_lone_surrogates_in_names_are_refused_clearly_on_save(tmp_path, suffix):
    with pytest.raises(WeightFileError, match="lone surrogate.*U\\+DC80"):
        if suffix == ".cpz":
            cpz.save_compressed({"a\udc80b": np.zeros(2, np.float32)}, tmp_path / f"x{suffix}")
        else:
            cio.save({"a\udc80b": np.zeros(2, np.float32)}, tmp_path / f"x{suffix}")


# -- class 5: .cpz manifests ------------------------------------------------------------------------
def _cpz_with(entry_changes: dict) -> bytes:
    buf = io.BytesIO()
    cpz.write({"w": np.zeros(8, np.float32)}, buf)
    data = buf.getvalue()
    offset, length, _, end = cpz._FOOTER.unpack_from(data, len(data) - cpz._FOOTER.size)
    manifest = json.loads(data[offset: offset + length])
    manifest["tensors"][0].update(entry_changes)
    text = json.dumps(manifest).encode()
    return data[:offset] + text + cpz._FOOTER.pack(offset, len(text), zlib.crc32(text), end)


@pytest.mark.parametrize("changes, message", [
    ({"shape": [1] * 40}, "40 dims"),
    ({"shape": [2**70]}, "impossibly large|invalid shape"),
    ({"shape": [True, 2]}, "bad shape"),
])
def test_cpz_manifest_shapes_are_checked(tmp_path, changes, message):
    with pytest.raises(WeightFileError, match=message):
        cio.open_weights(_put(tmp_path, "m.cpz", _cpz_with(changes)))


def test_a_tiny_cpz_cannot_allocate_a_huge_tensor(tmp_path):
    # csr layout, no stored element: a 300-byte manifest declaring 1.2 GB of zeros.
    p = _put(tmp_path, "m.cpz", _cpz_with({"shape": [300_000_000], "layout": "csr", "nnz": 0,
                                           "entries": 0, "width": 8}))
    with cio.open_weights(p) as r:
        assert r.spec("w").shape == (300_000_000,)
        tracemalloc.start()
        try:
            with pytest.raises(WeightFileError, match="expansion budget"):
                r["w"]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 1 << 20
    assert cio.load(p, max_expansion=2 << 30)["w"].shape == (300_000_000,)  # when trusted, it reads


# -- class 6: deflate bombs -----------------------------------------------------------------------
def test_deflated_npz_members_expand_within_the_budget(tmp_path):
    zeros = np.zeros(48 << 20, np.uint8)  # 48 MiB of zeros deflate to about 48 KiB
    buf = io.BytesIO()
    npz_format.write({"z": zeros}, buf, compressed=True)
    p = _put(tmp_path, "bomb.npz", buf.getvalue())
    assert os.path.getsize(p) < 1 << 20
    with cio.open_weights(p, max_expansion=16 << 20) as r, pytest.raises(WeightFileError,
                                                                         match="expansion budget"):
        r["z"]
    assert cio.load(p)["z"].size == 48 << 20  # the default budget (128 MiB at least) reads it


def test_max_expansion_must_be_a_byte_count(tmp_path):
    p = tmp_path / "w.npz"
    cio.save({"w": np.zeros(2)}, p)
    with pytest.raises(WeightFileError, match="max_expansion"):
        cio.open_weights(p, max_expansion=-1)


# -- class 8: files that change underneath ------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".params", ".pt"])
def test_without_mmap_a_file_truncated_after_opening_is_an_error_not_a_signal(tmp_path, suffix):
    p = tmp_path / f"w{suffix}"
    cio.save({"a": np.ones(1 << 16, np.float32), "b": np.ones(4, np.float32)}, p)
    with cio.open_weights(p, mmap=False) as r:
        with open(p, "r+b") as f:
            f.truncate(1024)
        with pytest.raises(WeightFileError, match="file ends|changed|cannot"):
            r["a"]
    cio.save({"a": np.ones(4, np.float32)}, p)
    with cio.open_weights(p, mmap=False) as r:
        a = r["a"]
        assert type(a) is np.ndarray and not isinstance(a, np.memmap) and a.tolist() == [1.0] * 4


# -- class 11: unknown but harmless globals ----------------------------------------------------------
def test_unknown_globals_are_named_and_can_be_allowed_explicitly(tmp_path):
    from _torchpickle import Call

    s = Storage(np.ones(2, np.float32).tobytes(), "FloatStorage", "0")
    obj = {"w": Tensor(s, 0, (2,), (1,)), "cfg": Call(Global("myproject.config", "TrainConfig"), (3,))}
    p = _put(tmp_path, "ckpt.pt", zip_file(obj))
    with pytest.raises(UnsafePickleError, match="myproject.config.TrainConfig.*allow_globals"):
        cio.open_weights(p)
    with cio.open_weights(p, allow_globals=["myproject.config.TrainConfig"]) as r:
        assert r["w"].tolist() == [1.0, 1.0]
        cfg = r.extras["cfg"]
        assert isinstance(cfg, PickledObject)
        assert (cfg.name, cfg.args) == ("myproject.config.TrainConfig", (3,))
    with pytest.raises(UnsafePickleError, match="posix.system"):  # allowing one name allows no other
        evil = zip_file({"x": Call(Global("posix", "system"), ("id",))})
        cio.open_weights(_put(tmp_path, "evil.pt", evil), allow_globals=["myproject.config.TrainConfig"])


def test_legacy_files_take_the_same_options(tmp_path):
    s = Storage(np.ones(3, np.float32).tobytes(), "FloatStorage", "0")
    p = _put(tmp_path, "old.pt", legacy_file({"w": Tensor(s, 0, (3,), (1,))}))
    with cio.open_weights(p, mmap=False, max_expansion=0) as r:
        assert type(r["w"]) is np.ndarray and r["w"].tolist() == [1.0] * 3
