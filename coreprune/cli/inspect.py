"""``coreprune inspect``: the per-tensor statistics table, its JSON form and the plot."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..io.base import atomic_write
from ..io.cpz import CpzReader
from ..io.sharded import is_sharded_reader
from ..selection import is_floating
from ..stats import TensorStats, tensor_stats, totals
from ..weight_sharing import CodebookArray
from .codebook import codebook_row
from .common import (
    _PLOT_SUFFIXES,
    CliError,
    _db,
    _human,
    _jsonable,
    _num,
    _one_line,
    _open_input,
    _pct,
    _print,
    _printable,
    _progress,
    _say,
)
from .groups import _print_groups


def _cmd_inspect(args: argparse.Namespace) -> int:
    if getattr(args, "groups", None) is not None:
        return _print_groups(args)
    if args.plot is not None:
        if Path(args.plot).suffix.lower() not in _PLOT_SUFFIXES:
            raise CliError(f"{args.plot}: the plot must be a {', '.join(_PLOT_SUFFIXES)} file")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CliError('--plot needs matplotlib: pip install "coreprune[plot]"') from None
    stats: list[TensorStats] = []
    samples: list[tuple[np.ndarray, int]] = []
    storage: dict[str, dict[str, Any]] = {}
    codebooks: dict[str, dict[str, Any]] = {}
    shards: dict[str, str] = {}
    with _open_input(args) as reader, _progress(len(reader), "inspect", args.quiet) as bar:
        fmt = reader.format
        if is_sharded_reader(reader):
            shards = {name: str(reader.shard_of(name).relative_to(reader.folder)) for name in reader}
            kinds = sorted(set(reader.formats.values()))
            fmt = f"{len(reader.shards)} {'/'.join(kinds)} shards"
            file_size = sum(os.path.getsize(p) for p in reader.shards)
        else:
            file_size = os.path.getsize(args.input)
        for name in reader:
            array = np.asarray(reader[name])
            stats.append(tensor_stats(name, array, threshold=args.threshold))
            if args.plot is not None and is_floating(array.dtype) and array.size and array.ndim >= 1:
                stride = max(1, math.ceil(array.size / 20_000))
                samples.append((array.reshape(-1)[::stride].astype(np.float32), stride))
            cpz = reader if isinstance(reader, CpzReader) else None
            if cpz is None and is_sharded_reader(reader):
                shard = reader.reader_of(name)
                cpz = shard if isinstance(shard, CpzReader) else None
            if cpz is not None:
                storage[name] = cpz.storage(name)
                shared = cpz.raw(name) if storage[name]["kind"] == "codebook" else None
                if isinstance(shared, CodebookArray):
                    codebooks[name] = codebook_row(shared, storage[name]["stored_nbytes"],
                                                  storage[name]["blob_nbytes"]["codes"])
            del array
            bar.update(1)
        extras = dict(reader.extras)
        metadata = dict(reader.metadata)
        aliases = dict(reader.aliases)
    summary = totals(stats)
    if args.json:
        tensors = []
        for s in stats:
            row = s.as_dict()
            if s.name in storage:
                row["storage"] = storage[s.name]
            if s.name in codebooks:
                row["codebook"] = codebooks[s.name]
            if shards:
                row["shard"] = shards[s.name]
            tensors.append(row)
        summary["file_nbytes"] = file_size
        doc = {
            "file": str(args.input),
            "format": fmt,
            "threshold": args.threshold,
            "tensors": tensors,
            "totals": {k: _jsonable(v) for k, v in summary.items()},
            "extras": _jsonable(extras),
            "metadata": metadata,
            "aliases": aliases,
        }
        print(json.dumps(doc, indent=1))
    else:
        _print_table(args, fmt, stats, storage, summary, extras, file_size, shards)
        if codebooks:
            _print_codebooks(codebooks)
        if metadata:
            _print("metadata: " + ", ".join(f"{k} = {v!r}" for k, v in metadata.items()))
        if aliases:
            _print(f"aliases ({len(aliases)} tensor(s) stored once under two names; pruning counts them "
                   "once): " + ", ".join(f"{a} = {b}" for a, b in aliases.items()))
    if args.plot is not None:
        _plot(args, stats, samples)
        if not args.json:
            _say(args, f"wrote {args.plot}")
    return 0


def _print_table(
    args: argparse.Namespace,
    fmt: str,
    stats: list[TensorStats],
    storage: dict[str, dict[str, Any]],
    summary: dict[str, Any],
    extras: dict[str, Any],
    file_size: int,
    shards: dict[str, str] | None = None,
) -> None:
    header = ["name", "shape", "dtype", "params", "zeros", "min", "max", "mean", "std",
              f"|w|<={args.threshold:g}", "8-bit", "4-bit", "SQNR8 dB"]
    rows = []
    for s in stats:
        row = [
            _printable(s.name), "x".join(map(str, s.shape)) or "()", s.dtype, f"{s.parameters:,}",
            _pct(s.sparsity),
            _num(s.min), _num(s.max), _num(s.mean), _num(s.std), _pct(s.below_threshold),
            _human(s.bytes_8bit), _human(s.bytes_4bit),
            _db(s.sqnr_8bit_db),
        ]
        if storage:
            st = storage[s.name]
            kind = {"quantized": f"q{st['bits']}", "codebook": f"cb{st['bits']}"}.get(st["kind"], "dense")
            row.append(f"{kind} {st['layout']} {_human(st['stored_nbytes'])}")
        if shards:
            row.append(shards[s.name])
        rows.append(row)
    if storage:
        header.append("stored")
    if shards:
        header.append("shard")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = {0, 1, 2} | ({len(header) - 1} if storage or shards else set()) | (
        {len(header) - 2} if storage and shards else set())

    def line(cells: list[str]) -> str:
        padded = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded)

    _print(f"{args.input} ({fmt}, {_human(file_size)})")
    _print(line(header).rstrip())
    _print("  ".join("-" * w for w in widths))
    for row in rows:
        _print(line(row).rstrip())
    _print(
        f"total: {summary['tensors']} tensors, {summary['parameters']:,} parameters, "
        f"{_human(summary['nbytes'])} dense; zeros {_pct(summary['sparsity'])}; "
        f"at 8 bits {_human(summary['bytes_8bit'])}, at 4 bits {_human(summary['bytes_4bit'])}"
    )
    if storage:
        _print(f"stored: {_human(sum(s['stored_nbytes'] for s in storage.values()))} of tensor data")
    if extras:
        shown = ", ".join(f"{k} = {_one_line(repr(_jsonable(v)))[:60]}" for k, v in list(extras.items())[:20])
        _print(f"non-tensor values ({len(extras)}): {shown}")


def _print_codebooks(codebooks: dict[str, dict[str, Any]]) -> None:
    """The per-layer table of codebook tensors: kept weights, bits, bytes, and how close the stored
    bits per surviving weight come to the empirical entropy of its codes."""
    header = ["codebook tensor", "kept", "bits", "bytes", "bits/weight", "code bits", "code entropy"]

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    rows = [[_printable(name), _pct(r["kept"]), str(r["bits"]), _human(r["nbytes"]),
             num(r["bits_per_weight"]), num(r["code_bits"]), num(r["code_entropy"])]
            for name, r in codebooks.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    _print("")
    for cells in [header, ["-" * w for w in widths], *rows]:
        _print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    _print("bits/weight: stored bits (codebook, index, codes) per surviving weight; code bits: the codes "
           "alone; code entropy: their order-0 bound")


def _plot(args: argparse.Namespace, stats: list[TensorStats], samples: list[tuple[np.ndarray, int]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = [s for s in stats if s.bytes_8bit is not None and len(s.shape) >= 2] or [
        s for s in stats if s.bytes_8bit is not None
    ]
    shown = layers[:120]
    fig = Figure(figsize=(10, 4 + 0.2 * max(len(shown), 5)), layout="constrained")
    FigureCanvasAgg(fig)
    hist_ax, bar_ax = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, max(len(shown), 5) * 0.25]})
    if samples:
        values = np.concatenate([v for v, _ in samples])
        weights = np.concatenate([np.full(v.size, float(k)) for v, k in samples])
        hist_ax.hist(values, bins=121, weights=weights, log=True, color="tab:blue")
        for t in (-args.threshold, args.threshold):
            hist_ax.axvline(t, color="tab:red", linewidth=0.8, linestyle="--")
    # Names and file names are text, never mathtext: a '$' in a tensor name must not be parsed.
    hist_ax.set_title(f"{Path(args.input).name}: weights of {len(samples)} floating tensors",
                      parse_math=False)
    hist_ax.set_xlabel("value")
    hist_ax.set_ylabel("count (log)")
    y = np.arange(len(shown))
    bar_ax.barh(y, [100 * (s.sparsity or 0.0) for s in shown], color="tab:orange")
    bar_ax.set_yticks(y)
    bar_ax.set_yticklabels([_printable(s.name) for s in shown], fontsize=7, parse_math=False)
    bar_ax.invert_yaxis()
    bar_ax.set_xlim(0, 100)
    bar_ax.set_xlabel("zeros (%)")
    more = f" (first {len(shown)} of {len(layers)})" if len(layers) > len(shown) else ""
    bar_ax.set_title(f"sparsity per layer{more}")
    with atomic_write(args.plot, inputs=(args.input,)) as f:
        fig.savefig(f, format=Path(args.plot).suffix[1:].lower(), dpi=100)
