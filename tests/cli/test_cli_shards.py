"""Every command on a sharded checkpoint (index file or folder): one table with each tensor's shard,
shard-by-shard output with a new index, --global exact across shards, --jobs 2 bit-identical,
bad indexes refused before any output is written."""

from __future__ import annotations

import json

import numpy as np
import pytest

import coreprune
import coreprune.io as cio
from coreprune.cli import main


def model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = {f"layers.{i}.weight": (rng.integers(-6, 7, size=(64, 48)) / 4).astype(np.float32) for i in range(5)}
    w["layers.2.weight"] = w["layers.2.weight"].astype(np.float16)
    w["layers.0.bias"] = rng.standard_normal(48).astype(np.float32)
    w["head.weight"] = rng.standard_normal((10, 48)).astype(np.float64)
    return w


@pytest.fixture
def sharded(tmp_path):
    w = model()
    (tmp_path / "in").mkdir()
    cio.save(w, tmp_path / "in" / "model.safetensors", max_shard_size=13_000)
    return tmp_path / "in" / "model.safetensors.index.json", w


def files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def ordered(index):
    with cio.open_weights(index) as r:
        return {n: np.array(r[n]) for n in r}


def test_inspect_one_table_with_shards(sharded, capsys):
    index, w = sharded
    for where in (index, index.parent):
        assert main(["inspect", str(where)]) == 0
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert "safetensors shards" in lines[0] and lines[1].split()[-1] == "shard"
        assert sum(1 for line in lines if line.startswith("layers.")) == 6
        assert f"total: {len(w)} tensors" in out
    assert main(["inspect", str(index), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    index_map = json.loads(index.read_text())["weight_map"]
    assert {t["name"]: t["shard"] for t in doc["tensors"]} == index_map


@pytest.mark.parametrize("command", [
    ["prune", "--sparsity", "0.6", "--global"],
    ["prune", "--threshold", "0.3"],
    ["quantize", "--bits", "4", "--axis", "0"],
    ["quantize", "--bits", "4"],  # the default layouts, as a one-file output and the library
    ["compress", "--sparsity", "0.5", "--bits", "8"],
    ["compress", "--sparsity", "0.5", "--global", "--bits", "4", "--group-size", "16"],
])
def test_commands_shard_by_shard_equal_the_library_and_jobs_2(tmp_path, sharded, command):
    index, w = sharded
    ext = ".cpz" if command[0] in ("compress", "quantize") else ".safetensors"
    out = tmp_path / "out"
    out.mkdir()
    written = []
    for jobs in ("1", "2"):  # the same output path: the .cpz provenance records the command line
        for p in out.iterdir():
            p.unlink()
        argv = [command[0], str(index), "-o", str(out / f"m{ext}.index.json"), *command[1:],
                "--jobs", jobs, "-q"]
        assert main(argv) == 0
        written.append(files(out))
    assert written[0] == written[1]  # --jobs 2 is bit-identical
    assert len([n for n in written[0] if n.endswith(ext)]) == len(cio.open_weights(index).shards)
    outs = [out]
    # the library on the whole checkpoint in memory, in the reader's order
    ref = ordered(index)
    args = [a for a in command[1:] if a != "--global"]
    opts = dict(zip(args[::2], args[1::2]))
    if "--threshold" in opts:
        ref, _ = coreprune.prune_threshold(ref, float(opts["--threshold"]))
    elif "--sparsity" in opts:
        scope = "global" if "--global" in command else "layer"
        ref, _ = coreprune.prune_magnitude(ref, float(opts["--sparsity"]), scope=scope)
    if "--bits" in opts:
        layout: dict = {}  # what the command line gives is passed; the rest are the library's defaults
        if "--axis" in opts:
            layout["axis"] = int(opts["--axis"])
        if "--group-size" in opts:
            layout["group_size"] = int(opts["--group-size"])
        q = coreprune.quantize(ref, int(opts["--bits"]), **layout)
        ref = {n: v.dequantize() if hasattr(v, "dequantize") else v for n, v in q.items()}
    got = ordered(outs[0] / f"m{ext}.index.json")
    assert list(got) == list(ref)
    for n in ref:
        assert got[n].dtype == ref[n].dtype and np.array_equal(got[n], ref[n]), n


def test_decompress_convert_and_max_shard_size(tmp_path, sharded, capsys):
    index, w = sharded
    (tmp_path / "c").mkdir()
    cpz = str(tmp_path / "c" / "m.cpz.index.json")
    assert main(["compress", str(index), "-o", cpz, "--bits", "8", "-q"]) == 0
    assert main(["decompress", str(tmp_path / "c"), "-o", str(tmp_path / "c" / "d.npz.index.json"),
                 "--max-shard-size", "1MB", "-q"]) == 0
    doc = json.loads((tmp_path / "c" / "d.npz.index.json").read_text())
    assert set(doc["weight_map"].values()) == {"d-00001-of-00001.npz"} and set(doc["weight_map"]) == set(w)
    # convert merges a sharded checkpoint into one file, and splits one file into shards
    assert main(["convert", str(index), str(tmp_path / "merged.pt"), "-q"]) == 0
    merged = cio.load(tmp_path / "merged.pt")
    assert all(np.array_equal(merged[n], w[n]) for n in w)
    assert main(["convert", str(tmp_path / "merged.pt"), str(tmp_path / "split.safetensors.index.json"),
                 "--max-shard-size", "10KB"]) == 0
    assert "tensors in" in capsys.readouterr().out
    split = cio.load(tmp_path / "split.safetensors.index.json")
    assert all(np.array_equal(split[n], w[n]) for n in w)
    # 12288-byte float32 layers alone (over the limit), the float16 one alone (the next would pass
    # 10 kB), then the bias and the head together
    with cio.open_weights(tmp_path / "split.safetensors.index.json") as r:
        assert [r.names_in(s) for s in r.shards] == [
            ["layers.0.weight"], ["layers.1.weight"], ["layers.2.weight"], ["layers.3.weight"],
            ["layers.4.weight"], ["layers.0.bias", "head.weight"]]


@pytest.mark.parametrize("break_it, message", [
    (lambda d: d["weight_map"].update({"ghost": "model-00009-of-00009.safetensors"}), "which is missing"),
    (lambda d: d["weight_map"].pop("head.weight"), "the index does not list"),
    (lambda d: d["weight_map"].pop("layers.0.weight"), "the index does not list"),
    (lambda d: d["weight_map"].update({"head.weight": "../x.safetensors"}), "leaves the index's folder"),
])
def test_bad_index_one_line_exit_2_and_no_output(tmp_path, sharded, capsys, break_it, message):
    index, _ = sharded
    doc = json.loads(index.read_text())
    break_it(doc)
    index.write_text(json.dumps(doc))
    out = tmp_path / "out"
    out.mkdir()
    for argv in (["compress", str(index), "-o", str(out / "m.cpz.index.json"), "--bits", "4", "--jobs", "2"],
                 ["inspect", str(index)], ["convert", str(index), str(out / "one.npz")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and str(index) in err[0]
    assert list(out.iterdir()) == []


def test_shard_options_need_a_sharded_output(tmp_path, sharded, capsys):
    index, _ = sharded
    assert main(["prune", str(index), "-o", str(tmp_path / "x.npz"), "--sparsity", "0.5", "--jobs", "2"]) == 2
    assert "name a sharded output" in capsys.readouterr().err
    assert main(["prune", str(index), "-o", str(tmp_path), "--sparsity", "0.5"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["prune", str(index), "-o", str(index), "--sparsity", "0.5"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["compress", str(index), "-o", str(tmp_path / "m.npz.index.json"), "--bits", "4"]) == 2
    assert "compress writes .cpz shards" in capsys.readouterr().err
    assert main(["prune", str(index), "-o", str(tmp_path / "m.npz.index.json"), "--sparsity", "0.5",
                 "--max-shard-size", "lots"]) == 2
    assert "shard size" in capsys.readouterr().err


def test_convert_map_shard_by_shard_equals_the_one_file_convert(tmp_path):
    rng = np.random.default_rng(1)
    w = {
        "features.0.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "features.1.gamma": np.ones(8, np.float32),
        "features.1.beta": np.zeros(8, np.float32),
        "features.1.running_mean": rng.standard_normal(8).astype(np.float32),
        "features.1.running_var": np.ones(8, np.float32),
        "output.weight": rng.standard_normal((10, 72)).astype(np.float32),
    }
    (tmp_path / "in").mkdir()
    cio.save(w, tmp_path / "in" / "net.npz", max_shard_size=400)
    one = tmp_path / "one.npz"
    cio.save(w, one)
    assert main(["convert", str(one), str(tmp_path / "ref.pt"), "--map", "gluon-to-torch", "-q"]) == 0
    assert main(["convert", str(tmp_path / "in"), str(tmp_path / "out.pt.index.json"),
                 "--map", "gluon-to-torch", "--jobs", "2", "-q"]) == 0
    ref, got = cio.load(tmp_path / "ref.pt"), cio.load(tmp_path / "out.pt.index.json")
    assert list(got) == list(ref) and "features.1.num_batches_tracked" in got
    assert all(got[n].dtype == ref[n].dtype and np.array_equal(got[n], ref[n]) for n in ref)
    with cio.open_weights(tmp_path / "out.pt.index.json") as r:  # the counter follows its batch norm
        assert r.shard_of("features.1.num_batches_tracked") == r.shard_of("features.1.running_var")
