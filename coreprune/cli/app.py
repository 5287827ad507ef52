"""The ``coreprune`` argument parser (one sub-parser per command) and :func:`main`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import CompressionError
from ..name_mapping import MAPPINGS
from ..stats import DEFAULT_THRESHOLD
from .codebook import parse_codebook_bits
from .common import (
    _PROG,
    CliError,
    _bits,
    _byte_count,
    _float,
    _fraction,
    _global_name,
    _group_size,
    _int,
    _one_line,
    _Parser,
    _threshold,
)
from .compress import _cmd_compress, _cmd_prune, _cmd_quantize
from .convert import _cmd_convert, _cmd_decompress
from .groups import _input_shape
from .inspect import _cmd_inspect
from .sharded import add_shard_options


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``coreprune`` command (one sub-parser per command).

    Examples
    --------
    >>> args = build_parser().parse_args(["prune", "in.npz", "-o", "out.npz", "--sparsity", "0.5"])
    >>> args.command, args.sparsity, args.global_
    ('prune', 0.5, False)
    """
    common = _Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar, summary or notes")
    reading = common.add_argument_group("reading untrusted files (docs/security.md)")
    reading.add_argument("--max-expansion", type=_byte_count, metavar="BYTES",
                         help="bytes the input may expand to beyond what it stores (deflated members, "
                              "sparse arrays, .cpz layouts, shared torch storages); default "
                              "max(32 x the file size, 128 MiB); suffixes K, M, G, T")
    reading.add_argument("--allow-global", action="append", type=_global_name, metavar="MODULE.NAME",
                         help="let a torch checkpoint name this global outside the allowlist (read as an "
                              "opaque record; nothing is imported or run); repeatable")

    picks = _Parser(add_help=False)
    picks.add_argument("--include", action="append", metavar="GLOB",
                       help="work on the floating tensors whose name matches GLOB (repeatable; default: "
                            "the weights: floating, ndim >= 2, not a bias, mask, token, position "
                            "embedding or norm parameter)")
    picks.add_argument("--dry-run", action="store_true",
                       help="list the tensors that would be touched, with shapes and dtypes; write nothing")
    picks.add_argument("--exclude", action="append", metavar="GLOB",
                       help="leave the tensors matching GLOB as they are (repeatable)")

    output = _Parser(add_help=False)
    output.add_argument("input", metavar="FILE", help="weight file (.params, .pt, .npz, .safetensors, .cpz), "
                        "or a sharded checkpoint: its *.index.json or its folder")
    output.add_argument("-o", "--output", metavar="OUT",
                        help="file to write; the format follows its extension; DIR/NAME.EXT.index.json "
                             "writes shards NAME-0000i-of-0000N.EXT and a new index "
                             "(required unless --dry-run)")

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
                           help="one scale per G consecutive weights along the last axis (a shorter last "
                                "group where G does not divide it)")
        where.add_argument("--per-tensor", action="store_true",
                           help="one scale per tensor (default: a layout per tensor, per output channel at "
                                "8 bits and for small tensors, else groups of about 64 of each channel's "
                                "flattened fan-in)")
        g.add_argument("--flatten", action="store_true",
                       help="with --group-size: groups along each output channel's flattened fan-in")
        g.add_argument("--method", choices=("rtn", "clip", "hqq"), default="rtn",
                       help="scales: round to nearest (default), clipping search, or half-quadratic")
        g.add_argument("--full-range", action="store_true",
                       help="symmetric codes use -2**(B-1) too, scale max|w| / (2**(B-1) - 1/2) "
                            "(torch's int8)")
        g.add_argument("--rounding", choices=("auto", "half_even", "balanced", "torch"), default="auto",
                       help="codes: balanced (errors of each output channel cancel) for conv kernels "
                            "with the default layouts, else half-even (auto, the default); or one "
                            "of them everywhere; or torch's own rounding")
        g.add_argument("--scale-dtype", choices=("auto", "float32", "float16"), default="auto",
                       help="how scales are stored: float16 per channel and group where they fit, "
                            "except --bits 8 and more (auto, the default); or one of them everywhere")
        g.add_argument("--hessians", metavar="MOMENTS",
                       help="GPTQ rounding: a weight file (any format read here) holding, under the "
                            "input's tensor names, each layer's input second moments (fan_in x fan_in), "
                            "as coreprune.torch/mxnet.input_hessians return them; tensors without one "
                            "are rounded to nearest")

    parser = _Parser(
        prog=_PROG,
        description="Inspect, prune, quantize, compress and convert neural-network weight files "
        "(MXNet .params, PyTorch .pt, .npz, .safetensors, .cpz) without any framework installed.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", parents=[common], help="per-tensor statistics table",
                       description="Print per-tensor statistics and totals (and each tensor's shard).")
    p.add_argument("input", metavar="FILE", help="weight file, or a sharded checkpoint's index or folder")
    p.add_argument("--json", action="store_true", help="machine-readable output with the same fields")
    p.add_argument("--plot", metavar="OUT.png", help="draw weight histograms and per-layer sparsity "
                   "(needs matplotlib: pip install \"coreprune[plot]\")")
    p.add_argument("--threshold", type=_threshold, default=DEFAULT_THRESHOLD, metavar="T",
                   help=f"report the share of weights with |w| <= T (default {DEFAULT_THRESHOLD:g})")
    p.add_argument("--groups", metavar="SYMBOL.json",
                   help="FILE is an MXNet checkpoint's .params: print the structured-pruning coupling groups "
                        "of its symbol (channels, coupled tensors, L2 importance) instead of the table")
    p.add_argument("--input-shape", type=_input_shape, action="append", metavar="NAME=1x3x224x224",
                   help="with --groups: shape of a data input, when the first layer reading it cannot tell")
    p.set_defaults(run=_cmd_inspect)

    p = sub.add_parser("prune", parents=[output, picks, common], help="zero small weights",
                       description="Zero small weights by threshold or by sparsity.")
    prune_options(p, required=True)
    add_shard_options(p)
    p.set_defaults(run=_cmd_prune)

    p = sub.add_parser("quantize", parents=[output, picks, common], help="n-bit quantization",
                       description="Quantize to B-bit integer codes. A .cpz output keeps the codes; other "
                       "formats get the dequantized values.")
    quant_options(p, required=False)
    p.add_argument("--budget", type=_float, metavar="X",
                   help="instead of --bits: average bits per weight (codes, scales, zero points); "
                        "each tensor gets 2, 3, 4, 6 or 8 bits by its reconstruction error "
                        "(reads the input twice)")
    p.add_argument("--symbol", metavar="SYMBOL.json",
                   help="FILE is an MXNet checkpoint's .params: correct each quantized layer's bias or "
                        "batch-norm running mean from the batch norms before it (data-free bias "
                        "correction, read from this symbol; MXNet not needed)")
    p.add_argument("--input-shape", type=_input_shape, action="append", metavar="NAME=1x3x224x224",
                   help="with --symbol: shape of a data input, when the first layer reading it cannot tell")
    p.add_argument("--estimate-hessians", action="store_true",
                   help="with --symbol: GPTQ rounding without data, from each layer's input moments "
                        "estimated from the symbol's batch norms (coreprune.estimate_hessians)")
    add_shard_options(p)
    p.set_defaults(run=_cmd_quantize)

    p = sub.add_parser("compress", parents=[output, picks, common], help="prune and/or quantize into .cpz",
                       description="Prune and/or quantize, then store in the compressed .cpz format.")
    prune_options(p, required=False)
    quant_options(p, required=False)
    g = p.add_argument_group("weight sharing and entropy coding (Deep Compression)")
    g.add_argument("--codebook-bits", type=parse_codebook_bits, metavar="RULES",
                   help="instead of --bits: a k-means codebook of 2**B shared values per tensor, B by layer "
                        "kind or name glob, e.g. conv=8,fc=5 or 'features.*=6,fc=4' or one width 6 "
                        "(kinds by shape: conv >= 3 axes, fc 2 axes, all; globs win over kinds)")
    g.add_argument("--codebook-budget", type=_float, metavar="X",
                   help="instead of --codebook-bits: average bits per weight as the .cpz file stores the "
                        "shared tensors (entropy-coded codes and positions + codebooks); each tensor of "
                        "2 or more axes gets 3 to 8 bits by its reconstruction error (reads the input twice)")
    g.add_argument("--entropy", choices=("ans", "none"), default="ans",
                   help="codebook tensors: ANS-code their codes and index gaps (ans, the default) or "
                        "bit-pack them (none)")
    add_shard_options(p)
    p.set_defaults(run=_cmd_compress)

    p = sub.add_parser("decompress", parents=[output, common], help=".cpz to any format (dequantized)",
                       description="Write a .cpz file's tensors, dequantized, in any format.")
    add_shard_options(p)
    p.set_defaults(run=_cmd_decompress)

    p = sub.add_parser("convert", parents=[common], help="convert between formats",
                       description="Convert between MXNet .params, PyTorch .pt, .npz, .safetensors and .cpz.")
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--map", choices=sorted(MAPPINGS), help="rename tensors between Gluon and PyTorch names")
    add_shard_options(p)
    p.set_defaults(run=_cmd_convert)
    return parser


