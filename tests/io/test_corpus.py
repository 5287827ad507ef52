"""Replay the crafted-file corpus (tests/io/corpus, built by make_corpus.py): one entry per case.

Each file goes through the reader (or the command line, the name mapping, a write) in a guarded
child process and must end as ``expected.json`` says: read correctly, or refused with ONE error of
the project's family whose message contains the expected text -- never another exception, a
signal, a hang or a memory blow-up.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

CORPUS = Path(__file__).parent / "corpus"
sys.path.insert(0, str(Path(__file__).parent / "fuzz"))
from guard import Guard  # noqa: E402

EXPECTED = json.loads((CORPUS / "expected.json").read_text())


@pytest.fixture(scope="module")
def guard():
    # Generous: the plot case imports matplotlib, which builds its font cache on a fresh install.
    g = Guard(timeout=120)
    yield g
    g.close()


def test_every_class_has_files():
    classes = {key.split("/")[0] for key in EXPECTED}
    assert len(classes) == 11, sorted(classes)
    assert all((CORPUS / key).is_file() for key in EXPECTED)


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_corpus_file_ends_as_expected(guard, key):
    spec = EXPECTED[key]
    path = CORPUS / key
    extra = {k: v for k, v in spec.items() if k not in ("outcome", "match")}
    result = guard.check_bytes(path.read_bytes(), "".join(path.suffixes[-1:]), **extra)
    problem = result.family_or_ok(path.stat().st_size)
    assert problem is None, f"{key}: {problem}"
    assert result.outcome == spec["outcome"], (key, result.outcome, result.message)
    assert spec["match"] in result.message, (key, result.message)
