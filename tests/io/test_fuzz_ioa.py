"""Seeded byte-mutation fuzzing of the npz/npy, MXNet .params and safetensors readers.

Every mutated file must end in :class:`WeightFileError` or in a load whose every value has
the shape and dtype its header declared: no other exception, no hang, no huge allocation.
Where the safetensors reference implementation is installed, a file we accept must be one
it accepts too, with the same bytes.
"""

from __future__ import annotations

import io

import ml_dtypes
import numpy as np
import pytest
from mxnet_records import csr_record, dense_record, params_file, row_sparse_record

import coreprune.io as cio
from coreprune.errors import WeightFileError
from coreprune.io import mxnet_params, npz_format, safetensors_format

CASES = 1000  # per format
INTERESTING = [0, 1, 7, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**62, 2**63 - 1, 2**64 - 1]


def _weights() -> dict[str, np.ndarray]:
    return {
        "conv.weight": np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 2, 2),
        "conv.bias": np.arange(2, dtype=np.float16),
        "bn.num_batches_tracked": np.array(7, np.int64),
        "empty": np.zeros((0, 3), np.int8),
        "mask": np.array([True, False, True]),
        "bf": np.array([1.5, -2.0], ml_dtypes.bfloat16),
    }


def _npz_bases() -> list[tuple[str, bytes]]:
    out = []
    for compressed in (False, True):
        buf = io.BytesIO()
        npz_format.write(_weights(), buf, compressed=compressed)
        out.append((".npz", buf.getvalue()))
    buf = io.BytesIO()
    np.save(buf, np.arange(12, dtype=">i4").reshape(3, 4))
    out.append((".npy", buf.getvalue()))
    return out


def _mxnet_bases() -> list[tuple[str, bytes]]:
    dense = np.zeros((4, 3), np.float32)
    dense[1, 2], dense[3, 0] = 2.5, -1
    w = {k: v for k, v in _weights().items() if v.ndim and v.size}
    buf = io.BytesIO()
    mxnet_params.write(w, buf)
    records = [
        csr_record(dense, storage_shape=(0,)),
        row_sparse_record(dense),
        dense_record(np.arange(6, dtype=np.int32).reshape(2, 3), version=0),
        dense_record(np.ones(3, np.float64), version=1),
        dense_record(np.array(2.0, np.float32), version=3),
    ]
    return [(".params", buf.getvalue()), (".params", params_file(records, ["c", "r", "v0", "v1", "v3"]))]


def _safetensors_bases() -> list[tuple[str, bytes]]:
    buf = io.BytesIO()
    safetensors_format.write(_weights(), buf, metadata={"format": "np", "step": "3"})
    return [(".safetensors", buf.getvalue())]


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to three random edits: bit flips, byte overwrites, big integers, cuts, inserts, deletes, copies."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        n = len(b)
        pos = int(rng.integers(0, max(n, 1)))
        kind = int(rng.integers(0, 8))
        if kind == 0 and n:
            b[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1 and n:
            b[pos] = int(rng.integers(0, 256))
        elif kind == 2:
            k = int(rng.integers(1, 9))
            b[pos : pos + k] = bytes([0xFF if rng.random() < 0.5 else 0x00]) * k
        elif kind == 3:
            del b[pos:]
        elif kind == 4:
            b[pos:pos] = rng.bytes(int(rng.integers(1, 17)))
        elif kind == 5:
            del b[pos : pos + int(rng.integers(1, 17))]
        elif kind == 6:
            value = INTERESTING[int(rng.integers(0, len(INTERESTING)))]
            width = 4 if rng.random() < 0.5 else 8
            b[pos : pos + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
        else:
            start = int(rng.integers(0, max(n, 1)))
            b[pos:pos] = b[start : start + int(rng.integers(1, 33))]
    return bytes(b)


def _check_load(path, fmt: str, options: dict) -> dict[str, np.ndarray] | None:
    """Load every tensor; None when the library refused the file with WeightFileError."""
    try:
        with cio.open_weights(path, format=fmt, **options) as r:
            out = {}
            for name in r:
                value = r[name]
                spec = r.spec(name)
                assert tuple(value.shape) == spec.shape, (name, value.shape, spec.shape)
                assert value.dtype == spec.dtype, (name, value.dtype, spec.dtype)
                # (a scipy matrix may be huge and empty: keep its stored values, do not densify it)
                out[name] = value.data.copy() if hasattr(value, "tocsr") else np.array(value)
            return out
    except WeightFileError:
        return None


@pytest.mark.parametrize(
    "fmt, bases, options",
    [
        ("npz", _npz_bases, {}),
        ("mxnet", _mxnet_bases, {"max_expansion": 1 << 24}),
        ("mxnet", _mxnet_bases, {"sparse": "scipy", "max_expansion": 1 << 24}),
        ("safetensors", _safetensors_bases, {}),
    ],
)
def test_mutated_files_end_in_weightfileerror_or_a_consistent_load(scratch, fmt, bases, options):
    rng = np.random.default_rng(sum(map(ord, fmt)) + len(options))
    files = bases()
    for suffix, data in files:  # the unmutated bases load
        (scratch / f"base{suffix}").write_bytes(data)
        assert _check_load(scratch / f"base{suffix}", fmt, options)
    reference = None
    if fmt == "safetensors":
        try:
            import safetensors as reference
        except ImportError:
            reference = None
    outcomes = {"refused": 0, "loaded": 0}
    for case in range(CASES):
        suffix, data = files[case % len(files)]
        mutated = mutate(data, rng)
        path = scratch / f"case{case}{suffix}"
        path.write_bytes(mutated)
        try:
            # Half the cases go through extension/magic dispatch as a user's load would.
            out = _check_load(path, fmt if case % 2 else None, options)
        except Exception as e:  # anything but WeightFileError is a bug: report the reproducer
            raise AssertionError(f"case {case}: {type(e).__name__}: {e}; bytes {mutated.hex()}") from e
        outcomes["refused" if out is None else "loaded"] += 1
        if out is not None and reference is not None:
            theirs = dict(reference.deserialize(mutated))
            assert set(theirs) == set(out), f"case {case}"
            for name, value in out.items():
                assert bytes(theirs[name]["data"]) == value.tobytes(), f"case {case}: {name}"
        path.unlink()
    # Both outcomes must occur, or the mutations are not exercising the reader.
    assert outcomes["refused"] > CASES // 10 and outcomes["loaded"] > 0, outcomes
