"""The .cpz layout planner sizes layouts from counts; here it is compared with the simple planner it
replaced (positions and gaps of every stored element, the four sizes, the first minimum) on random
sparsity patterns: same layout, sizes, csr width and entries, and the same bytes in the file.
"""

from __future__ import annotations

import io
import json
import math
import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from coreprune.io.cpz import _encode_gaps, write
from coreprune.layout_planner import _plan
from coreprune.packing import pack_bits
from coreprune.quantization import QuantizedArray


def reference_plan(stored: np.ndarray, n: int, itemsize: int, bits: int | None) -> tuple:
    """(layout, nbytes, nnz, width, entries) by building every layout's size from all gaps."""
    def value_bytes(count: int) -> int:
        return math.ceil(count * bits / 8) if bits is not None else count * itemsize

    plans = [("full", value_bytes(n), n, 0, 0)]
    positions = np.flatnonzero(stored)
    nnz = int(positions.size)
    plans.append(("bitmask", math.ceil(n / 8) + value_bytes(nnz), nnz, 0, 0))
    gaps = np.diff(positions, prepend=-1) - 1
    for width in (8, 16):
        entries = nnz + int((gaps // ((1 << width) - 1)).sum())
        plans.append(("csr", entries * width // 8 + value_bytes(nnz), nnz, width, entries))
    return min(plans, key=lambda p: p[1])


def reference_index(stored: np.ndarray, width: int) -> bytes:
    """The csr index written one entry at a time, as the format page describes it."""
    escape = (1 << width) - 1
    out, previous = [], -1
    for p in np.flatnonzero(stored).tolist():
        gap = p - previous - 1
        out += [escape] * (gap // escape) + [gap % escape]
        previous = p
    return np.array(out, dtype=f"<u{width // 8}").tobytes()


@st.composite
def patterns(draw) -> np.ndarray:
    """Bool masks with runs: dense, sparse, and gaps around 255 and 65535."""
    n = draw(st.integers(0, 150_000))
    kind = draw(st.sampled_from(["bernoulli", "runs", "few"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "bernoulli":
        return rng.random(n) < draw(st.sampled_from([0.0, 0.001, 0.01, 0.06, 0.11, 0.125, 0.13, 0.3, 1.0]))
    stored = np.zeros(n, bool)
    if kind == "few" and n:
        stored[rng.integers(0, n, size=draw(st.integers(1, 8)))] = True
        return stored
    pos = -1
    while n:
        pos += draw(st.sampled_from([1, 2, 254, 255, 256, 510, 65534, 65535, 65536, 70000]))
        if pos >= n:
            break
        stored[pos] = True
    return stored


@settings(max_examples=120, deadline=None)
@given(stored=patterns(), itemsize=st.sampled_from([1, 2, 4, 8]), bits=st.sampled_from([None, 2, 4, 8]))
def test_planner_equals_the_reference_and_encodes_the_same_index(stored, itemsize, bits):
    plan, positions, gaps = _plan(stored, stored.size, itemsize, bits)
    assert (plan.layout, plan.nbytes, plan.nnz, plan.width, plan.entries) == reference_plan(
        stored, stored.size, itemsize, bits
    )
    if plan.layout == "csr":
        assert np.array_equal(positions, np.flatnonzero(stored))
        assert _encode_gaps(gaps, plan.width, plan.entries).tobytes() == reference_index(stored, plan.width)


def _blobs(data: bytes) -> dict:
    offset, length, _, _ = struct.unpack("<QQI4s", data[-24:])
    manifest = json.loads(data[offset : offset + length])
    out = {}
    for t in manifest["tensors"]:
        out[t["name"]] = (t, {role: data[o : o + n] for role, (o, n, _) in t["blobs"].items()})
    return out


@settings(max_examples=40, deadline=None)
@given(stored=patterns(), dtype=st.sampled_from(["float32", "float16", "int8", "float64"]))
def test_written_blobs_equal_the_reference_encoding(stored, dtype):
    rng = np.random.default_rng(stored.size)
    a = np.zeros(stored.size, dtype)
    a[stored] = (rng.integers(1, 100, size=int(stored.sum()))).astype(dtype)
    codes = np.where(stored, rng.integers(1, 8, size=stored.size), 0).astype(np.int8)
    q = QuantizedArray(codes=codes, scale=np.array(0.5, np.float32), zero_point=None, bits=4, symmetric=True,
                       axis=None, group_size=None, shape=codes.shape, dtype=np.dtype(np.float32))
    buf = io.BytesIO()
    write({"a": a, "q": q}, buf)
    blobs = _blobs(buf.getvalue())
    for name, kept, itemsize, bits in (("a", a[stored].tobytes(), a.itemsize, None),
                                       ("q", pack_bits(codes[stored], 4).tobytes(), 1, 4)):
        entry, raw = blobs[name]
        layout, _, nnz, width, entries = reference_plan(stored, stored.size, itemsize, bits)
        assert entry["layout"] == layout
        if layout == "full":
            continue
        assert entry["nnz"] == nnz and raw["values" if name == "a" else "codes"] == kept
        if layout == "bitmask":
            assert raw["mask"] == np.packbits(stored, bitorder="little").tobytes()
        else:
            assert (entry["width"], entry["entries"]) == (width, entries)
            assert raw["index"] == reference_index(stored, width)


def _every_gap(gap: int, n: int) -> np.ndarray:
    stored = np.zeros(n, bool)
    stored[gap::gap + 1] = True
    return stored


def test_planner_on_the_boundaries_of_each_layout():
    """Fixed patterns that land on each layout, escapes at both widths included."""
    seen = set()
    cases = [_every_gap(g, 400_000) for g in (0, 1, 6, 7, 8, 9, 253, 254, 255, 256, 509, 510, 65534, 65535,
                                              65536, 131070, 200_000)]
    cases.append(np.random.default_rng(0).random(400_000) < 0.125)
    for stored in cases:
        for itemsize, bits in ((4, None), (1, 4), (2, None), (1, 1)):
            plan, _, gaps = _plan(stored, stored.size, itemsize, bits)
            expected = reference_plan(stored, stored.size, itemsize, bits)
            assert (plan.layout, plan.nbytes, plan.nnz, plan.width, plan.entries) == expected
            seen.add((plan.layout, plan.width, plan.entries > plan.nnz))
            if plan.layout == "csr":
                index = _encode_gaps(gaps, plan.width, plan.entries)
                assert index.tobytes() == reference_index(stored, plan.width)
    assert {("full", 0, False), ("bitmask", 0, False), ("csr", 8, False), ("csr", 8, True),
            ("csr", 16, False), ("csr", 16, True)} <= seen, seen
