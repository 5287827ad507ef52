"""Fixtures for the file-format tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def scratch_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder for tests that write thousands of small files: RAM-backed when /dev/shm exists.

    ``save`` fsyncs, and rewriting a file on a journalled disk costs milliseconds; the
    truncation, fuzz and property tests write thousands, so they use memory when they can.
    Session-scoped so that hypothesis tests may use it.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        folder = Path(tempfile.mkdtemp(prefix="coreprune-io-", dir=shm))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("scratch")


@pytest.fixture
def scratch(scratch_root: Path) -> Path:
    """A fresh folder inside :func:`scratch_root` for one test."""
    return Path(tempfile.mkdtemp(dir=scratch_root))
