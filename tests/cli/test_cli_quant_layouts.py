"""``coreprune quantize`` with the default layouts, flattened groups, searched scales and the full range:
the .cpz holds exactly what :func:`coreprune.quantize` gives, and ``inspect`` shows the bits."""

from __future__ import annotations

import numpy as np
import pytest

import coreprune
import coreprune.io as cio
from coreprune import QuantizedArray, load_compressed
from coreprune.cli import main


def make_model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "features.0.weight": (rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32),
        "features.1.weight": rng.random(8).astype(np.float32) + 0.5,
        "features.3.weight": (rng.standard_normal((16, 8, 3, 3)) * 0.1).astype(np.float32),
        "dw.weight": (rng.standard_normal((16, 1, 3, 3)) * 0.1).astype(np.float32),
        "classifier.weight": (rng.standard_normal((32, 200)) * 0.05).astype(np.float32),  # > SMALL_TENSOR
    }


@pytest.mark.parametrize(
    "opts, kwargs",
    [
        (["--bits", "4"], dict(bits=4)),
        (["--bits", "4", "--per-tensor"], dict(bits=4, group_size=None)),
        (["--bits", "3", "--group-size", "20", "--flatten", "--method", "hqq"],
         dict(bits=3, group_size=20, flatten=True, method="hqq")),
        (["--bits", "8", "--axis", "0", "--full-range"], dict(bits=8, axis=0, full_range=True)),
        (["--bits", "4", "--affine", "--method", "clip"], dict(bits=4, symmetric=False, method="clip")),
        (["--bits", "4", "--scale-dtype", "float32"], dict(bits=4, scale_dtype="float32")),
        (["--bits", "8", "--scale-dtype", "float16"], dict(bits=8, scale_dtype="float16")),
    ],
)
def test_quantize_writes_what_the_library_gives(tmp_path, capsys, opts, kwargs):
    model = make_model()
    src, out = tmp_path / "m.npz", tmp_path / "q.cpz"
    cio.save(model, src)
    assert main(["quantize", str(src), "-o", str(out), *opts]) == 0
    expected = coreprune.quantize(model, **kwargs)
    got = load_compressed(out)
    for name, v in expected.items():
        if isinstance(v, QuantizedArray):
            g = got[name]
            assert g.layout == v.layout and g.bits == v.bits
            np.testing.assert_array_equal(g.codes, v.codes)
            np.testing.assert_array_equal(g.scale, v.scale)
        else:
            np.testing.assert_array_equal(got[name], v)
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert f"q{kwargs['bits']}" in shown  # the bits of every quantized tensor


def test_flatten_without_a_group_size_is_one_error_line(tmp_path, capsys):
    src = tmp_path / "m.npz"
    cio.save(make_model(), src)
    code = main(["quantize", str(src), "-o", str(tmp_path / "q.cpz"), "--bits", "4", "--flatten"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "flatten needs an int group_size" in err[0]
    assert not (tmp_path / "q.cpz").exists()


def test_budget_allocates_as_the_library_and_shows_the_bits(tmp_path, capsys):
    model = make_model()
    src, out = tmp_path / "m.npz", tmp_path / "q.cpz"
    cio.save(model, src)
    assert main(["quantize", str(src), "-o", str(out), "--budget", "5"]) == 0
    said = capsys.readouterr().out
    expected = coreprune.quantize(model, budget=5.0)
    got = load_compressed(out)
    bits = set()
    for name, v in expected.items():
        if isinstance(v, QuantizedArray):
            assert got[name].bits == v.bits and got[name].layout == v.layout
            assert got[name].scale.dtype == v.scale.dtype
            np.testing.assert_array_equal(got[name].codes, v.codes)
            bits.add(v.bits)
    assert len(bits) > 1 and "for a budget of 5 bits per weight" in said
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert all(f"q{b}" in shown for b in bits)


@pytest.mark.parametrize("budget", ["4.5", "2.5"])
def test_budget_floor_for_small_tensors_is_the_librarys(tmp_path, capsys, budget):
    """At 4.5 the depthwise and stem kernels keep 8 bits; at 2.5 that floor alone does not fit, so
    they go lower: the command line allocates as quantize(budget=...) both ways."""
    rng = np.random.default_rng(1)
    model = {"stem.weight": rng.standard_normal((64, 3, 3, 3)).astype(np.float32),
             "dw.weight": rng.standard_normal((512, 1, 3, 3)).astype(np.float32),
             "pw.weight": rng.standard_normal((256, 512)).astype(np.float32)}
    src, out = tmp_path / "m.npz", tmp_path / "q.cpz"
    cio.save(model, src)
    assert main(["quantize", str(src), "-o", str(out), "--budget", budget]) == 0
    expected = coreprune.quantize(model, budget=float(budget))
    got = load_compressed(out)
    assert {n: got[n].bits for n in model} == {n: expected[n].bits for n in model}
    small = (got["stem.weight"].bits, got["dw.weight"].bits)
    assert (small == (8, 8)) if budget == "4.5" else min(small) < 8
    for name in model:
        np.testing.assert_array_equal(got[name].codes, expected[name].codes)
        np.testing.assert_array_equal(got[name].scale, expected[name].scale)


@pytest.mark.parametrize("argv, fragment", [
    (["--budget", "1"], "budget 1.0 bits per weight is below"),
    ([], "give --bits B or --budget X"),
    (["--bits", "4", "--budget", "4.5"], "give --bits B or --budget X"),
])
def test_budget_errors_are_one_line(tmp_path, capsys, argv, fragment):
    src = tmp_path / "m.npz"
    cio.save(make_model(), src)
    code = main(["quantize", str(src), "-o", str(tmp_path / "q.cpz"), *argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and fragment in err[0]
    assert not (tmp_path / "q.cpz").exists()