def _check_combinations(args: argparse.Namespace) -> None:
    """Rules argparse cannot state: --global needs --sparsity, quantization details need --bits."""
    if getattr(args, "output", "") is None and not getattr(args, "dry_run", False):
        raise CliError(f"{args.command}: -o/--output OUT is required (or --dry-run to list what would be "
                       "touched)")
    if getattr(args, "global_", False) and args.sparsity is None:
        raise CliError(f"{args.command}: --global goes with --sparsity")
    if args.command == "quantize" and (args.bits is None) == (args.budget is None):
        raise CliError("quantize: give --bits B or --budget X (one of them)")
    if getattr(args, "estimate_hessians", False):
        if args.symbol is None:
            raise CliError("quantize: --estimate-hessians needs --symbol SYMBOL.json (the graph to "
                           "estimate from)")
        if args.hessians is not None:
            raise CliError("quantize: --estimate-hessians or --hessians MOMENTS, not both")
    if args.command == "compress" and args.bits is None:
        given = [f for f, v in (("--affine", args.affine), ("--axis", args.axis is not None),
                                ("--group-size", args.group_size is not None),
                                ("--per-tensor", args.per_tensor),
                                ("--flatten", args.flatten), ("--method", args.method != "rtn"),
                                ("--full-range", args.full_range),
                                ("--rounding", args.rounding != "auto"),
                                ("--scale-dtype", args.scale_dtype != "auto"),
                                ("--hessians", args.hessians is not None)) if v]
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
    except RecursionError:  # a last line of defence: the readers bound nesting, but never a traceback
        message = "the input nests too deeply to be processed (corrupted or hostile?)"
    except MemoryError:
        message = "out of memory (the input declares more data than fits; see --max-expansion)"
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130
    print(f"{_PROG}: error: {_one_line(message)}", file=sys.stderr)
    return 2
