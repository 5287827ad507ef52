"""``coreprune prune``, ``quantize`` and ``compress``: per-tensor steps through the lazy pipeline."""

from __future__ import annotations

import argparse

from ..shardwise import ShardSettings
from .codebook import budget_widths, check_rules, codebook_step
from .common import (
    CliError,
    _note,
    _open_input,
    _progress,
)
from .sharded import output_ext, picks, prune_settings, quant_settings, run_sharded, wants_shards
from .streaming import (
    _budget_widths,
    _chain,
    _Counts,
    _hessians,
    _is_cpz,
    _Pipeline,
    _prune_step,
    _quantize_step,
    _selection,
    _summary,
    _symbol_corrections,
    _write,
)


def _dry_run(args: argparse.Namespace) -> int:
    """Print the tensors the command would touch (name, shape, dtype) and how many; write nothing."""
    with _open_input(args) as reader:
        selected = _selection(reader, args)
        for name in selected:
            spec = reader.spec(name)
            print(f"{name}\t{tuple(spec.shape)}\t{spec.dtype}")
        untouched = len(reader) - len(selected)
    print(f"{args.command} would touch {len(selected)} of {len(selected) + untouched} tensors "
          f"({untouched} left as they are); nothing written")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _dry_run(args)
    if wants_shards(args, args.output):
        return run_sharded(args, ShardSettings(**prune_settings(args), **picks(args)), args.output)
    counts = _Counts()
    with _open_input(args) as reader, _progress(len(reader), "prune", args.quiet) as bar:
        selected = _selection(reader, args)
        pipe = _Pipeline(reader, bar=bar, step=_prune_step(reader, selected, args, counts), selected=selected)
        _write(args, reader, pipe, args.output)
    _summary(args, args.output, counts, len(pipe))
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _dry_run(args)
    if wants_shards(args, args.output):
        if args.symbol is not None:
            raise CliError(f"{args.output}: --symbol writes one file, not shards")
        if args.hessians is not None:
            raise CliError(f"{args.output}: --hessians writes one file, not shards")
        if output_ext(args.output) != ".cpz":
            _note(args, f"{args.output}: shards other than .cpz cannot hold {args.bits}-bit codes: "
                        "writing the dequantized values in each tensor's dtype (fake quantization)")
        return run_sharded(args, ShardSettings(**quant_settings(args), **picks(args)), args.output)
    counts = _Counts()
    keep_codes = _is_cpz(args.output)
    with _open_input(args) as reader, _progress(len(reader), "quantize", args.quiet) as bar, \
            _hessians(args, reader):
        selected = _selection(reader, args)
        widths = _budget_widths(reader, selected, args) if args.budget is not None else None
        quantized, corrected = (_symbol_corrections(reader, selected, args, widths)
                                if args.symbol is not None else ({}, {}))
        step = _quantize_step(args, counts, keep_codes, widths, corrected, quantized)
        pipe = _Pipeline(reader, bar=bar, step=step, selected=[*selected, *corrected])
        _write(args, reader, pipe, args.output)
    if args.symbol is not None:
        _note(args, f"{args.symbol}: bias correction changed {len(corrected)} bias / running-mean tensor(s)")
    if getattr(args, "estimate_hessians", False):
        _note(args, f"{args.symbol}: GPTQ rounding of {args.estimated_layers} tensor(s) from moments "
                    "estimated from its batch norms")
    if not keep_codes:
        width = args.bits or "n"
        _note(args, f"{args.output} cannot hold {width}-bit codes: wrote the dequantized values in each "
                    "tensor's dtype (fake quantization); use -o NAME.cpz to keep the packed codes")
    _summary(args, args.output, counts, len(pipe))
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    sharing = args.codebook_bits is not None or args.codebook_budget is not None
    if sharing:
        check_rules(args)
    if args.dry_run:
        return _dry_run(args)
    if wants_shards(args, args.output):
        if sharing:
            flag = "--codebook-bits" if args.codebook_bits is not None else "--codebook-budget"
            raise CliError(f"{args.output}: {flag} writes one .cpz file, not shards")
        if args.hessians is not None:
            raise CliError(f"{args.output}: --hessians writes one file, not shards")
        if output_ext(args.output) != ".cpz":
            raise CliError(f"{args.output}: compress writes .cpz shards; name the output NAME.cpz.index.json")
        quant_fields = quant_settings(args) if args.bits is not None else {}
        return run_sharded(args, ShardSettings(**prune_settings(args), **quant_fields, **picks(args)),
                           args.output)
    if not _is_cpz(args.output):
        raise CliError(f"{args.output}: compress writes .cpz files; name the output *.cpz "
                       "(prune and quantize write other formats)")
    counts = _Counts()
    with _open_input(args) as reader, _progress(len(reader), "compress", args.quiet) as bar, \
            _hessians(args, reader):
        selected = _selection(reader, args)
        prune = None
        if args.threshold is not None or args.sparsity is not None:
            prune = _prune_step(reader, selected, args, counts)
        quant = _quantize_step(args, counts, True) if args.bits is not None else None
        shared = None
        if args.codebook_budget is not None:
            first = _prune_step(reader, selected, args, _Counts()) if prune is not None else None
            widths = budget_widths(reader, selected, args.codebook_budget, first)
            shared = codebook_step([], counts, widths)
        elif args.codebook_bits is not None:
            shared = codebook_step(args.codebook_bits, counts)
        pipe = _Pipeline(reader, bar=bar, step=_chain(prune, quant, shared), selected=selected)
        _write(args, reader, pipe, args.output)
    _summary(args, args.output, counts, len(pipe))
    return 0
