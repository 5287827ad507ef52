"""Seeded byte mutations of valid torch files: every mutant ends in a WeightFileError or a consistent load.

"Consistent" means every tensor reads back with the shape and dtype its spec declares. No other
exception type, and no allocation larger than a few times the file (tracemalloc peak per case),
whatever the mutation did to declared sizes. How long a refusal takes is measured in
tests/benchmarks/bench_hostile_inputs.py, not asserted here.
"""

from __future__ import annotations

import collections
import io
import random
import struct
import tracemalloc
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from _torchpickle import Storage, Tensor, legacy_file, tensor_of, zip_file  # noqa: E402

from coreprune.errors import WeightFileError  # noqa: E402
from coreprune.io import torch_format as tf  # noqa: E402

CASES = 1200
_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1]


def _checkpoint() -> dict:
    data = np.arange(12, dtype=np.float32)
    shared = Storage(data.tobytes(), "FloatStorage", "0")
    c = tensor_of(np.array([1 + 1j, 2 - 1j], np.complex64), "2", "ComplexFloatStorage")
    c.metadata = {"conj": True}
    u = np.array([7, 65535, 3], np.uint16)
    sd = collections.OrderedDict(
        [
            ("w", Tensor(shared, 0, (3, 4), (4, 1))),
            ("wt", Tensor(shared, 1, (3, 3), (1, 4))),
            ("bf", tensor_of(np.ones((2, 2), ml_dtypes.bfloat16), "1", "BFloat16Storage")),
            ("c", c),
            (
                "u16",
                Tensor(
                    Storage(u.tobytes(), "UntypedStorage", "3", itemsize=1), 0, (3,), (1,), dtype="uint16"
                ),
            ),
            ("n", tensor_of(np.array(5, np.int64), "4", "LongStorage")),
        ]
    )
    return {
        "state_dict": sd,
        "epoch": 3,
        "opt": {"lr": [0.1, 0.01]},
        "layers": [Tensor(shared, 4, (2,), (1,))],
    }


def _zero_crcs(data: bytes) -> bytes:
    out = bytearray(data)
    pos = 0
    while (pos := out.find(b"PK\x01\x02", pos)) >= 0:
        out[pos + 16 : pos + 20] = bytes(4)
        pos += 4
    return bytes(out)


def _ours() -> bytes:
    buf = io.BytesIO()
    tf.write(
        {
            "a": np.arange(6, dtype=np.float32).reshape(2, 3),
            "b": np.array([True, False]),
            "c": np.ones((), ml_dtypes.bfloat16),
            "e": np.zeros((0, 2), np.int8),
        },
        buf,
    )
    return buf.getvalue()


BASES = {
    "zip-ours": _ours,
    "zip-crc0": lambda: _zero_crcs(zip_file(_checkpoint())),  # mutations reach the unpickler
    "legacy": lambda: legacy_file(_checkpoint()),
}


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:  # a few random bytes
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == 1:  # truncate
        del out[rng.randrange(len(out)) :]
    elif kind == 2:  # an interesting integer over 1, 2, 4 or 8 bytes
        width = rng.choice([1, 2, 4, 8])
        value = rng.choice(_INTERESTING) & ((1 << (8 * width)) - 1)
        at = rng.randrange(max(len(out) - width, 1))
        out[at : at + width] = value.to_bytes(width, "little")
    elif kind == 3:  # delete a range
        at = rng.randrange(len(out))
        del out[at : at + rng.randint(1, 16)]
    elif kind == 4:  # insert random bytes
        at = rng.randrange(len(out))
        out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    else:  # copy a chunk over another place
        a, b = rng.randrange(len(out)), rng.randrange(len(out))
        n = rng.randint(1, 32)
        out[b : b + n] = out[a : a + n]
    return bytes(out)


def _load_all(path: Path) -> int:
    with tf.open_reader(path) as r:
        for name in r:
            spec = r.spec(name)
            value = r[name]
            assert value.shape == spec.shape and value.dtype == spec.dtype, name
            np.asarray(value).tobytes()  # touch every byte of the view
        return len(r)


@pytest.mark.parametrize("base", sorted(BASES))
def test_mutated_files_fail_cleanly_or_load_consistently(tmp_path, base):
    original = BASES[base]()
    path = tmp_path / "fuzz.pt"
    path.write_bytes(original)
    assert _load_all(path) > 0  # the unmutated file is valid
    rng = random.Random(f"coreprune-fuzz-{base}")
    outcomes = collections.Counter()
    tracemalloc.start()
    try:
        for case in range(CASES):
            mutant = mutate(original, rng)
            with open(path, "r+b") as f:  # rewrite in place: truncating to zero is slow on some disks
                f.write(mutant)
                f.truncate()
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            try:
                _load_all(path)
                outcomes["loaded"] += 1
            except WeightFileError:
                outcomes["refused"] += 1
            except Exception as e:  # anything else is a bug: report the reproducer
                raise AssertionError(f"{base} case {case}: {type(e).__name__}: {e}") from e
            peak = tracemalloc.get_traced_memory()[1] - before
            assert peak < 64 * len(original) + 2**20, (base, case, peak)
    finally:
        tracemalloc.stop()
    assert outcomes["refused"] > CASES // 10 and sum(outcomes.values()) == CASES, outcomes


def _tensors(path: Path) -> dict[str, tuple]:
    with tf.open_reader(path) as r:
        return {name: (r.spec(name), np.ascontiguousarray(r[name]).tobytes()) for name in r}


def test_zip_central_directory_lies(tmp_path):
    """Targeted lies the random mutations rarely hit: sizes and offsets in the central directory.

    A lie must be refused with a WeightFileError naming the file; a file that still read would have to
    give exactly the truthful tensors, specs and bytes."""
    original = _ours()
    cd = original.find(b"PK\x01\x02")
    path = tmp_path / "lie.pt"
    path.write_bytes(original)
    truth = _tensors(path)
    outcomes = collections.Counter()
    for field, fmt in [(20, "<I"), (24, "<I"), (42, "<I"), (28, "<H"), (30, "<H")]:
        for value in (0, 1, 0x7FFFFFFF, 0xFFFFFFFF) if fmt == "<I" else (0, 0xFFFF):
            data = bytearray(original)
            if struct.unpack_from(fmt, data, cd + field)[0] == value:
                continue  # not a lie
            struct.pack_into(fmt, data, cd + field, value)
            path.write_bytes(bytes(data))
            try:
                got = _tensors(path)
            except WeightFileError as e:
                assert str(e).startswith(str(path)), e
                outcomes["refused"] += 1
            else:
                assert got == truth, (field, value)
                outcomes["same"] += 1
    # The first central record is data.pkl's: every lie about its sizes, offset or name is caught.
    assert outcomes["refused"] == sum(outcomes.values()) >= 10, outcomes


def test_zip_reader_accepts_what_zipfile_accepts():
    assert zipfile.ZipFile(io.BytesIO(_ours())).testzip() is None
