"""The lazy pipeline that prune, quantize, compress, decompress and convert write through: one tensor
read, transformed and written at a time; the per-tensor steps, the writer and the summary line."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..bias_correction import correct_bias
from ..bit_budget import DEFAULT_WIDTHS, allocate_bits, noise_to_signal, small_tensors
from ..errors import HessianError
from ..graph_moments import estimate_hessians
from ..io import open_weights, save
from ..io.base import TensorSpec, WeightReader
from ..io.cpz import save_compressed
from ..io.torch_format import EXTENSIONS as _TORCH_SUFFIXES
from ..pruning import (
    GlobalThreshold,
    _spec_view,
    global_magnitude_threshold,
    prune_magnitude,
    prune_threshold,
)
from ..quantization import quantize
from ..selection import select
from ..structured import mxnet_variable_names
from .common import (
    _EVERYTHING,
    _PROG,
    CliError,
    _human,
    _note,
    _pct,
    _reader_options,
    _say,
)
from .groups import _named, symbol_graph


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
        # The nesting names the source's tensors: it holds while no tensor is renamed or added.
        if rename is None and not added:
            self.structure = source.structure
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
        self.pruned = self.zeros = self.size = self.quantized = self.shared = 0
        self.bits: list[int] = []


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
                if cut[0].empty and args.sparsity < 1.0:
                    shown = ", ".join(cut[0].empty[:8]) + (" ..." if len(cut[0].empty) > 8 else "")
                    _note(args, f"--global {args.sparsity:g} removes every weight of {len(cut[0].empty)} "
                                f"tensor(s): {shown}")
            out = cut[0].prune(name, w)[0]
        else:
            out = prune_magnitude({name: w}, args.sparsity, include=_EVERYTHING)[0][name]
        counts.pruned += 1
        counts.zeros += int(out.size - np.count_nonzero(out))
        counts.size += int(out.size)
        return out

    return step


def quant_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The layout and method arguments of :func:`coreprune.quantize` that the command line asks for
    (the default layouts unless ``--group-size`` or ``--per-tensor``); one-file and sharded outputs
    both use it."""
    group_size = args.group_size if args.group_size is not None else None if args.per_tensor else "auto"
    return {"symmetric": not args.affine, "axis": args.axis, "group_size": group_size,
            "flatten": args.flatten, "method": args.method, "full_range": args.full_range,
            "rounding": args.rounding, "scale_dtype": args.scale_dtype}


def _quantize_one(
    args: argparse.Namespace, name: str, w: np.ndarray, bits: int, exact: bool = False,
    compensate: bool = True,
) -> Any:
    """``--bits`` (``exact`` False: the default layout may hold a small tensor at 8 bits) or a width
    the budget chose (taken as given); GPTQ rounding where ``--hessians`` has the tensor's moments
    and ``compensate`` (the budget measures round to nearest, as ``quantize(budget=)`` does)."""
    widths = {name: bits} if exact else bits
    moments = getattr(args, "hessian_reader", None)
    if not compensate or moments is None or name not in moments:
        return quantize({name: w}, widths, include=_EVERYTHING, **quant_kwargs(args))[name]
    try:
        return quantize({name: w}, widths, include=_EVERYTHING, hessians={name: moments[name]},
                        **quant_kwargs(args))[name]
    except HessianError as exc:  # the moments' fault, not the input's
        raise CliError(f"{args.hessians or args.symbol}: {exc}") from None


@contextlib.contextmanager
def _hessians(args: argparse.Namespace, reader: WeightReader) -> Iterator[None]:
    """``quantize --hessians``: its file open (lazily, as hostile as any input) for the run, every
    name in it checked against the input's tensors first."""
    if getattr(args, "hessians", None) is None:
        yield
        return
    with open_weights(args.hessians, **_reader_options(args)) as moments:
        unknown = [n for n in moments if n not in reader]
        if unknown:
            raise CliError(f"{args.hessians}: {unknown[0]!r} is not a tensor of {args.input} "
                           f"({len(unknown)} such name(s))")
        args.hessian_reader = moments
        try:
            yield
        finally:
            args.hessian_reader = None


#: Per tensor: each width's stored bytes, its error; the weight count and the shape.
CostTables = tuple[dict[str, dict[int, int]], dict[str, dict[int, float]], dict[str, int],
                   dict[str, tuple[int, ...]]]


