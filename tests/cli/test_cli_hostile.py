"""The command line on hostile input (issue 11): one line and exit 2, escaped names, no mmap.

And on valid input the commands' outputs are unchanged: reading without memory maps (what the
CLI now does) gives byte-identical files and identical printed output to reading with them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import coreprune.cli.common as cli_common
import coreprune.io as cio
from coreprune.cli import main

sys.path.insert(0, str(Path(__file__).parents[1] / "io"))
from _torchpickle import Call, Global, Storage, Tensor, zip_file  # noqa: E402


def _run(capsys, *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_error_line(code: int, err: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("coreprune: error: "), (code, err)
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "conv.weight": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
        "fc.weight": rng.standard_normal((10, 32)).astype(np.float32),
        "fc.bias": rng.standard_normal(10).astype(np.float32),
        "bn.running_var": np.abs(rng.standard_normal(8)).astype(np.float32),
    }


COMMANDS = [
    ("inspect",),
    ("inspect", "--json"),
    ("prune", "--sparsity", "0.5", "-o", "pruned{ext}"),
    ("prune", "--sparsity", "0.6", "--global", "-o", "out.npz"),
    ("quantize", "--bits", "4", "--axis", "0", "-o", "q.cpz"),
    ("compress", "--threshold", "0.3", "--bits", "8", "-o", "c.cpz"),
    ("convert", "{out}/conv.safetensors"),
]


@pytest.mark.parametrize("ext", [".npz", ".safetensors", ".pt", ".params"])
def test_valid_files_give_identical_outputs_with_and_without_memory_maps(capsys, monkeypatch, tmp_path, ext):
    src = tmp_path / f"model{ext}"
    cio.save(_model(), src)
    results = {}
    real = cli_common.open_weights
    for mmap in (False, True):  # False: what the CLI does now; True: how it read before (memory maps)
        if mmap:
            monkeypatch.setattr(cli_common, "open_weights", lambda p, **kw: real(p, **{**kw, "mmap": True}))
        out_dir = tmp_path / f"mmap{mmap}"
        out_dir.mkdir()
        runs = []
        for command in COMMANDS:
            argv = [a.format(ext=ext, out=out_dir) for a in command]
            if "-o" in argv:
                argv[argv.index("-o") + 1] = str(out_dir / argv[argv.index("-o") + 1])
            code, out, err = _run(capsys, argv[0], src, *argv[1:])
            assert code == 0, (argv, err)
            runs.append(out.replace(str(out_dir), "OUT"))
        files = {p.name: p.read_bytes() for p in sorted(out_dir.iterdir())}
        results[mmap] = (runs, files)
    assert results[False][0] == results[True][0]
    assert results[False][1].keys() == results[True][1].keys() and len(results[False][1]) == 5
    for name, data in results[False][1].items():
        if name.endswith(".cpz"):  # the manifest records the command line, which names the folder
            continue
        assert data == results[True][1][name], name
    for name in ("q.cpz", "c.cpz"):
        a = cio.load(tmp_path / "mmapFalse" / name)
        b = cio.load(tmp_path / "mmapTrue" / name)
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_the_cli_reads_without_memory_maps(monkeypatch, tmp_path, capsys):
    seen = []
    real = cli_common.open_weights
    monkeypatch.setattr(cli_common, "open_weights", lambda p, **kw: seen.append(kw) or real(p, **kw))
    src = tmp_path / "m.npz"
    cio.save(_model(), src)
    assert _run(capsys, "inspect", src)[0] == 0
    assert seen and seen[0]["mmap"] is False


def test_names_with_escape_sequences_are_printed_escaped(capsys, tmp_path):
    src = tmp_path / "h.safetensors"
    cio.save({"evil\x1b[2J\x1b]0;pwned\x07.weight": np.ones((2, 2), np.float32)}, src)
    code, out, err = _run(capsys, "inspect", src)
    assert code == 0 and "\x1b" not in out and "\x07" not in out
    assert "evil\\x1b[2J\\x1b]0;pwned\\x07.weight" in out
    code, out, err = _run(capsys, "prune", src, "-o", tmp_path / "o.npz", "--sparsity", "2")
    _one_error_line(code, err)


def test_lone_surrogates_in_a_torch_checkpoint_are_shown_and_refused_clearly(capsys, tmp_path):
    s = Storage(np.ones(4, np.float32).tobytes(), "FloatStorage", "0")
    src = tmp_path / "s.pt"
    src.write_bytes(zip_file({"w\udc80x": Tensor(s, 0, (2, 2), (2, 1))}))
    code, out, err = _run(capsys, "inspect", src)
    assert code == 0 and "w\\udc80x" in out, err
    code, out, err = _run(capsys, "convert", src, tmp_path / "o.npz")
    _one_error_line(code, err, "lone surrogate", "U+DC80")
    assert not (tmp_path / "o.npz").exists()


def test_plot_with_mathtext_in_names_writes_the_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    src = tmp_path / "m.npz"
    cio.save({"cost$^$x.weight": np.ones((3, 3), np.float32), "$\\frac{.w": np.ones((2, 2), np.float32)}, src)
    code, out, err = _run(capsys, "inspect", src, "--plot", tmp_path / "p.png")
    assert code == 0, err
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")


def test_max_expansion_and_allow_global_flags(capsys, tmp_path):
    src = tmp_path / "z.npz"
    buf_path = tmp_path / "zeros.npz"
    cio.save({"z": np.zeros(8 << 20, np.uint8)}, buf_path, compressed=True)  # 8 MiB in ~8 KiB
    src = buf_path
    code, out, err = _run(capsys, "inspect", src, "--max-expansion", "1M")
    _one_error_line(code, err, "expansion budget", "--max-expansion")
    assert _run(capsys, "inspect", src, "--max-expansion", "16M")[0] == 0
    ckpt = tmp_path / "c.pt"
    s = Storage(np.ones(2, np.float32).tobytes(), "FloatStorage", "0")
    cfg = Call(Global("proj.cfg", "Config"), (1,))
    ckpt.write_bytes(zip_file({"w": Tensor(s, 0, (2,), (1,)), "cfg": cfg}))
    code, out, err = _run(capsys, "inspect", ckpt)
    _one_error_line(code, err, "proj.cfg.Config", "--allow-global")
    code, out, err = _run(capsys, "inspect", ckpt, "--allow-global", "proj.cfg.Config")
    assert code == 0 and "cfg = " in out, err
    code, out, err = _run(capsys, "inspect", ckpt, "--allow-global", "not a name")
    _one_error_line(code, err, "--allow-global")


def test_deep_structures_end_in_one_line(capsys, tmp_path):
    deep = b"](" + b"]" * 5000 + b"a" * 4999 + b"e"  # lists nested 5,000 deep, in a checkpoint value
    body = b"\x80\x02}(X\x01\x00\x00\x00x" + deep + b"u."
    src = tmp_path / "deep.pt"
    src.write_bytes(zip_file(pickle_bytes=body, storages={}))
    code, out, err = _run(capsys, "inspect", src)
    _one_error_line(code, err, "deep.pt")
