"""The coreprune command line, run in-process on files written by coreprune.io (no framework needed).

Every output is checked against the library functions it stands for (prune_threshold,
prune_magnitude, quantize, the io readers), and every user error against the one-line,
exit-status-2 rule.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import coreprune
import coreprune.io as cio
from coreprune import QuantizedArray, load_compressed, save_compressed
from coreprune.cli import build_parser, main
from coreprune.cli.common import _progress

FORMATS = [".npz", ".safetensors", ".pt", ".cpz"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture
def run(capsys):
    """``run("prune", "a.npz", ...)`` -> Result(exit code, stdout, stderr)."""

    def _run(*argv: object) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return _run


def make_model(seed: int = 0) -> dict[str, np.ndarray]:
    """A small conv net state dict: 4-D and 2-D weights, biases, batch-norm buffers, an int counter."""
    rng = np.random.default_rng(seed)
    return {
        "features.0.weight": (rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32),
        "features.0.bias": rng.standard_normal(8).astype(np.float32) * 0.01,
        "features.1.weight": rng.random(8).astype(np.float32) + 0.5,
        "features.1.bias": rng.standard_normal(8).astype(np.float32),
        "features.1.running_mean": rng.standard_normal(8).astype(np.float32),
        "features.1.running_var": rng.random(8).astype(np.float32) + 0.1,
        "features.1.num_batches_tracked": np.array(7, np.int64),
        "features.3.weight": (rng.standard_normal((16, 8, 3, 3)) * 0.1).astype(np.float32),
        "classifier.weight": (rng.standard_normal((10, 64)) * 0.05).astype(np.float32),
        "classifier.bias": np.zeros(10, np.float32),
    }


@pytest.fixture
def model() -> dict[str, np.ndarray]:
    return make_model()


@pytest.fixture
def mixed_dtypes() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "half.weight": rng.standard_normal((6, 8)).astype(np.float16),
        "bf16.weight": rng.standard_normal((4, 8)).astype(ml_dtypes.bfloat16),
        "double.weight": rng.standard_normal((3, 5)),
        "ids": np.arange(5, dtype=np.int32),
        "flag": np.array([True, False]),
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.ascontiguousarray(a).tobytes() == (
        np.ascontiguousarray(b).tobytes()
    )


def read(path) -> dict:
    """Every tensor of a file, dense (``io.load`` without its warning about metadata extras)."""
    with cio.open_weights(path) as r:
        return {k: np.array(r[k]) for k in r}


def assert_same_dict(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert same(np.asarray(a[k]), np.asarray(b[k])), k


def one_error_line(result, *fragments: str) -> None:
    assert result.code == 2, (result.code, result.out, result.err)
    assert len(result.err_lines) == 1, result.err
    line = result.err_lines[0]
    assert line.startswith("coreprune: error: "), line
    for f in fragments:
        assert f in line, (f, line)


@pytest.fixture
def npz(tmp_path, model) -> Path:
    path = tmp_path / "model.npz"
    cio.save(model, path)
    return path


# -------------------------------------------------------------------------------------------- inspect


def test_inspect_json_matches_independent_numpy_statistics(run, npz, model):
    r = run("inspect", npz, "--json", "--threshold", "0.05")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["format"] == "npz" and doc["threshold"] == 0.05
    assert [t["name"] for t in doc["tensors"]] == list(model)
    for t in doc["tensors"]:
        w = model[t["name"]]
        x = w.astype(np.float64)
        assert t["shape"] == list(w.shape) and t["dtype"] == w.dtype.name and t["parameters"] == w.size
        assert t["zeros"] == int(np.sum(w == 0)) and t["nbytes"] == w.nbytes
        assert t["min"] == pytest.approx(x.min()) and t["max"] == pytest.approx(x.max())
        assert t["mean"] == pytest.approx(x.mean(), abs=1e-12)
        assert t["std"] == pytest.approx(x.std(), abs=1e-12)
        if w.dtype.kind != "f":
            assert t["below_threshold"] is None and t["sqnr_8bit_db"] is None and t["bytes_8bit"] is None
            continue
        assert t["below_threshold"] == pytest.approx(np.mean(np.abs(x) <= 0.05))
        axis = 0 if w.ndim >= 2 else None
        q8 = coreprune.quantize({"w": w}, 8, axis=axis, include="w")["w"]
        q4 = coreprune.quantize({"w": w}, 4, axis=axis, include="w")["w"]
        assert t["bytes_8bit"] == q8.nbytes and t["bytes_4bit"] == q4.nbytes
        noise = np.sum((x - q8.dequantize().astype(np.float64)) ** 2)
        expected = math.inf if noise == 0 else 10 * math.log10(np.sum(x**2) / noise)
        if math.isinf(expected):
            assert t["sqnr_8bit_db"] == "inf"
        else:
            assert t["sqnr_8bit_db"] == pytest.approx(expected, rel=1e-9)
            assert 35 < t["sqnr_8bit_db"] < 60  # 8 bits: about 6 dB per bit, minus the crest factor
    tot = doc["totals"]
    assert tot["parameters"] == sum(w.size for w in model.values())
    assert tot["nbytes"] == sum(w.nbytes for w in model.values())
    assert tot["zeros"] == sum(int(np.sum(w == 0)) for w in model.values())
    assert tot["file_nbytes"] == os.path.getsize(npz)


def test_inspect_table_has_a_row_per_tensor_with_the_json_numbers(run, npz, model):
    table = run("inspect", npz)
    doc = json.loads(run("inspect", npz, "--json").out)
    assert table.code == 0 and table.err == ""
    lines = table.out.splitlines()
    header = lines[1].split()
    assert header[:5] == ["name", "shape", "dtype", "params", "zeros"] and "SQNR8" in header
    rows = {line.split()[0]: line.split() for line in lines[3 : 3 + len(model)]}
    assert list(rows) == list(model)
    for t in doc["tensors"]:
        row = rows[t["name"]]
        assert row[1] == "x".join(map(str, t["shape"])) or (row[1] == "()" and t["shape"] == [])
        assert row[3] == f"{t['parameters']:,}"
        assert row[5] == f"{t['min']:.4g}" and row[6] == f"{t['max']:.4g}"
    assert lines[3 + len(model)].startswith(f"total: {len(model)} tensors, {doc['totals']['parameters']:,}")


def test_inspect_handles_every_dtype_nan_empty_and_scalar(run, tmp_path, mixed_dtypes):
    w = dict(mixed_dtypes, nan=np.array([[1.0, np.nan], [0.0, 2.0]], np.float32))
    path = tmp_path / "mixed.safetensors"
    cio.save(w, path)
    r = run("inspect", path, "--json")
    assert r.code == 0, r.err
    t = {x["name"]: x for x in json.loads(r.out)["tensors"]}
    assert t["nan"]["nonfinite"] == 1 and t["nan"]["min"] == "nan" and t["nan"]["sqnr_8bit_db"] is None
    assert t["empty"]["parameters"] == 0 and t["empty"]["sparsity"] is None and t["empty"]["min"] is None
    assert t["scalar"]["shape"] == [] and t["scalar"]["bytes_8bit"] == 1 + 4
    assert t["bf16.weight"]["dtype"] == "bfloat16" and t["bf16.weight"]["sqnr_8bit_db"] > 30
    assert t["flag"]["zeros"] == 1 and t["flag"]["below_threshold"] is None
    assert run("inspect", path).code == 0


def test_inspect_of_a_cpz_shows_how_each_tensor_is_stored_and_lists_extras(run, tmp_path, model):
    pruned, _ = coreprune.prune_magnitude(model, 0.9)
    q = coreprune.quantize(pruned, 4, axis=0)
    path = tmp_path / "m.cpz"
    save_compressed(q, path, metadata={"trained": "yes"})
    doc = json.loads(run("inspect", path, "--json").out)
    storage = {t["name"]: t["storage"] for t in doc["tensors"]}
    assert storage["features.3.weight"]["kind"] == "quantized" and storage["features.3.weight"]["bits"] == 4
    assert storage["features.3.weight"]["layout"] in ("bitmask", "csr")
    assert storage["features.1.num_batches_tracked"] == {"kind": "dense", "layout": "full", "bits": None,
                                                           "stored_nbytes": 8, "blob_nbytes": {"values": 8}}
    assert doc["extras"] == {} and doc["metadata"] == {"trained": "yes"}
    table = run("inspect", path).out
    assert "stored" in table.splitlines()[1] and "q4 " in table
    assert "metadata: trained = 'yes'" in table


def test_inspect_plot_writes_an_image(run, npz, tmp_path):
    out = tmp_path / "hist.png"
    r = run("inspect", npz, "--plot", out)
    assert r.code == 0, r.err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    svg = tmp_path / "hist.svg"
    assert run("inspect", npz, "--plot", svg, "--json", "-q").code == 0 and b"<svg" in svg.read_bytes()[:500]


def test_inspect_plot_without_matplotlib_says_how_to_install_it(run, npz, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    r = run("inspect", npz, "--plot", tmp_path / "x.png")
    one_error_line(r, 'pip install "coreprune[plot]"')
    assert not (tmp_path / "x.png").exists() and r.out == ""


def test_inspect_plot_needs_an_image_suffix(run, npz, tmp_path):
    one_error_line(run("inspect", npz, "--plot", tmp_path / "x.txt"), ".png")


# ---------------------------------------------------------------------------------------------- prune


def test_prune_threshold_equals_the_library(run, npz, model, tmp_path):
    out = tmp_path / "p.safetensors"
    r = run("prune", npz, "-o", out, "--threshold", "0.1")
    assert r.code == 0, r.err
    expected, _ = coreprune.prune_threshold(model, 0.1)
    assert_same_dict(read(out), expected)
    assert "wrote" in r.out and "pruned 3" in r.out


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_sparsity_per_layer_and_global_equal_the_library(run, npz, model, tmp_path, scope):
    out = tmp_path / "p.npz"
    extra = ["--global"] if scope == "global" else []
    assert run("prune", npz, "-o", out, "--sparsity", "0.6", *extra).code == 0
    expected, _ = coreprune.prune_magnitude(model, 0.6, scope=scope)
    assert_same_dict(read(out), expected)


def test_prune_include_and_exclude_are_repeatable_globs(run, npz, model, tmp_path):
    out = tmp_path / "p.npz"
    args = ["--include", "features.*", "--include", "classifier.weight", "--exclude", "*.running_*",
            "--exclude", "features.0.*"]
    assert run("prune", npz, "-o", out, "--sparsity", "0.5", *args).code == 0
    expected, _ = coreprune.prune_magnitude(
        model, 0.5, include=["features.*", "classifier.weight"], exclude=["*.running_*", "features.0.*"]
    )
    got = read(out)
    assert_same_dict(got, expected)
    assert np.count_nonzero(got["features.1.weight"] == 0) == 4  # 1-D, explicitly included
    assert same(got["features.0.weight"], model["features.0.weight"])


def test_prune_to_cpz_stores_the_zeros_sparsely(run, npz, model, tmp_path):
    out = tmp_path / "p.cpz"
    assert run("prune", npz, "-o", out, "--sparsity", "0.9", "-q").code == 0
    expected, _ = coreprune.prune_magnitude(model, 0.9)
    assert_same_dict(load_compressed(out), expected)
    assert os.path.getsize(out) < 0.5 * os.path.getsize(npz)


# ------------------------------------------------------------------------------------------- quantize


@pytest.mark.parametrize(
    "opts,kwargs",
    [
        (["--bits", "8"], dict(bits=8)),
        (["--bits", "4", "--axis", "0", "--include", "features.3.weight", "--include", "classifier.*"],
         dict(bits=4, axis=0, include=["features.3.weight", "classifier.*"])),
        (["--bits", "3", "--affine", "--group-size", "2", "--include", "classifier.*"],
         dict(bits=3, symmetric=False, group_size=2, include=["classifier.*"])),
    ],
)
def test_quantize_to_cpz_keeps_the_exact_codes(run, npz, model, tmp_path, opts, kwargs):
    out = tmp_path / "q.cpz"
    r = run("quantize", npz, "-o", out, *opts)
    assert r.code == 0, r.err
    expected = coreprune.quantize(model, **kwargs)
    assert sum(isinstance(v, QuantizedArray) for v in expected.values()) >= 2
    got = load_compressed(out)
    assert list(got) == list(expected)
    for k, v in expected.items():
        if isinstance(v, QuantizedArray):
            g = got[k]
            assert isinstance(g, QuantizedArray) and same(g.codes, v.codes) and same(g.scale, v.scale)
            assert (g.bits, g.symmetric, g.axis, g.group_size) == (v.bits, v.symmetric, v.axis, v.group_size)
        else:
            assert same(got[k], v)
    assert r.err == ""  # no fake-quantization note for .cpz


def test_quantize_to_another_format_writes_dequantized_values_with_a_note(run, npz, model, tmp_path):
    out = tmp_path / "q.pt"
    r = run("quantize", npz, "-o", out, "--bits", "4", "--axis", "0")
    assert r.code == 0
    expected = coreprune.dequantize(coreprune.quantize(model, 4, axis=0))
    assert_same_dict(read(out), expected)
    assert len(r.err_lines) == 1 and r.err_lines[0].startswith("coreprune: note: ") and ".cpz" in r.err
    quiet = run("quantize", npz, "-o", tmp_path / "q2.pt", "--bits", "4", "--quiet")
    assert quiet.code == 0 and quiet.out == "" and quiet.err == ""


def test_a_tensor_the_quantizer_refuses_is_one_error_line_and_no_output(run, tmp_path):
    path = tmp_path / "nan.npz"
    cio.save({"w": np.array([[1.0, np.nan]], np.float32)}, path)
    out = tmp_path / "q.cpz"
    one_error_line(run("quantize", path, "-o", out, "--bits", "8"), "'w'", "NaN")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.npz"]  # not even a temporary file


# ------------------------------------------------------------------------------- compress / decompress


def test_compress_then_decompress_equals_prune_quantize_dequantize(run, npz, model, tmp_path):
    cpz = tmp_path / "m.cpz"
    r = run("compress", npz, "-o", cpz, "--sparsity", "0.75", "--bits", "8", "--axis", "0")
    assert r.code == 0, r.err
    pruned, _ = coreprune.prune_magnitude(model, 0.75)
    expected = coreprune.quantize(pruned, 8, axis=0)
    got = load_compressed(cpz)
    for k, v in expected.items():
        if isinstance(v, QuantizedArray):
            assert same(got[k].codes, v.codes) and same(got[k].scale, v.scale)
        else:
            assert same(got[k], v)
    honest = sum(coreprune.encoded_nbytes(v) for v in expected.values())
    manifest_len = int.from_bytes(cpz.read_bytes()[-16:-8], "little")
    # header 16 + footer 24 + manifest + at most 7 bytes of alignment before each of <= 4 blobs a tensor
    assert 0 <= os.path.getsize(cpz) - honest - manifest_len - 40 < 7 * 4 * len(expected)
    meta = cio.open_weights(cpz).metadata
    assert meta["source"] == "model.npz" and "--sparsity 0.75" in meta["command"]
    for ext in (".npz", ".safetensors", ".pt", ".cpz"):
        out = tmp_path / f"d{ext}"
        assert run("decompress", cpz, "-o", out, "-q").code == 0
        got = read(out) if ext != ".cpz" else load_compressed(out)
        assert_same_dict(got, coreprune.dequantize(expected))


def test_compress_without_options_is_lossless(run, tmp_path, mixed_dtypes):
    src = tmp_path / "m.safetensors"
    cio.save(mixed_dtypes, src)
    out = tmp_path / "m.cpz"
    assert run("compress", src, "-o", out).code == 0
    assert_same_dict(load_compressed(out), mixed_dtypes)


def test_compress_needs_a_cpz_output_and_bits_for_quantization_details(run, npz, tmp_path):
    one_error_line(run("compress", npz, "-o", tmp_path / "x.npz", "--bits", "8"), "compress writes .cpz")
    one_error_line(run("compress", npz, "-o", tmp_path / "x.cpz", "--axis", "0"), "--axis needs --bits")
    one_error_line(run("decompress", npz, "-o", tmp_path / "x.pt"), "decompress reads .cpz", "use convert")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


# -------------------------------------------------------------------------------------------- convert


@pytest.mark.parametrize("src_ext", FORMATS)
@pytest.mark.parametrize("dst_ext", FORMATS)
def test_convert_between_every_pair_of_formats_is_exact(run, tmp_path, model, src_ext, dst_ext):
    w = dict(model, half=np.arange(6, dtype=np.float16).reshape(2, 3))
    src = tmp_path / f"in{src_ext}"
    cio.save(w, src)
    dst = tmp_path / f"out{dst_ext}"
    r = run("convert", src, dst)
    assert r.code == 0, r.err
    assert_same_dict(read(dst), w)


def test_convert_maps_gluon_names_to_torch_and_back(run, tmp_path):
    gluon = {
        "0.weight": np.ones((4, 3, 3, 3), np.float32),
        "1.gamma": np.ones(4, np.float32),
        "1.beta": np.zeros(4, np.float32),
        "1.running_mean": np.zeros(4, np.float32),
        "1.running_var": np.ones(4, np.float32),
        "4.weight": np.ones((2, 4), np.float32),
    }
    src = tmp_path / "g.npz"
    cio.save(gluon, src)
    pt = tmp_path / "t.pt"
    r = run("convert", src, pt, "--map", "gluon-to-torch")
    assert r.code == 0 and "2 renamed" in r.out and "1 batch-norm num_batches_tracked" in r.out
    got = read(pt)
    assert list(got) == ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                         "1.num_batches_tracked", "4.weight"]
    assert same(got["1.bias"], gluon["1.beta"]) and same(got["1.num_batches_tracked"], np.array(0, np.int64))
    back = tmp_path / "g2.npz"
    r = run("convert", pt, back, "--map", "torch-to-gluon")
    assert r.code == 0 and "dropped 1 tensor(s)" in r.err and "num_batches_tracked" in r.err
    assert_same_dict(read(back), gluon)


def test_convert_carries_safetensors_metadata_and_notes_what_it_drops(run, tmp_path, model):
    src = tmp_path / "m.safetensors"
    cio.save(model, src, metadata={"format": "pt", "note": "hello"})
    dst = tmp_path / "m2.safetensors"
    assert run("convert", src, dst).code == 0
    assert cio.open_weights(dst).metadata == {"format": "pt", "note": "hello"}
    r = run("convert", src, tmp_path / "m.npz")
    assert r.code == 0 and "metadata of" in r.err and "(format, note) is not written" in r.err


# --------------------------------------------------------------------------------------- user errors


@pytest.mark.parametrize(
    "argv,fragments",
    [
        ([], ["required: COMMAND"]),
        (["bogus"], ["invalid choice: 'bogus'"]),
        (["inspect"], ["inspect:", "required: FILE"]),
        (["prune", "{npz}", "--sparsity", "0.5"], ["prune:", "-o/--output", "--dry-run"]),
        (["prune", "{npz}", "-o", "{tmp}/o.npz"], ["one of the arguments --threshold --sparsity"]),
        (["prune", "{npz}", "-o", "{tmp}/o.npz", "--threshold", "0.1", "--sparsity", "0.5"], ["not allowed"]),
        (["prune", "{npz}", "-o", "{tmp}/o.npz", "--sparsity", "1.5"], ["[0, 1]"]),
        (["prune", "{npz}", "-o", "{tmp}/o.npz", "--threshold", "-1"], [">= 0"]),
        (["prune", "{npz}", "-o", "{tmp}/o.npz", "--threshold", "nan"], ["finite"]),
        (["prune", "{npz}", "-o", "{tmp}/o.npz", "--threshold", "0.1", "--global"], ["--global goes with"]),
        (["prune", "{npz}", "-o", "{tmp}/o.npz", "--sparsity", "0.5", "--include", "nope*"], ["'nope*'"]),
        (["quantize", "{npz}", "-o", "{tmp}/o.cpz"], ["--bits"]),
        (["quantize", "{npz}", "-o", "{tmp}/o.cpz", "--bits", "17"], ["1..16"]),
        (["quantize", "{npz}", "-o", "{tmp}/o.cpz", "--bits", "x"], ["not an integer"]),
        (["quantize", "{npz}", "-o", "{tmp}/o.cpz", "--bits", "4", "--axis", "0", "--group-size", "4"],
         ["not allowed"]),
        (["quantize", "{npz}", "-o", "{tmp}/o.cpz", "--bits", "4", "--axis", "5"], ["axis 5"]),
        (["compress", "{npz}"], ["-o/--output"]),
        (["decompress", "{npz}"], ["-o/--output"]),
        (["convert", "{npz}"], ["required: OUT"]),
        (["convert", "{npz}", "{tmp}/o.npz", "--map", "x"], ["invalid choice"]),
        (["convert", "{npz}", "{tmp}/o.weird"], ["cannot tell the format"]),
        (["convert", "{npz}", "{tmp}/missing-dir/o.npz"], ["does not exist"]),
    ],
)
def test_every_user_error_is_one_line_and_status_2(run, npz, tmp_path, argv, fragments):
    argv = [a.format(npz=npz, tmp=tmp_path) for a in argv]
    one_error_line(run(*argv), *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", "{m}"],
        ["prune", "{m}", "-o", "{tmp}/o.npz", "--threshold", "0.1"],
        ["quantize", "{m}", "-o", "{tmp}/o.cpz", "--bits", "8"],
        ["compress", "{m}", "-o", "{tmp}/o.cpz"],
        ["decompress", "{m}", "-o", "{tmp}/o.npz"],
        ["convert", "{m}", "{tmp}/o.npz"],
    ],
)
@pytest.mark.parametrize("problem", ["missing", "garbage", "truncated"])
def test_missing_and_broken_inputs_are_one_line_and_status_2(run, tmp_path, model, argv, problem):
    path = tmp_path / ("m.cpz" if argv[0] == "decompress" else "m.npz")
    if problem != "missing":
        good = tmp_path / "good" / path.name
        good.parent.mkdir()
        cio.save(model, good) if path.suffix == ".npz" else save_compressed(model, good)
        data = good.read_bytes()
        path.write_bytes(b"\x00garbage" * 40 if problem == "garbage" else data[: len(data) // 2])
    r = run(*[a.format(m=path, tmp=tmp_path) for a in argv])
    one_error_line(r, str(path) if problem != "missing" or argv[0] != "decompress" else "m.cpz")
    assert not list(tmp_path.glob("o.*")) and not list(tmp_path.glob(".o.*"))


@pytest.mark.parametrize("how", ["same path", "symlink", "hardlink", "relative path"])
@pytest.mark.parametrize("command", ["prune", "quantize", "compress", "convert", "decompress"])
def test_the_input_is_never_overwritten(run, tmp_path, model, how, command, monkeypatch):
    src = tmp_path / "m.cpz"
    save_compressed(model, src)
    before = src.read_bytes()
    if how == "same path":
        out = src
    elif how == "relative path":
        monkeypatch.chdir(tmp_path)
        (tmp_path / "sub").mkdir()
        out = Path("sub") / ".." / "m.cpz"
    else:
        out = tmp_path / "link.cpz"
        out.symlink_to(src) if how == "symlink" else os.link(src, out)
    argv = {
        "prune": ["prune", src, "-o", out, "--threshold", "0.1"],
        "quantize": ["quantize", src, "-o", out, "--bits", "8"],
        "compress": ["compress", src, "-o", out, "--bits", "8"],
        "convert": ["convert", src, out],
        "decompress": ["decompress", src, "-o", out],
    }[command]
    one_error_line(run(*argv), "refusing to overwrite the input")
    assert src.read_bytes() == before


def test_the_plot_never_overwrites_the_input(run, tmp_path, model):
    src = tmp_path / "weights.png"  # a .cpz file under an image name: found by its magic bytes
    save_compressed(model, src)
    before = src.read_bytes()
    one_error_line(run("inspect", src, "--plot", src), "refusing to overwrite the input")
    assert src.read_bytes() == before


def test_help_and_version_exit_0(run):
    r = run("--help")
    assert r.code == 0 and "inspect" in r.out and "convert" in r.out
    r = run("prune", "--help")
    assert r.code == 0 and "--sparsity" in r.out and "--global" in r.out
    r = run("--version")
    assert r.code == 0 and coreprune.__version__ in r.out


def test_parser_knows_every_documented_command():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"inspect", "prune", "quantize", "compress", "decompress", "convert"}


# -------------------------------------------------------------------------------------------- progress


def test_quiet_silences_everything_but_errors(run, npz, tmp_path):
    r = run("prune", npz, "-o", tmp_path / "p.npz", "--sparsity", "0.5", "--quiet")
    assert (r.code, r.out, r.err) == (0, "", "")


def test_the_progress_bar_goes_to_stderr_and_counts_tensors(capsys):
    with _progress(3, "demo", quiet=False, delay=0) as bar:
        for _ in range(3):
            bar.update(1)
    captured = capsys.readouterr()
    assert captured.out == "" and "demo:" in captured.err and "/3 [" in captured.err
    with _progress(3, "demo", quiet=True, delay=0) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""


def test_everything_works_without_tqdm(run, npz, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with _progress(2, "x", quiet=False, delay=0) as bar:
        bar.update(2)
    r = run("compress", npz, "-o", tmp_path / "c.cpz", "--bits", "8")
    assert r.code == 0 and r.err == ""


# ------------------------------------------------------------------------------------------ subprocess


def test_python_m_coreprune_runs_without_any_framework(tmp_path):
    path = tmp_path / "m.pt"
    cio.save(make_model(3), path)
    code = (
        "import sys\n"
        "from coreprune.cli import main\n"
        f"rc = main(['compress', {str(path)!r}, '-o', {str(tmp_path / 'm.cpz')!r}, '--bits', '4', '-q'])\n"
        "assert rc == 0, rc\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'mxnet')]\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(coreprune.__file__).parents[1]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-m", "coreprune", "inspect", str(tmp_path / "m.cpz")],
                          capture_output=True, text=True, env=env)
    # a tensor of at most SMALL_TENSOR weights is held at 8 bits by the 4-bit default
    assert done.returncode == 0 and "features.3.weight" in done.stdout and "q8" in done.stdout
    done = subprocess.run([sys.executable, "-m", "coreprune", "inspect", str(tmp_path / "nope.pt")],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("coreprune: error: ") and "nope.pt" in done.stderr


# -------------------------------------------------------------------------------------------- memory


@pytest.mark.parametrize("ext", [".npz", ".pt"])
def test_compress_streams_one_tensor_at_a_time(run, tmp_path, ext):
    import tracemalloc

    rng = np.random.default_rng(0)
    src = tmp_path / f"big{ext}"
    cio.save({f"layer{i}.weight": rng.standard_normal((512, 512)).astype(np.float32) for i in range(16)}, src)
    tracemalloc.start()
    try:
        r = run("compress", src, "-o", tmp_path / "b.cpz", "--sparsity", "0.5", "--bits", "8", "--axis", "0")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.code == 0, r.err
    # 16 MiB of weights in 1 MiB tensors: holding them all would take more than 16 MiB
    assert peak < 8 * 2**20, peak / 2**20
