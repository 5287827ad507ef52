"""Benchmark of coreprune's element-wise compression against memcpy, plain NumPy and PyTorch.

A script, not a test (pytest does not collect ``tests/benchmarks``)::

    PYTHONPATH=. python tests/benchmarks/bench_compression.py                 # 1 GiB, ~3 minutes
    PYTHONPATH=. python tests/benchmarks/bench_compression.py --size 128MiB   # a quick run
    PYTHONPATH=. python tests/benchmarks/bench_compression.py --out bench.json --with-slow-torch

The weights are ``size / 16 MiB`` float32 tensors of 1024 x 4096 drawn from N(0, 1) (1 GiB = 64
tensors). In one run it measures the memcpy baseline (``np.copyto`` into preallocated arrays), then
for each operation coreprune, the plain NumPy expression and torch (when installed):

* threshold pruning at t = 1.6449 (90 % of N(0, 1) removed);
* magnitude pruning at 90 %, per layer and global; the exact global threshold alone (coreprune's
  selection against concatenate + ``np.partition``, and ``torch.nn.utils.prune.global_unstructured``
  on at most 64 MiB unless ``--with-slow-torch``: it takes about a minute per GiB);
* per-channel (axis 0) symmetric int8 quantization with its codes;
* 4-bit group-128 symmetric quantization with the codes packed two per byte;
* dequantization of the int8 per-channel result.

Two *floor* rows split threshold pruning's time: its kernel writing into preallocated, already
touched outputs (the computation alone), and new outputs of its size (a float32 copy and a bool
array, 1.25x the weights) allocated and written on every core with no computation (the cost of
fresh memory, which every function returning new arrays pays). Then ``--pairs`` rounds run, for
each target operation, memcpy, coreprune and the fastest other implementation back to back, and
give the ratio and the speed-up per round (median and range): on a shared machine a busy moment
then hits both sides of a ratio alike. ``--clock cpu`` times those rounds in CPU time (with
``--threads 1``: the work per thread), and ``--baseline DIR`` adds another checkout's coreprune
(an older commit) to the threshold-pruning and 4-bit rounds, for a before/after in one process.

Each timing is the best of ``--repeats`` consecutive runs (the machine is shared: the median and
the load average are recorded too). GB/s is bytes of float32 weights (read, or written for
dequantization) per second; "ratio" is the memcpy time over the operation's time, so 1.0 means as
fast as copying the weights once. Peak memory is measured in a separate run: tracemalloc for NumPy
allocations (coreprune, NumPy) and the peak RSS (``/proc/self/status`` VmHWM, reset through
``/proc/self/clear_refs``) for everything, both net of the result's own size. ``--out`` writes
everything as JSON. The figures are documented in docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import inspect
import json
import os
import platform
import re
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import coreprune as cp  # noqa: E402
from coreprune._fast import blocked as _blocked  # noqa: E402
from coreprune._fast import kernels as _kernels  # noqa: E402
from coreprune._fast import kth as _select  # noqa: E402
from coreprune._fast.kth import kth_smallest_abs_reference as _kth_smallest_abs_reference  # noqa: E402
from coreprune.packing import pack_bits  # noqa: E402

try:
    import torch
except ImportError:  # torch is optional: its rows are skipped
    torch = None

ROWS, COLS = 1024, 4096
THRESHOLD = 1.6449  # P(|z| <= t) = 0.9 for z ~ N(0, 1)
SPARSITY = 0.9
GROUP = 128
TARGETS = {  # operation: minimum ratio to memcpy (the targets)
    "threshold pruning": 0.6,
    "int8 per-channel quantization": 0.5,
    "4-bit group-128 quantization + packing": 0.3,
}
SLOW_TORCH_BYTES = 64 << 20
CP = "coreprune"
FLOOR = "floor: "  # rows that split an operation's time; not competitors
BASELINE = "baseline coreprune"  # --baseline: another build of this library; not a competitor either


def parse_size(text: str) -> int:
    """``"1GiB"``, ``"256MiB"``, ``"512KiB"`` or a number of bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMG]i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"cannot read the size {text!r}; use e.g. 1GiB or 256MiB")
    unit = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get((m.group(2) or " ")[0].lower(), 1)
    return int(float(m.group(1)) * unit)


