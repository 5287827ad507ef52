"""``coreprune quantize PARAMS --symbol SYMBOL.json``: data-free bias correction of a symbol-API
MXNet checkpoint without MXNet, equal to the library's ``quantize(..., graph=)``; bad symbols give
one line and exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

import coreprune as cp
from coreprune.cli import main
from coreprune.io import load
from coreprune.io.mxnet_params import write
from coreprune.structured import graph_from_mxnet_json


def _var(name: str) -> dict:
    return {"op": "null", "name": name, "inputs": []}


def _bn(name: str, src: int, first: int) -> list[dict]:
    return [_var(f"{name}_gamma"), _var(f"{name}_beta"), _var(f"{name}_moving_mean"),
            _var(f"{name}_moving_var"),
            {"op": "BatchNorm", "name": name, "attrs": {"fix_gamma": "False"},
             "inputs": [[src, 0, 0], [first, 0, 0], [first + 1, 0, 0], [first + 2, 0, 1], [first + 3, 0, 1]]}]


def _checkpoint(tmp_path):
    """data -> c0 -> bn0 -> relu -> c1 (no bias) -> bn1 -> clip(0, 6) -> fc, as mx.sym.tojson writes it."""
    nodes = [_var("data"), _var("c0_weight"), _var("c0_bias"),
             {"op": "Convolution", "name": "c0",
              "attrs": {"num_filter": "8", "kernel": "(3, 3)", "pad": "(1, 1)"},
              "inputs": [[0, 0, 0], [1, 0, 0], [2, 0, 0]]}]
    nodes += _bn("bn0", 3, 4)                                                                   # 4..8
    nodes += [{"op": "Activation", "name": "relu0", "attrs": {"act_type": "relu"}, "inputs": [[8, 0, 0]]},
              _var("c1_weight"),
              {"op": "Convolution", "name": "c1", "attrs": {"num_filter": "6", "kernel": "(3, 3)",
                                                            "pad": "(1, 1)", "no_bias": "True"},
               "inputs": [[9, 0, 0], [10, 0, 0]]}]                                              # 9..11
    nodes += _bn("bn1", 11, 12)                                                                 # 12..16
    nodes += [{"op": "clip", "name": "relu6", "attrs": {"a_min": "0", "a_max": "6"}, "inputs": [[16, 0, 0]]},
              _var("fc_weight"), _var("fc_bias"),
              {"op": "FullyConnected", "name": "fc", "attrs": {"num_hidden": "10"},
               "inputs": [[17, 0, 0], [18, 0, 0], [19, 0, 0]]}]                                 # 17..20
    sym = {"nodes": nodes, "arg_nodes": [i for i, n in enumerate(nodes) if n["op"] == "null"],
           "node_row_ptr": list(range(len(nodes) + 1)), "heads": [[20, 0, 0]],
           "attrs": {"mxnet_version": ["int", 10901]}}
    rng = np.random.default_rng(0)
    arrays = {"arg:c0_weight": rng.normal(size=(8, 3, 3, 3)), "arg:c0_bias": rng.normal(size=8),
              "arg:c1_weight": rng.normal(size=(6, 8, 3, 3)),
              "arg:fc_weight": rng.normal(size=(10, 6 * 16)), "arg:fc_bias": rng.normal(size=10)}
    for name, c in (("bn0", 8), ("bn1", 6)):
        arrays.update({f"arg:{name}_gamma": rng.uniform(0.5, 2, c), f"arg:{name}_beta": rng.normal(1, 1, c),
                       f"aux:{name}_moving_mean": rng.normal(size=c),
                       f"aux:{name}_moving_var": rng.uniform(0.5, 2, c)})
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    (tmp_path / "m-symbol.json").write_text(json.dumps(sym))
    with open(tmp_path / "m-0000.params", "wb") as f:
        write(arrays, f)
    return tmp_path / "m-symbol.json", tmp_path / "m-0000.params", sym, arrays


def test_quantize_with_a_symbol_corrects_as_the_library_does(tmp_path):
    sym_path, params, sym, arrays = _checkpoint(tmp_path)
    out = tmp_path / "q.params"
    assert main(["quantize", str(params), "-o", str(out), "--bits", "4", "--symbol", str(sym_path),
                 "--quiet"]) == 0
    got = load(str(out))
    weights = {k.split(":", 1)[1]: v for k, v in arrays.items()}
    graph = graph_from_mxnet_json(sym, weights, {"data": (1, 3, 4, 4)})
    expected = cp.dequantize(cp.quantize(weights, bits=4, graph=graph))
    assert sorted(got) == sorted(arrays)
    for key, value in got.items():
        np.testing.assert_array_equal(value, expected[key.split(":", 1)[1]], err_msg=key)
    # what moved: c1's shift into bn1's running mean, fc's into its bias; c0 reads the data (unknown)
    moved = {k for k in arrays if not k.endswith("weight") and not np.array_equal(got[k], arrays[k])}
    assert moved == {"aux:bn1_moving_mean", "arg:fc_bias"}
    plain = tmp_path / "plain.params"
    assert main(["quantize", str(params), "-o", str(plain), "--bits", "4", "--quiet"]) == 0
    assert np.array_equal(load(str(plain))["aux:bn1_moving_mean"], arrays["aux:bn1_moving_mean"])


@pytest.mark.parametrize("text, problem", [
    ("{not json", "not an MXNet symbol JSON"),
    ('{"nodes": [], "heads": []}', "its layers use none of the 3 quantized tensors"),
    ('{"nodes": [{"op": "Convolution", "name": "c", "inputs": [[7, 0, 0]]}], "heads": [[0, 0, 0]]}', ""),
])
def test_a_bad_symbol_is_one_line_and_exit_2(tmp_path, capsys, text, problem):
    _, params, _, _ = _checkpoint(tmp_path)
    bad = tmp_path / "bad-symbol.json"
    bad.write_text(text)
    code = main(["quantize", str(params), "-o", str(tmp_path / "q.params"), "--bits", "4",
                 "--symbol", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(bad) in err[0] and problem in err[0], err
    assert not (tmp_path / "q.params").exists()


def test_symbol_with_shards_is_refused(tmp_path, capsys):
    sym_path, params, _, _ = _checkpoint(tmp_path)
    code = main(["quantize", str(params), "-o", str(tmp_path / "q.params.index.json"), "--bits", "4",
                 "--symbol", str(sym_path)])
    assert code == 2 and "--symbol writes one file" in capsys.readouterr().err


@pytest.mark.parametrize("how", [["--bits", "4"], ["--budget", "4.5"]], ids=["bits", "budget"])
def test_estimate_hessians_rounds_as_the_library_does(tmp_path, capsys, how):
    """``--estimate-hessians``: GPTQ from the symbol's estimated moments, then the bias correction,
    value for value what ``quantize(..., hessians=estimate_hessians(graph, w), graph=graph)`` gives."""
    sym_path, params, sym, arrays = _checkpoint(tmp_path)
    out = tmp_path / "q.params"
    assert main(["quantize", str(params), "-o", str(out), *how, "--symbol", str(sym_path),
                 "--estimate-hessians"]) == 0
    assert "GPTQ rounding of 2 tensor(s) from moments estimated" in capsys.readouterr().err
    got = load(str(out))
    weights = {k.split(":", 1)[1]: v for k, v in arrays.items()}
    graph = graph_from_mxnet_json(sym, weights, {"data": (1, 3, 4, 4)})
    hessians = cp.estimate_hessians(graph, weights)
    assert sorted(hessians) == ["c1_weight", "fc_weight"]  # c0 reads the data: no statistics
    kw = {"bits": 4} if how[0] == "--bits" else {"budget": 4.5}
    expected = cp.dequantize(cp.quantize(weights, hessians=hessians, graph=graph, **kw))
    for key, value in got.items():
        np.testing.assert_array_equal(value, expected[key.split(":", 1)[1]], err_msg=key)
    rtn = cp.dequantize(cp.quantize(weights, graph=graph, **kw))
    assert not np.array_equal(got["arg:c1_weight"], rtn["c1_weight"])  # GPTQ did change codes


@pytest.mark.parametrize("extra, problem", [
    ([], "--estimate-hessians needs --symbol"),
    (["--symbol", "SYM", "--hessians", "H.npz"], "not both"),
])
def test_estimate_hessians_misuse_is_one_line(tmp_path, capsys, extra, problem):
    sym_path, params, _, _ = _checkpoint(tmp_path)
    extra = [str(sym_path) if a == "SYM" else a for a in extra]
    code = main(["quantize", str(params), "-o", str(tmp_path / "q.params"), "--bits", "4",
                 "--estimate-hessians", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and problem in err[0], err
    assert not (tmp_path / "q.params").exists()
