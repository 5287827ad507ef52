"""How long hostile input takes to refuse, against reading the valid file it was made from.

A script, not a test (pytest does not collect ``tests/benchmarks``; timing belongs here, not in
assertions)::

    PYTHONPATH=. python tests/benchmarks/bench_hostile_inputs.py                 # 300 mutants per format
    PYTHONPATH=. python tests/benchmarks/bench_hostile_inputs.py --cases 1000 --formats torch npz

For each format it writes one valid file (three float32 tensors, 256 KiB in all) with coreprune's
own writers, then loads seeded byte mutations of it (random bytes, truncation, interesting integers,
deleted and inserted ranges -- the mutations of ``tests/io/test_fuzz_*.py``) with ``coreprune.io.load``.
Each mutant ends in a ``WeightFileError`` or a load; anything else is reported as a bug. The baseline
is loading the valid file itself, timed in the same run: it prints, per format, the median and the
90th percentile of (time of a mutant) / (median time of the valid file), the slowest case in
milliseconds, and how many mutants were refused. Target: no mutant costs more than a few valid
loads (the readers check every length against the file before reading or allocating).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import coreprune.io as cio  # noqa: E402
from coreprune.errors import WeightFileError  # noqa: E402

SUFFIXES = {"npz": ".npz", "safetensors": ".safetensors", "mxnet": ".params", "torch": ".pt", "cpz": ".cpz"}
_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1]


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == 1:
        del out[rng.randrange(len(out)) :]
    elif kind == 2:
        width = rng.choice([1, 2, 4, 8])
        value = rng.choice(_INTERESTING) & ((1 << (8 * width)) - 1)
        at = rng.randrange(max(len(out) - width, 1))
        out[at : at + width] = value.to_bytes(width, "little")
    elif kind == 3:
        at = rng.randrange(len(out))
        del out[at : at + rng.randint(1, 16)]
    else:
        at = rng.randrange(len(out))
        out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(out)


def timed_load(path: Path) -> tuple[float, bool]:
    start = time.perf_counter()
    try:
        cio.load(path)
        refused = False
    except WeightFileError:
        refused = True
    return time.perf_counter() - start, refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300, help="mutants per format")
    parser.add_argument("--formats", nargs="+", default=list(SUFFIXES), choices=list(SUFFIXES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    weights = {
        "conv.weight": rng.standard_normal((64, 32, 3, 3)).astype(np.float32),
        "fc.weight": rng.standard_normal((100, 300)).astype(np.float32),
        "fc.bias": rng.standard_normal(100).astype(np.float32),
    }
    columns = ("bytes", 8), ("valid ms", 9), ("median x", 9), ("p90 x", 7), ("max ms", 8), ("refused", 9)
    print(f"{'format':<12} " + " ".join(f"{name:>{width}}" for name, width in columns))
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats:
            valid = Path(tmp) / f"valid{SUFFIXES[fmt]}"
            cio.save(weights, valid)
            data = valid.read_bytes()
            base = statistics.median(timed_load(valid)[0] for _ in range(21))
            pick = random.Random(f"{args.seed}-{fmt}")
            ratios, refused, slowest = [], 0, 0.0
            mutant = Path(tmp) / f"mutant{SUFFIXES[fmt]}"
            for case in range(args.cases):
                mutant.write_bytes(mutate(data, pick))
                try:
                    seconds, was_refused = timed_load(mutant)
                except Exception as e:  # noqa: BLE001 - any other exception is a bug to report
                    print(f"BUG {fmt} case {case}: {type(e).__name__}: {e}")
                    continue
                ratios.append(seconds / base)
                refused += was_refused
                slowest = max(slowest, seconds)
            q = statistics.quantiles(ratios, n=10)
            print(f"{fmt:<12} {len(data):>8} {base * 1e3:>9.3f} {statistics.median(ratios):>9.2f} "
                  f"{q[-1]:>7.2f} {slowest * 1e3:>8.2f} {refused:>5}/{len(ratios)}")


if __name__ == "__main__":
    main()
