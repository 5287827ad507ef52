"""Entropy coding and relative indices: exact round trips on edge cases, near-entropy sizes, hostile blobs."""

from __future__ import annotations

import numpy as np
import pytest

from coreprune import CompressionError
from coreprune.entropy import decode_symbols, empirical_entropy, encode_symbols
from coreprune.sparse_index import best_gap_width, gap_fields, positions_from_fields


@pytest.mark.parametrize(
    "symbols, k",
    [
        (np.zeros(0, np.uint8), 4),  # empty
        (np.array([2], np.uint8), 4),  # one symbol
        (np.zeros(1000, np.uint8), 256),  # all zeros
        (np.array([0, 65535, 0, 65535, 7], np.uint16), 65536),  # max width
        (np.arange(65536, dtype=np.uint16), 65536),  # every symbol of the widest alphabet once
        (np.array([0, 1], np.int64), 2),
    ],
)
def test_round_trip_edge_cases(symbols, k):
    blob = encode_symbols(symbols, k)
    out = decode_symbols(blob, max_count=symbols.size)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, symbols.astype(np.int64))


def test_constant_streams_cost_no_words():
    assert len(encode_symbols(np.zeros(10**5, np.uint8), 256)) == 13 + 4
    assert len(encode_symbols(np.zeros(0, np.uint8), 256)) == 13


@pytest.mark.parametrize("k, scale", [(32, 4.0), (64, 8.0), (256, 30.0)])
def test_size_is_close_to_the_empirical_entropy(k, scale):
    rng = np.random.default_rng(k)
    x = np.clip(np.rint(rng.standard_normal(50000) * scale + k / 2), 0, k - 1).astype(np.int64)
    blob = encode_symbols(x, k)
    bound_bytes = empirical_entropy(x, k) * x.size / 8
    payload = len(blob) - 13 - k
    assert blob[0] == 2  # ANS: far below the bit-packed size here
    assert bound_bytes <= payload < 1.01 * bound_bytes + 8
    np.testing.assert_array_equal(decode_symbols(blob), x)


def _kind2_blob(x, k):
    """A kind-2 (ANS) stream built by hand, as encode_symbols wrote every non-constant one before kind 3."""
    import struct

    import constriction

    counts = np.bincount(x, minlength=k).astype(np.float64)
    scaled = np.where(counts > 0, np.maximum(np.rint(counts * 255.0 / counts.max()), 1), 0).astype(np.uint8)
    coder = constriction.stream.stack.AnsCoder()
    model = constriction.stream.model.Categorical(scaled / float(scaled.sum()), perfect=False)
    coder.encode_reverse(x.astype(np.int32), model)
    words = coder.get_compressed().astype("<u4")
    return struct.pack("<BQI", 2, x.size, k) + scaled.tobytes() + words.tobytes()


