"""Fixtures of the CLI tests: run ``coreprune`` in-process and small weight files to run it on."""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import pytest

from coreprune.cli import main


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
