"""What the ``nm`` layout costs and saves when ``.cpz`` files are written.

A script, not a test (pytest does not collect ``tests/benchmarks``)::

    PYTHONPATH=. python tests/benchmarks/bench_nm_layout.py
    PYTHONPATH=. python tests/benchmarks/bench_nm_layout.py --rows 4096 --cols 4096 --repeats 7

For a float32 ``rows x cols`` weight, unstructured 90% sparse (where the planner looks for N:M runs
and does not find them) and 2:4 sparse (where it does), and the 2:4 weight quantized to 4 bits, it
times ``coreprune.io.cpz.write`` to memory with the planner as it is and, in the same run, with the
N:M search switched off (the baseline: the planner before the layout existed), and prints the median
and spread of the time ratio and the bytes each writes.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

import numpy as np

import coreprune
from coreprune import layout_planner
from coreprune.io.cpz import write
from coreprune.structured import nm_masks


def _times(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def _size(value: object) -> int:
    buf = io.BytesIO()
    write({"w": value}, buf)
    return len(buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((args.rows, args.cols)).astype(np.float32)
    cases = {
        "unstructured 90%": np.where(rng.random(dense.shape) < 0.1, dense, np.float32(0)),
        "2:4 float32": np.where(nm_masks({"w": dense}, 2, 4)["w"], dense, np.float32(0)),
    }
    cases["2:4 int4"] = coreprune.quantize({"w": cases["2:4 float32"]}, bits=4, axis=0)["w"]
    real = layout_planner._with_nm
    print(f"{args.rows} x {args.cols}, {args.repeats} repeats, times with the N:M search / without")
    print(f"{'case':18} {'median ratio':>12} {'spread':>14} {'bytes with':>12} {'bytes without':>14}")
    for name, value in cases.items():
        with_nm, size_with = [], _size(value)
        without = []
        layout_planner._with_nm = lambda plan, *_: plan  # the baseline planner
        size_without = _size(value)
        layout_planner._with_nm = real
        for _ in range(args.repeats):  # interleaved: both see the same machine load
            with_nm += _times(lambda v=value: write({"w": v}, io.BytesIO()), 1)
            layout_planner._with_nm = lambda plan, *_: plan
            without += _times(lambda v=value: write({"w": v}, io.BytesIO()), 1)
            layout_planner._with_nm = real
        ratios = [a / b for a, b in zip(with_nm, without)]
        print(f"{name:18} {statistics.median(ratios):12.2f} {min(ratios):6.2f}-{max(ratios):<7.2f} "
              f"{size_with:12,} {size_without:14,}")


if __name__ == "__main__":
    main()
