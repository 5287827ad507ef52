"""The .cpz format: exact round trips, honest sizes, documented bytes, and refusal of bad files."""

from __future__ import annotations

import io
import json
import math
import os
import struct
import zlib

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import coreprune
from coreprune import (
    CompressionError,
    QuantizedArray,
    WeightFileError,
    encoded_nbytes,
    layout_of,
    load_compressed,
    save_compressed,
)
from coreprune.io.cpz import MAGIC, VERSION, CpzReader, write

FOOTER = struct.Struct("<QQI4s")


# --------------------------------------------------------------------------------------------- helpers


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical: dtype, shape and every byte (so -0.0 and NaN payloads count)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.reshape(-1).view(np.uint8).tobytes() == b.reshape(-1).view(np.uint8).tobytes()
    )


def same_quantized(a: QuantizedArray, b: QuantizedArray) -> bool:
    zp_same = (a.zero_point is None and b.zero_point is None) or (
        a.zero_point is not None and b.zero_point is not None and same_bits(a.zero_point, b.zero_point)
    )
    return (
        isinstance(b, QuantizedArray)
        and same_bits(a.codes, b.codes)
        and same_bits(a.scale, b.scale)
        and zp_same
        and (a.bits, a.symmetric, a.axis, a.group_size, a.shape, a.dtype)
        == (b.bits, b.symmetric, b.axis, b.group_size, b.shape, b.dtype)
    )


def same_value(a, b) -> bool:
    return same_quantized(a, b) if isinstance(a, QuantizedArray) else same_bits(a, b)


def roundtrip(weights, tmp_path, name="m.cpz"):
    path = tmp_path / name
    save_compressed(weights, path)
    return load_compressed(path), path


def read_manifest(path) -> tuple[dict, int]:
    """Parse the footer and manifest exactly as docs/compressed-format.md describes them."""
    data = open(path, "rb").read()
    offset, length, crc, end = FOOTER.unpack(data[-FOOTER.size :])
    assert end == b"CPZE" and data[:8] == MAGIC
    assert struct.unpack("<II", data[8:16]) == (VERSION, 0)
    text = data[offset : offset + length]
    assert zlib.crc32(text) == crc and offset + length + FOOTER.size == len(data)
    return json.loads(text), offset


def rewrite_manifest(path, edit) -> None:
    """Apply ``edit(manifest)``; write the file back with a valid footer (forged but well-formed)."""
    manifest, offset = read_manifest(path)
    edit(manifest)
    data = open(path, "rb").read()[:offset]
    text = json.dumps(manifest).encode()
    open(path, "wb").write(data + text + FOOTER.pack(offset, len(text), zlib.crc32(text), b"CPZE"))


def pruned(rng, shape, density, dtype=np.float32):
    w = rng.standard_normal(shape).astype(dtype)
    return np.where(rng.random(shape) < density, w, np.zeros((), dtype)).astype(dtype)


# ---------------------------------------------------------------------------------------- round trips

DTYPES = [
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, np.complex64, np.complex128,
    ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn,
]
SHAPES = [(), (0,), (3, 0, 2), (7,), (5, 6), (2, 3, 4)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dense_round_trip_is_bit_exact_for_every_dtype_and_shape(tmp_path, dtype):
    rng = np.random.default_rng(0)
    weights = {}
    for i, shape in enumerate(SHAPES):
        a = np.asarray(rng.standard_normal(shape) * 3).astype(dtype)
        weights[f"t{i}"] = a
        if a.size:  # the same tensor, mostly zero: stored sparse
            s = a.copy().reshape(-1)
            s[rng.random(s.size) < 0.8] = 0
            weights[f"s{i}"] = s.reshape(shape)
    back, _ = roundtrip(weights, tmp_path)
    assert list(back) == list(weights)
    for name in weights:
        assert same_bits(weights[name], back[name]), name


def test_signed_zeros_nans_and_infinities_survive_sparse_layouts(tmp_path):
    a = np.zeros(1000, np.float32)
    a[[3, 500]] = -0.0
    a[7] = np.nan
    a[8] = np.frombuffer(np.uint32(0x7FC0_1234).tobytes(), np.float32)[0]  # a NaN with a payload
    a[9] = -np.inf
    b = np.zeros((40, 25), ml_dtypes.bfloat16)
    b[0, 0] = -0.0
    assert layout_of(a) != "full" and layout_of(b) != "full"
    back, _ = roundtrip({"a": a, "b": b}, tmp_path)
    assert same_bits(a, back["a"]) and same_bits(b, back["b"])
    assert np.signbit(back["a"][[3, 500]]).all()


def test_big_endian_input_reads_back_equal_in_native_order(tmp_path):
    a = np.arange(12, dtype=">f4").reshape(3, 4)
    back, _ = roundtrip({"a": a}, tmp_path)
    assert back["a"].dtype == np.dtype(np.float32) and back["a"].dtype.isnative
    np.testing.assert_array_equal(back["a"], a)


def test_non_contiguous_input_is_stored_in_c_order(tmp_path):
    a = np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2].T
    back, _ = roundtrip({"a": a}, tmp_path)
    np.testing.assert_array_equal(back["a"], a)


