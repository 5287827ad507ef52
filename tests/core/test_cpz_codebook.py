"""The .cpz codebook kind: exact round trips in both layouts, edge cases, near-entropy sizes, bad files."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest

from coreprune import WeightFileError
from coreprune.entropy import empirical_entropy
from coreprune.io.cpz import load_compressed as load
from coreprune.io.cpz import open_reader, save_compressed
from coreprune.weight_sharing import CodebookArray, kmeans_codebook

FOOTER = struct.Struct("<QQI4s")


def _pruned(rng, shape, keep):
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) > keep] = 0
    return w


def _same(a: CodebookArray, b: CodebookArray) -> bool:
    ma = np.ones(a.shape, bool) if a.mask is None else a.mask
    mb = np.ones(b.shape, bool) if b.mask is None else b.mask
    return (a.bits == b.bits and a.dtype == b.dtype and np.array_equal(ma, mb)
            and np.array_equal(a.codes[ma], b.codes[mb]) and np.array_equal(a.codebook, b.codebook)
            and a.dequantize().tobytes() == b.dequantize().tobytes())


CASES = {
    "sparse": lambda rng: kmeans_codebook(_pruned(rng, (300, 784), 0.06), bits=5),
    "conv": lambda rng: kmeans_codebook(_pruned(rng, (50, 20, 5, 5), 0.1), bits=8),
    "dense": lambda rng: kmeans_codebook(rng.standard_normal((10, 30)).astype(np.float32), bits=3),
    "all pruned": lambda rng: kmeans_codebook(np.zeros((7, 9), np.float32), bits=2),
    "last survives": lambda rng: kmeans_codebook(np.eye(1, 5000, 4999, dtype=np.float32)[0], bits=1),
    "16 bits": lambda rng: kmeans_codebook(_pruned(rng, (2000,), 0.5), bits=16, iters=2),
    "empty": lambda rng: kmeans_codebook(np.zeros((0, 4), np.float32), bits=2),
    "float64": lambda rng: kmeans_codebook(_pruned(rng, (40, 40), 0.3).astype(np.float64), bits=4),
}


@pytest.mark.parametrize("entropy", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_is_exact(tmp_path, case, entropy):
    value = CASES[case](np.random.default_rng(len(case)))
    path = tmp_path / "m.cpz"
    save_compressed({"w": value, "b": np.arange(3, dtype=np.float32)}, path, entropy=entropy)
    back = load(path)
    assert isinstance(back["w"], CodebookArray) and _same(back["w"], value)
    with open_reader(path) as r:  # the generic reader sees the dense values
        assert r["w"].tobytes() == value.dequantize().tobytes()
        assert r.storage("w")["layout"] == ("ans" if entropy else "packed")


def test_entropy_layout_is_smaller_and_close_to_the_entropy(tmp_path):
    rng = np.random.default_rng(0)
    value = kmeans_codebook(_pruned(rng, (300, 784), 0.08), bits=6)
    sizes = {}
    for entropy in (True, False):
        path = tmp_path / f"{entropy}.cpz"
        save_compressed({"w": value}, path, entropy=entropy)
        with open_reader(path) as r:
            sizes[entropy] = r.storage("w")["stored_nbytes"]
    assert sizes[True] < sizes[False]
    codes = value.codes[value.mask]
    positions = np.flatnonzero(value.mask)
    gaps = np.diff(positions, prepend=-1) - 1
    bound_bits = value.nnz * (empirical_entropy(codes, 64) + empirical_entropy(np.minimum(gaps, 4095), 4096))
    # within 5 % of the order-0 bound of the codes and the gaps, plus the histograms and codebook
    assert sizes[True] * 8 < 1.05 * bound_bits + 8 * (64 * 4 + 64 + 4096 + 2 * 13 + 16)


def _edit_manifest(path, edit):
    data = bytearray(path.read_bytes())
    offset, length, _, end = FOOTER.unpack(data[-FOOTER.size:])
    manifest = json.loads(bytes(data[offset:offset + length]))
    edit(manifest)
    raw = json.dumps(manifest, separators=(",", ":")).encode()
    out = bytes(data[:offset]) + raw + FOOTER.pack(offset, len(raw), zlib.crc32(raw), end)
    path.write_bytes(out)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m["tensors"][0].update(layout="huffman"), "unknown codebook layout"),
        (lambda m: m["tensors"][0].update(bits=40), "bad codebook parameters"),
        (lambda m: m["tensors"][0].update(nnz=10**9), "bad codebook parameters"),
        (lambda m: m["tensors"][0].update(nnz=m["tensors"][0]["nnz"] - 1), "fields and|index names|manifest"),
        (lambda m: m["tensors"][0].update(shape=[10, 10]), "bad codebook parameters"),
        (lambda m: m["tensors"][0].update(shape=[60, 49]), "past the tensor|index names"),
        (lambda m: m["tensors"][0].update(gap_width=m["tensors"][0]["gap_width"] + 1), "index names|past"),
        (lambda m: m["tensors"][0].update(gap_width=1), "gap fields outside|index names|past"),
        (lambda m: m["tensors"][0]["blobs"].pop("codes"), "do not match the layout"),
        (lambda m: m["tensors"][0].update(bits=3), "codebook' has"),
    ],
)
def test_bad_manifests_raise_one_error_naming_the_file(tmp_path, edit, match):
    rng = np.random.default_rng(1)
    path = tmp_path / "bad.cpz"
    save_compressed({"w": kmeans_codebook(_pruned(rng, (60, 50), 0.2), bits=4)}, path)
    _edit_manifest(path, edit)
    with pytest.raises(WeightFileError, match=match) as info:
        load(path)
    assert "bad.cpz" in str(info.value)


@pytest.mark.parametrize("entropy", [True, False])
def test_truncations_and_flips_never_pass_silently(tmp_path, entropy):
    rng = np.random.default_rng(2)
    value = kmeans_codebook(_pruned(rng, (60, 50), 0.2), bits=4)
    path = tmp_path / "f.cpz"
    save_compressed({"w": value}, path, entropy=entropy)
    data = path.read_bytes()
    bad = tmp_path / "cut.cpz"
    for n in range(0, len(data), 5):
        bad.write_bytes(data[:n])
        with pytest.raises(WeightFileError, match="cut.cpz"):
            load(bad)
    for pos in range(16, len(data) - FOOTER.size, 3):
        mutated = bytearray(data)
        mutated[pos] ^= 0x10
        bad.write_bytes(bytes(mutated))
        try:
            back = load(bad)
        except WeightFileError:
            continue
        assert _same(back["w"], value), pos  # only padding may change undetected
