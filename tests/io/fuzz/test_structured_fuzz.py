"""Structure-aware fuzzing of every reader: valid files with ONE field bent (see builders.py).

Property: each file either reads back correctly (a valid file: exactly the arrays written; a bent
one: every tensor with the shape and dtype its header declares) or ends in ONE error of the
project's family naming the file -- never another exception, a signal, a hang, or an allocation
beyond 2x the file + 200 MiB. Every case runs in a guarded child process (guard.py).

Profiles: the default (CI) profile runs a bounded, derandomized number of examples per format
(under a minute on 2 shared cores in all). ``COREPRUNE_FUZZ=long`` runs
``COREPRUNE_FUZZ_EXAMPLES`` (default 3000) random examples per format::

    COREPRUNE_FUZZ=long COREPRUNE_FUZZ_EXAMPLES=5000 python -m pytest tests/io/fuzz -q -p no:cacheprovider
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
from formats import FORMATS, Case
from guard import Guard
from hypothesis import HealthCheck, given, settings

LONG = os.environ.get("COREPRUNE_FUZZ") == "long"
EXAMPLES = int(os.environ.get("COREPRUNE_FUZZ_EXAMPLES", "3000")) if LONG else 60
_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not LONG,
    database=None,
    suppress_health_check=list(HealthCheck),
)
STATS: Counter = Counter()


@pytest.fixture(scope="module")
def guard():
    g = Guard()
    start = time.monotonic()
    yield g
    g.close()
    STATS["seconds"] += time.monotonic() - start


def _check(guard: Guard, case: Case) -> None:
    result = guard.check_bytes(case.data, case.suffix, options=case.options)
    STATS["cases"] += 1
    STATS[result.outcome] += 1
    problem = result.family_or_ok(len(case.data))
    assert problem is None, f"{case.bend}: {problem}\nreproduce with: {case.data[:4096].hex()}"
    if case.expected is not None:
        assert result.outcome == "ok", f"{case.bend}: a valid file was refused: {result.message}"
        assert sorted(result.tensors) == sorted(case.expected), case.bend
        import hashlib

        import numpy as np

        for name, array in case.expected.items():
            a = np.array(array, order="C")
            raw = a.reshape(-1).view(np.uint8).tobytes() if a.size else b""
            digest = hashlib.sha256(raw).hexdigest()[:16]
            assert result.tensors[name] == [list(a.shape), str(a.dtype), digest], (case.bend, name)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_bent_files_read_correctly_or_fail_in_the_family(guard, fmt):
    @_SETTINGS
    @given(FORMATS[fmt]())
    def run(case: Case) -> None:
        _check(guard, case)

    run()


def teardown_module() -> None:
    if LONG:
        print(f"\nstructured fuzz: {dict(STATS)}")
