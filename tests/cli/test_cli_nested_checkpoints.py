"""Nested checkpoints through the CLI without any framework: structure and entries round-trip.

The checkpoint is pickled by hand (tests/io/_torchpickle.py) as torch.save writes it; the outputs
are read back with the restricted reader, and the written pickle is checked opcode-independently by
rebuilding the object it describes. Hostile ``.cpz`` manifests with bad structures are refused.
"""

from __future__ import annotations

import collections
import json
import math
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import coreprune.io as cio
from coreprune.cli import main
from coreprune.errors import CompressionError, WeightFileError
from coreprune.io import structure as st
from coreprune.io.cpz import save_compressed
from coreprune.io.torch_format import write as torch_write

sys.path.insert(0, str(Path(__file__).parents[1] / "io"))
from _torchpickle import tensor_of, zip_file  # noqa: E402

RNG = np.random.default_rng(0)
W = RNG.standard_normal((6, 5)).astype(np.float32)
B = RNG.standard_normal(6).astype(np.float32)
AVG = RNG.standard_normal((6, 5)).astype(np.float32)


def _checkpoint_bytes() -> bytes:
    sd = collections.OrderedDict(
        [("fc.weight", tensor_of(W, "0", "FloatStorage")), ("fc.bias", tensor_of(B, "1", "FloatStorage"))]
    )
    ck = {
        "state_dict": sd,
        "epoch": 12,
        "optimizer": {
            "state": {0: {"step": tensor_of(np.array(3.0, np.float32), "2", "FloatStorage"),
                          "exp_avg": tensor_of(AVG, "3", "FloatStorage")}},
            "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "amsgrad": False, "foreach": None,
                              "params": [0, 1]}],
        },
        "scheduler": {"milestones": {30: 1, 60: 1}, "gamma": 0.1, "_last_lr": [0.01]},
        "best": -math.inf, "run": "exp-7", "big": 2**70, "empty": {},
    }
    return zip_file(ck)


