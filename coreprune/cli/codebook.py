"""``compress --codebook-bits``: k-means weight sharing per layer kind or glob, and the per-layer
codebook table ``inspect`` prints for the ``.cpz`` files it writes.

Rules (``--codebook-bits conv=8,fc=5,'encoder.*=4'``, or one width for every selected tensor,
``--codebook-bits 6``) are matched in this order: globs (:func:`fnmatch.fnmatchcase` on the tensor
name, in the order given), then the kinds decided by shape: ``conv`` is a floating tensor with 3 or
more axes (``(out, in, *kernel)``), ``fc`` a floating tensor with 2 (``(out, in)``: linear layers, and
embeddings, which have the same shape); ``all`` is every floating tensor with 2 or more axes. A tensor
no rule matches (biases, norms, integer buffers) is written as it is.
"""

from __future__ import annotations

import argparse
import fnmatch
from collections.abc import Callable
from typing import Any

import numpy as np

from ..bit_budget import allocate_bits, small_tensors
from ..entropy import empirical_entropy
from ..errors import CompressionError
from ..io.base import WeightReader
from ..selection import is_floating
from ..weight_sharing import CODEBOOK_WIDTHS, CodebookArray, codebook_costs, share_weights
from .common import CliError
from .streaming import width_costs

#: Layer kinds a rule may name, decided from the tensor's shape (see the module docstring).
KINDS = ("conv", "fc", "all")


def parse_codebook_bits(text: str) -> list[tuple[str, int]]:
    """``"conv=8,fc=5"`` -> ``[("conv", 8), ("fc", 5)]``; a bare width ``"6"`` -> ``[("all", 6)]``.

    Raises
    ------
    argparse.ArgumentTypeError
        A rule without ``=``, an empty name, or a width outside 1..16.

    Examples
    --------
    >>> parse_codebook_bits("conv=8,fc=5"), parse_codebook_bits("6")
    ([('conv', 8), ('fc', 5)], [('all', 6)])
    """
    rules: list[tuple[str, int]] = []
    hint = f"write KIND=BITS or GLOB=BITS (kinds: {', '.join(KINDS)}), or one width BITS"
    for part in text.split(","):
        key, sep, value = part.strip().rpartition("=")
        if not sep and "," not in text and value.strip().isdigit():
            key = "all"
        elif not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: {hint}")
        try:
            bits = int(value)
        except ValueError:
            bits = 0
        if not 1 <= bits <= 16:
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: codebook bits must be an integer 1..16")
        rules.append((key.strip(), bits))
    return rules


def kind_of(shape: tuple[int, ...]) -> str | None:
    """The layer kind of a floating tensor of ``shape``: ``"conv"``, ``"fc"`` or None.

    Examples
    --------
    >>> kind_of((20, 1, 5, 5)), kind_of((500, 800)), kind_of((500,))
    ('conv', 'fc', None)
    """
    if len(shape) >= 3:
        return "conv"
    return "fc" if len(shape) == 2 else None


def bits_for(name: str, shape: tuple[int, ...], dtype: np.dtype, rules: list[tuple[str, int]]) -> int | None:
    """The codebook width the rules give tensor ``name`` (globs first, then kinds), or None.

    Examples
    --------
    >>> rules = [("conv", 8), ("fc", 5), ("fc3.*", 4)]
    >>> [bits_for(n, s, np.dtype("float32"), rules) for n, s in
    ...  [("c1.weight", (6, 1, 5, 5)), ("fc1.weight", (10, 4)), ("fc3.weight", (2, 4)), ("fc1.bias", (10,))]]
    [8, 5, 4, None]
    """
    if not is_floating(dtype):
        return None
    for key, bits in rules:
        if key not in KINDS and fnmatch.fnmatchcase(name, key):
            return bits
    kind = kind_of(shape)
    if kind is None:
        return None
    for key, bits in rules:
        if key == kind or key == "all":
            return bits
    return None


