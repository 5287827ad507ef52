"""Peak memory and throughput of ``coreprune compress`` on big checkpoints (safetensors, .params, .pt).

A script, not a test (pytest does not collect ``tests/benchmarks``)::

    PYTHONPATH=. python tests/benchmarks/bench_stream.py                   # 4 GiB per format
    PYTHONPATH=. python tests/benchmarks/bench_stream.py --size 512MiB --formats safetensors
    PYTHONPATH=. python tests/benchmarks/bench_stream.py --out stream.json --compress-args "--bits 8 --axis 0"

For each format it writes a checkpoint of ``--size`` bytes of float32 1024 x 4096 tensors (N(0, 1),
one tensor in memory at a time, with coreprune's own framework-free writers) into a temporary
folder (``--workdir``, default the system temp folder), then runs::

    /usr/bin/time -v python -m coreprune compress CHECKPOINT -o OUT.cpz <compress args>

in a fresh process and reads "Maximum resident set size" and the wall-clock time from its report.
Where ``/usr/bin/time`` is missing, a small Python wrapper runs the command and reads the child's
peak RSS from ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the output says which was used).
The same is done for ``python -c "import coreprune"`` (the interpreter and NumPy alone), so the
memory the compression itself needs is the difference. Throughput is input bytes per second of
wall time; the checkpoint was just written, so it is read from the page cache (a cold read from
disk would add the disk's time). Two tensors of the output are checked against compressing them in
memory (``prune_magnitude`` then ``quantize``: identical codes). The files are deleted at the end
unless ``--keep``. Target: peak RSS <= 1 GiB (for a 4 GiB checkpoint) in each format.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from coreprune import global_magnitude_threshold, load_compressed, prune_magnitude, quantize  # noqa: E402
from coreprune.io import save  # noqa: E402

ROWS, COLS = 1024, 4096
FORMATS = {"safetensors": ".safetensors", "params": ".params", "pt": ".pt"}
DEFAULT_ARGS = "--sparsity 0.5 --bits 4 --group-size 128"
TARGET_RSS = 1 << 30

# Fallback for machines without /usr/bin/time: run the command, report the child's peak RSS.
_WRAPPER = """
import resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.call(sys.argv[1:])
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"WRAPPER maxrss_kib={peak} wall_s={wall}", file=sys.stderr)
sys.exit(rc)
"""


class LazyCheckpoint(Mapping):
    """``n`` float32 tensors generated on access from their index (same values every time)."""

    def __init__(self, n: int, rows: int, seed: int = 0) -> None:
        self.n, self.rows, self.seed = n, rows, seed

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[str]:
        return (self.name(i) for i in range(self.n))

    @staticmethod
    def name(i: int) -> str:
        return f"layers.{i}.weight"

    def __getitem__(self, name: str) -> np.ndarray:
        i = int(name.split(".")[1])
        if not 0 <= i < self.n or name != self.name(i):
            raise KeyError(name)
        return np.random.default_rng([self.seed, i]).standard_normal((self.rows, COLS), dtype=np.float32)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMG]i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"cannot read the size {text!r}; use e.g. 4GiB or 512MiB")
    unit = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get((m.group(2) or " ")[0].lower(), 1)
    return int(float(m.group(1)) * unit)


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd``; return its peak RSS (bytes), wall time (s), exit code and the tool used."""
    if Path("/usr/bin/time").exists():
        proc = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
        report = proc.stderr
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report)
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)",
                         report)
        seconds = None
        if wall:
            h, m, s = wall.groups()
            seconds = int(h or 0) * 3600 + int(m) * 60 + float(s)
        tool = "/usr/bin/time -v"
    else:
        wrapper = [sys.executable, "-c", _WRAPPER, *cmd]
        proc = subprocess.run(wrapper, env=env, capture_output=True, text=True)
        report = proc.stderr
        found = re.search(r"WRAPPER maxrss_kib=(\d+) wall_s=([\d.]+)", report)
        rss = found
        seconds = float(found.group(2)) if found else None
        tool = "resource.getrusage(RUSAGE_CHILDREN) (no /usr/bin/time)"
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{report[-3000:]}")
    return {
        "peak_rss_bytes": int(rss.group(1)) * 1024 if rss else None,
        "wall_s": seconds,
        "tool": tool,
        "stdout": proc.stdout.strip()[-500:],
    }


