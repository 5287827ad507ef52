"""``compress --codebook-bits / --entropy`` and ``inspect``'s per-layer codebook table.

The CLI's codebooks are checked against the library (``prune`` then
:func:`coreprune.weight_sharing.share_weights` on the same tensors): same codes, codebook and mask;
the ANS and bit-packed files decode to the same values; inspect's figures against the stored
codes' own entropy and sizes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from coreprune.cli import main
from coreprune.cli.codebook import bits_for, parse_codebook_bits
from coreprune.entropy import empirical_entropy
from coreprune.io.cpz import load_compressed, open_reader
from coreprune.weight_sharing import CodebookArray, share_weights, stored_nbytes

# LeNet-5 (Caffe variant) shapes, as in Deep Compression's Table 3
LENET5 = {
    "conv1.weight": (20, 1, 5, 5), "conv1.bias": (20,),
    "conv2.weight": (50, 20, 5, 5), "conv2.bias": (50,),
    "fc1.weight": (500, 800), "fc1.bias": (500,),
    "fc2.weight": (10, 500), "fc2.bias": (10,),
}


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    rng = np.random.default_rng(0)
    w = {k: (rng.standard_normal(s) * 0.1).astype(np.float32) for k, s in LENET5.items()}
    path = tmp_path_factory.mktemp("cb") / "lenet5.npz"
    np.savez(path, **w)
    return path, w


def _run(capsys, *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_error_line(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("coreprune: error: "), (code, err)
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_codebooks_per_kind_match_the_library(capsys, tmp_path, lenet):
    src, w = lenet
    out = tmp_path / "m.cpz"
    code, _, err = _run(capsys, "compress", src, "-o", out, "--sparsity", "0.9",
                        "--codebook-bits", "conv=8,fc=5")
    assert code == 0, err
    # the reference: the same pruning through the CLI, then the library's weight sharing
    code, _, err = _run(capsys, "prune", src, "-o", tmp_path / "pruned.npz", "--sparsity", "0.9")
    assert code == 0, err
    pruned = dict(np.load(tmp_path / "pruned.npz"))
    ref = share_weights(pruned, {"conv1.weight": 8, "conv2.weight": 8, "fc1.weight": 5, "fc2.weight": 5})
    got = load_compressed(out)
    for name in LENET5:
        if name.endswith(".bias"):
            assert isinstance(got[name], np.ndarray) and got[name].tobytes() == w[name].tobytes()
            continue
        g, r = got[name], ref[name]
        assert isinstance(g, CodebookArray) and g.bits == (8 if name.startswith("conv") else 5)
        assert np.array_equal(g.codebook, r.codebook)
        assert np.array_equal(g.mask, r.mask) and np.array_equal(g.codes, r.codes)
        assert g.dequantize().tobytes() == r.dequantize().tobytes()
        assert 0.09 < g.nnz / g.codes.size < 0.11


def test_entropy_none_bit_packs_and_decodes_the_same(capsys, tmp_path, lenet):
    src, _ = lenet
    sizes, values = {}, {}
    for coding in ("ans", "none"):
        out = tmp_path / f"{coding}.cpz"
        code, text, err = _run(capsys, "compress", src, "-o", out, "--sparsity", "0.92", "--codebook-bits",
                               "conv=8,fc=5", "--entropy", coding)
        assert code == 0, err
        with open_reader(out) as r:
            assert r.storage("fc1.weight")["layout"] == ("ans" if coding == "ans" else "packed")
            sizes[coding] = r.storage("fc1.weight")["stored_nbytes"]
            sizes[coding, "conv1"] = r.storage("conv1.weight")["stored_nbytes"]
        values[coding] = {k: v.dequantize() for k, v in load_compressed(out).items()
                          if isinstance(v, CodebookArray)}
    assert values["ans"].keys() == values["none"].keys() and len(values["ans"]) == 4
    for k in values["ans"]:
        assert values["ans"][k].tobytes() == values["none"][k].tobytes()
    assert sizes["ans"] < sizes["none"]  # 400,000 weights: the coded streams win
    # 40 surviving weights: an ANS histogram would cost more than it saves, so both streams fall back
    # to bit-packing (coreprune.entropy's kind 3); what is left is their two 13-byte stream headers and
    # a gap width chosen for the coded stream, not for packing (docs/cli.md)
    assert 0 < sizes["ans", "conv1"] - sizes["none", "conv1"] <= 2 * 13 + 8


def test_globs_win_over_kinds_and_unmatched_tensors_stay(capsys, tmp_path, lenet):
    src, w = lenet
    out = tmp_path / "g.cpz"
    code, _, err = _run(capsys, "compress", src, "-o", out, "--codebook-bits", "fc=5,fc2.*=3")
    assert code == 0, err
    got = load_compressed(out)
    assert got["fc1.weight"].bits == 5 and got["fc2.weight"].bits == 3
    assert got["conv1.weight"].tobytes() == w["conv1.weight"].tobytes()  # no conv rule


def test_rules_parse_and_refuse():
    assert parse_codebook_bits("conv=8, fc=5") == [("conv", 8), ("fc", 5)]
    assert parse_codebook_bits("4") == [("all", 4)]
    f32 = np.dtype(np.float32)
    assert bits_for("emb.weight", (100, 16), f32, [("all", 4)]) == 4
    assert bits_for("steps", (3, 3), np.dtype(np.int64), [("all", 4)]) is None
    assert bits_for("x.bias", (3,), f32, [("x.*", 6)]) == 6  # a glob names any floating tensor


@pytest.mark.parametrize("prune, budget", [([], 4.5), (["--sparsity", "0.9"], 0.8)])
def test_codebook_budget_matches_the_library_and_fits(capsys, tmp_path, lenet, prune, budget):
    """Bits per weight count every weight, pruned or not: 10% survivors fit 0.8 bits per weight."""
    src, w = lenet
    out = tmp_path / "b.cpz"
    code, text, err = _run(capsys, "compress", src, "-o", out, *prune, "--codebook-budget", budget)
    assert code == 0, err
    assert f"for a budget of {budget:g} bits per weight" in text
    if prune:  # the reference: the same pruning through the CLI, then the library
        code, _, err = _run(capsys, "prune", src, "-o", tmp_path / "pruned.npz", *prune)
        assert code == 0, err
        source = dict(np.load(tmp_path / "pruned.npz"))
    else:
        source = w
    ref = share_weights(source, budget=budget)
    got = load_compressed(out)
    weights = [n for n in LENET5 if n.endswith(".weight")]
    assert len({got[n].bits for n in weights}) > 1  # the budget mixes widths here
    with open_reader(out) as r:
        stored = {n: r.storage(n)["stored_nbytes"] for n in weights}
    for name in weights:
        g, r_ = got[name], ref[name]
        assert isinstance(g, CodebookArray) and g.bits == r_.bits
        assert np.array_equal(g.codes, r_.codes) and np.array_equal(g.codebook, r_.codebook)
        assert stored[name] == stored_nbytes(r_)  # the budget counts what the file stores
    assert 8 * sum(stored.values()) / sum(w[n].size for n in weights) <= budget
    for name in LENET5:
        if name.endswith(".bias"):
            assert got[name].tobytes() == w[name].tobytes()


@pytest.mark.parametrize("argv, fragment", [
    (["--codebook-budget", "4", "--codebook-bits", "4"], "not both"),
    (["--codebook-budget", "4", "--bits", "4"], "give one of them"),
    (["--codebook-budget", "4", "--entropy", "none"], "--entropy ans"),
    (["--codebook-budget", "0.5"], "smallest width"),
    (["--codebook-budget", "nan"], "finite"),
    (["--codebook-bits", "conv=17"], "1..16"),
    (["--codebook-bits", "conv"], "KIND=BITS"),
    (["--codebook-bits", "conv=8", "--bits", "4"], "give one of them"),
    (["--codebook-bits", "conv=8", "--entropy", "huffman"], "--entropy"),
])
def test_bad_options_give_one_line(capsys, tmp_path, lenet, argv, fragment):
    src, _ = lenet
    code, _, err = _run(capsys, "compress", src, "-o", tmp_path / "x.cpz", *argv)
    _one_error_line(code, err, fragment)
    assert not (tmp_path / "x.cpz").exists()


def test_inspect_prints_the_per_layer_codebook_table(capsys, tmp_path, lenet):
    src, _ = lenet
    out = tmp_path / "m.cpz"
    argv = ["compress", src, "-o", out, "--sparsity", "0.9", "--codebook-bits", "conv=8,fc=5"]
    assert _run(capsys, *argv)[0] == 0
    code, text, err = _run(capsys, "inspect", out)
    assert code == 0, err
    assert "dense ans" not in text
    assert "cb8 ans" in text and "cb5 ans" in text
    table = text[text.index("codebook tensor"):].splitlines()
    names = [line.split()[0] for line in table[2:6]]
    assert names == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    code, text, err = _run(capsys, "inspect", out, "--json")
    doc = {t["name"]: t for t in json.loads(text)["tensors"]}
    raw = load_compressed(out)
    for name in ("conv1.weight", "fc1.weight"):
        row, value = doc[name]["codebook"], raw[name]
        codes = value.codes[value.mask]
        stored = doc[name]["storage"]["stored_nbytes"]
        assert row["kept"] == pytest.approx(codes.size / value.codes.size)
        assert row["bits"] == value.bits and row["nbytes"] == stored
        assert row["bits_per_weight"] == pytest.approx(8 * stored / codes.size)
        code_nbytes = doc[name]["storage"]["blob_nbytes"]["codes"]
        assert row["code_bits"] == pytest.approx(8 * code_nbytes / codes.size)
        assert row["code_entropy"] == pytest.approx(empirical_entropy(codes, 1 << value.bits))
    # the big layer's ANS-coded codes come within 2% of their order-0 entropy
    fc1 = doc["fc1.weight"]["codebook"]
    assert fc1["code_entropy"] <= fc1["code_bits"] < 1.02 * fc1["code_entropy"]
    assert "codebook" not in doc["fc1.bias"]