def make_weights(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    per_tensor = ROWS * COLS * 4
    if size >= per_tensor:
        shapes = [(ROWS, COLS)] * (size // per_tensor)
    else:
        shapes = [(max(1, size // (COLS * 4)), COLS)]
    return {f"layer{i}.weight": rng.standard_normal(s, dtype=np.float32) for i, s in enumerate(shapes)}


def nbytes_of(obj: Any) -> int:
    """Bytes of the arrays held by a result (dicts, tuples, QuantizedArray, torch tensors)."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, cp.QuantizedArray):
        return obj.codes.nbytes + obj.scale.nbytes
    if isinstance(obj, dict):
        return sum(nbytes_of(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes_of(v) for v in obj)
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    return 0


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def peak_memory(fn: Callable[[], Any]) -> dict[str, int | None]:
    """Extra memory of one call, net of the result: NumPy (tracemalloc) and RSS (VmHWM) peaks."""
    gc.collect()
    rss = None
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        before = _status()["VmRSS"]
        rss = True
    except OSError:
        before = 0
    tracemalloc.start()
    result = fn()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    size = nbytes_of(result)
    out: dict[str, int | None] = {"result_bytes": size, "numpy_peak_extra": max(0, peak - size)}
    out["rss_peak_extra"] = max(0, _status()["VmHWM"] - before - size) if rss else None
    del result
    return out


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    walls, cpus = [], []
    for _ in range(repeats):
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        del result
    best = min(range(repeats), key=walls.__getitem__)
    return {"best_s": walls[best], "median_s": statistics.median(walls), "cpu_s_of_best": cpus[best]}


# ------------------------------------------------------------------ plain NumPy and torch references


def numpy_threshold(w: dict, t: float) -> dict:
    return {k: v * (np.abs(v) > t) for k, v in w.items()}


def numpy_layer_magnitude(w: dict, s: float) -> dict:
    out = {}
    for k, v in w.items():
        a = np.abs(v)
        n = round(s * a.size)
        cut = np.partition(a.reshape(-1), n - 1)[n - 1]
        out[k] = v * (a > cut)
    return out


def numpy_global_threshold(w: dict, s: float) -> np.floating:
    a = np.concatenate([np.abs(v).reshape(-1) for v in w.values()])
    n = round(s * a.size)
    return np.partition(a, n - 1)[n - 1]


def numpy_int8(w: dict) -> dict:
    out = {}
    for k, v in w.items():
        scale = np.abs(v).max(axis=1, keepdims=True) / 127
        out[k] = (np.clip(np.rint(v / scale), -127, 127).astype(np.int8), scale)
    return out


def numpy_4bit_pack(w: dict) -> dict:
    out = {}
    for k, v in w.items():
        g = v.reshape(-1, GROUP)
        scale = np.abs(g).max(axis=1, keepdims=True) / 7
        codes = np.clip(np.rint(g / scale), -7, 7).astype(np.int8)
        u = (codes & 0xF).astype(np.uint8).reshape(-1)
        out[k] = (u[0::2] | (u[1::2] << 4), scale)
    return out


def pruning_outputs_floor(w: dict) -> dict:
    """New arrays of threshold pruning's size (a copy and a bool mask), written block by block on
    every core: the memory traffic of pruning (read 4 bytes, write 5 per value) with no computation."""

    def job(v: np.ndarray) -> _blocked.Job:
        out, keep = np.empty_like(v), np.empty(v.shape, np.bool_)
        src, dst, mask = v.reshape(-1), out.reshape(-1), keep.reshape(-1)

        def block(s: int, e: int) -> None:
            np.copyto(dst[s:e], src[s:e])
            mask[s:e].fill(True)

        yield [lambda s=s, e=e: block(s, e) for s, e in _blocked.block_ranges(v.size)]
        return out, keep

    return dict(zip(w, _blocked.run_jobs([job(v) for v in w.values()])))


def pruning_kernel_warm(w: dict, outputs: dict) -> list:
    """coreprune's threshold-pruning kernel writing into preallocated, already touched outputs."""
    f32 = np.dtype(np.float32)
    jobs = [_kernels.prune_job(v, f32.type(THRESHOLD), f32, out=outputs[n]) for n, v in w.items()]
    return _blocked.run_jobs(jobs)


def load_baseline(root: Path) -> Any:
    """The ``coreprune`` package of another checkout (``root``), imported as ``coreprune_baseline``
    next to this one, so that both builds run in the same process, round after round."""
    import importlib.util

    package = root / "coreprune"
    spec = importlib.util.spec_from_file_location(
        "coreprune_baseline", package / "__init__.py", submodule_search_locations=[str(package)])
    if spec is None or spec.loader is None:
        raise SystemExit(f"no coreprune package under {root}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["coreprune_baseline"] = module
    spec.loader.exec_module(module)
    return module


def paired(fns: dict[str, Callable[[], Any]], rounds: int,
           clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of each function, the functions run back to back in every round.

    The order rotates from round to round: a call that follows another one's freed result may reuse
    its memory instead of faulting in new pages, and no function should always be the one after.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn = fns[name]
            gc.collect()
            t0 = clock()
            result = fn()
            times[name].append(clock() - t0)
            del result
    return times


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def numpy_dequant(q: dict) -> dict:
    return {k: codes.astype(np.float32) * scale for k, (codes, scale) in q.items()}


def torch_refs(w: dict, slow: bool) -> dict[str, Callable[[], Any]]:
    tw = {k: torch.from_numpy(v) for k, v in w.items()}

    def threshold() -> dict:
        return {k: torch.where(t.abs() > THRESHOLD, t, 0.0) for k, t in tw.items()}

    def layer() -> dict:
        out = {}
        for k, t in tw.items():
            a = t.abs()
            cut = torch.kthvalue(a.reshape(-1), round(SPARSITY * a.numel())).values
            out[k] = torch.where(a > cut, t, 0.0)
        return out

    def int8() -> dict:
        out = {}
        for k, t in tw.items():
            scale = t.abs().amax(dim=1).double() / 127
            zero = torch.zeros(t.shape[0], dtype=torch.long)
            out[k] = torch.quantize_per_channel(t, scale, zero, 0, torch.qint8)
        return out

    def four_bit() -> dict:
        out = {}
        for k, t in tw.items():
            g = t.reshape(-1, GROUP)
            scale = g.abs().amax(dim=1, keepdim=True) / 7
            codes = torch.clamp(torch.round(g / scale), -7, 7).to(torch.int8)
            u = (codes & 0xF).to(torch.uint8).reshape(-1)
            out[k] = (u[0::2] | (u[1::2] << 4), scale)
        return out

    q8 = int8()
    refs = {"threshold": threshold, "layer": layer, "int8": int8, "4bit": four_bit,
            "dequant": lambda: {k: q.dequantize() for k, q in q8.items()}}

    # global_unstructured: concatenation + topk, ~1 minute per GiB on 2 cores
    subset = w if slow else dict(list(w.items())[: max(1, SLOW_TORCH_BYTES // (ROWS * COLS * 4))])

    def global_unstructured() -> list:
        import torch.nn.utils.prune as tprune

        modules = []
        for v in subset.values():
            m = torch.nn.Linear(v.shape[1], v.shape[0], bias=False)
            with torch.no_grad():
                m.weight = torch.nn.Parameter(torch.from_numpy(v.copy()))
            modules.append(m)
        tprune.global_unstructured([(m, "weight") for m in modules], pruning_method=tprune.L1Unstructured,
                                   amount=SPARSITY)
        return [m.weight_mask for m in modules]

    refs["global_unstructured"] = global_unstructured
    refs["global_unstructured_bytes"] = sum(v.nbytes for v in subset.values())  # type: ignore[assignment]
    return refs


# ------------------------------------------------------------------------------------------ driver


def pass_costs(rounds: int = 7) -> dict[str, float]:
    """Nanoseconds per value of each NumPy step of the kernels, on one thread, CPU time.

    Each step runs over one block (``BLOCK_ELEMENTS`` float32 values, as in the kernels) that
    stays in the cache, repeated; the least of ``rounds`` runs is kept. Then memcpy of 256 MiB
    (from RAM, into warm memory), and the same copy into fresh memory (new pages from the kernel,
    which zeroes them first), one thread each.
    """
    n = _blocked.BLOCK_ELEMENTS
    group = GROUP
    rng = np.random.default_rng(1)
    x = rng.standard_normal(n, dtype=np.float32)
    bits = x.view(np.uint32)
    mag, keep, out = np.empty(n, np.uint32), np.empty(n, np.bool_), np.empty(n, np.uint32)
    absx, q = np.empty(n, np.float32), np.empty(n, np.float32)
    np.abs(x, out=absx)
    np.greater(absx, np.float32(THRESHOLD), out=keep)
    scale = np.abs(x).reshape(-1, group).max(axis=1, keepdims=True) / 7
    codes = np.clip(np.rint(x.reshape(-1, group) / scale), -7, 7).astype(np.int8).reshape(-1)
    starts = np.arange(0, n, group)
    quotients = (x.reshape(-1, group) / scale).reshape(-1)  # what the rounding steps start from
    pairs, word, packed = np.empty(n // 2, np.uint16), np.empty(n // 2, np.uint16), np.empty(n // 2, np.uint8)
    steps: dict[str, Callable[[], Any]] = {
        "memcpy of the block (in cache)": lambda: np.copyto(out, bits),
        "prune: abs (float32)": lambda: np.abs(x, out=absx),
        "prune: |w| > t into bool": lambda: np.greater(absx, np.float32(THRESHOLD), out=keep),
        "prune: bits * keep (uint32 x bool)": lambda: np.multiply(bits, keep, out=out),
        "prune: max |w| (finiteness)": lambda: np.maximum.reduce(absx),
        "prune: np.where(keep, bits, 0) instead": lambda: np.where(keep, bits, np.uint32(0)),
        "prune: copyto(out, bits, where=keep) instead": lambda: np.copyto(out, bits, where=keep),
        "quant: bits & 0x7fffffff": lambda: np.bitwise_and(bits, np.uint32(0x7FFFFFFF), out=mag),
        "quant: max per group of 128 (uint32 reduceat)": lambda: np.maximum.reduceat(mag, starts),
        "quant: max per group of 128 (float32 reduceat)": lambda: np.maximum.reduceat(absx, starts),
        "quant: w / scale (broadcast per group)": lambda: np.divide(x.reshape(-1, group), scale,
                                                                     out=q.reshape(-1, group)),
        "quant: w / scale (same-shape arrays)": lambda: np.divide(x, absx, out=q),
        "quant: the scales expanded to one per value": lambda: np.repeat(scale.reshape(-1), group),
        "quant: + 1.5 * 2**23 (rounding)": lambda: np.add(quotients, np.float32(1.5 * 2**23), out=q),
        "quant: low byte of the bits (uint32 -> int8)": lambda: np.copyto(
            codes.view(np.uint8), q.view(np.uint32), casting="unsafe"),
        "quant: np.rint into int8 instead": lambda: np.rint(quotients, out=codes, casting="unsafe"),
        "pack: pairs & 0x0f0f": lambda: np.bitwise_and(codes.view("<u2"), np.uint16(0x0F0F), out=pairs),
        "pack: >> 4, |": lambda: (np.right_shift(pairs, np.uint16(4), out=word), np.bitwise_or(word, pairs,
                                                                                                 out=word)),
        "pack: low bytes (uint16 -> uint8)": lambda: np.copyto(packed, word, casting="unsafe"),
        "pack: min and max of the codes": lambda: (codes.min(), codes.max()),
    }
    reps = max(1, (64 << 20) // (4 * n))  # 64 MiB of float32 per run
    result = {}
    for name, step in steps.items():
        best = float("inf")
        for _ in range(rounds):
            t0 = time.thread_time()
            for _ in range(reps):
                step()
            best = min(best, time.thread_time() - t0)
        result[name] = best / (reps * n) * 1e9
    big = np.ones(64 << 20, np.float32)  # 256 MiB, beyond any cache
    warm = np.zeros_like(big)
    for name, make in (("memcpy 256 MiB from RAM into warm memory", lambda: warm),
                       ("copy 256 MiB into fresh memory (np.empty)", lambda: np.empty_like(big))):
        best = float("inf")
        for _ in range(3):
            dst = make()
            t0 = time.thread_time()
            np.copyto(dst, big)
            best = min(best, time.thread_time() - t0)
            del dst
        result[name] = best / big.size * 1e9
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"), help="weights (default 1GiB)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement, best is kept")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of coreprune and of torch (default: their own, the number of cores)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--with-slow-torch", action="store_true",
                        help="run torch global_unstructured on the whole size (about a minute per GiB)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip checking the global threshold against a full sort")
    parser.add_argument("--no-torch", action="store_true", help="leave torch out even if installed")
    parser.add_argument("--pairs", type=int, default=7,
                        help="rounds of memcpy, coreprune and the fastest other, back to back, per target")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="what the paired rounds measure: wall time, or the process's CPU time (with "
                             "--threads 1, the work per thread, less disturbed by other jobs)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout (e.g. a git worktree of an older commit) whose coreprune "
                             "joins the threshold-pruning and 4-bit rows as 'baseline coreprune'")
    parser.add_argument("--passes", action="store_true",
                        help="only time each NumPy step of the kernels on one thread (ns per value)")
    parser.add_argument("--scale-dtype", choices=("auto", "float32", "float16"), default="auto",
                        help="coreprune's 4-bit scales (auto: float16); float32 to compare with a "
                             "--baseline from before float16 scales existed (the same codes)")
    args = parser.parse_args(argv)
    if args.passes:
        print(f"ns per value, one thread, CPU time; load average {os.getloadavg()[0]:.2f}")
        for name, ns in pass_costs().items():
            print(f"  {name:50s} {ns:6.3f}")
        return 0
    use_torch = torch is not None and not args.no_torch
    if args.threads:
        cp.set_num_threads(args.threads)
        if use_torch:  # the same number for both, so that the speed-up compares like with like
            torch.set_num_threads(args.threads)

    print(f"building {args.size / 2**30:.3f} GiB of float32 weights ...", flush=True)
    w = make_weights(args.size)
    weights_bytes = sum(v.nbytes for v in w.values())
    tensors = list(w.values())
    total = sum(t.size for t in tensors)
    k = round(SPARSITY * total)
    f32 = np.dtype(np.float32)
    dst = {name: np.empty_like(v) for name, v in w.items()}
    for name in w:  # touch the destination once: memcpy is measured into warm memory
        np.copyto(dst[name], w[name])

    def memcpy() -> None:
        for name in w:
            np.copyto(dst[name], w[name])

    q8 = cp.quantize(w, 8, axis=0)
    q8_plain = numpy_int8(w)
    torch_ref = torch_refs(w, args.with_slow_torch) if use_torch else {}

    warm_outputs = {n: (np.zeros_like(v), np.zeros(v.shape, np.bool_)) for n, v in w.items()}

    def coreprune_4bit_pack() -> dict:
        scales = {} if args.scale_dtype == "auto" else {"scale_dtype": args.scale_dtype}
        return {n: pack_bits(q.codes, 4) for n, q in cp.quantize(w, 4, group_size=GROUP, **scales).items()}

    # (operation, implementation, callable, bytes processed)
    cases: list[tuple[str, str, Callable[[], Any], int]] = [
        ("memcpy", "np.copyto", memcpy, weights_bytes),
        ("copy into new arrays", "np.copy", lambda: {n: v.copy() for n, v in w.items()}, weights_bytes),
        ("threshold pruning", "coreprune", lambda: cp.prune_threshold(w, THRESHOLD), weights_bytes),
        ("threshold pruning", "numpy w * (abs(w) > t)", lambda: numpy_threshold(w, THRESHOLD), weights_bytes),
        ("threshold pruning", FLOOR + "fresh outputs, no compute", lambda: pruning_outputs_floor(w),
         weights_bytes),
        ("layer magnitude pruning 90%", "coreprune", lambda: cp.prune_magnitude(w, SPARSITY), weights_bytes),
        ("layer magnitude pruning 90%", "numpy partition", lambda: numpy_layer_magnitude(w, SPARSITY),
         weights_bytes),
        ("global magnitude pruning 90%", "coreprune", lambda: cp.prune_magnitude(w, SPARSITY, scope="global"),
         weights_bytes),
        ("global threshold (exact k-th)", "coreprune", lambda: _select.kth_smallest_abs(tensors, k, f32),
         weights_bytes),
        ("global threshold (exact k-th)", "numpy concatenate + partition",
         lambda: numpy_global_threshold(w, SPARSITY), weights_bytes),
        ("int8 per-channel quantization", "coreprune", lambda: cp.quantize(w, 8, axis=0), weights_bytes),
        ("int8 per-channel quantization", "numpy", lambda: numpy_int8(w), weights_bytes),
        ("4-bit group-128 quantization + packing", "coreprune", coreprune_4bit_pack, weights_bytes),
        ("4-bit group-128 quantization + packing", "numpy", lambda: numpy_4bit_pack(w), weights_bytes),
        ("int8 dequantization", "coreprune", lambda: cp.dequantize(q8), weights_bytes),
        ("int8 dequantization", "numpy", lambda: numpy_dequant(q8_plain), weights_bytes),
    ]
    if args.baseline is not None:
        base = load_baseline(args.baseline)
        base.set_num_threads(_blocked.num_threads())
        base_pack = importlib.import_module("coreprune_baseline.packing").pack_bits

        def baseline_4bit_pack() -> dict:
            return {n: base_pack(q.codes, 4) for n, q in base.quantize(w, 4, group_size=GROUP).items()}

        mine, theirs = coreprune_4bit_pack(), baseline_4bit_pack()
        if any(mine[n].tobytes() != theirs[n].tobytes() for n in w):
            raise SystemExit("the baseline's 4-bit codes differ from this build's")
        cases += [("threshold pruning", BASELINE, lambda: base.prune_threshold(w, THRESHOLD), weights_bytes),
                  ("4-bit group-128 quantization + packing", BASELINE, baseline_4bit_pack, weights_bytes)]
    if "out" in inspect.signature(_kernels.prune_job).parameters:  # absent in builds before 2026-12-03
        cases.insert(4, ("threshold pruning", FLOOR + "kernel, warm outputs",
                         lambda: pruning_kernel_warm(w, warm_outputs), weights_bytes))
    if use_torch:
        cases += [
            ("threshold pruning", "torch.where", torch_ref["threshold"], weights_bytes),
            ("layer magnitude pruning 90%", "torch kthvalue + where", torch_ref["layer"], weights_bytes),
            ("global threshold (exact k-th)", "torch global_unstructured", torch_ref["global_unstructured"],
             torch_ref["global_unstructured_bytes"]),
            ("int8 per-channel quantization", "torch.quantize_per_channel", torch_ref["int8"], weights_bytes),
            ("4-bit group-128 quantization + packing", "torch ops", torch_ref["4bit"], weights_bytes),
            ("int8 dequantization", "torch dequantize", torch_ref["dequant"], weights_bytes),
        ]
    cases.append(("memcpy (again, at the end)", "np.copyto", memcpy, weights_bytes))

    load_start = os.getloadavg()
    rows = []
    for op, impl, fn, nbytes in cases:
        slow = impl == "torch global_unstructured"
        repeats = 1 if slow else args.repeats
        load = os.getloadavg()[0]
        print(f"  {op:40s} {impl:32s}", end=" ", flush=True)
        row: dict[str, Any] = {"operation": op, "implementation": impl, "bytes": nbytes, "load_1min": load}
        row.update(timed(fn, repeats))
        if not op.startswith("memcpy") and not slow:
            row.update(peak_memory(fn))
        row["gb_per_s"] = nbytes / row["best_s"] / 1e9
        rows.append(row)
        print(f"{row['best_s']:8.3f} s  {row['gb_per_s']:6.2f} GB/s", flush=True)
    load_end = os.getloadavg()

    memcpy_s = min(r["best_s"] for r in rows if r["operation"].startswith("memcpy"))
    memcpy_gbs = weights_bytes / memcpy_s / 1e9
    for r in rows:
        r["ratio_to_memcpy"] = (r["bytes"] / r["best_s"] / 1e9) / memcpy_gbs

    verification: dict[str, Any] = {}
    sel = _select.kth_smallest_abs(tensors, k, f32)
    verification["kth_value"] = float(sel.value)
    v_ref, r_ref = _kth_smallest_abs_reference(tensors, k, f32)
    verification["equals_concatenate_partition"] = bool(sel.value == v_ref and sel.ties == r_ref)
    if not args.no_verify:
        everything = np.sort(np.concatenate([np.abs(t).reshape(-1) for t in tensors]))
        verification["equals_full_sort"] = bool(sel.value == everything[k - 1])
        del everything
    gc.collect()
    kth_row = next(r for r in rows if r["operation"].startswith("global thr") and r["implementation"] == CP)
    verification["kth_extra_memory_fraction"] = kth_row["numpy_peak_extra"] / weights_bytes

    # targets
    targets: dict[str, Any] = {}
    for op, minimum in TARGETS.items():
        mine = next(r for r in rows if r["operation"] == op and r["implementation"] == "coreprune")
        others = [r for r in rows if r["operation"] == op and r["implementation"] not in (CP, BASELINE)
                  and not r["implementation"].startswith(FLOOR)]
        fastest = min(others, key=lambda r: r["best_s"])
        speedup = fastest["best_s"] / mine["best_s"]
        targets[op] = {
            "ratio": mine["ratio_to_memcpy"],
            "target_ratio": minimum,
            "ratio_met": mine["ratio_to_memcpy"] >= minimum,
            "speedup_vs_fastest_other": speedup,
            "fastest_other": fastest["implementation"],
            "speedup_met": speedup >= 1.5,
        }
    by_case = {(op, impl): fn for op, impl, fn, _ in cases}
    for op in TARGETS if args.pairs > 0 else ():
        impls = [impl for o, impl, _, _ in cases if o == op]
        print(f"pairs: {op} ({args.pairs} rounds of memcpy, {', '.join(impls)}) ...", flush=True)
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        times = paired({"memcpy": memcpy, **{impl: by_case[(op, impl)] for impl in impls}}, args.pairs, clock)
        ratios = {impl: [m / c for m, c in zip(times["memcpy"], times[impl])] for impl in impls}
        speedups = {impl: [o / c for o, c in zip(times[impl], times[CP])]
                    for impl in impls if impl != CP and not impl.startswith(FLOOR)}
        slowest_speedup = min(statistics.median(v) for k, v in speedups.items() if k != BASELINE)
        targets[op]["paired"] = {
            "rounds": args.pairs,
            "clock": args.clock,
            "ratio_to_memcpy": {impl: spread(v) for impl, v in ratios.items()},
            "speedup_over": {impl: spread(v) for impl, v in speedups.items()},
            "seconds": {impl: spread(v) for impl, v in times.items()},
            "ratio_met": statistics.median(ratios[CP]) >= TARGETS[op],
            "speedup_met": slowest_speedup >= 1.5,
        }
    targets["global threshold <= 0.3 s per GiB"] = {
        "seconds": kth_row["best_s"], "seconds_per_gib": kth_row["best_s"] * 2**30 / weights_bytes,
        "met": kth_row["best_s"] * 2**30 / weights_bytes <= 0.3,
        "extra_memory_fraction": verification["kth_extra_memory_fraction"],
        "memory_met": verification["kth_extra_memory_fraction"] <= 0.05,
        "same_as_sort": verification.get("equals_full_sort", verification["equals_concatenate_partition"]),
    }

    print()
    print(f"memcpy: {memcpy_gbs:.2f} GB/s; load average {load_start[0]:.2f} at start, {load_end[0]:.2f} "
          f"at end; coreprune threads: {_blocked.num_threads()}"
          + (f", torch threads: {torch.get_num_threads()}" if use_torch else ""))
    print(f"{'operation':40s} {'implementation':32s} {'best s':>8s} {'GB/s':>7s} {'ratio':>6s} "
          f"{'extra MiB (np/rss)':>19s}")
    for r in rows:
        extra = ""
        if "numpy_peak_extra" in r:
            rss = r["rss_peak_extra"]
            extra = f"{r['numpy_peak_extra'] / 2**20:8.1f}/{'-' if rss is None else f'{rss / 2**20:.1f}':>8s}"
        print(f"{r['operation']:40s} {r['implementation']:32s} {r['best_s']:8.3f} {r['gb_per_s']:7.2f} "
              f"{r['ratio_to_memcpy']:6.2f} {extra:>19s}")
    print()
    for name, t in targets.items():
        print(f"target {name}: {json.dumps({k: v for k, v in t.items() if k != 'paired'}, default=float)}")
    for name, t in targets.items():
        if "paired" in t:
            p = t["paired"]
            print(f"paired, {p['rounds']} rounds, {p['clock']} time: {name}")
            for impl, r in p["ratio_to_memcpy"].items():
                x = p["speedup_over"].get(impl)
                gain = f"; coreprune {x['median']:.2f}x faster ({x['min']:.2f}-{x['max']:.2f})" if x else ""
                print(f"  {impl:40s} ratio to memcpy {r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f}){gain}")
    print(f"verification: {json.dumps(verification, default=float)}")

    if args.out:
        info = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": {
                "platform": platform.platform(),
                "processor": _cpu_model(),
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "numpy": np.__version__,
                "torch": torch.__version__ if use_torch else None,
            },
            "size_bytes": weights_bytes, "tensors": len(w), "repeats": args.repeats,
            "coreprune_threads": _blocked.num_threads(), "block_elements": _blocked.BLOCK_ELEMENTS,
            "torch_threads": torch.get_num_threads() if use_torch else None,
            "load_average_start": load_start, "load_average_end": load_end,
            "memcpy_gb_per_s": memcpy_gbs, "results": rows, "targets": targets, "verification": verification,
        }
        args.out.write_text(json.dumps(info, indent=2, default=float))
        print(f"wrote {args.out}")
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
