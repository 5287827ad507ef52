"""``coreprune quantize --hessians MOMENTS``: GPTQ rounding from a file of input second moments,
equal to ``coreprune.quantize(..., hessians=)``, and one error line for bad moments."""

from __future__ import annotations

import re

import numpy as np
import pytest

import coreprune
import coreprune.io as cio
from coreprune import QuantizedArray, load_compressed
from coreprune.cli import main
from coreprune.gptq import InputMoments


def model_and_moments() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    model = {
        "conv.weight": (rng.standard_normal((16, 8, 3, 3)) * 0.1).astype(np.float32),
        "conv.bias": rng.standard_normal(16).astype(np.float32),
        "fc.weight": (rng.standard_normal((10, 72)) * 0.05).astype(np.float32),
        "head.weight": (rng.standard_normal((4, 10)) * 0.05).astype(np.float32),
    }
    mix = rng.standard_normal((72, 72)) / 8
    moments = InputMoments()
    x = rng.standard_normal((300, 72)) @ mix
    moments.add("conv.weight", x)
    moments.add("fc.weight", x[:, ::-1])
    return model, moments.hessians()  # no moments for head.weight: round to nearest


@pytest.mark.parametrize("opts, kwargs", [
    (["--bits", "4"], dict(bits=4)),
    (["--bits", "3", "--affine", "--method", "clip"], dict(bits=3, symmetric=False, method="clip")),
    (["--budget", "4.5"], dict(budget=4.5)),
])
@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_equals_the_library(tmp_path, capsys, opts, kwargs, suffix):
    model, h = model_and_moments()
    src, moments, out = tmp_path / "m.npz", tmp_path / f"h{suffix}", tmp_path / "q.cpz"
    cio.save(model, src)
    cio.save(h, moments)
    before = moments.read_bytes()
    assert main(["quantize", str(src), "-o", str(out), "--hessians", str(moments), *opts]) == 0
    expected = coreprune.quantize(model, hessians=h, **kwargs)
    plain = coreprune.quantize(model, **kwargs)
    got = load_compressed(out)
    for name, v in expected.items():
        if isinstance(v, QuantizedArray):
            assert got[name].bits == v.bits and got[name].layout == v.layout
            np.testing.assert_array_equal(got[name].codes, v.codes)
            np.testing.assert_array_equal(got[name].scale, v.scale)
    assert not np.array_equal(got["fc.weight"].codes, plain["fc.weight"].codes)  # GPTQ did run
    np.testing.assert_array_equal(got["head.weight"].codes, plain["head.weight"].codes)
    assert moments.read_bytes() == before


def run_bad(tmp_path, capsys, moments: dict[str, np.ndarray], *opts: str) -> str:
    model, _ = model_and_moments()
    src, path, out = tmp_path / "m.npz", tmp_path / "h.npz", tmp_path / "q.cpz"
    cio.save(model, src)
    cio.save(moments, path)
    code = main(["quantize", str(src), "-o", str(out), "--hessians", str(path), *opts])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert not out.exists()
    assert str(path) in err[0]
    return err[0]


def test_a_name_not_in_the_input(tmp_path, capsys):
    line = run_bad(tmp_path, capsys, {"module.fc.weight": np.eye(72)}, "--bits", "4")
    assert "'module.fc.weight' is not a tensor of" in line


@pytest.mark.parametrize("bad, match", [
    (np.eye(71), r"must be a \(72, 72\) float array"),
    (np.full((72, 72), np.inf), "NaN or Inf"),
    (np.triu(np.ones((72, 72))), "not symmetric"),
])
def test_bad_moments_are_one_line_naming_the_file(tmp_path, capsys, bad, match):
    line = run_bad(tmp_path, capsys, {"fc.weight": bad}, "--bits", "4")
    assert "'fc.weight'" in line
    assert re.search(match, line)


def test_compress_prunes_then_rounds_by_gptq_keeping_the_zeros(tmp_path, capsys):
    model, h = model_and_moments()
    src, moments, out = tmp_path / "m.npz", tmp_path / "h.npz", tmp_path / "c.cpz"
    cio.save(model, src)
    cio.save(h, moments)
    assert main(["compress", str(src), "-o", str(out), "--threshold", "0.05", "--bits", "4",
                 "--hessians", str(moments)]) == 0
    pruned, masks = coreprune.prune_threshold(model, 0.05)
    expected = coreprune.quantize(pruned, bits=4, hessians=h)
    got = load_compressed(out)
    for name in ("conv.weight", "fc.weight"):
        np.testing.assert_array_equal(got[name].codes, expected[name].codes)
        assert np.all(got[name].dequantize()[~masks[name]] == 0)
    code = main(["compress", str(src), "-o", str(tmp_path / "d.cpz"), "--threshold", "0.05",
                 "--hessians", str(moments)])
    assert code == 2 and "--hessians needs --bits" in capsys.readouterr().err


def test_not_with_shards(tmp_path, capsys):
    model, h = model_and_moments()
    src, moments = tmp_path / "m.npz", tmp_path / "h.npz"
    cio.save(model, src)
    cio.save(h, moments)
    code = main(["quantize", str(src), "-o", str(tmp_path / "q.cpz.index.json"), "--bits", "4",
                 "--hessians", str(moments)])
    assert code == 2 and "--hessians writes one file" in capsys.readouterr().err
    code = main(["compress", str(src), "-o", str(tmp_path / "c.cpz.index.json"), "--bits", "4",
                 "--hessians", str(moments)])
    assert code == 2 and "--hessians writes one file" in capsys.readouterr().err
