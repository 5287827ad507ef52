"""Shard-by-shard processing: the global threshold as a reduction over files, jobs=N bit-identical."""

from __future__ import annotations

import json

import numpy as np
import pytest

import coreprune
import coreprune.io as cio
from coreprune.errors import CompressionError
from coreprune.io.sharded import ShardedReader
from coreprune.shardwise import ShardSettings, process_shards, sharded_global_threshold


def _model(seed: int = 0, ties: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = {
        "a.weight": rng.standard_normal((300, 256)).astype(np.float32),
        "a.bias": rng.standard_normal(256).astype(np.float32),
        "b.weight": rng.standard_normal((256, 300)).astype(np.float16),
        "c.weight": rng.standard_normal((200, 200)).astype(np.float32),
        "d.weight": rng.standard_normal((64, 64)).astype(np.float32),
    }
    if ties:  # many equal magnitudes, so the tie-break across shards matters
        w["c.weight"] = np.round(w["c.weight"] * 4) / 4
        w["a.weight"][:50] = np.round(w["a.weight"][:50] * 4) / 4
    return w


def _shard(tmp_path, w, size, ext=".safetensors"):
    cio.save(w, tmp_path / f"in{ext}", max_shard_size=size)
    return tmp_path / f"in{ext}.index.json"


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_reduced_threshold_equals_the_streamed_and_in_memory_ones(tmp_path, sparsity):
    w = _model()
    index = _shard(tmp_path, w, 200_000)
    with cio.open_weights(index) as r:
        assert len(r.shards) >= 3
        names = coreprune.selection.select(w)
        groups = [(str(s), [n for n in r.names_in(s) if n in names]) for s in r.shards]
        specs = {n: r.spec(n) for n in r}
        order = [n for _, g in groups for n in g]
        cut = sharded_global_threshold(groups, specs, sparsity)
        streamed = coreprune.global_magnitude_threshold(r, sparsity)
    assert (cut.value, cut.removed_at_value, cut.k, cut.total, cut.work) == (
        streamed.value, streamed.removed_at_value, streamed.k, streamed.total, streamed.work)
    ordered = {n: w[n] for n in order}
    _, masks = coreprune.prune_magnitude(ordered, sparsity, scope="global")
    for n in order:
        assert np.array_equal(cut.prune(n, w[n])[1], masks[n])


def test_reduced_threshold_when_every_value_ties(tmp_path):
    # one magnitude everywhere: the radix select runs every pass down to the last bit
    w = {f"t{i}": np.full((200, 200), -0.5 if i % 2 else 0.5, np.float32) for i in range(4)}
    index = _shard(tmp_path, w, 200_000)
    with cio.open_weights(index) as r:
        groups = [(str(s), r.names_in(s)) for s in r.shards]
        cut = sharded_global_threshold(groups, {n: r.spec(n) for n in r}, 0.6)
    _, masks = coreprune.prune_magnitude(w, 0.6, scope="global")
    assert cut.removed_at_value == {"t0": 40000, "t1": 40000, "t2": 16000, "t3": 0}
    for n in w:
        assert np.array_equal(cut.prune(n, w[n])[1], masks[n])


def test_nonfinite_tensor_is_named(tmp_path):
    w = _model()
    w["c.weight"][3, 4] = np.nan
    index = _shard(tmp_path, w, 200_000)
    with cio.open_weights(index) as r:
        groups = [(str(s), [n for n in r.names_in(s) if n != "a.bias"]) for s in r.shards]
        specs = {n: r.spec(n) for n in r}
    for s in (0.0, 0.5):
        with pytest.raises(CompressionError, match="c.weight"):
            sharded_global_threshold(groups, specs, s)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("settings, ext", [
    (ShardSettings(sparsity=0.7, scope="global", bits=4, axis=0), ".cpz"),
    (ShardSettings(sparsity=0.5), ".safetensors"),
    (ShardSettings(threshold=0.3, bits=8, group_size=4), ".npz"),
])
def test_jobs_2_is_bit_identical_and_matches_the_in_memory_reference(tmp_path, settings, ext):
    w = _model()
    index = _shard(tmp_path, w, 200_000)
    outs = []
    for jobs in (1, 2):
        out = tmp_path / f"out{jobs}"
        out.mkdir()
        run = process_shards(index, out / f"m{ext}.index.json", settings, jobs=jobs)
        assert len(run.shards) == len(ShardedReader(index).shards)  # same layout by default
        outs.append(out)
    a, b = _files(outs[0]), _files(outs[1])
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    # reference: the whole checkpoint in memory, in the sharded reader's order
    with cio.open_weights(index) as r:
        ordered = {n: np.array(r[n]) for n in r}
    if settings.threshold is not None:
        ref, _ = coreprune.prune_threshold(ordered, settings.threshold)
    else:
        ref, _ = coreprune.prune_magnitude(ordered, settings.sparsity, scope=settings.scope)
    if settings.bits is not None:
        q = coreprune.quantize(ref, settings.bits, axis=settings.axis, group_size=settings.group_size)
        ref = {n: (v.dequantize() if hasattr(v, "dequantize") else v) for n, v in q.items()}
    got = cio.load(outs[0])
    assert list(got) == list(ordered)
    for n in ordered:
        assert got[n].dtype == ref[n].dtype and np.array_equal(got[n], ref[n]), n
    doc = json.loads((outs[0] / f"m{ext}.index.json").read_text())
    assert set(doc["weight_map"]) == set(w)
    assert doc["metadata"]["total_size"] == sum(a.nbytes for a in w.values())


def test_max_shard_size_relayouts_and_single_file_input(tmp_path):
    w = _model()
    cio.save(w, tmp_path / "one.safetensors")
    run = process_shards(tmp_path / "one.safetensors", tmp_path / "m.safetensors.index.json",
                         ShardSettings(), max_shard_size="100KB")
    assert len(run.shards) == 5
    again = process_shards(tmp_path / "m.safetensors.index.json", tmp_path / "n.safetensors",
                           ShardSettings(), max_shard_size=10**9)
    assert [p.name for p in again.shards] == ["n-00001-of-00001.safetensors"]
    back = cio.load(tmp_path / "n.safetensors.index.json")
    assert all(np.array_equal(back[n], w[n]) for n in w)


def test_failure_leaves_nothing(tmp_path):
    w = _model()
    w["d.weight"][0, 0] = np.inf
    index = _shard(tmp_path, w, 200_000)
    before = _files(tmp_path)
    with pytest.raises(CompressionError, match="d.weight"):
        process_shards(index, tmp_path / "out.cpz.index.json", ShardSettings(sparsity=0.5), jobs=2)
    assert _files(tmp_path) == before
    with pytest.raises(CompressionError, match="jobs must be"):
        process_shards(index, tmp_path / "out.cpz.index.json", ShardSettings(), jobs=0)
