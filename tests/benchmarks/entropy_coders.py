"""ANS (constriction, what .cpz uses) against zstandard on the real code and gap streams of a .cpz file.

Usage::

    python tests/benchmarks/entropy_coders.py deep-compression-out/lenet-300-100-torch.cpz [--repeat 7]

For every codebook tensor of the file it takes the surviving weights' codes and their relative gap
fields (the width the file chose), and codes each stream with

* ``ans``: :func:`coreprune.entropy.encode_symbols` (the stream's own histogram, one byte per symbol
  of header; marked ``bit-packed`` where the stream is packed instead because that is smaller);
* ``zstd-3`` / ``zstd-19``: ``zstandard`` at levels 3 and 19 on the stream as one byte (or two,
  for wider alphabets) per symbol;

and prints the bytes, the bits per symbol next to the empirical entropy (the order-0 bound), and the
encode and decode times as median [min-max] over ``--repeat`` runs, all measured in this run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import zstandard

from coreprune.entropy import decode_symbols, empirical_entropy, encode_symbols
from coreprune.io.cpz import open_reader
from coreprune.sparse_index import gap_fields
from coreprune.weight_sharing import CodebookArray


def _timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, times


def _fmt(times):
    ms = [1000 * t for t in times]
    return f"{statistics.median(ms):7.2f} [{min(ms):.2f}-{max(ms):.2f}] ms"


def _coders(symbols, k):
    raw = symbols.astype(np.uint8 if k <= 256 else "<u2").tobytes()
    return {
        "ans": (lambda: encode_symbols(symbols, k), decode_symbols),
        "zstd-3": (lambda: zstandard.ZstdCompressor(level=3).compress(raw),
                   lambda b: zstandard.ZstdDecompressor().decompress(b)),
        "zstd-19": (lambda: zstandard.ZstdCompressor(level=19).compress(raw),
                    lambda b: zstandard.ZstdDecompressor().decompress(b)),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cpz")
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args(argv)
    totals: dict[str, int] = {}
    with open_reader(args.cpz) as reader:
        for name in reader:
            value = reader.raw(name)
            if not isinstance(value, CodebookArray):
                continue
            width = reader._entry(name).gap_width
            positions = np.flatnonzero(value.mask) if value.mask is not None else np.arange(value.codes.size)
            streams = {"codes": (value.codes.reshape(-1)[positions].astype(np.int64), 1 << value.bits),
                       f"gaps/{width}b": (gap_fields(positions, width)[0].astype(np.int64), 1 << width)}
            for label, (symbols, k) in streams.items():
                h = empirical_entropy(symbols, k)
                print(f"{name} {label}: {symbols.size} symbols, entropy {h:.3f} bits/symbol "
                      f"({h * symbols.size / 8:.0f} bytes)")
                for coder, (enc, dec) in _coders(symbols, k).items():
                    blob, t_enc = _timed(enc, args.repeat)
                    _, t_dec = _timed(lambda b=blob, d=dec: d(b), args.repeat)
                    totals[coder] = totals.get(coder, 0) + len(blob)
                    rate = 8 * len(blob) / max(1, symbols.size)
                    packed = " (bit-packed)" if coder == "ans" and blob[0] == 3 else ""
                    print(f"  {coder:8s} {len(blob):7d} bytes {rate:6.3f} bits/sym"
                          f"  encode {_fmt(t_enc)}  decode {_fmt(t_dec)}{packed}")
    print("total bytes: " + ", ".join(f"{c} {n}" for c, n in totals.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
