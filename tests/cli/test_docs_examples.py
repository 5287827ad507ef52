"""The console examples of docs/cli.md are real: each ``$ coreprune ...`` line with output below it is
run on the files built here (NumPy only, fixed seeds) and must print exactly the documented lines.

Reproduce the figures of docs/cli.md with ``pytest tests/cli/test_docs_examples.py``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

import coreprune.io as cio
from coreprune.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def _model() -> dict[str, np.ndarray]:
    """A small convnet state dict: conv, batch norm, conv, classifier (the names torch would use)."""
    rng = np.random.default_rng(2026)

    def normal(shape, scale):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return {
        "features.0.weight": normal((8, 3, 3, 3), 0.2),
        "features.0.bias": normal(8, 0.02),
        "features.1.weight": (1 + normal(8, 0.2)).astype(np.float32),
        "features.1.bias": normal(8, 1.0),
        "features.1.running_mean": normal(8, 1.0),
        "features.1.running_var": (0.5 + rng.random(8) * 0.5).astype(np.float32),
        "features.1.num_batches_tracked": np.array(7, np.int64),
        "features.3.weight": normal((16, 8, 3, 3), 0.1),
        "classifier.weight": normal((10, 64), 0.05),
        "classifier.bias": np.zeros(10, np.float32),
    }


def _gluon_net() -> dict[str, np.ndarray]:
    """A Gluon ``save_parameters`` file of Dense, BatchNorm, Dense."""
    rng = np.random.default_rng(7)
    return {
        "0.weight": rng.standard_normal((16, 8)).astype(np.float32),
        "0.bias": np.zeros(16, np.float32),
        "1.gamma": np.ones(16, np.float32),
        "1.beta": np.zeros(16, np.float32),
        "1.running_mean": np.zeros(16, np.float32),
        "1.running_var": np.ones(16, np.float32),
        "2.weight": rng.standard_normal((4, 16)).astype(np.float32),
        "2.bias": np.zeros(4, np.float32),
    }


def _examples() -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` for every console line of the page that shows output."""
    out: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", DOC.read_text(), flags=re.S):
        command, lines = None, []
        for line in block.splitlines():
            if line.startswith("$ "):
                if command is not None and lines:
                    out.append((command, lines))
                command, lines = line[2:].split("  #")[0].strip(), []
            else:
                lines.append(line)
        if command is not None and lines:
            out.append((command, lines))
    return out


EXAMPLES = _examples()


def test_the_page_has_examples_with_output():
    assert [c.split()[1] for c, _ in EXAMPLES] == ["inspect", "prune", "compress", "convert"]


@pytest.mark.parametrize("command, expected", EXAMPLES, ids=[c.split()[1] for c, _ in EXAMPLES])
def test_console_example(tmp_path, monkeypatch, capsys, command, expected):
    monkeypatch.chdir(tmp_path)
    cio.save(_model(), "model.pt")
    cio.save(_gluon_net(), "net.params")
    argv = shlex.split(command)
    assert argv[0] == "coreprune"
    assert main(argv[1:]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == expected, "\n".join(printed)