QUANT_CASES = [
    dict(bits=b, symmetric=s, axis=ax, group_size=g)
    for b in (1, 2, 3, 4, 7, 8, 9, 12, 16)
    for s in (True, False)
    for ax, g in ((None, None), (0, None), (None, 4))
    if not (b == 1 and not s)
]


@pytest.mark.parametrize("case", QUANT_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_quantized_round_trip_is_exact_dense_and_pruned(tmp_path, case):
    rng = np.random.default_rng(case["bits"])
    weights = {
        "dense": rng.standard_normal((8, 12)).astype(np.float32),
        "pruned": pruned(rng, (16, 12), 0.1),
        "half": pruned(rng, (4, 8), 0.5, np.float16),
        "bf16": rng.standard_normal((3, 8)).astype(ml_dtypes.bfloat16),
    }
    q = coreprune.quantize(weights, **case)
    back, _ = roundtrip(q, tmp_path)
    for name in q:
        assert same_quantized(q[name], back[name]), name
    if case["bits"] > 1:  # 90% zeros: the pruned tensor keeps its saving after quantization
        assert layout_of(q["pruned"]) != "full"
        assert encoded_nbytes(q["pruned"]) < q["pruned"].nbytes
    else:
        assert layout_of(q["pruned"]) == "full"


def test_affine_per_channel_fill_is_each_channels_zero_point(tmp_path):
    # columns with different ranges get different zero points; pruned entries take their channel's
    w = np.zeros((6, 200), np.float32)
    w[:, ::7] = np.linspace(-1, 3, 6)[:, None] * np.linspace(0.1, 1, 29)[None, :]
    w[0, 1] = -2.0
    q = coreprune.quantize({"w": w}, bits=6, symmetric=False, axis=0)["w"]
    assert len(set(q.zero_point.tolist())) > 1
    assert layout_of(q) != "full"
    back, _ = roundtrip({"w": q}, tmp_path)
    assert same_quantized(q, back["w"])
    np.testing.assert_array_equal(back["w"].dequantize()[w == 0], 0)


def test_a_hand_made_quantized_array_with_extreme_codes_round_trips(tmp_path):
    codes = np.array([[-8, 7, 0, 0], [0, 0, 0, -1]], np.int8)
    q = QuantizedArray(codes=codes, scale=np.array([0.5, 2.0], np.float32), zero_point=None, bits=4,
                       symmetric=True, axis=0, group_size=None, shape=(2, 4), dtype=np.dtype(np.float64))
    back, _ = roundtrip({"q": q}, tmp_path)
    assert same_quantized(q, back["q"])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 3000),
    density=st.sampled_from([0.0, 0.0005, 0.003, 0.02, 0.1, 0.5, 0.97, 1.0]),
    long_gap=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_sparsity_patterns_round_trip_with_the_smallest_layout(tmp_path_factory, n, density, long_gap,
                                                                     seed):
    rng = np.random.default_rng(seed)
    total = n + (70_000 if long_gap else 0)  # a gap longer than 2**16 - 1 needs escape entries
    a = np.zeros(total, np.float32)
    keep = rng.random(n) < density
    a[:n][keep] = rng.standard_normal(int(keep.sum())).astype(np.float32) + 10
    if long_gap and total:
        a[-1] = 1.5
    back, path = roundtrip({"a": a}, tmp_path_factory.mktemp("h"))
    assert same_bits(a, back["a"])
    # independent reference of the three layout costs (plain Python over the positions)
    positions = [int(p) for p in np.flatnonzero(a)]
    nnz = len(positions)
    costs = {"full": total * 4, "bitmask": math.ceil(total / 8) + 4 * nnz}
    for width in (8, 16):
        escape, prev, entries = (1 << width) - 1, -1, 0
        for p in positions:
            entries += (p - prev - 1) // escape + 1
            prev = p
        costs[f"csr{width}"] = entries * width // 8 + 4 * nnz
    assert encoded_nbytes(a) == min(costs.values())
    assert os.path.getsize(path) >= encoded_nbytes(a)


