"""The CLI on real files written by torch.save, run in a process where torch cannot be imported.

The files are written here with PyTorch; the ``coreprune`` commands then run in a subprocess
that blocks ``import torch`` and ``import mxnet`` (as if neither were installed) and checks
that neither was loaded. Back here, PyTorch itself reads the outputs and checks them against
its own pruning and quantization functions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")
# tests/torch itself is an importable namespace package "torch" when tests/ is on sys.path
pytest.importorskip("torch.nn", reason="needs PyTorch")

import torch.nn.utils.prune as tprune  # noqa: E402

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


def make_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64, 10),
    )
    net.train()
    with torch.no_grad():  # move the batch-norm statistics away from their initial values
        net(torch.randn(16, 3, 8, 8))
    return net.eval()


@pytest.fixture
def saved(tmp_path):
    net = make_net()
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    return net, path


def test_inspect_reports_what_torch_computes(saved):
    net, path = saved
    (r,) = run_cli(["inspect", path, "--json", "--threshold", "0.01"])
    assert r["code"] == 0, r["err"]
    doc = json.loads(r["out"])
    sd = net.state_dict()
    assert [t["name"] for t in doc["tensors"]] == list(sd)
    for t in doc["tensors"]:
        ref = sd[t["name"]]
        assert t["shape"] == list(ref.shape) and t["parameters"] == ref.numel()
        x = ref.double()
        assert t["min"] == pytest.approx(x.min().item()) and t["max"] == pytest.approx(x.max().item())
        if ref.is_floating_point():
            assert t["std"] == pytest.approx(x.std(unbiased=False).item(), rel=1e-9)
            assert t["below_threshold"] == pytest.approx((x.abs() <= 0.01).double().mean().item())


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_matches_torch_nn_utils_prune(saved, tmp_path, scope):
    net, path = saved
    out = tmp_path / f"pruned-{scope}.pt"
    extra = ["--global"] if scope == "global" else []
    (r,) = run_cli(["prune", path, "-o", out, "--sparsity", "0.7", *extra])
    assert r["code"] == 0, r["err"]
    ours = torch.load(out, weights_only=True)
    ref = make_net()
    targets = [(m, "weight") for m in ref if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    if scope == "layer":
        for module, pname in targets:
            tprune.l1_unstructured(module, pname, amount=0.7)
    else:
        tprune.global_unstructured(targets, tprune.L1Unstructured, amount=0.7)
    for module, pname in targets:
        tprune.remove(module, pname)
    expected = ref.state_dict()  # prune.remove re-registers the weights last: compare as sets
    assert list(ours) == list(net.state_dict()) and set(ours) == set(expected)
    for name, value in expected.items():
        assert torch.equal(ours[name], value), name


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_quantize_codes_match_torch_quantize_per_channel(saved, tmp_path):
    net, path = saved
    out = tmp_path / "q.cpz"
    (r,) = run_cli(["quantize", path, "-o", out, "--bits", "8", "--axis", "0"])
    assert r["code"] == 0, r["err"]
    q = load_compressed(out)
    w = net.state_dict()["3.weight"]
    ours = q["3.weight"]
    ref = torch.quantize_per_channel(
        w, torch.from_numpy(ours.scale.astype(np.float64)), torch.zeros(w.shape[0], dtype=torch.long), 0,
        torch.qint8,
    ).int_repr().numpy()
    diff = np.abs(ref.astype(int) - ours.codes.astype(int))
    assert diff.max() <= 1 and np.mean(diff) < 1e-3  # torch may multiply by 1/scale: rare ties differ by one
    assert isinstance(q["1.running_mean"], np.ndarray)  # 1-D tensors are not selected by default


def test_compress_decompress_loads_into_the_model_with_close_outputs(saved, tmp_path):
    net, path = saved
    cpz, back = tmp_path / "net.cpz", tmp_path / "back.pt"
    r1, r2 = run_cli(
        ["compress", path, "-o", cpz, "--sparsity", "0.3", "--bits", "8", "--axis", "0"],
        ["decompress", cpz, "-o", back],
    )
    assert r1["code"] == 0 and r2["code"] == 0, (r1["err"], r2["err"])
    assert os.path.getsize(cpz) < 0.4 * os.path.getsize(path)
    model = make_net(seed=1)
    model.load_state_dict(torch.load(back, weights_only=True), strict=True)
    for m in net:  # the reference: the same pruning by torch itself, without quantization
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            tprune.l1_unstructured(m, "weight", amount=0.3)
            tprune.remove(m, "weight")
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        ref, got = net(x), model(x)
    # 8-bit per-channel weights: the outputs move by well under 1% of their range
    assert (got - ref).abs().max() < 0.01 * (ref.max() - ref.min()), (got - ref).abs().max()
    assert (model[0].weight == 0).double().mean().item() == pytest.approx(0.3, abs=0.01)


def test_convert_checkpoints_legacy_files_and_half_precision(tmp_path):
    net = make_net()
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"model": net.state_dict(), "epoch": 7, "best": 0.91}, ckpt)
    legacy = tmp_path / "legacy.pt"
    half = {"w": torch.randn(4, 5).to(torch.bfloat16), "h": torch.randn(3).half(), "n": torch.arange(4)}
    torch.save(half, legacy, _use_new_zipfile_serialization=False)
    st, npz, pt = tmp_path / "ckpt.safetensors", tmp_path / "half.npz", tmp_path / "half.pt"
    r_inspect, r_st, r_npz, r_pt = run_cli(
        ["inspect", ckpt], ["convert", ckpt, st], ["convert", legacy, npz], ["convert", npz, pt]
    )
    for r in (r_inspect, r_st, r_npz, r_pt):
        assert r["code"] == 0, r["err"]
    assert "non-tensor values (2): epoch = 7, best = 0.91" in r_inspect["out"]
    assert "not written: epoch, best" in r_st["err"]
    from safetensors.torch import load_file

    loaded = load_file(st)
    for name, value in net.state_dict().items():
        assert torch.equal(loaded[f"model.{name}"], value)
    back = torch.load(pt, weights_only=True)
    for name, value in half.items():
        assert back[name].dtype == value.dtype and torch.equal(back[name], value)


def test_errors_on_torch_files_are_one_line(tmp_path, saved):
    _, path = saved
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:300])
    r1, r2 = run_cli(["inspect", broken], ["prune", path, "-o", path, "--sparsity", "0.5"])
    for r in (r1, r2):
        assert r["code"] == 2 and r["err"].count("\n") == 1 and r["err"].startswith("coreprune: error: ")