def _run(capsys, *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compress_decompress_and_prune_keep_the_nesting(tmp_path, capsys):
    src = tmp_path / "ck.pt"
    src.write_bytes(_checkpoint_bytes())
    with cio.open_weights(src) as r:
        tree, extras = r.structure, dict(r.extras)
    assert extras["scheduler.milestones.30"] == 1 and extras["best"] == -math.inf
    assert st.tensor_names(tree) == ["state_dict.fc.weight", "state_dict.fc.bias", "optimizer.state.0.step",
                                     "optimizer.state.0.exp_avg"]
    cpz, back, pruned = tmp_path / "ck.cpz", tmp_path / "back.pt", tmp_path / "pruned.pt"
    assert _run(capsys, "compress", src, "-o", cpz, "--sparsity", "0.5")[0] == 0
    assert _run(capsys, "decompress", cpz, "-o", back)[0] == 0
    code, _, err = _run(capsys, "prune", src, "-o", pruned, "--sparsity", "0.5")
    assert code == 0 and "non-tensor" not in err, err
    for out in (cpz, back, pruned):
        with cio.open_weights(out) as r:
            assert r.structure == tree, out
            assert r.extras == extras, out
            w = r["state_dict.fc.weight"]
            keep = np.abs(W) >= np.sort(np.abs(W), axis=None)[W.size // 2]  # the 15 largest of 30
            np.testing.assert_array_equal(w, np.where(keep, W, 0))
            np.testing.assert_array_equal(r["state_dict.fc.bias"], B)  # 1-D: not selected
            np.testing.assert_array_equal(r["optimizer.state.0.exp_avg"], AVG)  # optimizer state: untouched
    # what the extras are made of survives too: int keys, tuples, None, a long int
    with cio.open_weights(back) as r:
        groups = r.extras["optimizer.param_groups"]
        assert groups == [{"lr": 0.01, "betas": (0.9, 0.999), "amsgrad": False, "foreach": None,
                           "params": [0, 1]}]
        assert type(groups[0]["betas"]) is tuple and r.extras["big"] == 2**70 and r.extras["empty"] == {}
        scheduler = dict(r.structure["dict"])["scheduler"]
        assert dict(scheduler["dict"])["milestones"] == st.leaf({30: 1, 60: 1})  # int keys kept


def test_flat_files_have_no_structure_and_write_as_before(tmp_path):
    flat = tmp_path / "sd.pt"
    flat.write_bytes(zip_file(collections.OrderedDict([("w", tensor_of(W, "0", "FloatStorage"))])))
    with cio.open_weights(flat) as r:
        assert r.structure is None and r.extras == {}
    cio.save({"w": W}, tmp_path / "x.cpz")
    with cio.open_weights(tmp_path / "x.cpz") as r:
        assert r.structure is None and r.extras == {}


def test_writers_refuse_structures_they_cannot_hold(tmp_path):
    w = {"w": W}
    cases = {
        "a bytes value": {"dict": [["w", {"tensor": "w"}], ["blob", st.leaf(b"x")]]},
        "not among the tensors": {"dict": [["v", {"tensor": "v"}]]},
        "does not place tensor 'w'": {"dict": [["epoch", 1]]},
        "twice": {"list": [{"tensor": "w"}, {"tensor": "w"}]},
        "non-finite": {"dict": [["w", {"tensor": "w"}], ["x", math.nan]]},
        "unknown kind": {"set": [{"tensor": "w"}]},
    }
    for problem, tree in cases.items():
        with pytest.raises(CompressionError, match=problem):
            save_compressed(w, tmp_path / "o.cpz", structure=tree)
        with pytest.raises(CompressionError, match=problem), open(tmp_path / "o.pt", "wb") as f:
            torch_write(w, f, structure=tree)
    assert not (tmp_path / "o.cpz").exists()


def _with_structure(path: Path, structure_json: str) -> None:
    """Rewrite a .cpz file's manifest structure (CRC and footer updated), as a hostile writer would."""
    data = path.read_bytes()
    offset, length, _, end = struct.unpack("<QQI4s", data[-24:])
    manifest = json.loads(data[offset : offset + length])
    manifest["structure"] = "@STRUCTURE@"
    text = json.dumps(manifest).replace('"@STRUCTURE@"', structure_json).encode()
    path.write_bytes(data[:offset] + text + struct.pack("<QQI4s", offset, len(text), zlib.crc32(text), end))


@pytest.mark.parametrize(
    "structure, problem",
    [
        (150, "nests deeper than 100"),
        (5000, "manifest is not JSON"),
        ({"dict": [["w", {"tensor": "w"}], ["w2", {"tensor": "w"}]]}, "names tensor 'w' twice"),
        ({"dict": [["x", 1]]}, "does not place tensor 'w'"),
        ({"dict": [["w", {"tensor": "nope"}]]}, "not among the tensors"),
        ({"dict": [["w", {"tensor": "w"}], ["k", {"exec": "os.system"}]]}, "unknown kind"),
        ({"dict": [[["a"], {"tensor": "w"}]]}, "pairs"),
        ({"dict": [["w", {"tensor": "w"}], ["w", 1]]}, "twice"),
        ({"list": [{"tensor": "w"}, {"float": "1e999"}]}, "unknown number"),
        ({"tensor": "w", "extra": 1}, "one-key object"),
    ],
)
def test_hostile_manifest_structures_are_refused(tmp_path, capsys, structure, problem):
    path = tmp_path / "m.cpz"
    save_compressed({"w": W}, path, structure={"dict": [["w", {"tensor": "w"}]]})
    if isinstance(structure, int):  # that many lists around the tensor (json.dumps cannot write 5,000)
        text = '{"list": [' * structure + '{"tensor": "w"}' + "]}" * structure
    else:
        text = json.dumps(structure)
    _with_structure(path, text)
    with pytest.raises(WeightFileError, match=problem):
        cio.open_weights(path)
    code, _, err = _run(capsys, "decompress", path, "-o", tmp_path / "o.pt")
    assert code == 2 and err.count("\n") == 1 and str(path) in err and not (tmp_path / "o.pt").exists()