@settings(max_examples=30, deadline=None)
@given(
    bits=st.integers(2, 16),
    symmetric=st.booleans(),
    density=st.floats(0.0, 1.0),
    rows=st.integers(1, 6),
    cols=st.sampled_from([4, 8, 300]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_pruned_quantized_tensors_round_trip(
    tmp_path_factory, bits, symmetric, density, rows, cols, seed
):
    rng = np.random.default_rng(seed)
    w = pruned(rng, (rows, cols), density)
    q = coreprune.quantize({"w": w}, bits=bits, symmetric=symmetric, axis=0)
    back, _ = roundtrip(q, tmp_path_factory.mktemp("q"))
    assert same_quantized(q["w"], back["w"])
    assert encoded_nbytes(q["w"]) <= q["w"].nbytes


def test_the_csr_index_decodes_with_a_plain_reading_of_the_documented_layout(tmp_path):
    """A tiny independent reader of docs/compressed-format.md decodes a csr tensor with 8-bit gaps."""
    a = np.zeros(2000, np.float32)
    pos = [0, 1, 300, 301, 700]  # gaps of 298 and 398 zeros need one escape entry of 255 each
    a[pos] = [1, 2, 3, 4, 5]
    _, path = roundtrip({"a": a}, tmp_path)
    manifest, _ = read_manifest(path)
    (entry,) = manifest["tensors"]
    assert (entry["kind"], entry["layout"], entry["width"], entry["nnz"]) == ("dense", "csr", 8, 5)
    data = open(path, "rb").read()
    off, length, crc = entry["blobs"]["index"]
    index = list(data[off : off + length])
    assert index == [0, 0, 255, 43, 0, 255, 143] and zlib.crc32(data[off : off + length]) == crc
    voff, vlen, _ = entry["blobs"]["values"]
    values = struct.unpack(f"<{vlen // 4}f", data[voff : voff + vlen])
    decoded, p = [0.0] * 2000, -1
    it = iter(values)
    for e in index:
        if e == 255:
            p += 255
        else:
            p += e + 1
            decoded[p] = next(it)
    assert decoded == a.tolist()
    assert off % 8 == 0 and voff % 8 == 0


def test_manifest_records_quantization_parameters(tmp_path):
    w = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float16)
    q = coreprune.quantize({"w": w}, bits=5, symmetric=False, group_size=4)
    _, path = roundtrip(q, tmp_path)
    (entry,) = read_manifest(path)[0]["tensors"]
    assert {k: entry[k] for k in ("kind", "shape", "dtype", "bits", "symmetric", "axis", "group_size",
                                  "code_dtype")} == {
        "kind": "quantized", "shape": [4, 8], "dtype": "float16", "bits": 5, "symmetric": False,
        "axis": None, "group_size": 4, "code_dtype": "uint8"}
    assert entry["blobs"]["codes"][1] == math.ceil(32 * 5 / 8)
    assert entry["scale_dtype"] == "float16"  # 5-bit groups: float16 scales, 2 bytes each
    assert entry["blobs"]["scale"][1] == 8 * 2 and entry["blobs"]["zero_point"][1] == 8


# ------------------------------------------------------------------------------------------------ sizes


def realistic_model(rng):
    """A small convnet-plus-classifier state dict of about 1.6 M parameters (6.4 MB float32)."""
    w = {}
    chans = [3, 32, 64, 128, 256]
    for i in range(4):
        w[f"conv{i}.weight"] = (rng.standard_normal((chans[i + 1], chans[i], 3, 3)) * 0.1).astype(np.float32)
        w[f"conv{i}.bias"] = rng.standard_normal(chans[i + 1]).astype(np.float32)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            w[f"bn{i}.{stat}"] = rng.random(chans[i + 1]).astype(np.float32)
        w[f"bn{i}.num_batches_tracked"] = np.array(100, np.int64)
    w["fc1.weight"] = (rng.standard_normal((512, 2304)) * 0.05).astype(np.float32)
    w["fc1.bias"] = np.zeros(512, np.float32)
    w["fc2.weight"] = (rng.standard_normal((10, 512)) * 0.05).astype(np.float32)
    return w


@pytest.mark.parametrize(
    "bits,axis,group,include", [(8, 0, None, None), (4, 0, None, None), (4, None, 64, "fc*.weight"),
                                (16, None, None, None)]
)
def test_file_size_is_within_two_percent_of_the_packed_nbytes(tmp_path, bits, axis, group, include):
    w = realistic_model(np.random.default_rng(0))
    q = coreprune.quantize(w, bits=bits, axis=axis, group_size=group, include=include)
    path = tmp_path / "q.cpz"
    save_compressed(q, path)
    honest = sum(v.nbytes for v in q.values())
    size = os.path.getsize(path)
    assert sum(v.nbytes for v in w.values()) > 6_000_000
    assert honest * 0.98 <= size <= honest * 1.02, (size, honest)


def test_coarse_quantization_stores_its_many_zero_codes_sparse(tmp_path):
    # 3 bits with one scale per tensor: |w| < 0.75 sigma -> code 0, about half the codes
    w = realistic_model(np.random.default_rng(0))
    q = coreprune.quantize(w, bits=3, group_size=None)
    path = tmp_path / "q3.cpz"
    save_compressed(q, path)
    honest = sum(encoded_nbytes(v) for v in q.values())
    assert honest < 0.9 * sum(v.nbytes for v in q.values())
    assert honest <= os.path.getsize(path) <= honest * 1.02


@pytest.mark.parametrize("bits", [None, 8, 4])
def test_pruned_model_file_is_within_two_percent_of_its_encoded_nbytes(tmp_path, bits):
    w = realistic_model(np.random.default_rng(1))
    p, _ = coreprune.prune_magnitude(w, 0.8)
    model = p if bits is None else coreprune.quantize(p, bits=bits, axis=0)
    path = tmp_path / "p.cpz"
    save_compressed(model, path)
    honest = sum(encoded_nbytes(v) for v in model.values())
    size = os.path.getsize(path)
    assert honest <= size <= honest * 1.02, (size, honest)
    # never worse than an independently computed bitmask layout (1 bit per element + what is kept)
    bound = 0
    for v in model.values():
        if isinstance(v, QuantizedArray):
            kept, params = np.count_nonzero(v.codes), v.scale.nbytes
            bound += min(v.nbytes, math.ceil(v.codes.size / 8) + math.ceil(kept * v.bits / 8) + params)
        else:
            bound += min(v.nbytes, math.ceil(v.size / 8) + np.count_nonzero(v) * v.itemsize)
    assert honest <= bound < 0.5 * sum(v.nbytes for v in model.values())
    back = load_compressed(path)
    assert all(same_value(model[k], back[k]) for k in model)


def test_encoded_nbytes_equals_nbytes_for_full_layouts():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((33, 17)).astype(np.float32) + 5
    assert layout_of(w) == "full" and encoded_nbytes(w) == w.nbytes
    q = coreprune.quantize({"w": w}, bits=7, symmetric=False, axis=1)["w"]
    assert layout_of(q) == "full" and encoded_nbytes(q) == q.nbytes


def test_an_all_zero_tensor_costs_no_data_bytes(tmp_path):
    z = np.zeros((1000, 100), np.float32)
    assert encoded_nbytes(z) == 0
    back, path = roundtrip({"z": z}, tmp_path)
    assert same_bits(z, back["z"]) and os.path.getsize(path) < 300


# --------------------------------------------------------------------------------------- io integration


def test_open_weights_reads_cpz_dequantized_and_load_compressed_exactly(tmp_path):
    from coreprune import io as cio

    rng = np.random.default_rng(5)
    w = {"a": rng.standard_normal((6, 5)).astype(np.float32), "n": np.array([1, 2], np.int32)}
    q = coreprune.quantize(w, bits=4, axis=0)
    path = tmp_path / "m.cpz"
    save_compressed(q, path, metadata={"source": "unit test"})
    assert cio.detect_format(path) == "cpz"
    with cio.open_weights(path) as r:
        assert isinstance(r, CpzReader) and r.spec("a").shape == (6, 5) and r.spec("a").dtype == np.float32
        assert r.metadata == {"source": "unit test"} and r.extras == {}
        assert r.storage("a") == {"kind": "quantized", "layout": "full", "bits": 4,
                                  "stored_nbytes": encoded_nbytes(q["a"]),
                                  "blob_nbytes": {"codes": 15, "scale": 12}}  # 6 float16 scales
        assert r.storage("n")["kind"] == "dense" and r.storage("n")["bits"] is None
    dense = cio.load(path)
    np.testing.assert_array_equal(dense["a"], q["a"].dequantize())
    assert same_bits(dense["n"], w["n"])
    assert same_quantized(q["a"], load_compressed(path)["a"])


def test_io_save_writes_cpz_from_plain_arrays_and_refuses_to_overwrite_its_input(tmp_path):
    from coreprune import io as cio

    w = {"a": np.eye(50, dtype=np.float32)}
    path = tmp_path / "e.cpz"
    cio.save(w, path)
    assert same_bits(load_compressed(path)["a"], w["a"])
    before = path.read_bytes()
    with pytest.raises(WeightFileError, match="refusing to overwrite"):
        save_compressed({"a": np.ones(2)}, path, inputs=(path,))
    assert path.read_bytes() == before


def test_streaming_from_a_lazy_reader_into_a_pipe_like_stream(tmp_path):
    rng = np.random.default_rng(6)
    q = coreprune.quantize({"a": pruned(rng, (20, 30), 0.3), "b": np.arange(5.0)}, bits=8, group_size=None)
    src = tmp_path / "src.cpz"
    save_compressed(q, src)

    class Pipe(io.RawIOBase):  # write-only, no tell/seek: the writer must count offsets itself
        def __init__(self):
            self.chunks = []

        def writable(self):
            return True

        def write(self, b):
            self.chunks.append(bytes(b))
            return len(b)

    pipe = Pipe()
    with CpzReader(src) as r:
        write({name: r.raw(name) for name in r}, pipe)
    copy = tmp_path / "copy.cpz"
    copy.write_bytes(b"".join(pipe.chunks))
    assert copy.read_bytes() == src.read_bytes()


def test_save_does_not_modify_its_inputs(tmp_path):
    rng = np.random.default_rng(7)
    w = {"a": pruned(rng, (30, 30), 0.2), "b": np.arange(4, dtype=">i4")}
    q = coreprune.quantize(w, bits=4, symmetric=False, axis=0, include="a")
    snap = {k: (v.codes.copy() if isinstance(v, QuantizedArray) else v.copy()) for k, v in q.items()}
    save_compressed(q, tmp_path / "x.cpz")
    assert np.array_equal(q["a"].codes, snap["a"]) and same_bits(q["b"], snap["b"])
    assert q["b"].dtype == np.dtype(">i4")


# ----------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "weights,match",
    [
        ({"o": np.array([object()], dtype=object)}, "dtype object"),
        ({"s": np.array(["ab"])}, "does not store"),
        ({1: np.zeros(2)}, "non-string key"),
        ({"l": [1.0, 2.0]}, "is a list"),
    ],
)
def test_unstorable_values_raise_compression_error_naming_the_tensor(tmp_path, weights, match):
    with pytest.raises(CompressionError, match=match):
        save_compressed(weights, tmp_path / "bad.cpz")
    assert not list(tmp_path.iterdir())  # atomic: no partial or temporary file left