@pytest.mark.parametrize("n, k", [(10, 256), (250, 32), (3, 65536), (40, 5)])
def test_short_streams_fall_back_to_bit_packing_when_smaller(n, k):
    x = np.random.default_rng(n).integers(0, k, n)
    x[0], x[1] = 0, k - 1  # not constant, and the largest symbol
    blob = encode_symbols(x, k)
    ans = _kind2_blob(x, k)
    bits = max(1, (k - 1).bit_length())
    packed_size = 13 + -(-n * bits // 8)
    assert len(blob) == min(len(ans), packed_size)
    assert blob[0] == (3 if packed_size < len(ans) else 2)
    np.testing.assert_array_equal(decode_symbols(blob, max_count=n), x)
    # streams written before kind 3 existed (always ANS) still decode
    np.testing.assert_array_equal(decode_symbols(ans), x)


def test_hostile_bit_packed_streams_raise():
    import struct

    blob = encode_symbols(np.array([0, 4, 2, 1, 3]), 5)  # 3 bits each: 2 bytes
    assert blob[0] == 3 and len(blob) == 13 + 2
    for bad in (blob[:-1], blob + b"\0", struct.pack("<BQI", 3, 0, 5),
                struct.pack("<BQI", 3, 5, 5) + bytes([0xFF, 0x7F])):  # symbols 7 >= 5
        with pytest.raises(CompressionError):
            decode_symbols(bad)
    with pytest.raises(CompressionError):
        decode_symbols(blob, max_count=4)


def test_entropy_reference():
    x = np.array([0, 0, 1, 2])
    assert empirical_entropy(x, 3) == pytest.approx(1.5)


def test_invalid_input_raises():
    with pytest.raises(CompressionError):
        encode_symbols(np.array([4]), 4)
    with pytest.raises(CompressionError):
        encode_symbols(np.array([0.5]), 4)
    with pytest.raises(CompressionError):
        encode_symbols(np.array([0]), 65537)


def test_corrupted_blobs_raise_one_project_error():
    rng = np.random.default_rng(0)
    x = np.minimum(rng.geometric(0.3, 5000) - 1, 15)  # skewed: ANS beats 4-bit packing
    blob = encode_symbols(x, 16)
    assert blob[0] == 2
    for bad in (blob[:5], blob[:-3], blob[:-4], b"\x07" + blob[1:], blob[:13] + b"\0" * 16 + blob[29:]):
        with pytest.raises(CompressionError):
            decode_symbols(bad)
    with pytest.raises(CompressionError):
        decode_symbols(blob, max_count=10)
    flipped = bytearray(blob)
    flipped[-1] ^= 0xFF  # the last word is the first the decoder reads
    try:
        out = decode_symbols(bytes(flipped))
    except CompressionError:
        pass
    else:  # a flip ANS cannot detect must at least not pass silently as the same data
        assert not np.array_equal(out, x)


@pytest.mark.parametrize("scheme", ["escape", "filler"])
@pytest.mark.parametrize("width", [1, 3, 5, 8, 16])
def test_gap_fields_round_trip(scheme, width):
    rng = np.random.default_rng(width)
    n = 20000
    positions = np.flatnonzero(rng.random(n) < 0.05)
    positions = np.unique(np.concatenate([[0], positions, [n - 1]]))  # both ends, the hardest gaps
    fields, extra = gap_fields(positions, width, scheme=scheme)
    assert fields.max() < 1 << width
    decoded = positions_from_fields(fields, width, n=n, scheme=scheme)
    if scheme == "escape":
        np.testing.assert_array_equal(decoded, positions)
        assert fields.size == positions.size + extra
    else:  # the paper's fillers are extra stored (zero) elements: the survivors are among them
        assert decoded.size == positions.size + extra
        assert np.isin(positions, decoded).all()


def test_gap_reference_by_hand_and_empty():
    # n = 16 with survivors at 0 and 15: one gap of 14
    assert gap_fields(np.array([0, 15]), 2)[0].tolist() == [0, 3, 3, 3, 3, 2]
    assert gap_fields(np.array([0, 15]), 2, scheme="filler")[0].tolist() == [0, 3, 3, 3, 2]
    fields, extra = gap_fields(np.zeros(0, np.int64), 4)
    assert fields.size == 0 and extra == 0
    assert positions_from_fields(fields, 4, n=0).size == 0


def test_escape_never_costs_more_than_fillers_with_their_codes():
    rng = np.random.default_rng(1)
    positions = np.flatnonzero(rng.random(100000) < 0.02)
    for width in (3, 4, 5, 8):
        esc, _ = gap_fields(positions, width)
        fil, fillers = gap_fields(positions, width, scheme="filler")
        code_bits = 5
        assert esc.size * width <= fil.size * width + fillers * code_bits


def test_hostile_fields_raise():
    with pytest.raises(CompressionError):
        positions_from_fields(np.array([1, 3]), 2, n=100)  # ends with an escape
    with pytest.raises(CompressionError):
        positions_from_fields(np.array([9]), 3, n=100)
    with pytest.raises(CompressionError):
        positions_from_fields(np.array([5, 5]), 3, n=10)
    with pytest.raises(CompressionError):
        gap_fields(np.array([3, 3]), 4)
    with pytest.raises(CompressionError):
        gap_fields(np.array([3]), 0)


def test_best_gap_width_minimises_the_estimated_cost():
    rng = np.random.default_rng(2)
    positions = np.flatnonzero(rng.random(200000) < 0.08)
    best = best_gap_width(positions)
    blobs = {w: len(encode_symbols(gap_fields(positions, w)[0], 1 << w)) for w in range(2, 13)}
    assert blobs[best] <= 1.02 * min(blobs.values())
