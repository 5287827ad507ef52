"""The pickle VM's budgets (issue 11, class 1): tiny hostile pickles end in one clear error, fast.

Without the budgets these pickles hang (hashing a memo-shared tuple DAG is exponential), crash the
interpreter (hashing tuples nested 200,000 deep overflows the C stack), run quadratically (int
keys whose hashes collide) or copy one memoised value thousands of times. Each case runs in a
child process with a timeout, so a regression fails the test instead of killing the run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))
from builders import hostile_snippets  # noqa: E402

from coreprune.io import pickle_vm  # noqa: E402
from coreprune.io.torch_pickle import loads_torch_pickle  # noqa: E402

EXPECTED = {
    "deep tuples": "deeper than",
    "deep frozenset": "deeper than",
    "hash DAG as key": "shared ones counted each time",
    "DAG in set": "shared ones counted each time",
    "equal DAGs compared": "shared ones counted each time",
    "huge int": "integer of 100000 bytes",
    "5000-digit int": "integer of 2100 bytes",
    "colliding int keys": "same hash",
    "amplified bytearray": "amplification",
    "amplified set": "amplification",
}


_CHILD = textwrap.dedent(
    """
    import pickle, sys
    from coreprune.errors import WeightFileError
    from coreprune.io.torch_pickle import loads_torch_pickle
    for name, payload in pickle.loads(sys.stdin.buffer.read()):
        print("start", name, flush=True)
        try:
            loads_torch_pickle(payload, source="hostile.pkl")
        except WeightFileError as e:
            print("refused", name, "|", e, flush=True)
        else:
            print("loaded", name, flush=True)
    """
)


def test_hostile_pickles_are_refused_quickly_with_the_budget_named():
    import pickle

    cases = [(name, b"\x80\x02" + hostile_snippets()[name] + b".") for name in sorted(EXPECTED)]
    proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(pickle.dumps(cases), timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        last = out.decode().strip().splitlines()[-1]
        pytest.fail(f"no answer in 60 s; the last line was {last!r}")
    lines = out.decode().splitlines()
    assert proc.returncode == 0, (proc.returncode, lines[-1:], err[-300:])
    results = {}
    for line in lines:
        kind, rest = line.split(" ", 1)
        if kind != "start":
            name = rest.split(" | ")[0] if " | " in rest else rest
            results[name] = (kind, rest)
    for name, expected in EXPECTED.items():
        kind, text = results[name]
        assert kind == "refused", (name, text)
        assert "hostile.pkl: " in text and expected in text, (name, text)


def test_legitimate_structures_stay_within_the_budgets():
    # A state dict's worth of names, optimizer state under int keys, nested tuples a few levels deep.
    import pickle

    value = {
        "names": {f"layer{i}.weight": i for i in range(5000)},
        "state": {i: {"step": i, "exp_avg": (i, (i, (i,)))} for i in range(2000)},
        "sets": frozenset(range(100)),
        "deep": ((((((((1,),),),),),),),),
        "big": 2**4000,
    }
    data = pickle.dumps(value, protocol=2)
    assert loads_torch_pickle(data) == value


def test_the_same_key_many_times_is_not_a_collision():
    items = b"".join(b"X\x01\x00\x00\x00aK\x01" for _ in range(1000))  # 'a': 1, a thousand times
    assert loads_torch_pickle(b"\x80\x02}(" + items + b"u.") == {"a": 1}


def test_short_repr_is_bounded_on_shared_structures():
    t: tuple = ()
    for _ in range(200):
        t = (t, t)
    assert len(pickle_vm.short_repr(t, 50)) <= 50