def test_metadata_must_be_strings(tmp_path):
    with pytest.raises(CompressionError, match="metadata"):
        save_compressed({"a": np.zeros(1)}, tmp_path / "m.cpz", metadata={"epoch": 3})


def make_sample(tmp_path):
    rng = np.random.default_rng(11)
    w = {"d": rng.standard_normal((4, 5)).astype(np.float32), "s": pruned(rng, (300,), 0.05),
         "m": pruned(rng, (64,), 0.5), "i": np.arange(3, dtype=np.int64)}
    q = coreprune.quantize(w, bits=3, symmetric=False, axis=0, include="d")
    path = tmp_path / "sample.cpz"
    save_compressed(q, path)
    return q, path


def test_every_truncation_raises_weight_file_error(tmp_path):
    _, path = make_sample(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.cpz"
    for n in list(range(0, 64)) + list(range(64, len(data), 7)):
        cut.write_bytes(data[:n])
        with pytest.raises(WeightFileError, match="cut.cpz"):
            load_compressed(cut)


def test_flipped_bytes_are_detected_or_harmless(tmp_path):
    q, path = make_sample(tmp_path)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    bad = tmp_path / "flip.cpz"
    detected = 0
    for pos in sorted(set(rng.integers(0, len(data), 250).tolist()) | set(range(16))):
        mutated = bytearray(data)
        mutated[pos] ^= 1 << int(rng.integers(0, 8))
        bad.write_bytes(bytes(mutated))
        try:
            back = load_compressed(bad)
        except WeightFileError:
            detected += 1
            continue
        # only padding and the reserved header field may change without detection
        assert all(same_value(q[k], back[k]) for k in q), pos
    assert detected > 200


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m["tensors"][0].update(shape=[2**40, 2**40]), "impossibly large|bytes"),
        (lambda m: m["tensors"][0].update(shape=[4, 6]), "blob 'codes' has"),
        (lambda m: m["tensors"][0]["blobs"]["codes"].__setitem__(0, 10**12), "needs"),
        (lambda m: m["tensors"][0]["blobs"]["codes"].__setitem__(0, 2), "overlaps the header"),
        (lambda m: m["tensors"][0].update(shape="4,5"), "wrong type"),
        (lambda m: m["tensors"][0].update(shape=[-4, -5]), "bad shape"),
        (lambda m: m["tensors"][0].update(dtype="object"), "unknown dtype"),
        (lambda m: m["tensors"][0].update(bits=40), "bad quantization"),
        (lambda m: m["tensors"][0].update(axis=3), "axis 3 out of range"),
        (lambda m: m["tensors"][0].update(kind="fancy"), "unknown kind"),
        (lambda m: m["tensors"][0].update(symmetric=1), "wrong type"),
        (lambda m: m["tensors"][0]["blobs"].pop("scale"), "do not match the layout"),
        (lambda m: m["tensors"][1].update(nnz=10**9), "nnz"),
        (lambda m: m["tensors"][1].update(entries=0), "bad csr index"),
        (lambda m: m["tensors"][1].update(nnz=m["tensors"][1]["nnz"] - 1), "has .* bytes"),
        (lambda m: m["tensors"].append(dict(m["tensors"][3])), "appears twice"),
        (lambda m: m.update(version=2), "differs from the header"),
        (lambda m: m.update(tensors={}), "no tensor list"),
        (lambda m: m.update(metadata={"a": 1}), "metadata"),
        (lambda m: m["tensors"].__setitem__(0, []), "not an object"),
    ],
)
def test_forged_manifests_are_refused_before_allocation(tmp_path, edit, match):
    _, path = make_sample(tmp_path)
    rewrite_manifest(path, edit)
    with pytest.raises(WeightFileError, match=match):
        load_compressed(path)


