"""Choosing the format: extension first, confirmed by magic bytes; save's options and messages."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

import coreprune.io as cio
from coreprune.errors import WeightFileError
from coreprune.io import mxnet_params, npz_format, safetensors_format

W = {"fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "fc.bias": np.ones(2, np.float32)}
OURS = {"npz": npz_format, "mxnet": mxnet_params, "safetensors": safetensors_format}


def _bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    OURS[fmt].write(W, buf)
    return buf.getvalue()


def _torch_like_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("w.npz", "npz"),
        ("w.NPZ", "npz"),
        ("w.params", "mxnet"),
        ("w.nd", "mxnet"),
        ("w.safetensors", "safetensors"),
    ],
)
def test_extension_confirmed_by_magic(tmp_path, name, fmt):
    path = tmp_path / name
    path.write_bytes(_bytes(fmt))
    assert cio.detect_format(path) == fmt
    out = cio.load(path)
    np.testing.assert_array_equal(out["fc.weight"], W["fc.weight"])


def test_npy_is_the_npz_format(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(3))
    assert cio.detect_format(tmp_path / "a.npy") == "npz"


@pytest.mark.parametrize("fmt", sorted(OURS))
def test_unknown_extension_falls_back_to_magic(tmp_path, fmt):
    path = tmp_path / "weights.bin_unknown"
    path.write_bytes(_bytes(fmt))
    assert cio.detect_format(path) == fmt
    assert list(cio.load(path)) == list(W)


@pytest.mark.parametrize("fmt", sorted(OURS))
@pytest.mark.parametrize("other", sorted(OURS))
def test_sniffers_accept_their_own_files_only(fmt, other):
    head = _bytes(other)[:64]
    assert OURS[fmt].sniff(head) == (fmt == other)


def test_a_torch_zip_is_not_taken_for_an_npz():
    assert not npz_format.sniff(_torch_like_zip()[:64])
    assert npz_format.sniff(_bytes("npz")[:64])


@pytest.mark.parametrize(
    "name, fmt, message",
    [
        ("w.params", "npz", "the extension says mxnet but it looks like npz"),
        ("w.npz", "safetensors", "the extension says npz but it looks like safetensors"),
        ("w.safetensors", "mxnet", "the extension says safetensors but it looks like mxnet"),
    ],
)
def test_extension_and_magic_disagree(tmp_path, name, fmt, message):
    path = tmp_path / name
    path.write_bytes(_bytes(fmt))
    with pytest.raises(WeightFileError, match=message) as info:
        cio.load(path)
    assert str(info.value).startswith(str(path))


def test_garbage_empty_and_missing_files(tmp_path):
    (tmp_path / "g.safetensors").write_bytes(b"\x00garbage" * 8)
    with pytest.raises(WeightFileError, match="its first bytes match no known format"):
        cio.load(tmp_path / "g.safetensors")
    (tmp_path / "g.what").write_bytes(b"\x00garbage" * 8)
    with pytest.raises(WeightFileError, match=r"not a weight file this library reads \(extension '.what'"):
        cio.load(tmp_path / "g.what")
    (tmp_path / "e.npz").write_bytes(b"")
    with pytest.raises(WeightFileError, match="the file is empty"):
        cio.load(tmp_path / "e.npz")
    with pytest.raises(WeightFileError, match="no such file"):
        cio.load(tmp_path / "missing.npz")


def test_format_argument_overrides_detection(tmp_path):
    path = tmp_path / "w.dat"
    cio.save(W, path, format="safetensors")
    assert cio.detect_format(path) == "safetensors"
    with cio.open_weights(path, format="safetensors") as r:
        assert r.format == "safetensors" and list(r) == list(W)
    with pytest.raises(WeightFileError, match="unknown format 'nope'"):
        cio.load(path, format="nope")


def test_save_needs_a_known_extension_or_a_format(tmp_path):
    with pytest.raises(WeightFileError, match=r"cannot tell the format from the extension '\.dat'.*\.params"):
        cio.save(W, tmp_path / "w.dat")
    assert not list(tmp_path.iterdir())


def test_extension_options_choose_the_single_array_layout(tmp_path):
    cio.save({"x": np.arange(3)}, tmp_path / "x.NPY")
    assert np.load(tmp_path / "x.NPY").tolist() == [0, 1, 2]
    with pytest.raises(TypeError):  # an explicit option that the writer does not know is a programming error
        cio.save(W, tmp_path / "w.npz", np_shape=True)


def test_failed_write_keeps_the_old_file_and_names_the_destination(tmp_path):
    path = tmp_path / "w.params"
    cio.save(W, path)
    before = path.read_bytes()
    with pytest.raises(WeightFileError) as info:
        cio.save({"ok": np.ones(2, np.float32), "bad": np.ones(2, np.uint16)}, path)
    assert str(info.value).startswith(f"{path}: tensor 'bad' has dtype uint16")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.params"]


def test_load_keeps_metadata_on_the_reader_without_warning(tmp_path):
    import warnings

    path = tmp_path / "w.safetensors"
    cio.save(W, path, metadata={"format": "pt"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = cio.load(path)
    assert cio.open_weights(path).metadata == {"format": "pt"}
    assert list(out) == list(W)
    assert not any(isinstance(v, np.memmap) for v in out.values())  # an eager load owns its memory


def test_a_format_module_that_cannot_be_imported_disables_only_itself(tmp_path, monkeypatch):
    monkeypatch.setitem(cio.FORMATS, "broken", "coreprune.io._no_such_module")
    path = tmp_path / "w.npz"
    cio.save(W, path)
    assert list(cio.load(path)) == list(W)
    (tmp_path / "g.what").write_bytes(b"\x00garbage")
    with pytest.raises(WeightFileError, match="these formats could not be imported: .*broken"):
        cio.load(tmp_path / "g.what")
    with pytest.raises(WeightFileError, match="the broken format is unavailable"):
        cio.load(path, format="broken")


@pytest.mark.parametrize("name", ["w.npz", "w.params", "w.safetensors"])
def test_shared_storage_and_views_round_trip_in_every_format(tmp_path, name):
    base = np.arange(48, dtype=np.float32).reshape(6, 8)
    weights = {
        "base": base,
        "rows": base[1:4],  # shares base's buffer, offset
        "cols": base[:, ::3],  # shares it, strided
        "transposed": base.T,  # shares it, Fortran order
        "again": base,  # the very same object twice
    }
    snapshot = {k: v.copy() for k, v in weights.items()}
    cio.save(weights, tmp_path / name)
    out = cio.load(tmp_path / name)
    assert list(out) == list(weights)
    for key, value in snapshot.items():
        np.testing.assert_array_equal(out[key], value)
        np.testing.assert_array_equal(weights[key], value)  # inputs untouched
    assert not np.shares_memory(out["base"], out["rows"])  # each tensor is stored on its own


def test_saved_files_get_ordinary_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = tmp_path / "w.npz"
        cio.save({"w": np.zeros(2, np.float32)}, path)
        assert (path.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(umask)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".cpz", ".pt"])
def test_reader_options_a_format_does_not_take_are_one_weightfileerror(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    cio.save({"w": np.ones(2, np.float32)}, path)
    with pytest.raises(WeightFileError, match=str(path).replace("\\", "\\\\")):
        cio.open_weights(path, bogus=1)


@pytest.mark.parametrize("suffix", [".pt", ".params", ".safetensors", ".npz", ".cpz"])
def test_a_value_the_writer_refuses_is_one_error_starting_with_the_destination(tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    path.write_bytes(b"old")
    bad = np.array([None], object) if suffix == ".npz" else np.array(["text"])
    with pytest.raises(WeightFileError) as info:
        cio.save({"w": np.ones(2, np.float32), "s": bad}, path)
    assert str(info.value).startswith(f"{path}: ") and "'s'" in str(info.value), info.value
    assert path.read_bytes() == b"old"
