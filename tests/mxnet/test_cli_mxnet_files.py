"""The CLI on real files written by MXNet 1.9.1, run in a process where mxnet cannot be imported.

The files are written here with Gluon (``save_parameters``, ``export``) and ``mx.nd.save``;
the ``coreprune`` commands then run in a subprocess that blocks ``import mxnet`` and
``import torch`` (as if neither were installed) and checks that neither was loaded. Back
here, MXNet itself reads the outputs into the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mxnet", reason="needs MXNet")
# tests/mxnet itself is an importable namespace package "mxnet" when tests/ is on sys.path
pytest.importorskip("mxnet.gluon", reason="needs MXNet")

from mxnet import gluon  # noqa: E402

import coreprune  # noqa: E402
from coreprune import load_compressed  # noqa: E402

_RUNNER = r"""
import contextlib, io, json, sys
for name in ("torch", "mxnet"):
    sys.modules[name] = None  # as if not installed: any import of them raises ImportError
from coreprune.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    results.append({"code": code, "out": out.getvalue(), "err": err.getvalue()})
frameworks = sorted(m for m, v in sys.modules.items()
                    if v is not None and m.split(".")[0] in ("torch", "mxnet"))
print(json.dumps({"results": results, "frameworks": frameworks}))
"""


def run_cli(*commands: list) -> list[dict]:
    """Run ``coreprune`` commands in one framework-free subprocess; return code/out/err of each."""
    argvs = [[str(a) for a in c] for c in commands]
    env = dict(os.environ, PYTHONPATH=str(Path(coreprune.__file__).parents[1]), MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(argvs)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["frameworks"] == []
    return report["results"]


def make_net(seed: int = 0) -> gluon.HybridBlock:
    mx.random.seed(seed)
    net = gluon.nn.HybridSequential()
    net.add(
        gluon.nn.Conv2D(8, 3, padding=1, in_channels=3), gluon.nn.BatchNorm(in_channels=8),
        gluon.nn.Activation("relu"), gluon.nn.Conv2D(16, 3, padding=1, in_channels=8),
        gluon.nn.Activation("relu"), gluon.nn.GlobalAvgPool2D(), gluon.nn.Flatten(),
        gluon.nn.Dense(10, in_units=16),
    )
    net.initialize(mx.init.Xavier())
    with mx.autograd.record(train_mode=True):  # move the batch-norm statistics off their initial values
        net(mx.nd.random.normal(shape=(16, 3, 8, 8)))
    return net


def params(net) -> dict[str, np.ndarray]:
    return {k: v.data().asnumpy() for k, v in net._collect_params_with_prefix().items()}


@pytest.fixture
def saved(tmp_path):
    net = make_net()
    path = tmp_path / "net.params"
    net.save_parameters(str(path))
    return net, path


def test_inspect_lists_every_parameter_with_mxnet_statistics(saved):
    net, path = saved
    (r,) = run_cli(["inspect", path, "--json"])
    assert r["code"] == 0, r["err"]
    doc = json.loads(r["out"])
    assert doc["format"] == "mxnet"
    ref = params(net)
    assert [t["name"] for t in doc["tensors"]] == list(ref)
    for t in doc["tensors"]:
        nd = mx.nd.array(ref[t["name"]], dtype="float64")
        assert t["min"] == pytest.approx(nd.min().asscalar())
        assert t["max"] == pytest.approx(nd.max().asscalar())
        assert t["mean"] == pytest.approx(nd.mean().asscalar(), abs=1e-12)


def test_prune_output_loads_into_gluon_with_the_expected_zeros(saved, tmp_path):
    net, path = saved
    out = tmp_path / "pruned.params"
    (r,) = run_cli(["prune", path, "-o", out, "--sparsity", "0.5", "--exclude", "7.*"])
    assert r["code"] == 0, r["err"]
    model = make_net(seed=1)
    model.load_parameters(str(out))
    got, ref = params(model), params(net)
    for name, w in ref.items():
        if w.ndim >= 2 and not name.startswith("7."):
            zeros = int(np.sum(got[name] == 0))
            assert zeros == round(0.5 * w.size), name
            kept = got[name] != 0  # the survivors are the largest |w|, unchanged
            assert np.array_equal(got[name][kept], w[kept])
            assert np.abs(w[~kept]).max() <= np.abs(w[kept]).min()
        else:
            assert np.array_equal(got[name], w), name


def test_compress_decompress_round_trips_through_gluon(saved, tmp_path):
    net, path = saved
    cpz, back = tmp_path / "net.cpz", tmp_path / "back.params"
    r1, r2 = run_cli(
        ["compress", path, "-o", cpz, "--bits", "8", "--axis", "0"], ["decompress", cpz, "-o", back]
    )
    assert r1["code"] == 0 and r2["code"] == 0, (r1["err"], r2["err"])
    model = make_net(seed=1)
    model.load_parameters(str(back))
    q = load_compressed(cpz)
    for name, value in params(model).items():
        expected = q[name].dequantize() if isinstance(q[name], coreprune.QuantizedArray) else q[name]
        assert np.array_equal(value, expected), name
    x = mx.nd.random.normal(shape=(32, 3, 8, 8))
    ref, got = net(x).asnumpy(), model(x).asnumpy()
    assert np.abs(got - ref).max() < 0.02 * (ref.max() - ref.min())


def test_exported_symbol_params_and_nd_save_files_convert(tmp_path):
    net = make_net()
    net.hybridize()
    net(mx.nd.zeros((1, 3, 8, 8)))
    prefix = tmp_path / "exp"
    net.export(str(prefix))
    exported = tmp_path / "exp-0000.params"
    arrays = {"half": mx.nd.array(np.arange(6).reshape(2, 3), dtype="float16"),
              "ids": mx.nd.array([1, 2, 3], dtype="int64"), "w": mx.nd.random.normal(shape=(4, 4))}
    nd_file = tmp_path / "arrays.nd"
    mx.nd.save(str(nd_file), arrays)
    npz, pt, back = tmp_path / "exp.npz", tmp_path / "arrays.pt", tmp_path / "arrays.params"
    r1, r2, r3, r4 = run_cli(["convert", exported, npz], ["convert", nd_file, pt], ["convert", pt, back],
                             ["inspect", exported])
    for r in (r1, r2, r3, r4):
        assert r["code"] == 0, r["err"]
    got = dict(np.load(npz))
    ref = mx.nd.load(str(exported))
    assert set(got) == set(ref) and any(k.startswith("aux:") for k in got)
    for k, v in ref.items():
        assert np.array_equal(got[k], v.asnumpy()), k
    back_nd = mx.nd.load(str(back))
    for k, v in arrays.items():
        assert back_nd[k].dtype == v.dtype and np.array_equal(back_nd[k].asnumpy(), v.asnumpy()), k


def test_errors_on_mxnet_files_are_one_line(tmp_path, saved):
    _, path = saved
    broken = tmp_path / "broken.params"
    broken.write_bytes(path.read_bytes()[:200])
    r1, r2 = run_cli(["inspect", broken], ["quantize", path, "-o", path, "--bits", "4"])
    for r in (r1, r2):
        assert r["code"] == 2 and r["err"].count("\n") == 1 and r["err"].startswith("coreprune: error: ")


def _quantize_exported(tmp_path, *flags):
    """An exported (hybridized) ``make_net`` quantized to 4 bits by the CLI with its symbol and
    ``flags``: the CLI result, the output's arrays by variable name, the block's own
    traced graph and weights, and variable name -> structural name."""
    from coreprune.mxnet import trace_graph

    net = make_net()
    net.hybridize()
    net(mx.nd.zeros((1, 3, 8, 8)))
    net.export(str(tmp_path / "m"))
    out = tmp_path / "q.params"
    (r,) = run_cli(["quantize", tmp_path / "m-0000.params", "-o", out, "--bits", "4",
                    "--symbol", tmp_path / "m-symbol.json", *flags])
    assert r["code"] == 0, r["err"]
    got = {k.split(":", 1)[1]: v.asnumpy() for k, v in mx.nd.load(str(out)).items()}
    var = {p.name: key for key, p in net._collect_params_with_prefix().items()}
    return r, got, trace_graph(net, mx.nd.zeros((1, 3, 8, 8))), var


def test_quantize_with_the_exported_symbol_corrects_as_trace_graph_does(tmp_path):
    """An exported (hybridized) checkpoint, quantized by the framework-free CLI with its symbol,
    equals the library on the Gluon block's own traced graph, and MXNet's loader reads it."""
    r, got, (graph, weights), var = _quantize_exported(tmp_path)
    # the second convolution reads relu(batch norm): its bias moves; the first reads the data and the
    # dense layer a convolution without batch norm (unknown means)
    assert "bias correction changed 1 bias / running-mean tensor(s)" in r["err"]
    expected = coreprune.dequantize(coreprune.quantize(weights, bits=4, graph=graph))
    assert sorted(var[k] for k in got) == sorted(expected)
    for name, value in got.items():
        np.testing.assert_array_equal(value, expected[var[name]], err_msg=name)
    moved = [var[k] for k in got if not k.endswith("weight") and not np.array_equal(got[k], weights[var[k]])]
    assert moved == ["3.bias"]


def test_estimate_hessians_on_an_exported_symbol_equals_the_library_on_the_block(tmp_path):
    """``quantize --symbol --estimate-hessians`` on an exported checkpoint: the values of
    ``quantize(..., hessians=estimate_hessians(graph, w), graph=graph)`` on the Gluon block's own
    traced graph, and GPTQ changed the codes of the layer the batch norms describe."""
    r, got, (graph, weights), var = _quantize_exported(tmp_path, "--estimate-hessians")
    assert "GPTQ rounding of 1 tensor(s)" in r["err"]
    hessians = coreprune.estimate_hessians(graph, weights)
    assert sorted(hessians) == ["3.weight"]
    expected = coreprune.dequantize(coreprune.quantize(weights, bits=4, graph=graph, hessians=hessians))
    for name, value in got.items():
        np.testing.assert_array_equal(value, expected[var[name]], err_msg=name)
    plain = coreprune.dequantize(coreprune.quantize(weights, bits=4, graph=graph))
    assert not np.array_equal(expected["3.weight"], plain["3.weight"])
