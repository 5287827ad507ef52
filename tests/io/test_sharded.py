"""Sharded checkpoints (index file or folder of shards) read and written as one checkpoint."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import coreprune.io as cio
from coreprune.errors import CompressionError, WeightFileError
from coreprune.io.sharded import is_sharded_reader, parse_size, plan_shards

safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="the reference safetensors writer")


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "embed.weight": rng.standard_normal((50, 16)).astype(np.float32),
        "layers.0.weight": rng.standard_normal((16, 16)).astype(np.float32),
        "layers.0.bias": rng.standard_normal(16).astype(np.float32),
        "layers.1.weight": rng.standard_normal((16, 16)).astype(np.float16),
        "head.weight": rng.standard_normal((10, 16)).astype(np.float32),
    }


def _hf_checkpoint(folder, weights, groups, *, index_name="model.safetensors.index.json"):
    """A checkpoint laid out as transformers writes it, with the reference safetensors writer."""
    n = len(groups)
    weight_map = {}
    for i, names in enumerate(groups, 1):
        shard = f"model-{i:05d}-of-{n:05d}.safetensors"
        part = {k: weights[k] for k in names}
        safetensors_numpy.save_file(part, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in names})
    index = folder / index_name
    total = sum(weights[k].nbytes for k in weight_map)
    doc = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    index.write_text(json.dumps(doc))
    return index


GROUPS = [["embed.weight", "layers.0.weight"], ["layers.0.bias", "layers.1.weight"], ["head.weight"]]


def test_reference_checkpoint_reads_as_one(tmp_path):
    w = _weights()
    index = _hf_checkpoint(tmp_path, w, GROUPS)
    for where in (index, tmp_path):
        with cio.open_weights(where) as r:
            assert is_sharded_reader(r) and type(r).__name__ == "ShardedReader"
            assert list(r) == [n for g in GROUPS for n in g]  # shard order, then each shard's order
            assert r.metadata == {"format": "pt"}
            assert r.index_metadata["total_size"] == sum(a.nbytes for a in w.values())
            assert r.shard_of("layers.1.weight").name == "model-00002-of-00003.safetensors"
            assert r.names_in(r.shards[2]) == ["head.weight"]
            assert r.spec("layers.1.weight").dtype == np.float16
        loaded = cio.load(where)
        assert loaded.keys() == w.keys()
        for k in w:
            assert loaded[k].dtype == w[k].dtype and np.array_equal(loaded[k], w[k])


def test_folder_without_index(tmp_path):
    w = _weights()
    _hf_checkpoint(tmp_path, w, GROUPS)
    (tmp_path / "model.safetensors.index.json").unlink()
    loaded = cio.load(tmp_path)
    assert all(np.array_equal(loaded[k], w[k]) for k in w)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(WeightFileError, match="model-00002-of-00003.safetensors is missing"):
        cio.open_weights(tmp_path)


@pytest.mark.parametrize("ext", [".safetensors", ".npz", ".bin", ".cpz"])
def test_save_sharded_round_trip(tmp_path, ext):
    w = _weights()
    cio.save(w, tmp_path / f"model{ext}", max_shard_size=2048)
    index = tmp_path / f"model{ext}.index.json"
    doc = json.loads(index.read_text())
    shards = sorted(set(doc["weight_map"].values()))
    assert len(shards) >= 2 and all((tmp_path / s).is_file() for s in shards)
    assert doc["metadata"]["total_size"] == sum(a.nbytes for a in w.values())
    # every shard holds at most 2048 dense bytes unless one tensor alone is larger
    for s in shards:
        names = [k for k, v in doc["weight_map"].items() if v == s]
        assert len(names) == 1 or sum(w[k].nbytes for k in names) <= 2048
    back = cio.load(index)
    assert list(back) == list(w)
    assert all(np.array_equal(back[k], w[k]) and back[k].dtype == w[k].dtype for k in w)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


def test_save_sharded_reads_back_with_the_reference(tmp_path):
    w = _weights()
    cio.save(w, tmp_path / "model.safetensors.index.json", max_shard_size="3KB")
    doc = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    got = {}
    for shard in set(doc["weight_map"].values()):
        got.update(safetensors_numpy.load_file(str(tmp_path / shard)))
    assert got.keys() == w.keys() and all(np.array_equal(got[k], w[k]) for k in w)


def test_save_from_a_sharded_reader_to_another_layout(tmp_path):
    w = _weights()
    index = _hf_checkpoint(tmp_path, w, GROUPS)
    out = tmp_path / "out"
    out.mkdir()
    with cio.open_weights(index) as r:
        cio.save(r, out / "m.npz.index.json")  # one shard
    written = json.loads((out / "m.npz.index.json").read_text())["weight_map"]
    assert written == {k: "m-00001-of-00001.npz" for g in GROUPS for k in g}
    back = cio.load(out)
    assert all(np.array_equal(back[k], w[k]) for k in w)


def _rewrite_index(index, change):
    doc = json.loads(index.read_text())
    change(doc)
    index.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["weight_map"].update({"ghost": "model-00004-of-00004.safetensors"}),
         "names the shard model-00004-of-00004.safetensors, which is missing"),
        (lambda d: d["weight_map"].update({"head.weight": "model-00001-of-00003.safetensors"}),
         "model-00003-of-00003.safetensors is in the folder but the index does not list its tensors"),
        (lambda d: d["weight_map"].update({"layers.0.bias": "model-00003-of-00003.safetensors"}),
         "'layers.0.bias' is stored in model-00002-of-00003.safetensors but the index puts it in model-0000"),
        (lambda d: d["weight_map"].pop("layers.0.bias"), "holds 1 tensor\\(s\\) the index does not list"),
        (lambda d: d["weight_map"].update({"head.weight": "../model-00003-of-00003.safetensors"}),
         "leaves the index's folder"),
        (lambda d: d["weight_map"].update({"head.weight": "/etc/passwd"}), "is absolute"),
        (lambda d: d["weight_map"].update({"head.weight": "C:\\\\x.safetensors"}), "is absolute"),
        (lambda d: d["weight_map"].update({"ghost": "model-00001-of-00003.safetensors"}),
         "puts 'ghost' in model-00001-of-00003.safetensors, which has no such tensor"),
        (lambda d: d.pop("weight_map"), 'no "weight_map" object'),
        (lambda d: d["weight_map"].update({"head.weight": 3}), "must be a non-empty string"),
        (lambda d: d["weight_map"].update({"head.weight": "model.safetensors.index.json"}),
         "is an index file"),
        (lambda d: d["weight_map"].update({"ghost": "sub/"}), "names the shard sub, which is missing"),
    ],
)
def test_bad_index_is_one_clear_error(tmp_path, change, message):
    index = _hf_checkpoint(tmp_path, _weights(), GROUPS)
    _rewrite_index(index, change)
    with pytest.raises(WeightFileError, match=message) as e:
        cio.open_weights(index)
    assert str(index) in str(e.value)


def test_tensor_in_two_shards(tmp_path):
    w = _weights()
    index = _hf_checkpoint(tmp_path, w, GROUPS)
    # shard 3 also stores layers.0.bias, which the index puts in shard 2
    safetensors_numpy.save_file({"head.weight": w["head.weight"], "layers.0.bias": w["layers.0.bias"]},
                                str(tmp_path / "model-00003-of-00003.safetensors"))
    with pytest.raises(WeightFileError, match="'layers.0.bias' is stored in"):
        cio.open_weights(index)
    (tmp_path / "model.safetensors.index.json").unlink()  # no index: the two shards disagree
    with pytest.raises(WeightFileError, match="'layers.0.bias' is stored in two shards"):
        cio.open_weights(tmp_path)


def test_duplicate_key_and_broken_json(tmp_path):
    index = _hf_checkpoint(tmp_path, _weights(), GROUPS)
    text = index.read_text()
    index.write_text(text.replace('"head.weight"', '"head.weight": "x", "head.weight"'))
    with pytest.raises(WeightFileError, match="lists 'head.weight' twice"):
        cio.open_weights(index)
    index.write_text(text[:-5])
    with pytest.raises(WeightFileError, match="invalid JSON"):
        cio.open_weights(index)


def test_sharded_save_refuses_an_input_and_leaves_nothing(tmp_path):
    w = _weights()
    index = _hf_checkpoint(tmp_path, w, GROUPS)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with cio.open_weights(index) as r, pytest.raises(WeightFileError, match="refusing to overwrite"):
        cio.save(r, index, inputs=tuple(r.files))
    bad = {"a": np.ones(3, np.float32), "b": np.array(["x"], dtype=object)}
    with pytest.raises(CompressionError):
        cio.save(bad, tmp_path / "other.safetensors", max_shard_size=4)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_failing_shard_leaves_no_partial_checkpoint(tmp_path):
    # the second shard holds a dtype safetensors cannot store: the first must not stay behind
    w = {"a": np.ones(4, np.float32), "b": np.ones(4, np.dtype("datetime64[s]"))}
    with pytest.raises(WeightFileError, match="m-00002-of-00002.safetensors.*'b'"):
        cio.save(w, tmp_path / "m.safetensors", max_shard_size=16)
    assert os.listdir(tmp_path) == []


def test_parse_size_and_plan():
    assert parse_size("1.5KiB") == 1536 and parse_size("10 MB") == 10**7
    for bad in ("-1", "5 parsecs", 0, True, 1.5):
        with pytest.raises(Exception, match="shard size"):
            parse_size(bad)
    assert plan_shards([("a", 3), ("b", 3), ("c", 3)], 6) == [["a", "b"], ["c"]]
    assert plan_shards([("a", 3)], None) == [["a"]]