def width_costs(
    reader: WeightReader,
    selected: list[str],
    costs: Callable[[str, np.ndarray], tuple[dict[int, int], dict[int, float]] | None],
) -> CostTables:
    """The first pass of a budget (``quantize --budget``, ``compress --codebook-budget``): one tensor
    at a time, ``costs(name, w)`` gives each width's stored bytes and error (None leaves the tensor
    out). Returns the sizes, errors, weight counts and shapes :func:`allocate_bits` takes."""
    sizes: dict[str, dict[int, int]] = {}
    errors: dict[str, dict[int, float]] = {}
    counts: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name in selected:
        w = reader[name]
        measured = costs(name, w)
        if measured is not None:
            sizes[name], errors[name] = measured
            counts[name], shapes[name] = int(w.size), tuple(w.shape)
    return sizes, errors, counts, shapes


def _budget_widths(reader: WeightReader, selected: list[str], args: argparse.Namespace) -> dict[str, int]:
    """``--budget``: a first pass measuring every width; then the allocation, as
    ``quantize(budget=...)`` does it (the same widths, the same floor for small tensors)."""

    def costs(name: str, w: np.ndarray) -> tuple[dict[int, int], dict[int, float]]:
        quantized = {b: _quantize_one(args, name, w, b, exact=True, compensate=False) for b in DEFAULT_WIDTHS}
        return ({b: q.nbytes for b, q in quantized.items()},
                {b: noise_to_signal(w, q.dequantize()) for b, q in quantized.items()})

    sizes, errors, counts, shapes = width_costs(reader, selected, costs)
    kw = quant_kwargs(args)
    small = small_tensors(shapes) if kw["group_size"] == "auto" and kw["axis"] is None else ()
    return allocate_bits(sizes, errors, counts, args.budget, wide_only=small)


def _symbol_corrections(
    reader: WeightReader, selected: list[str], args: argparse.Namespace, widths: dict[str, int] | None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``quantize --symbol``: a first pass quantizing the selected tensors, then the bias correction
    (:func:`coreprune.correct_bias`) from the symbol's graph. Returns the quantized tensors (for the
    write to reuse) and the corrected biases and running means, by file name (``arg:``/``aux:``
    prefixes as in the file)."""
    graph, weights = symbol_graph(args.symbol, args.input, dict(args.input_shape or []))
    var = mxnet_variable_names(reader)  # symbol_graph has read the same names, clashes refused
    layers = {node.params["weight"] for node in graph if node.op in ("conv", "linear")}
    if not layers & {var[n] for n in selected}:
        raise CliError(f"{args.symbol}: its layers use none of the {len(selected)} quantized tensors of "
                       f"{args.input}")
    if getattr(args, "estimate_hessians", False):  # GPTQ without data, keyed by the file's names
        with _named(args.symbol):
            estimated = estimate_hessians(graph, weights)
        args.hessian_reader = {n: estimated[var[n]] for n in selected if var[n] in estimated}
        args.estimated_layers = len(args.hessian_reader)
    # symbol_graph has read every array already: no second read of the selected ones (and the
    # write reuses these, so the moments serve only here)
    quantized = {n: _quantize_one(args, n, weights[var[n]], widths[n] if widths else args.bits,
                                  exact=bool(widths)) for n in selected}
    compressed: dict[str, Any] = dict(weights)
    compressed.update({var[n]: q for n, q in quantized.items()})
    with _named(args.symbol):
        fixed = correct_bias(weights, compressed, graph)
    changed: dict[str, np.ndarray] = {}
    for name, v in var.items():
        value = fixed.get(v)
        if name not in selected and isinstance(value, np.ndarray) and value is not weights[v]:
            changed[name] = value
    return quantized, changed


def _quantize_step(
    args: argparse.Namespace, counts: _Counts, keep_codes: bool, widths: dict[str, int] | None = None,
    corrected: dict[str, np.ndarray] | None = None, quantized: dict[str, Any] | None = None,
) -> Callable[[str, np.ndarray], Any]:
    """``corrected``: biases / running means that ``--symbol`` corrected; ``quantized``: tensors its
    first pass already quantized (not quantized again)."""

    def step(name: str, w: np.ndarray) -> Any:
        if corrected and name in corrected:
            return corrected[name]
        if quantized and name in quantized:
            q = quantized[name]
        else:
            q = _quantize_one(args, name, w, widths[name] if widths is not None else args.bits,
                              exact=widths is not None)
        counts.quantized += 1
        counts.bits.append(q.bits)  # what was applied: the default keeps small tensors at 8 bits
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
    over to the formats that hold it; a ``.cpz`` output also records its provenance. A nested
    checkpoint's structure and non-tensor values are kept by ``.cpz`` and torch outputs.
    """
    meta = dict(source.metadata) or None
    suffix = Path(output).suffix.lower()
    if suffix in (".params", ".nd"):
        # MXNet's default (legacy-shape) records hold no 0-d array; say so before writing anything,
        # in terms of what the command line offers.
        scalars = [n for n in pipeline if len(pipeline.spec(n).shape) == 0]
        if scalars:
            raise CliError(
                f"{output}: tensor {scalars[0]!r} is 0-d ({len(scalars)} in all), which MXNet .params "
                "files (legacy-shape records) cannot hold; write .npz, .safetensors or .pt instead"
            )
    tree = pipeline.structure
    kept = tree is not None and (suffix == ".cpz" or suffix in _TORCH_SUFFIXES)
    if suffix == ".cpz":
        provenance = {"coreprune": __version__, "source": Path(args.input).name,
                      "command": " ".join([_PROG, *args.argv])}
        save_compressed(pipeline, output, inputs=_inputs(args, source),
                        metadata={**(meta or {}), **provenance}, structure=tree,
                        entropy=getattr(args, "entropy", "ans") == "ans")
    elif suffix == ".safetensors" and meta:
        save(pipeline, output, inputs=_inputs(args, source), metadata=meta)
    else:
        save(pipeline, output, inputs=_inputs(args, source), **({"structure": tree} if kept else {}))
        if meta:
            _note(args, f"the metadata of {args.input} ({', '.join(meta)}) is not written: "
                  f"{Path(output).suffix or 'that format'} has no place for it")
    lost = [] if kept else list(source.extras)
    if lost:
        _note(args, f"{len(lost)} non-tensor value(s) of {args.input} not written: {', '.join(lost[:8])}")
    if tree is not None and not kept:
        _note(args, f"the nesting of {args.input} is not written: {output} holds its tensors under flat "
                    "dotted names (.pt and .cpz outputs keep it)")


