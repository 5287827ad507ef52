"""``coreprune inspect PARAMS --groups SYMBOL.json``: coupling groups of a symbol-API MXNet checkpoint
without MXNet, checked against a hand-derived structure and a NumPy L2 reference; hostile JSON
gives one line and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from coreprune.cli import main
from coreprune.io.mxnet_params import write


def _var(name: str) -> dict:
    return {"op": "null", "name": name, "inputs": []}


def _residual_checkpoint(tmp_path):
    """data -> c0 -> bn -> relu -> (c1 + c0-path) -> flatten -> fc, as ``mx.sym.tojson`` writes it."""
    nodes = [
        _var("data"), _var("c0_weight"), _var("c0_bias"),
        {"op": "Convolution", "name": "c0", "attrs": {"num_filter": "6", "kernel": "(3, 3)", "pad": "(1, 1)"},
         "inputs": [[0, 0, 0], [1, 0, 0], [2, 0, 0]]},
        _var("bn_gamma"), _var("bn_beta"), _var("bn_moving_mean"), _var("bn_moving_var"),
        {"op": "BatchNorm", "name": "bn", "attrs": {"fix_gamma": "False"},
         "inputs": [[3, 0, 0], [4, 0, 0], [5, 0, 0], [6, 0, 1], [7, 0, 1]]},
        {"op": "Activation", "name": "relu", "attrs": {"act_type": "relu"}, "inputs": [[8, 0, 0]]},
        _var("c1_weight"),
        {"op": "Convolution", "name": "c1",
         "attrs": {"num_filter": "6", "kernel": "(1, 1)", "no_bias": "True"},
         "inputs": [[9, 0, 0], [10, 0, 0]]},
        {"op": "elemwise_add", "name": "sum", "inputs": [[11, 0, 0], [9, 0, 0]]},
        _var("fc_weight"), _var("fc_bias"),
        {"op": "FullyConnected", "name": "fc", "attrs": {"num_hidden": "10"},
         "inputs": [[12, 0, 0], [13, 0, 0], [14, 0, 0]]},
    ]
    sym = {"nodes": nodes, "arg_nodes": [i for i, n in enumerate(nodes) if n["op"] == "null"],
           "node_row_ptr": list(range(len(nodes) + 1)), "heads": [[15, 0, 0]],
           "attrs": {"mxnet_version": ["int", 10901]}}
    rng = np.random.default_rng(0)
    arrays = {
        "arg:c0_weight": rng.normal(size=(6, 1, 3, 3)), "arg:c0_bias": rng.normal(size=6),
        "arg:bn_gamma": rng.normal(size=6), "arg:bn_beta": rng.normal(size=6),
        "aux:bn_moving_mean": rng.normal(size=6), "aux:bn_moving_var": rng.uniform(0.5, 2, size=6),
        "arg:c1_weight": rng.normal(size=(6, 6, 1, 1)),
        "arg:fc_weight": rng.normal(size=(10, 6 * 16)), "arg:fc_bias": rng.normal(size=10),
    }
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    (tmp_path / "m-symbol.json").write_text(json.dumps(sym))
    with open(tmp_path / "m-0000.params", "wb") as f:
        write(arrays, f)
    return tmp_path / "m-symbol.json", tmp_path / "m-0000.params", sym, arrays


def test_groups_of_a_residual_checkpoint_match_the_hand_derived_coupling(tmp_path, capsys):
    sym_path, params, _, a = _residual_checkpoint(tmp_path)
    assert main(["inspect", str(params), "--groups", str(sym_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    [group] = doc["groups"]  # the residual sum ties c0's and c1's outputs: one group
    assert group["name"] == "c0" and group["channels"] == 6
    assert {"c0", "bn", "relu", "c1", "sum"} <= set(group["nodes"])
    assert set(group["tensors"]) == {
        "c0_weight[axis 0] (producer)", "c0_bias[axis 0] (producer)",
        "bn_gamma[axis 0] (norm)", "bn_beta[axis 0] (norm)",
        "bn_moving_mean[axis 0] (norm)", "bn_moving_var[axis 0] (norm)",
        "c1_weight[axis 0] (producer)", "c1_weight[axis 1] (consumer)",
        "fc_weight[axis 1] x16 (consumer)",
    }
    # NumPy reference: channel c's L2 score is the sum of squares of every weight slice indexed by c
    # (filters, the batch norm's scale, input columns; biases and running statistics excluded)
    w = {k.split(":", 1)[1]: v.astype(np.float64) for k, v in a.items()}
    ref = [
        sum(float(np.sum(w[k][c] ** 2)) for k in ("c0_weight", "bn_gamma", "c1_weight"))
        + float(np.sum(w["c1_weight"][:, c] ** 2))
        + float(np.sum(w["fc_weight"][:, c * 16:(c + 1) * 16] ** 2))
        for c in range(6)
    ]
    np.testing.assert_allclose(group["l2"], ref, rtol=1e-6)


def test_text_output_and_no_framework_imported(tmp_path, capsys):
    sym_path, params, _, _ = _residual_checkpoint(tmp_path)
    assert main(["inspect", str(params), "--groups", str(sym_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("1 coupling group(s), 6 prunable channels, 8 nodes")
    assert out[1].startswith("group c0: 6 channels, L2 ")
    assert out[2].startswith("  nodes: c0, bn, relu")
    assert "fc_weight[axis 1] x16 (consumer)" in out[3]
    # in a fresh process: the command imports neither framework, even where they are installed
    code = ("import sys; from coreprune.cli import main; "
            f"assert main(['inspect', {str(params)!r}, '--groups', {str(sym_path)!r}, '-q']) == 0; "
            "assert not {'mxnet', 'torch'} & set(sys.modules), sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _hostile(sym: dict, how: str) -> str:
    sym = json.loads(json.dumps(sym))
    if how == "deep":
        return "[" * 200_000 + "]" * 200_000
    if how == "garbage":
        return "{\"nodes\": [1, 2"
    if how == "no-heads":
        del sym["heads"]
    elif how == "huge-number":
        sym["nodes"][3]["attrs"]["num_filter"] = "9" * 400
    elif how == "unknown-op":
        sym["nodes"][9]["op"] = "FancyOp"
    elif how == "bad-input-index":
        sym["nodes"][12]["inputs"][0] = [999, 0, 0]
    elif how == "missing-op":
        del sym["nodes"][12]["op"]
    elif how == "nodes-not-dicts":
        sym["nodes"][5] = [1, 2, 3]
    elif how == "kernel-garbage":
        sym["nodes"][3]["attrs"]["num_group"] = "(((("
    elif how == "unknown-variable":
        sym["nodes"][13]["name"] = "nowhere"
    return json.dumps(sym)


_HOW = ["deep", "garbage", "no-heads", "huge-number", "unknown-op", "bad-input-index", "missing-op",
        "nodes-not-dicts", "kernel-garbage", "unknown-variable"]


@pytest.mark.parametrize("how", _HOW)
def test_hostile_symbol_json_gives_one_line_and_exit_2(tmp_path, capsys, how):
    sym_path, params, sym, _ = _residual_checkpoint(tmp_path)
    bad = tmp_path / "bad-symbol.json"
    bad.write_text(_hostile(sym, how))
    before = bad.read_bytes()
    assert main(["inspect", str(params), "--groups", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("coreprune: error: ") and str(bad) in err
    assert bad.read_bytes() == before


def test_input_shape_option_and_its_errors(tmp_path, capsys):
    sym_path, params, _, _ = _residual_checkpoint(tmp_path)
    assert main(["inspect", str(params), "--groups", str(sym_path), "--input-shape", "data=1x1x28x28"]) == 0
    capsys.readouterr()
    # a wrong channel count contradicts c0's weight: refused naming the layer
    assert main(["inspect", str(params), "--groups", str(sym_path), "--input-shape", "data=1x3x28x28"]) == 2
    assert "'c0'" in capsys.readouterr().err
    assert main(["inspect", str(params), "--groups", str(sym_path), "--input-shape", "data"]) == 2
    assert "NAME=1x3x224x224" in capsys.readouterr().err
    assert main(["inspect", str(params), "--groups", str(sym_path), "--plot", str(tmp_path / "p.png")]) == 2
    assert "--plot does not go with --groups" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def test_the_example_in_docs_cli_md_is_this_output(tmp_path, capsys):
    import pathlib
    import re

    doc = (pathlib.Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    [block] = [b for b in re.findall(r"```text\n(.*?)```", doc, flags=re.S) if "coupling group(s)" in b]
    sym_path, params, _, _ = _residual_checkpoint(tmp_path)
    assert main(["inspect", str(params), "--groups", str(sym_path)]) == 0
    out = capsys.readouterr().out.replace(f"{tmp_path}/", "")
    assert out == block


def test_names_from_the_files_are_printed_escaped(tmp_path, capsys):
    sym_path, params, sym, arrays = _residual_checkpoint(tmp_path)
    sym["nodes"][3]["name"] = "c0\x1b[2J\u202e"  # a terminal escape and a bidi override in a layer name
    sym_path.write_text(json.dumps(sym))
    assert main(["inspect", str(params), "--groups", str(sym_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out
    assert "group c0\\x1b[2J\\u202e: 6 channels" in out
