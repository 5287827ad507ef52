"""What every command shares: the parser class and its one-line errors, argument types, output
helpers and the progress bar."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, NoReturn

import numpy as np

from ..io import open_weights
from ..io.base import WeightReader
from ..selection import _everything

_PROG = "coreprune"
_PLOT_SUFFIXES = (".png", ".svg", ".pdf")
_EVERYTHING = _everything  # the CLI selects names itself, then works per tensor


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


def _printable(text: str) -> str:
    """``text`` with every character a terminal would act on escaped as Python writes it.

    Tensor names and values come from the file: control and escape sequences (``\\x1b[2J``), bidi
    overrides and lone surrogates (which stdout cannot even encode) are shown as ``\\x1b``,
    ``\\u202e``, ``\\udc80``; printable text, non-ASCII letters included, is unchanged.

    Examples
    --------
    >>> _printable("fc.weight"), _printable("a\\x1b[31mb"), _printable("w\\udc80")
    ('fc.weight', 'a\\\\x1b[31mb', 'w\\\\udc80')
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _one_line(text: str) -> str:
    return _printable(" ".join(str(text).split()))


def _print(text: str, file: Any = None) -> None:
    """Print one line of output (escaped: see :func:`_printable`)."""
    print(_printable(text), file=file)


def _note(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(f"{_PROG}: note: {_one_line(text)}", file=sys.stderr)


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        _print(text)


#: Values a non-tensor extra may show in total (shared or nested containers otherwise multiply).
_JSON_NODES = 2000


def _jsonable(value: Any, depth: int = 0, budget: list[int] | None = None) -> Any:
    """A JSON-safe rendering of a non-tensor extra (checkpoint epoch, metadata, ...).

    At most 4 levels, 100 items a level and :data:`_JSON_NODES` values in all; what is left out is
    a repr cut short, computed in bounded time however deep or shared the value is.
    """
    from ..io.pickle_vm import short_repr

    budget = [_JSON_NODES] if budget is None else budget
    budget[0] -= 1
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):  # huge ints (Python refuses to print > 4,300 digits) as a short form
        return value if abs(value) < 10**300 else f"<int of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item(), depth, budget)
    if depth < 4 and budget[0] > 0 and isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1, budget) for v in value[:100]]
    if depth < 4 and budget[0] > 0 and isinstance(value, dict):
        return {_jsonable_key(k): _jsonable(v, depth + 1, budget) for k, v in list(value.items())[:100]}
    return short_repr(value, 200)


def _jsonable_key(key: Any) -> str:
    from ..io.pickle_vm import short_repr

    return key if isinstance(key, str) else short_repr(key, 80)


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


def _reader_options(args: argparse.Namespace) -> dict[str, Any]:
    """How the command line opens every input file, shards included: as untrusted (never
    memory-mapped, so a file changed underneath is an error, not SIGBUS), with the expansion budget
    and the globals the user allowed."""
    return {
        "mmap": False,
        "max_expansion": getattr(args, "max_expansion", None),
        "allow_globals": tuple(getattr(args, "allow_global", None) or ()),
    }


def _open_input(args: argparse.Namespace) -> WeightReader:
    """Open the input with :func:`_reader_options`."""
    return open_weights(args.input, **_reader_options(args))


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _byte_count(text: str) -> int:
    """``"512M"`` -> 536870912: a number of bytes with an optional K/M/G/T (binary) suffix."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = raw[-1:] if raw[-1:] in _UNITS else ""
    try:
        value = float(raw[: len(raw) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a byte count (e.g. 4096, 512M, 8G)") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a byte count >= 0")
    return int(value * _UNITS[unit])


def _global_name(text: str) -> str:
    if text.count(".") < 1 or not all(part.isidentifier() for part in text.split(".")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a global's 'module.Name'")
    return text