def _inputs(args: argparse.Namespace, source: WeightReader) -> tuple[str | os.PathLike, ...]:
    """The files an output must not overwrite: the input, or every file of a sharded input."""
    files = getattr(source, "files", None)
    return tuple(files) if files else (args.input,)


def _input_size(path: str | os.PathLike) -> int:
    """Bytes of the input: one file, or a sharded checkpoint's shards."""
    if Path(path).is_file() and not str(path).endswith(".index.json"):
        return os.path.getsize(path)
    from ..io.sharded import open_sharded

    with open_sharded(path) as reader:
        return sum(os.path.getsize(p) for p in reader.shards)


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
            scope = f"groups of {args.group_size}" + (" of the flattened fan-in" if args.flatten else "")
        elif args.axis is not None:
            scope = f"axis {args.axis}"
        else:
            scope = "per tensor" if args.per_tensor else "default layouts"
        if args.method != "rtn" or args.full_range:
            scope += f", {args.method}" + (", full range" if args.full_range else "")
        if args.rounding != "auto":
            scope += f", {args.rounding} rounding"
        if getattr(args, "budget", None) is not None:
            spread = "/".join(str(b) for b in sorted(set(counts.bits)))
            parts.append(f"quantized {counts.quantized} to {spread} bits for a budget of "
                         f"{args.budget:g} bits per weight ({how}, {scope})")
        else:
            spread = "/".join(str(b) for b in sorted(set(counts.bits)))
            parts.append(f"quantized {counts.quantized} to {spread} bits ({how}, {scope})")
    if counts.shared:
        coding = "ANS-coded" if args.entropy == "ans" else "bit-packed"
        if getattr(args, "codebook_budget", None) is not None:
            spread = "/".join(str(b) for b in sorted(set(counts.bits)))
            rules = f"{spread} bits for a budget of {args.codebook_budget:g} bits per weight"
        else:
            rules = ",".join(f"{k}={b}" for k, b in args.codebook_bits)
        parts.append(f"shared {counts.shared} with k-means codebooks ({rules}; {coding})")
    size_in, size_out = _input_size(args.input), os.path.getsize(output)
    _say(args, f"wrote {output}: {_human(size_out)} (input {_human(size_in)}); " + "; ".join(parts))