@pytest.mark.parametrize("group_size", [2**40, 2**63, 10**30])
def test_a_huge_group_size_reads_as_one_group_per_run(tmp_path, group_size):
    """Found by the structure-aware fuzzer: an empty grouped tensor whose group_size is bent to
    2**63 crashed NumPy's reshape; a small one would have been padded to group_size values."""
    w = {"e.weight": np.zeros((0, 0, 3), np.float32),
         "s.weight": np.random.default_rng(2).standard_normal((4, 10)).astype(np.float32)}
    q = coreprune.quantize(w, bits=4, group_size=16)
    path = tmp_path / "g.cpz"
    save_compressed(q, path)
    rewrite_manifest(path, lambda m: [e.update(group_size=group_size) for e in m["tensors"]])
    back = load_compressed(path)
    assert back["e.weight"].shape == (0, 0, 3) and back["e.weight"].dequantize().shape == (0, 0, 3)
    np.testing.assert_array_equal(back["s.weight"].dequantize(), q["s.weight"].dequantize())


def test_a_forged_index_that_points_past_the_tensor_is_refused(tmp_path):
    a = np.zeros(600, np.float32)
    a[[5, 10]] = 1
    path = tmp_path / "i.cpz"
    save_compressed({"a": a}, path)
    assert read_manifest(path)[0]["tensors"][0]["layout"] == "csr"
    # csr blob lengths do not depend on the shape: shrink it under the index's last position
    rewrite_manifest(path, lambda m: m["tensors"][0].update(shape=[8]))
    with pytest.raises(WeightFileError, match="past the tensor"):
        load_compressed(path)


