"""Sharded output for prune, quantize, compress, decompress and convert: shard by shard through
:func:`coreprune.shardwise.process_shards`, in this process, ``--jobs N`` processes or on a Dask
cluster (``--scheduler ADDRESS``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..io.sharded import INDEX_SUFFIX, is_sharded_reader, parse_size
from ..name_mapping import MAPPINGS, torch_batch_norm_counters
from ..shardwise import ShardResult, ShardSettings, process_shards
from .common import _PROG, CliError, _human, _note, _open_input, _pct, _progress, _reader_options, _say
from .streaming import quant_kwargs


def add_shard_options(p: argparse.ArgumentParser) -> None:
    """``--jobs``, ``--scheduler`` and ``--max-shard-size`` (sharded output)."""
    g = p.add_argument_group("sharded output (-o DIR/NAME.EXT.index.json)")
    g.add_argument("--jobs", type=_jobs, default=1, metavar="N",
                   help="process N shards at a time in worker processes (default 1); the output is "
                        "identical whatever N")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the shards as tasks on the Dask cluster at ADDRESS (tcp://host:8786); "
                        "needs pip install \"coreprune[dask]\" and the folders at the same paths on "
                        "every worker")
    g.add_argument("--max-shard-size", type=_size, metavar="SIZE",
                   help="at most SIZE bytes of dense tensor data per output shard (500MB, 5GB, 2GiB); "
                        "default: the input's shard layout")


def _jobs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--jobs must be >= 1, got {text}")
    return n


def _size(text: str) -> int:
    from ..errors import CompressionError

    try:
        return parse_size(text)
    except CompressionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def wants_shards(args: argparse.Namespace, output: str) -> bool:
    """Whether this command writes a sharded checkpoint; refuses shard options on a one-file output."""
    if Path(output).is_dir():
        raise CliError(f"{output}: is a folder; name the sharded output's index, e.g. "
                       f"{Path(output) / ('model.safetensors' + INDEX_SUFFIX)}")
    sharded = output.endswith(INDEX_SUFFIX) or args.max_shard_size is not None
    if not sharded and (args.jobs > 1 or args.scheduler):
        raise CliError(f"{output}: --jobs and --scheduler work shard by shard; name a sharded output "
                       f"NAME.EXT{INDEX_SUFFIX}")
    return sharded


def run_sharded(args: argparse.Namespace, settings: ShardSettings, output: str) -> int:
    """Run one command shard by shard and print its summary."""
    provenance = {"coreprune": __version__, "source": Path(args.input).name,
                  "command": " ".join([_PROG, *_without_execution(args.argv)])}
    settings = ShardSettings(**{**settings.__dict__, "metadata": provenance,
                                "reader_options": _reader_options(args)})
    with _open_input(args) as reader:
        total = len(reader)
        source_meta = dict(reader.metadata)
        extras = list(reader.extras)
        files = reader.files if is_sharded_reader(reader) else [Path(args.input)]
        size_in = sum(os.path.getsize(p) for p in files)
    counts = {"pruned": 0, "zeros": 0, "size": 0, "quantized": 0}
    with _progress(total, args.command, args.quiet) as bar:

        def done(result: ShardResult) -> None:
            for key in counts:
                counts[key] += getattr(result, key)
            bar.update(len(result.names))

        run = process_shards(args.input, output, settings, jobs=args.jobs, scheduler=args.scheduler,
                             max_shard_size=args.max_shard_size, on_done=done)
    fmt = Path(run.shards[0]).suffix.lower() if run.shards else ""
    if source_meta and fmt not in (".safetensors", ".cpz"):
        _note(args, f"the metadata of {args.input} ({', '.join(source_meta)}) is not written: "
              f"{fmt or 'that format'} has no place for it")
    if extras:
        _note(args, f"{len(extras)} non-tensor value(s) of {args.input} not written: {', '.join(extras[:8])}")
    size_out = sum(os.path.getsize(p) for p in run.shards)
    parts = [f"{sum(len(r.names) for r in run.results)} tensors in {len(run.shards)} shards"]
    if counts["pruned"]:
        share = counts["zeros"] / counts["size"] if counts["size"] else 0.0
        parts.append(f"pruned {counts['pruned']}: {_pct(share)} of their {counts['size']:,} weights are zero")
    if counts["quantized"]:
        how = "symmetric" if settings.symmetric else "affine"
        scope = (f"groups of {settings.group_size}" if settings.group_size else
                 "per tensor" if settings.axis is None else f"axis {settings.axis}")
        parts.append(f"quantized {counts['quantized']} to {settings.bits} bits ({how}, {scope})")
    _say(args, f"wrote {run.index}: {_human(size_out)} (input {_human(size_in)}); " + "; ".join(parts))
    return 0


def _without_execution(argv: list[str]) -> list[str]:
    """The command line less ``--jobs`` and ``--scheduler``: where it ran does not change the output,
    so the provenance (and the bytes of every shard) must not depend on it either."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--jobs", "--scheduler"):
            skip = True
        elif not arg.startswith(("--jobs=", "--scheduler=")):
            out.append(arg)
    return out


def prune_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The pruning fields of :class:`ShardSettings` from the command line."""
    return {"threshold": args.threshold, "sparsity": args.sparsity,
            "scope": "global" if args.global_ else "layer"}


def quant_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The quantization fields of :class:`ShardSettings` from the command line."""
    if getattr(args, "budget", None) is not None:
        raise CliError("--budget is not supported with sharded output yet: write one file, or give --bits")
    return {"bits": args.bits, **quant_kwargs(args)}


def picks(args: argparse.Namespace) -> dict[str, Any]:
    """``--include`` / ``--exclude``."""
    return {"include": args.include or None, "exclude": args.exclude or None}


def convert_settings(args: argparse.Namespace) -> ShardSettings:
    """``convert --map``: the renames and the batch-norm counters torch has and Gluon has not."""
    if not args.map:
        return ShardSettings()
    with _open_input(args) as reader:
        rename = MAPPINGS[args.map](list(reader))
    added = {}
    if args.map == "gluon-to-torch":
        counters = torch_batch_norm_counters(rename.values())
        added = {name: (anchor, np.array(0, np.int64)) for name, anchor in counters.items()}
    return ShardSettings(rename=rename, added=added)


def output_ext(output: str) -> str:
    """The shards' extension of a sharded output name (``m.cpz.index.json`` -> ``.cpz``)."""
    name = Path(output).name
    base = name[: -len(INDEX_SUFFIX)] if name.endswith(INDEX_SUFFIX) else name
    return os.path.splitext(base)[1].lower()
