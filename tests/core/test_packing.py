"""Bit packing against a pure-Python bit-stream reference, for every width and both signednesses."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coreprune import CompressionError, packing
from coreprune.packing import pack_bits, unpack_bits

SIGNED = {b: np.int8 if b <= 8 else np.int16 for b in range(1, 17)}
UNSIGNED = {b: np.uint8 if b <= 8 else np.uint16 for b in range(1, 17)}


def reference_pack(values, bits):
    """One Python int as the bit stream: value i at bit offset i * bits, two's complement."""
    stream = 0
    for i, v in enumerate(values):
        stream |= (int(v) & ((1 << bits) - 1)) << (i * bits)
    n_bytes = math.ceil(len(values) * bits / 8)
    return list(stream.to_bytes(n_bytes, "little")) if n_bytes else []


def reference_unpack(data, bits, count, signed):
    stream = int.from_bytes(bytes(data), "little")
    out = []
    for i in range(count):
        v = (stream >> (i * bits)) & ((1 << bits) - 1)
        out.append(v - (1 << bits) if signed and v >= 1 << (bits - 1) else v)
    return out


def random_codes(bits, signed, n, seed):
    rng = np.random.default_rng(seed)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    codes = rng.integers(lo, hi + 1, n)
    codes[: min(n, 2)] = [lo, hi][: min(n, 2)]  # the extremes are always there
    return codes.astype((SIGNED if signed else UNSIGNED)[bits])


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 61])
def test_pack_matches_reference_and_round_trips(bits, signed, n):
    codes = random_codes(bits, signed, n, seed=bits * 100 + n)
    packed = pack_bits(codes, bits)
    assert packed.dtype == np.uint8 and packed.ndim == 1
    assert packed.size == math.ceil(n * bits / 8)
    assert packed.tolist() == reference_pack(codes.tolist(), bits)
    back = unpack_bits(packed, bits, n, codes.dtype)
    assert back.dtype == codes.dtype and back.shape == (n,)
    np.testing.assert_array_equal(back, codes)
    assert back.tolist() == reference_unpack(packed.tolist(), bits, n, signed)


@pytest.mark.parametrize("bits", [1, 3, 5, 7, 8, 11, 16])
def test_chunk_boundaries(monkeypatch, bits):
    # shrink the chunk so that a small input crosses several chunk boundaries
    monkeypatch.setattr(packing, "_CHUNK", 16)
    codes = random_codes(bits, True, 83, seed=bits)
    packed = pack_bits(codes, bits)
    assert packed.tolist() == reference_pack(codes.tolist(), bits)
    np.testing.assert_array_equal(unpack_bits(packed, bits, 83, codes.dtype), codes)


def test_layout_examples():
    assert pack_bits(np.array([1, 0, 1, 1, 0, 0, 0, 0, 1], np.uint8), 1).tolist() == [0b1101, 1]
    assert pack_bits(np.array([5, 10], np.uint8), 4).tolist() == [0xA5]
    assert pack_bits(np.array([-1, 0, 1], np.int8), 2).tolist() == [0b01_00_11]
    assert pack_bits(np.array([0x123], np.uint16), 12).tolist() == [0x23, 0x01]
    assert pack_bits(np.array([-2], np.int16), 16).tolist() == [0xFE, 0xFF]


def test_multidimensional_codes_are_read_in_c_order():
    codes = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(pack_bits(codes, 4), pack_bits(codes.ravel(), 4))
    np.testing.assert_array_equal(pack_bits(codes.T, 4), pack_bits(np.ascontiguousarray(codes.T).ravel(), 4))


def test_signed_codes_read_back_unsigned_are_twos_complement():
    packed = pack_bits(np.array([-1, -4, 3], np.int8), 3)
    assert unpack_bits(packed, 3, 3, np.uint8).tolist() == [7, 4, 3]
    assert unpack_bits(packed, 3, 3, np.int64).tolist() == [-1, -4, 3]


def test_wider_containers_are_accepted():
    codes = np.array([-8, 7, 0], np.int64)
    packed = pack_bits(codes, 4)
    assert packed.tolist() == reference_pack([-8, 7, 0], 4)
    assert unpack_bits(packed, 4, 3, np.int32).tolist() == [-8, 7, 0]


@pytest.mark.parametrize(
    "codes, bits",
    [
        (np.array([8], np.int8), 4),
        (np.array([-9], np.int8), 4),
        (np.array([16], np.uint8), 4),
        (np.array([1], np.int8), 1),  # signed 1-bit codes are -1 and 0
        (np.array([256], np.uint16), 8),
        (np.array([40000], np.int64), 16),
    ],
)
def test_codes_out_of_range(codes, bits):
    with pytest.raises(CompressionError, match=f"codes out of range for bits={bits}"):
        pack_bits(codes, bits)


def test_pack_errors():
    for bits in (0, 17, 4.0, True, None):
        with pytest.raises(CompressionError, match="bits must be an int in 1..16"):
            pack_bits(np.zeros(3, np.uint8), bits)
    for codes in (np.zeros(3, np.float32), np.zeros(3, bool), [1, 2]):
        with pytest.raises(CompressionError, match="codes must be an integer numpy array"):
            pack_bits(codes, 4)


def test_unpack_errors():
    good = pack_bits(np.arange(5, dtype=np.uint8), 3)  # 2 bytes
    with pytest.raises(CompressionError, match="packed has 2 bytes; 6 values of 3 bits need 3"):
        unpack_bits(good, 3, 6, np.uint8)
    with pytest.raises(CompressionError, match="packed has 2 bytes; 2 values of 3 bits need 1"):
        unpack_bits(good, 3, 2, np.uint8)
    with pytest.raises(CompressionError, match="packed must be a 1-D uint8 array"):
        unpack_bits(good.astype(np.int8), 3, 5, np.uint8)
    with pytest.raises(CompressionError, match="packed must be a 1-D uint8 array"):
        unpack_bits(good.reshape(1, 2), 3, 5, np.uint8)
    with pytest.raises(CompressionError, match="cannot hold 9-bit codes"):
        unpack_bits(np.zeros(2, np.uint8), 9, 1, np.int8)
    with pytest.raises(CompressionError, match="cannot hold"):
        unpack_bits(good, 3, 5, np.float32)
    with pytest.raises(CompressionError, match="count must be an int >= 0"):
        unpack_bits(good, 3, -1, np.uint8)
    with pytest.raises(CompressionError, match="is not a numpy dtype"):
        unpack_bits(good, 3, 5, "nonsense")
    with pytest.raises(CompressionError, match="bits must be an int in 1..16"):
        unpack_bits(good, 0, 5, np.uint8)