def test_hostile_json_nesting_and_unknown_reader_options_are_refused(tmp_path):
    from coreprune import io as cio

    _, path = make_sample(tmp_path)
    data = path.read_bytes()
    offset = FOOTER.unpack(data[-FOOTER.size :])[0]
    text = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(data[:offset] + text + FOOTER.pack(offset, len(text), zlib.crc32(text), b"CPZE"))
    with pytest.raises(WeightFileError, match="not JSON"):
        load_compressed(path)
    with pytest.raises(WeightFileError, match="takes no options"):
        cio.open_weights(tmp_path / "sample.cpz", sparse="scipy")


def test_newer_versions_ask_for_an_upgrade_and_other_files_are_refused(tmp_path):
    _, path = make_sample(tmp_path)
    data = bytearray(path.read_bytes())
    data[8:12] = struct.pack("<I", VERSION + 1)
    path.write_bytes(bytes(data))
    with pytest.raises(WeightFileError, match="upgrade coreprune"):
        load_compressed(path)
    other = tmp_path / "x.cpz"
    other.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(WeightFileError, match="bad magic"):
        load_compressed(other)
    with pytest.raises(WeightFileError, match="no such file"):
        load_compressed(tmp_path / "missing.cpz")


def test_a_tensor_has_one_to_four_blobs_as_the_format_page_says(tmp_path):
    rng = np.random.default_rng(5)
    sparse = pruned(rng, (64, 64), 0.3)
    very_sparse = pruned(rng, (64, 64), 0.01)
    weights = {
        "dense_full": rng.standard_normal((8, 8)).astype(np.float32),
        "dense_bitmask": sparse,
        "dense_csr": very_sparse,
        "q_full": coreprune.quantize({"w": rng.standard_normal((8, 8))}, bits=8, include="w",
                                     group_size=None)["w"],
        "q_affine_sparse": coreprune.quantize({"w": very_sparse}, bits=4, symmetric=False, include="w",
                                              group_size=None)["w"],
    }
    path = tmp_path / "m.cpz"
    save_compressed(weights, path)
    blobs = {t["name"]: sorted(t["blobs"]) for t in read_manifest(path)[0]["tensors"]}
    assert blobs == {
        "dense_full": ["values"],
        "dense_bitmask": ["mask", "values"],
        "dense_csr": ["index", "values"],
        "q_full": ["codes", "scale"],
        "q_affine_sparse": ["codes", "index", "scale", "zero_point"],
    }


