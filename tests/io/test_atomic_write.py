"""Atomic writes (issue 11, class 9): no temporary file survives SIGTERM; long output names work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import coreprune.io as cio
from coreprune.io.base import atomic_write


def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "out.npz"
    code = textwrap.dedent(
        f"""
        import time
        from coreprune.io.base import atomic_write
        with atomic_write({str(out)!r}) as f:
            f.write(b"partial")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line == "writing", (line, proc.poll())
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the write is under way
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        assert code == -signal.SIGTERM, (code, proc.stderr.read()[-2000:])  # still dies of the signal
    finally:
        proc.kill()
        proc.wait()
    assert list(tmp_path.iterdir()) == []


def test_a_program_s_own_sigterm_handler_is_left_alone(tmp_path):
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *a: seen.append(1))
    try:
        with atomic_write(tmp_path / "a.bin") as f:
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            f.write(b"x")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        assert seen == [1]
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (tmp_path / "a.bin").read_bytes() == b"x"


def test_the_default_sigterm_action_is_restored_after_a_write(tmp_path):
    with atomic_write(tmp_path / "a.bin") as f:
        f.write(b"x")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize("name", ["w" * 251 + ".npz", "é" * 125 + "x.npz", "w" * 249 + ".npz"])
def test_output_names_up_to_name_max_bytes_are_written(tmp_path, name):
    assert len(name.encode()) <= 255
    path = tmp_path / name
    cio.save({"w": np.arange(3.0)}, path)
    assert cio.load(path)["w"].tolist() == [0.0, 1.0, 2.0]
    assert [p.name for p in tmp_path.iterdir()] == [name]
