"""Run a reader over a hostile file in a child process, with a timeout and an address-space cap.

:class:`Guard` keeps one worker process (``_worker.py``) alive across cases, so a case costs a
file write and a pipe round trip, not an interpreter start. A case that kills the worker (a
signal: SIGSEGV, SIGBUS), outlives its timeout, or raises anything outside the project's
exception family is returned as a bug with what is needed to reproduce it; the worker is then
restarted for the next case.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("_worker.py")
#: A small file must be done in a few seconds (issue 11); the guard allows a margin for a loaded CI host.
TIMEOUT_S = float(os.environ.get("COREPRUNE_FUZZ_TIMEOUT", "10"))
#: How long the worker may take to import numpy and coreprune (not counted in any case's time).
STARTUP_S = 300.0
#: Peak Python-heap allocation allowed while reading a file of ``n`` bytes: 2 n + 200 MiB (issue 11).
MEMORY_SLACK = 200 << 20


@dataclass
class Result:
    outcome: str  # "ok", "error" (the project's family), "bug", "signal", "timeout"
    type: str = ""
    message: str = ""
    peak: int = 0
    tensors: dict[str, Any] = field(default_factory=dict)
    traceback: str = ""
    seconds: float = 0.0

    def family_or_ok(self, size: int) -> str | None:
        """None when the property holds; otherwise what is wrong, in one line."""
        if self.outcome == "error" and self.type in ("WeightFileError", "UnsafePickleError"):
            return None
        if self.outcome == "error":
            return f"a {self.type} that is not a WeightFileError (does it name the file?): {self.message}"
        if self.outcome == "ok":
            if self.peak > 2 * size + MEMORY_SLACK:
                return f"loaded but allocated {self.peak} bytes for a {size}-byte file"
            return None
        return f"{self.outcome}: {self.type}: {self.message}\n{self.traceback}"


class Guard:
    """One worker process; :meth:`check` reads one file in it."""

    def __init__(self, timeout: float = TIMEOUT_S) -> None:
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.folder = Path(tempfile.mkdtemp(prefix="coreprune-fuzz-", dir=_scratch_dir()))
        self.count = 0

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
        proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            bufsize=1,
        )
        # Wait for the imports to finish (slow on a loaded host) before any case is timed.
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], STARTUP_S)
        if not ready or proc.stdout.readline().strip() != "ready":
            proc.kill()
            raise RuntimeError(f"the fuzz worker did not start within {STARTUP_S:.0f} s")
        return proc

    def check_bytes(self, data: bytes, suffix: str, **request: Any) -> Result:
        self.count += 1
        path = self.folder / f"case{suffix}"
        path.write_bytes(data)
        try:
            return self.check(path, **request)
        finally:
            path.unlink(missing_ok=True)

    def check(self, path: Path, *, format: str | None = None, options: dict | None = None,
              kind: str = "read", **extra: Any) -> Result:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        request = {"path": str(path), "format": format, "options": options or {}, "kind": kind, **extra}
        start = time.monotonic()
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], self.timeout)
        seconds = time.monotonic() - start
        if not ready:
            self.stop()
            return Result("timeout", message=f"no answer within {self.timeout:.0f} s", seconds=seconds)
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            self.proc = None
            return Result("signal", type=f"exit {code}", message="the worker died", seconds=seconds)
        reply = json.loads(line)
        return Result(seconds=seconds, **reply)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.stop()
        for p in self.folder.glob("*"):
            p.unlink(missing_ok=True)
        self.folder.rmdir()


def _scratch_dir() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