def codebook_step(
    rules: list[tuple[str, int]], counts: Any, widths: dict[str, int] | None = None
) -> Callable[[str, np.ndarray], np.ndarray | CodebookArray]:
    """Per-tensor k-means sharing (after pruning: only the surviving, non-zero weights are clustered),
    at the width the rules give or, with ``widths`` (``--codebook-budget``), the one given by name."""

    def step(name: str, w: np.ndarray) -> np.ndarray | CodebookArray:
        bits = widths.get(name) if widths is not None else bits_for(name, tuple(w.shape), w.dtype, rules)
        if bits is None or w.size == 0:
            return w
        shared = share_weights({name: w}, {name: bits})[name]
        counts.shared += 1
        counts.bits.append(bits)
        return shared

    return step


def check_rules(args: argparse.Namespace) -> None:
    """Refuse what compress cannot do with codebooks (one line, exit 2)."""
    if args.codebook_bits is not None and args.codebook_budget is not None:
        raise CliError("compress: --codebook-bits or --codebook-budget, not both")
    flag = "--codebook-bits" if args.codebook_bits is not None else "--codebook-budget"
    if args.bits is not None:
        raise CliError(f"compress: {flag} and --bits are two ways to quantize; give one of them")
    if args.codebook_budget is not None and args.entropy != "ans":
        raise CliError("compress: --codebook-budget counts the entropy-coded size; "
                       "it goes with --entropy ans")


def budget_widths(
    reader: WeightReader,
    selected: list[str],
    budget: float,
    prune: Callable[[str, np.ndarray], np.ndarray] | None,
) -> dict[str, int]:
    """``--codebook-budget``: a first pass, one tensor at a time (pruned first, as it will be
    written), measuring each width of ``CODEBOOK_WIDTHS`` (:func:`coreprune.weight_sharing.codebook_costs`);
    then the allocation of ``share_weights(budget=)``. Only floating tensors of ``ndim >= 2`` among
    ``selected`` are shared."""

    def costs(name: str, w: np.ndarray) -> tuple[dict[int, int], dict[int, float]] | None:
        if w.ndim < 2 or w.size == 0 or not is_floating(w.dtype):
            return None
        return codebook_costs(w if prune is None else prune(name, w), CODEBOOK_WIDTHS)

    sizes, errors, counts, shapes = width_costs(reader, selected, costs)
    if not sizes:
        raise CliError("compress: --codebook-budget found no floating tensor of 2 or more axes to share")
    try:
        return allocate_bits(sizes, errors, counts, budget, wide_only=small_tensors(shapes))
    except CompressionError as err:
        raise CliError(f"compress: --codebook-budget {budget:g}: {err}") from None


def codebook_row(value: CodebookArray, stored_nbytes: int, code_nbytes: int) -> dict[str, Any]:
    """The per-layer figures of one codebook tensor (Deep Compression's Tables 2-3, plus the bound).

    Returns
    -------
    dict
        ``kept`` (fraction of weights surviving), ``bits`` (codebook width), ``nbytes`` (stored bytes:
        codebook, index and codes), ``bits_per_weight`` (``8 * nbytes / kept weights``),
        ``code_bits`` (``8 * code_nbytes / kept weights``: the codes stream alone) and
        ``code_entropy`` (empirical order-0 entropy of the surviving codes, bits per code: the bound
        ``code_bits`` approaches).

    Examples
    --------
    >>> from coreprune.weight_sharing import kmeans_codebook
    >>> w = np.zeros(1000, np.float32); w[::4] = np.linspace(-1, 1, 250)
    >>> row = codebook_row(kmeans_codebook(w, bits=2), 100, 64)
    >>> row["kept"], row["bits"], row["bits_per_weight"], row["code_bits"], round(row["code_entropy"], 2)
    (0.25, 2, 3.2, 2.048, 2.0)
    """
    codes = value.codes if value.mask is None else value.codes[value.mask]
    nnz = int(codes.size)
    size = int(np.prod(value.shape, dtype=np.int64))
    return {
        "kept": nnz / size if size else 0.0,
        "bits": value.bits,
        "nbytes": int(stored_nbytes),
        "bits_per_weight": 8 * stored_nbytes / nnz if nnz else None,
        "code_bits": 8 * code_nbytes / nnz if nnz else None,
        "code_entropy": empirical_entropy(codes.reshape(-1), 1 << value.bits),
    }