def test_the_complete_small_file_of_the_format_page(tmp_path):
    """docs/compressed-format.md, "A complete small file": the same 484 bytes, header, blobs and footer."""
    w = {"fc.weight": np.array([[0.5, 0, 0, -1.0]], np.float32)}
    q = coreprune.quantize(w, bits=4, include="fc.weight", group_size=None)
    q["b"] = np.zeros(3, np.float32)
    path = tmp_path / "small.cpz"
    save_compressed(q, path)
    data = path.read_bytes()
    assert len(data) == 484
    assert data[:16].hex(" ") == "89 43 50 5a 0d 0a 1a 0a 01 00 00 00 00 00 00 00"
    assert data[16:32].hex(" ") == "03 90 00 00 00 00 00 00 25 49 12 3e 00 00 00 00"
    assert data[-24:].hex(" ") == (
        "20 00 00 00 00 00 00 00 ac 01 00 00 00 00 00 00 0c 06 b4 9f 43 50 5a 45"
    )


def test_the_manifest_costs_two_to_three_hundred_bytes_per_tensor(tmp_path):
    """docs/compressed-format.md: the manifest costs ~150 bytes per dense and ~250 per quantized tensor."""
    rng = np.random.default_rng(2)
    model = {f"features.{i}.conv.weight": rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
             for i in range(8)}
    for quantized in (False, True):
        weights = coreprune.quantize(model, bits=4, axis=0) if quantized else model
        path = tmp_path / "m.cpz"
        save_compressed(weights, path)
        _, offset = read_manifest(path)
        per_tensor = (path.stat().st_size - 24 - offset) / len(model)
        print(f"quantized={quantized}: {per_tensor:.0f} manifest bytes per tensor")
        assert (220 <= per_tensor <= 290) if quantized else (130 <= per_tensor <= 170), per_tensor
