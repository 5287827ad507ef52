"""The ``coreprune`` command line: inspect, prune, quantize, compress, decompress and convert weight files.

Every command reads its input lazily, one tensor at a time (``--sparsity --global``
reads it two or three times: first to find the one threshold over all selected tensors,
then to prune tensor by tensor), and writes its output atomically -- a temporary file
beside the output, renamed over it at the end -- and never over its input. A user error
(bad arguments, a missing or corrupted file, a tensor that cannot be compressed) prints
one line ``coreprune: error: ...`` on stderr and exits with status 2. See ``docs/cli.md``.

Run it as ``coreprune`` (the console script) or ``python -m coreprune``. Neither
imports torch or mxnet: files written by either framework are read with NumPy alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import __version__
from .errors import CompressionError
from .inspect_stats import DEFAULT_THRESHOLD, TensorStats, tensor_stats, totals
from .io import detect_format, open_weights, save
from .io.base import TensorSpec, WeightReader, atomic_write
from .io.cpz import CpzReader, save_compressed
from .name_mapping import MAPPINGS, torch_batch_norm_counters
from .pruning import GlobalThreshold, _spec_view, global_magnitude_threshold, prune_magnitude, prune_threshold
from .quantization import quantize
from .selection import is_floating, select

__all__ = ["main", "build_parser"]

_PROG = "coreprune"
_PLOT_SUFFIXES = (".png", ".svg", ".pdf")
_EVERYTHING = lambda _name, _array: True  # noqa: E731 - the CLI selects names itself, then works per tensor


class CliError(Exception):
    """A user error found by the command line itself; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line instead of usage text plus a line."""

    def error(self, message: str) -> NoReturn:
        where = self.prog[len(_PROG) :].strip()
        hint = f" (see {self.prog} --help)"
        raise CliError(f"{where}: {message}{hint}" if where else f"{message}{hint}")


# --------------------------------------------------------------------------------------- argument types


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _threshold(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"the threshold must be >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"the sparsity must be in [0, 1], got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _bits(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 16:
        raise argparse.ArgumentTypeError(f"bits must be in 1..16, got {text}")
    return value


def _group_size(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"the group size must be >= 1, got {text}")
    return value


# ------------------------------------------------------------------------------------------ output help


def _human(n: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def _db(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}" if math.isfinite(x) else str(x)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _note(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(f"{_PROG}: note: {_one_line(text)}", file=sys.stderr)


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text)


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe rendering of a non-tensor extra (checkpoint epoch, metadata, ...)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item(), depth)
    if depth < 4 and isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value[:100]]
    if depth < 4 and isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in list(value.items())[:100]}
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------------------------- progress


class _NoBar:
    def update(self, n: int = 1) -> None:
        """No progress bar: --quiet, or tqdm is not installed."""

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _progress(total: int, desc: str, quiet: bool, *, delay: float = 1.0) -> Any:
    """A tqdm bar on stderr that appears only if the work lasts longer than ``delay`` seconds."""
    if quiet:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is an optional extra: no bar without it
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="tensor", file=sys.stderr, leave=False, delay=delay)


# -------------------------------------------------------------------------------------- lazy processing


class _Pipeline(WeightReader):
    """A lazy view of a source file: renamed tensors, a per-tensor step on the selected ones.

    Writers read it one tensor at a time, so a file is processed with one tensor (plus its
    result) in memory; the progress bar advances as each tensor is first read.
    """

    format = "pipeline"

    def __init__(
        self,
        source: WeightReader,
        *,
        bar: Any,
        step: Callable[[str, np.ndarray], Any] | None = None,
        selected: Sequence[str] = (),
        rename: dict[str, str] | None = None,
        added: dict[str, tuple[str, np.ndarray]] | None = None,
    ) -> None:
        """``rename``: old -> new name (names it lacks are dropped); ``added``: new name ->
        (the output name it follows, value), for tensors the source does not have."""
        super().__init__(source.path)
        self._source = source
        self._old: dict[str, str] = {}
        self._added: dict[str, np.ndarray] = {}
        after: dict[str, list[str]] = {}
        for name, (anchor, value) in (added or {}).items():
            after.setdefault(anchor, []).append(name)
            self._added[name] = value
        for old, new in (rename or {n: n for n in source}).items():
            self._old[new] = old
            self._specs[new] = source.spec(old)
            for extra in after.get(new, []):
                self._specs[extra] = TensorSpec(tuple(self._added[extra].shape), self._added[extra].dtype)
        self.extras = source.extras
        self._step = step
        self._selected = set(selected)
        self._bar = bar
        self._seen: set[str] = set()

    def _read(self, name: str) -> Any:
        if name in self._added:
            return self._added[name]
        old = self._old[name]
        value = self._source[old]
        if self._step is not None and old in self._selected:
            value = self._step(old, np.asarray(value))
        if name not in self._seen:
            self._seen.add(name)
            self._bar.update(1)
        return value


def _selection(reader: WeightReader, args: argparse.Namespace) -> list[str]:
    return select(_spec_view(reader), args.include or None, args.exclude or None)


class _Counts:
    """What the steps did, for the one-line summary."""

    def __init__(self) -> None:
        self.pruned = self.zeros = self.size = self.quantized = 0


def _prune_step(
    reader: WeightReader, selected: list[str], args: argparse.Namespace, counts: _Counts
) -> Callable[[str, np.ndarray], np.ndarray]:
    """Per-tensor pruning; with ``--global`` the threshold over all selected tensors comes first,
    from passes over the reader that hold one tensor at a time."""
    chosen = set(selected)
    cut: list[GlobalThreshold] = []

    def step(name: str, w: np.ndarray) -> np.ndarray:
        if args.threshold is not None:
            out = prune_threshold({name: w}, args.threshold, include=_EVERYTHING)[0][name]
        elif args.global_:
            if not cut:  # first use: inside the writer, after the output path was checked
                picked = lambda n, _a: n in chosen  # noqa: E731 - the names selected above
                cut.append(global_magnitude_threshold(reader, args.sparsity, include=picked))
            out = cut[0].prune(name, w)[0]
        else:
            out = prune_magnitude({name: w}, args.sparsity, include=_EVERYTHING)[0][name]
        counts.pruned += 1
        counts.zeros += int(out.size - np.count_nonzero(out))
        counts.size += int(out.size)
        return out

    return step


def _quantize_step(
    args: argparse.Namespace, counts: _Counts, keep_codes: bool
) -> Callable[[str, np.ndarray], Any]:
    def step(name: str, w: np.ndarray) -> Any:
        q = quantize(
            {name: w}, args.bits, symmetric=not args.affine, axis=args.axis, group_size=args.group_size,
            include=_EVERYTHING,
        )[name]
        counts.quantized += 1
        return q if keep_codes else q.dequantize()

    return step


def _chain(*steps: Callable[[str, np.ndarray], Any] | None) -> Callable[[str, np.ndarray], Any]:
    active = [s for s in steps if s is not None]

    def step(name: str, w: Any) -> Any:
        for s in active:
            w = s(name, w)
        return w

    return step


def _is_cpz(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".cpz"


def _write(args: argparse.Namespace, source: WeightReader, pipeline: _Pipeline, output: str) -> None:
    """Write ``pipeline`` to ``output`` (never over the input) and say what was not written.

    String metadata (safetensors ``__metadata__``, a ``.cpz`` manifest's metadata) is carried
    over to the formats that hold it; a ``.cpz`` output also records its provenance.
    """
    meta = dict(source.metadata) or None
    suffix = Path(output).suffix.lower()
    if suffix == ".cpz":
        provenance = {"coreprune": __version__, "source": Path(args.input).name,
                      "command": " ".join([_PROG, *args.argv])}
        save_compressed(pipeline, output, inputs=(args.input,), metadata={**(meta or {}), **provenance})
    elif suffix == ".safetensors" and meta:
        save(pipeline, output, inputs=(args.input,), metadata=meta)
    else:
        save(pipeline, output, inputs=(args.input,))
        if meta:
            _note(args, f"the metadata of {args.input} ({', '.join(meta)}) is not written: "
                  f"{Path(output).suffix or 'that format'} has no place for it")
    lost = list(source.extras)
    if lost:
        _note(args, f"{len(lost)} non-tensor value(s) of {args.input} not written: {', '.join(lost[:8])}")


def _summary(args: argparse.Namespace, output: str, counts: _Counts, tensors: int) -> None:
    parts = [f"{tensors} tensors"]
    if counts.pruned:
        parts.append(
            f"pruned {counts.pruned}: {_pct(counts.zeros / counts.size if counts.size else 0.0)} of their "
            f"{counts.size:,} weights are zero"
        )
    if counts.quantized:
        how = "affine" if args.affine else "symmetric"
        if args.group_size:
            scope = f"groups of {args.group_size}"
        else:
            scope = "per tensor" if args.axis is None else f"axis {args.axis}"
        parts.append(f"quantized {counts.quantized} to {args.bits} bits ({how}, {scope})")
    size_in, size_out = os.path.getsize(args.input), os.path.getsize(output)
    _say(args, f"wrote {output}: {_human(size_out)} (input {_human(size_in)}); " + "; ".join(parts))


# --------------------------------------------------------------------------------------------- commands


def _cmd_inspect(args: argparse.Namespace) -> int:
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
    with open_weights(args.input) as reader, _progress(len(reader), "inspect", args.quiet) as bar:
        fmt = reader.format
        for name in reader:
            array = np.asarray(reader[name])
            stats.append(tensor_stats(name, array, threshold=args.threshold))
            if args.plot is not None and is_floating(array.dtype) and array.size and array.ndim >= 1:
                stride = max(1, math.ceil(array.size / 20_000))
                samples.append((array.reshape(-1)[::stride].astype(np.float32), stride))
            if isinstance(reader, CpzReader):
                storage[name] = reader.storage(name)
            del array
            bar.update(1)
        extras = dict(reader.extras)
        metadata = dict(reader.metadata)
    summary = totals(stats)
    file_size = os.path.getsize(args.input)
    if args.json:
        tensors = []
        for s in stats:
            row = s.as_dict()
            if s.name in storage:
                row["storage"] = storage[s.name]
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
        }
        print(json.dumps(doc, indent=1))
    else:
        _print_table(args, fmt, stats, storage, summary, extras, file_size)
        if metadata:
            print("metadata: " + ", ".join(f"{k} = {v!r}" for k, v in metadata.items()))
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
) -> None:
    header = ["name", "shape", "dtype", "params", "zeros", "min", "max", "mean", "std",
              f"|w|<={args.threshold:g}", "8-bit", "4-bit", "SQNR8 dB"]
    rows = []
    for s in stats:
        row = [
            s.name, "x".join(map(str, s.shape)) or "()", s.dtype, f"{s.parameters:,}", _pct(s.sparsity),
            _num(s.min), _num(s.max), _num(s.mean), _num(s.std), _pct(s.below_threshold),
            _human(s.bytes_8bit), _human(s.bytes_4bit),
            _db(s.sqnr_8bit_db),
        ]
        if storage:
            st = storage[s.name]
            kind = f"q{st['bits']}" if st["kind"] == "quantized" else "dense"
            row.append(f"{kind} {st['layout']} {_human(st['stored_nbytes'])}")
        rows.append(row)
    if storage:
        header.append("stored")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = {0, 1, 2, len(header) - 1} if storage else {0, 1, 2}

    def line(cells: list[str]) -> str:
        padded = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded)

    print(f"{args.input} ({fmt}, {_human(file_size)})")
    print(line(header).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row).rstrip())
    print(
        f"total: {summary['tensors']} tensors, {summary['parameters']:,} parameters, "
        f"{_human(summary['nbytes'])} dense; zeros {_pct(summary['sparsity'])}; "
        f"at 8 bits {_human(summary['bytes_8bit'])}, at 4 bits {_human(summary['bytes_4bit'])}"
    )
    if storage:
        print(f"stored: {_human(sum(s['stored_nbytes'] for s in storage.values()))} of tensor data")
    if extras:
        shown = ", ".join(f"{k} = {_one_line(repr(_jsonable(v)))[:60]}" for k, v in list(extras.items())[:20])
        print(f"non-tensor values ({len(extras)}): {shown}")


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
    hist_ax.set_title(f"{Path(args.input).name}: weights of {len(samples)} floating tensors")
    hist_ax.set_xlabel("value")
    hist_ax.set_ylabel("count (log)")
    y = np.arange(len(shown))
    bar_ax.barh(y, [100 * (s.sparsity or 0.0) for s in shown], color="tab:orange")
    bar_ax.set_yticks(y)
    bar_ax.set_yticklabels([s.name for s in shown], fontsize=7)
    bar_ax.invert_yaxis()
    bar_ax.set_xlim(0, 100)
    bar_ax.set_xlabel("zeros (%)")
    more = f" (first {len(shown)} of {len(layers)})" if len(layers) > len(shown) else ""
    bar_ax.set_title(f"sparsity per layer{more}")
    with atomic_write(args.plot, inputs=(args.input,)) as f:
        fig.savefig(f, format=Path(args.plot).suffix[1:].lower(), dpi=100)


def _open_input(args: argparse.Namespace) -> WeightReader:
    return open_weights(args.input)


def _cmd_prune(args: argparse.Namespace) -> int:
    counts = _Counts()
    with _open_input(args) as reader, _progress(len(reader), "prune", args.quiet) as bar:
        selected = _selection(reader, args)
        pipe = _Pipeline(reader, bar=bar, step=_prune_step(reader, selected, args, counts), selected=selected)
        _write(args, reader, pipe, args.output)
    _summary(args, args.output, counts, len(pipe))
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    counts = _Counts()
    keep_codes = _is_cpz(args.output)
    with _open_input(args) as reader, _progress(len(reader), "quantize", args.quiet) as bar:
        selected = _selection(reader, args)
        pipe = _Pipeline(reader, bar=bar, step=_quantize_step(args, counts, keep_codes), selected=selected)
        _write(args, reader, pipe, args.output)
    if not keep_codes:
        _note(args, f"{args.output} cannot hold {args.bits}-bit codes: wrote the dequantized values in each "
                    "tensor's dtype (fake quantization); use -o NAME.cpz to keep the packed codes")
    _summary(args, args.output, counts, len(pipe))
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    if not _is_cpz(args.output):
        raise CliError(f"{args.output}: compress writes .cpz files; name the output *.cpz "
                       "(prune and quantize write other formats)")
    counts = _Counts()
    with _open_input(args) as reader, _progress(len(reader), "compress", args.quiet) as bar:
        selected = _selection(reader, args)
        prune = None
        if args.threshold is not None or args.sparsity is not None:
            prune = _prune_step(reader, selected, args, counts)
        quant = _quantize_step(args, counts, True) if args.bits is not None else None
        pipe = _Pipeline(reader, bar=bar, step=_chain(prune, quant), selected=selected)
        _write(args, reader, pipe, args.output)
    _summary(args, args.output, counts, len(pipe))
    return 0


def _cmd_decompress(args: argparse.Namespace) -> int:
    fmt = detect_format(args.input)
    if fmt != "cpz":
        raise CliError(f"{args.input}: decompress reads .cpz files and this is {fmt}; use convert")
    with _open_input(args) as reader, _progress(len(reader), "decompress", args.quiet) as bar:
        pipe = _Pipeline(reader, bar=bar)
        _write(args, reader, pipe, args.output)
    _summary(args, args.output, _Counts(), len(pipe))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    with _open_input(args) as reader, _progress(len(reader), "convert", args.quiet) as bar:
        rename = MAPPINGS[args.map](list(reader)) if args.map else None
        added = {}
        if args.map == "gluon-to-torch":  # torch's batch norms keep a counter that Gluon has not
            counters = torch_batch_norm_counters(rename.values()) if rename else {}
            added = {name: (anchor, np.array(0, np.int64)) for name, anchor in counters.items()}
        pipe = _Pipeline(reader, bar=bar, rename=rename, added=added)
        _write(args, reader, pipe, args.output)
        dropped = [n for n in reader if rename is not None and n not in rename]
    if dropped:
        shown = ", ".join(dropped[:8])
        _note(args, f"{args.map}: dropped {len(dropped)} tensor(s) with no counterpart: {shown}")
    renamed = sum(1 for old, new in (rename or {}).items() if old != new)
    done = f"wrote {args.output}: {len(pipe)} tensors"
    if args.map:
        done += f", {renamed} renamed"
    if added:
        done += f", {len(added)} batch-norm num_batches_tracked counter(s) added as 0"
    _say(args, done)
    return 0


# ------------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``coreprune`` command (one sub-parser per command).

    Examples
    --------
    >>> args = build_parser().parse_args(["prune", "in.npz", "-o", "out.npz", "--sparsity", "0.5"])
    >>> args.command, args.sparsity, args.global_
    ('prune', 0.5, False)
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar, summary or notes")

    picks = argparse.ArgumentParser(add_help=False)
    picks.add_argument("--include", action="append", metavar="GLOB",
                       help="work on the floating tensors whose name matches GLOB (repeatable; default: "
                            "every floating tensor with ndim >= 2)")
    picks.add_argument("--exclude", action="append", metavar="GLOB",
                       help="leave the tensors matching GLOB as they are (repeatable)")

    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("input", metavar="FILE", help="weight file (.params, .pt, .npz, .safetensors, .cpz)")
    output.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="file to write; the format follows its extension")

    def prune_options(p: argparse.ArgumentParser, required: bool) -> None:
        g = p.add_argument_group("pruning")
        how = g.add_mutually_exclusive_group(required=required)
        how.add_argument("--threshold", type=_threshold, metavar="T", help="zero every weight with |w| <= T")
        how.add_argument("--sparsity", type=_fraction, metavar="S",
                         help="zero the round(S * n) smallest-|w| weights of each tensor")
        g.add_argument("--global", dest="global_", action="store_true",
                       help="with --sparsity: one threshold over all selected tensors (reads the input "
                            "again to find it; still one tensor at a time)")

    def quant_options(p: argparse.ArgumentParser, required: bool) -> None:
        g = p.add_argument_group("quantization")
        g.add_argument("--bits", type=_bits, required=required, metavar="B", help="bits per weight, 1 to 16")
        g.add_argument("--affine", action="store_true", help="affine (zero point) instead of symmetric")
        where = g.add_mutually_exclusive_group()
        where.add_argument("--axis", type=_int, metavar="K", help="one scale per index along axis K")
        where.add_argument("--group-size", type=_group_size, metavar="G",
                           help="one scale per G consecutive weights along the last axis")

    parser = _Parser(
        prog=_PROG,
        description="Inspect, prune, quantize, compress and convert neural-network weight files "
        "(MXNet .params, PyTorch .pt, .npz, .safetensors, .cpz) without any framework installed.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", parents=[common], help="per-tensor statistics table",
                       description="Print per-tensor statistics and totals.")
    p.add_argument("input", metavar="FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output with the same fields")
    p.add_argument("--plot", metavar="OUT.png", help="draw weight histograms and per-layer sparsity "
                   "(needs matplotlib: pip install \"coreprune[plot]\")")
    p.add_argument("--threshold", type=_threshold, default=DEFAULT_THRESHOLD, metavar="T",
                   help=f"report the share of weights with |w| <= T (default {DEFAULT_THRESHOLD:g})")
    p.set_defaults(run=_cmd_inspect)

    p = sub.add_parser("prune", parents=[output, picks, common], help="zero small weights",
                       description="Zero small weights by threshold or by sparsity.")
    prune_options(p, required=True)
    p.set_defaults(run=_cmd_prune)

    p = sub.add_parser("quantize", parents=[output, picks, common], help="n-bit quantization",
                       description="Quantize to B-bit integer codes. A .cpz output keeps the codes; other "
                       "formats get the dequantized values.")
    quant_options(p, required=True)
    p.set_defaults(run=_cmd_quantize)

    p = sub.add_parser("compress", parents=[output, picks, common], help="prune and/or quantize into .cpz",
                       description="Prune and/or quantize, then store in the compressed .cpz format.")
    prune_options(p, required=False)
    quant_options(p, required=False)
    p.set_defaults(run=_cmd_compress)

    p = sub.add_parser("decompress", parents=[output, common], help=".cpz to any format (dequantized)",
                       description="Write a .cpz file's tensors, dequantized, in any format.")
    p.set_defaults(run=_cmd_decompress)

    p = sub.add_parser("convert", parents=[common], help="convert between formats",
                       description="Convert between MXNet .params, PyTorch .pt, .npz, .safetensors and .cpz.")
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--map", choices=sorted(MAPPINGS), help="rename tensors between Gluon and PyTorch names")
    p.set_defaults(run=_cmd_convert)
    return parser


def _check_combinations(args: argparse.Namespace) -> None:
    """Rules argparse cannot state: --global needs --sparsity, quantization details need --bits."""
    if getattr(args, "global_", False) and args.sparsity is None:
        raise CliError(f"{args.command}: --global goes with --sparsity")
    if args.command == "compress" and args.bits is None:
        given = [f for f, v in (("--affine", args.affine), ("--axis", args.axis is not None),
                                ("--group-size", args.group_size is not None)) if v]
        if given:
            raise CliError(f"compress: {', '.join(given)} needs --bits")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``coreprune`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        Exit status: 0 on success, 2 for a user error (one line on stderr), 130 when interrupted.

    Examples
    --------
    >>> main(["prune", "missing.npz", "-o", "out.npz", "--sparsity", "2"])
    2
    """
    parser = build_parser()
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(argv)
        args.argv = argv
        _check_combinations(args)
        return int(args.run(args))
    except SystemExit as e:  # --help and --version print and exit 0
        return e.code if isinstance(e.code, int) else 0
    except (CliError, CompressionError) as e:
        message = str(e)
    except BrokenPipeError:  # `coreprune inspect big.pt | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as e:
        message = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130
    print(f"{_PROG}: error: {_one_line(message)}", file=sys.stderr)
    return 2