def check_output(cpz: Path, checkpoint: LazyCheckpoint, compress_args: list[str]) -> bool:
    """Two tensors of the .cpz equal compressing them in memory with the same settings."""
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument("--sparsity", type=float)
    opts.add_argument("--threshold", type=float)
    opts.add_argument("--bits", type=int)
    opts.add_argument("--axis", type=int)
    opts.add_argument("--group-size", type=int)
    opts.add_argument("--affine", action="store_true")
    opts.add_argument("--global", dest="global_", action="store_true")
    a, _ = opts.parse_known_args(compress_args)
    stored = load_compressed(cpz)
    # --global ranks all tensors together: one streamed threshold over the whole checkpoint.
    ranked = global_magnitude_threshold(checkpoint, a.sparsity) if a.global_ and a.sparsity else None
    for name in (checkpoint.name(0), checkpoint.name(len(checkpoint) - 1)):
        w = {name: checkpoint[name]}
        if ranked is not None:
            w = {name: ranked.prune(name, w[name])[0]}
        elif a.sparsity is not None:
            w = prune_magnitude(w, a.sparsity)[0]
        if a.bits is None:
            if not np.array_equal(np.asarray(stored[name]), w[name]):
                return False
            continue
        q = quantize(w, a.bits, symmetric=not a.affine, axis=a.axis, group_size=a.group_size)[name]
        got = stored[name]
        if not (np.array_equal(got.codes, q.codes) and np.array_equal(got.scale, q.scale)):
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("4GiB"), help="checkpoint size (4GiB)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated: safetensors,params,pt")
    parser.add_argument("--compress-args", default=DEFAULT_ARGS, help=f"compress options ({DEFAULT_ARGS!r})")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary files go")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints and outputs")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        parser.error(f"unknown format(s) {unknown}; choose from {list(FORMATS)}")
    per_tensor = ROWS * COLS * 4
    n = max(1, args.size // per_tensor)
    rows = ROWS if args.size >= per_tensor else max(1, args.size // (COLS * 4))
    checkpoint = LazyCheckpoint(n, rows)
    compress_args = shlex.split(args.compress_args)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    workdir = Path(tempfile.mkdtemp(prefix="coreprune-stream-", dir=args.workdir))
    results: list[dict[str, Any]] = []
    try:
        baseline = measure([sys.executable, "-c", "import coreprune, numpy"], env)
        base_mib = baseline["peak_rss_bytes"] / 2**20
        print(f"python + numpy + coreprune: peak RSS {base_mib:.0f} MiB ({baseline['tool']})", flush=True)
        for fmt in formats:
            path = workdir / f"checkpoint{FORMATS[fmt]}"
            t0 = time.perf_counter()
            save(checkpoint, path)
            written = time.perf_counter() - t0
            size = path.stat().st_size
            print(f"{fmt}: wrote {size / 2**30:.2f} GiB in {written:.1f} s; compressing ...", flush=True)
            out = workdir / f"out-{fmt}.cpz"
            cmd = [sys.executable, "-m", "coreprune", "compress", str(path), "-o", str(out), "-q"]
            cmd += compress_args
            m = measure(cmd, env)
            row = {
                "format": fmt,
                "input_bytes": size,
                "output_bytes": out.stat().st_size,
                "tensors": n,
                "peak_rss_bytes": m["peak_rss_bytes"],
                "peak_rss_over_baseline_bytes": m["peak_rss_bytes"] - baseline["peak_rss_bytes"],
                "wall_s": m["wall_s"],
                "throughput_gb_per_s": size / m["wall_s"] / 1e9 if m["wall_s"] else None,
                "rss_met": m["peak_rss_bytes"] <= TARGET_RSS,
                "output_checked": check_output(out, checkpoint, compress_args),
                "tool": m["tool"],
            }
            results.append(row)
            print(f"  peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB, {row['wall_s']:.1f} s, "
                  f"{row['throughput_gb_per_s']:.2f} GB/s, output {row['output_bytes'] / 2**20:.0f} MiB, "
                  f"checked: {row['output_checked']}", flush=True)
            if not args.keep:
                path.unlink()
                out.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(f"compress {' '.join(compress_args)}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'format':12s} {'input GiB':>9s} {'peak RSS MiB':>12s} {'wall s':>7s} {'GB/s':>6s} {'<=1GiB':>7}")
    for r in results:
        print(f"{r['format']:12s} {r['input_bytes'] / 2**30:9.2f} {r['peak_rss_bytes'] / 2**20:12.0f} "
              f"{r['wall_s']:7.1f} {r['throughput_gb_per_s']:6.2f} {str(r['rss_met']):>7s}")
    if args.out:
        args.out.write_text(json.dumps({
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "python": platform.python_version(), "numpy": np.__version__},
            "load_average": os.getloadavg(),
            "compress_args": compress_args,
            "baseline": baseline,
            "results": results,
        }, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
