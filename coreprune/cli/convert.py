"""``coreprune decompress`` and ``convert``: a file's tensors in another format, renamed if asked."""

from __future__ import annotations

import argparse

import numpy as np

from ..io import detect_format
from ..io.sharded import is_sharded, is_sharded_reader
from ..name_mapping import MAPPINGS, torch_batch_norm_counters
from ..shardwise import ShardSettings
from .common import (
    CliError,
    _note,
    _open_input,
    _progress,
    _say,
)
from .sharded import convert_settings, run_sharded, wants_shards
from .streaming import (
    _Counts,
    _Pipeline,
    _summary,
    _write,
)


def _cmd_decompress(args: argparse.Namespace) -> int:
    if is_sharded(args.input):
        with _open_input(args) as reader:
            assert is_sharded_reader(reader)
            other = sorted({f for f in reader.formats.values() if f != "cpz"})
        if other:
            raise CliError(f"{args.input}: decompress reads .cpz shards and these are {', '.join(other)}; "
                           "use convert")
    else:
        fmt = detect_format(args.input)
        if fmt != "cpz":
            raise CliError(f"{args.input}: decompress reads .cpz files and this is {fmt}; use convert")
    if wants_shards(args, args.output):
        return run_sharded(args, ShardSettings(), args.output)
    with _open_input(args) as reader, _progress(len(reader), "decompress", args.quiet) as bar:
        pipe = _Pipeline(reader, bar=bar)
        _write(args, reader, pipe, args.output)
    _summary(args, args.output, _Counts(), len(pipe))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    if wants_shards(args, args.output):
        return run_sharded(args, convert_settings(args), args.output)
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
