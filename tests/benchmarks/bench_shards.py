"""A sharded checkpoint of several GiB through ``coreprune compress`` and ``decompress``: peak memory
against the shard size, and ``--jobs 2`` against ``--jobs 1``.

A script, not a test (pytest does not collect ``tests/benchmarks``)::

    PYTHONPATH=. python tests/benchmarks/bench_shards.py                  # 4 GiB in 8 shards, 3 repeats
    PYTHONPATH=. python tests/benchmarks/bench_shards.py --gib 1 --shards 4 --repeats 2 --dir /tmp

It writes a safetensors checkpoint (``--shards`` shards of float32 4096x4096 tensors, 64 MiB each,
random normal values, an index as transformers writes it), then runs, ``--repeats`` times each and
alternating ``--jobs 1`` and ``--jobs 2``:

* ``coreprune compress IN/model.safetensors.index.json -o C/m.cpz.index.json --sparsity 0.5 --bits 8``
* ``coreprune decompress C/m.cpz.index.json -o D/m.safetensors.index.json``

(the same output paths for both, since a ``.cpz`` manifest records the command line), each in a
child process that reports its own peak resident memory (``VmHWM`` of ``/proc/self/status``: its own
memory since it started; ``ru_maxrss`` would include the RSS of the benchmark process it was forked
from) and that of its worker processes (``ru_maxrss`` of its children: forked from it, they count the
pages they share with it). It prints the shard size, the peaks, the wall times, the ratio
time(--jobs 1) / time(--jobs 2) per repeat (median and spread: min..max) -- both measured in this
run -- and checks that both give byte-identical files and that the round trip equals the library
(``prune_magnitude`` then ``quantize`` / ``dequantize``) on one tensor.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import coreprune  # noqa: E402
import coreprune.io as cio  # noqa: E402

_LAUNCH = """
import resource, sys, time
from coreprune.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
wall = time.perf_counter() - t
# VmHWM: this process's own peak (ru_maxrss would carry the RSS of the process that forked it)
me = [int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")][0]
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"BENCH {code} {wall:.4f} {me} {kids}", file=sys.stderr)
"""


def make_checkpoint(folder: Path, shards: int, per_shard: int, side: int) -> int:
    """Write the checkpoint; returns the bytes of one shard."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((side, side), dtype=np.float32)
    weight_map, total = {}, 0
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {}
        for t in range(per_shard):
            i = s * per_shard + t
            # distinct tensors without generating every value: a cheap per-tensor transform of one draw
            tensors[f"layers.{i}.weight"] = np.roll(base, i * 7919) * np.float32(1 + i / 64)
        cio.save(tensors, folder / name)
        del tensors
        weight_map.update({f"layers.{s * per_shard + t}.weight": name for t in range(per_shard)})
        total += per_shard * side * side * 4
    doc = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(doc, indent=2))
    return (folder / weight_map["layers.0.weight"]).stat().st_size


def run(argv: list[str]) -> tuple[float, int, int]:
    """Run the CLI in a child process: (wall seconds, own peak RSS bytes, workers' peak RSS bytes)."""
    proc = subprocess.run([sys.executable, "-c", _LAUNCH, *argv], capture_output=True, text=True)
    line = [x for x in proc.stderr.splitlines() if x.startswith("BENCH ")]
    if proc.returncode != 0 or not line or line[-1].split()[1] != "0":
        raise SystemExit(f"failed: coreprune {' '.join(argv)}\n{proc.stderr}")
    _, _, wall, me, kids = line[-1].split()
    return float(wall), int(me) * 1024, int(kids) * 1024


def digest(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=4.0, help="checkpoint size (default 4)")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--side", type=int, default=4096, help="tensors are side x side float32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    a = ap.parse_args()
    tensor = a.side * a.side * 4
    per_shard = max(1, round(a.gib * 2**30 / a.shards / tensor))
    root = Path(tempfile.mkdtemp(prefix="bench_shards_", dir=a.dir))
    try:
        src = root / "in"
        src.mkdir()
        t = time.perf_counter()
        shard_bytes = make_checkpoint(src, a.shards, per_shard, a.side)
        total = shard_bytes * a.shards
        print(f"checkpoint: {a.shards} shards x {per_shard} tensors of {a.side}x{a.side} float32 = "
              f"{total / 2**30:.2f} GiB, one shard {shard_bytes / 2**20:.0f} MiB, one tensor "
              f"{tensor / 2**20:.0f} MiB (written in {time.perf_counter() - t:.0f} s)")
        print(f"machine: {coreprune.num_threads()} threads for the fast paths; numpy {np.__version__}")
        index = src / "model.safetensors.index.json"
        times: dict[tuple[str, int], list[float]] = {}
        peaks: dict[tuple[str, int], list[tuple[int, int]]] = {}
        digests: dict[tuple[str, int], dict[str, str]] = {}
        for r in range(a.repeats):
            for jobs in ((1, 2) if r % 2 == 0 else (2, 1)):
                # the same output paths for both: a .cpz manifest records its command line
                c, d = root / "c", root / "d"
                for folder in (c, d):
                    shutil.rmtree(folder, ignore_errors=True)
                    folder.mkdir()
                steps = [
                    ("compress", ["compress", str(index), "-o", str(c / "m.cpz.index.json"),
                                  "--sparsity", "0.5", "--bits", "8", "--jobs", str(jobs), "-q"], c),
                    ("decompress", ["decompress", str(c / "m.cpz.index.json"), "-o",
                                    str(d / "m.safetensors.index.json"), "--jobs", str(jobs), "-q"], d),
                ]
                for what, argv, out in steps:
                    wall, me, kids = run(argv)
                    times.setdefault((what, jobs), []).append(wall)
                    peaks.setdefault((what, jobs), []).append((me, kids))
                    print(f"  repeat {r + 1} {what:10s} --jobs {jobs}: {wall:6.1f} s, peak RSS "
                          f"{me / 2**20:6.0f} MiB (workers {kids / 2**20:.0f} MiB)", flush=True)
                    if r == 0:
                        digests[(what, jobs)] = digest(out)
        for what in ("compress", "decompress"):
            same = digests[(what, 1)] == digests[(what, 2)]
            ratios = [t1 / t2 for t1, t2 in zip(times[(what, 1)], times[(what, 2)])]
            peak1 = max(max(p) for p in peaks[(what, 1)])
            peak2 = max(p[1] for p in peaks[(what, 2)])
            print(f"{what}: --jobs 1 median {statistics.median(times[(what, 1)]):.1f} s, --jobs 2 median "
                  f"{statistics.median(times[(what, 2)]):.1f} s; speed-up --jobs 2 / --jobs 1 = "
                  f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f}, "
                  f"{len(ratios)} repeats); peak RSS --jobs 1 {peak1 / 2**20:.0f} MiB = "
                  f"{peak1 / shard_bytes:.2f} shard, --jobs 2 per worker {peak2 / 2**20:.0f} MiB = "
                  f"{peak2 / shard_bytes:.2f} shard; outputs identical: {same}")
        # the round trip against the library on one tensor
        with cio.open_weights(index) as r:
            w = np.array(r["layers.1.weight"])
        pruned, _ = coreprune.prune_magnitude({"t": w}, 0.5)
        ref = coreprune.quantize(pruned, 8)["t"].dequantize()
        with cio.open_weights(root / "d" / "m.safetensors.index.json") as r:
            got = np.array(r["layers.1.weight"])
        print(f"round trip equals prune_magnitude + quantize(8) + dequantize: {np.array_equal(got, ref)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
