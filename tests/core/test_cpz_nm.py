"""The ``nm`` layout of .cpz: N:M-pruned tensors stored as their kept values plus per-group indices.

Round trips are checked bit for bit against the values written; the index encodings against a
one-group-at-a-time reference (itertools.combinations); sizes against the file on disk; and every
manifest field and index byte bent must give ONE WeightFileError naming the file.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import zlib

import numpy as np
import pytest

import coreprune
from coreprune import layout_planner
from coreprune.errors import WeightFileError
from coreprune.io.cpz import _FOOTER, load_compressed, open_reader, save_compressed, write
from coreprune.layout_planner import encoded_nbytes, layout_of
from coreprune.nm_layout import decode_nm_index, encode_nm_index, nm_positions, plan_nm
from coreprune.packing import unpack_bits
from coreprune.structured import nm_masks


def pruned(shape: tuple[int, ...], n: int, m: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    return coreprune.apply_masks({"w": w}, nm_masks({"w": w}, n, m))["w"]


def roundtrip(tmp_path, value) -> tuple[object, dict]:
    p = tmp_path / "m.cpz"
    save_compressed({"w": value}, p)
    with open_reader(p) as r:
        storage = r.storage("w")
    return load_compressed(p)["w"], storage


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (1, 2), (3, 16)])
@pytest.mark.parametrize("shape", [(64, 32), (6, 16, 3, 3), (5, 48, 1), (3, 16)])
def test_dense_round_trip_is_bit_exact(tmp_path, n, m, shape):
    w = pruned(shape, n, m)
    w[0, :m] = 0.0  # an all-zero group: padded with stored zeros
    w[-1, -m:][..., 0] = -0.0  # -0.0 is stored (not the fill), still at most n per group
    back, storage = roundtrip(tmp_path, w)
    assert back.dtype == w.dtype and back.shape == w.shape
    assert back.tobytes() == w.tobytes()
    assert storage["stored_nbytes"] == encoded_nbytes(w)


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (3, 16)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_quantized_round_trip_keeps_codes_and_picks_nm(tmp_path, n, m, symmetric):
    w = pruned((24, 32, 3), n, m, seed=1)
    q = coreprune.quantize({"w": w}, bits=4, axis=0, symmetric=symmetric)["w"]
    back, storage = roundtrip(tmp_path, q)
    assert storage["layout"] == "nm"
    assert np.array_equal(back.codes, q.codes) and back.codes.dtype == q.codes.dtype
    assert np.array_equal(back.scale, q.scale)
    assert back.dequantize().tobytes() == q.dequantize().tobytes()


def test_planner_picks_nm_for_a_2_4_tensor_and_the_file_is_smaller(tmp_path, monkeypatch):
    w = pruned((256, 512), 2, 4)
    q = coreprune.quantize({"w": w}, bits=4, axis=0)["w"]
    assert layout_of(w) == "nm" and layout_of(q) == "nm"
    # 2:4 at 4 bits: 2 codes of 4 bits + a 3-bit rank per 4 weights (11 bits) against 4 + 8 = 12.
    groups = w.size // 4
    assert encoded_nbytes(q) == groups * 8 // 8 + math.ceil(groups * 3 / 8) + q.scale.nbytes
    assert encoded_nbytes(w) == groups * 2 * 4 + math.ceil(groups * 3 / 8)
    one_of_four = pruned((256, 512), 1, 4)  # 1:4: rank and offset tie at 2 bits; offset is taken
    assert encoded_nbytes(one_of_four) == groups * 4 + groups * 2 // 8
    sizes = {}
    for name, value in (("dense", w), ("quantized", q)):
        save_compressed({"w": value}, tmp_path / f"{name}.cpz")
        sizes[name] = (tmp_path / f"{name}.cpz").stat().st_size
    # The same tensors without the nm layout (the planner as it was): bitmask for both.
    monkeypatch.setattr(layout_planner, "_with_nm", lambda plan, *a: plan)
    assert layout_of(w) == "bitmask" and layout_of(q) == "bitmask"
    for name, value in (("dense", w), ("quantized", q)):
        save_compressed({"w": value}, tmp_path / f"{name}-bitmask.cpz")
        bitmask_size = (tmp_path / f"{name}-bitmask.cpz").stat().st_size
        assert sizes[name] < bitmask_size


def test_index_encodings_match_a_reference_and_the_smaller_is_chosen():
    rng = np.random.default_rng(3)
    for n, m in [(1, 2), (2, 4), (1, 4), (3, 4), (4, 8), (2, 8), (5, 16)]:
        combos = list(itertools.combinations(range(m), n))
        pos = np.array([combos[i] for i in rng.integers(0, len(combos), 200)])
        for index in ("rank", "offset"):
            back = decode_nm_index(encode_nm_index(pos, n, m, index), n, m, index, 200)
            assert back.tolist() == pos.tolist()
        # the colex rank of each group, one at a time; over all subsets it is a bijection onto C(m, n)
        def colex(group) -> int:
            return sum(math.comb(int(c), i + 1) for i, c in enumerate(group))

        assert sorted(colex(g) for g in combos) == list(range(len(combos)))
        rank_bits = max(1, (math.comb(m, n) - 1).bit_length())
        packed = unpack_bits(encode_nm_index(pos, n, m, "rank"), rank_bits, 200, np.dtype(np.uint16))
        assert packed.tolist() == [colex(g) for g in pos]
        stored = np.zeros((200, m), bool)
        np.put_along_axis(stored, pos, True, axis=1)
        plan = plan_nm(stored, itemsize=4, bits=None)
        rank_bytes = math.ceil(200 * math.ceil(math.log2(math.comb(m, n))) / 8) if math.comb(m, n) > 1 else 0
        offset_bytes = math.ceil(200 * n * math.ceil(math.log2(m)) / 8)
        assert plan.m == m and plan.n == n
        assert plan.nbytes == 200 * n * 4 + min(max(rank_bytes, math.ceil(200 / 8)), offset_bytes)
        assert plan.index == ("rank" if rank_bytes < offset_bytes else "offset")


def test_positions_pad_short_groups_with_their_first_fill_positions():
    stored = np.array([[0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0]], bool)
    assert nm_positions(stored, 2, 4).tolist() == [[0, 1], [0, 2], [0, 1]]


# ------------------------------------------------------------------------------------------- hostile


def _file(value) -> bytes:
    buf = io.BytesIO()
    write({"w": value}, buf)
    return buf.getvalue()


def _bend_manifest(data: bytes, change) -> bytes:
    offset, length, _, end = _FOOTER.unpack_from(data, len(data) - _FOOTER.size)
    manifest = json.loads(data[offset : offset + length])
    change(manifest["tensors"][0])
    text = json.dumps(manifest).encode()
    return data[:offset] + text + _FOOTER.pack(offset, len(text), zlib.crc32(text), end)


BENDS = {
    "n zero": lambda e: e.update(n=0),
    "n equals m": lambda e: e.update(n=e["m"]),
    "n above m": lambda e: e.update(n=9),
    "n a string": lambda e: e.update(n="2"),
    "n a bool": lambda e: e.update(n=True),
    "m huge": lambda e: e.update(m=1 << 40),
    "m not dividing": lambda e: e.update(m=3),
    "m 32": lambda e: e.update(m=32, n=2),
    "index unknown": lambda e: e.update(index="huffman"),
    "index missing": lambda e: e.pop("index"),
    "other index encoding": lambda e: e.update(index="offset" if e["index"] == "rank" else "rank"),
    "shape 1-d": lambda e: e.update(shape=[math.prod(e["shape"])]),
    "shape doubled": lambda e: e.update(shape=[e["shape"][0] * 2, *e["shape"][1:]]),
    "shape huge": lambda e: e.update(shape=[1 << 40, e["shape"][1]]),
    "values blob short": lambda e: e["blobs"]["values"].__setitem__(1, e["blobs"]["values"][1] - 4),
    "index blob dropped": lambda e: e["blobs"].pop("index"),
    "mask blob added": lambda e: e["blobs"].__setitem__("mask", e["blobs"]["index"]),
    "layout bitmask": lambda e: e.update(layout="bitmask"),
}


@pytest.mark.parametrize("bend", sorted(BENDS))
def test_bent_manifest_fields_are_refused(tmp_path, bend):
    data = _bend_manifest(_file(pruned((16, 32), 2, 4)), BENDS[bend])
    p = tmp_path / "bent.cpz"
    p.write_bytes(data)
    with pytest.raises(WeightFileError) as info:
        load_compressed(p)
    assert str(p) in str(info.value)


def test_bent_rank_bytes_are_refused(tmp_path):
    index = "rank"  # 2:4 takes ranks (3 bits against 4 for offsets)
    data = bytearray(_file(pruned((8, 16), 2, 4)))
    offset, length, _, _ = _FOOTER.unpack_from(bytes(data), len(data) - _FOOTER.size)
    manifest = json.loads(bytes(data[offset : offset + length]))
    entry = manifest["tensors"][0]
    assert entry["layout"] == "nm" and entry["index"] == index
    start, size, _ = entry["blobs"]["index"]
    # all ones: ranks 7 >= C(4, 2) = 6; offsets 3, 3 not increasing
    data[start : start + size] = b"\xff" * size
    entry["blobs"]["index"][2] = zlib.crc32(bytes(data[start : start + size]))
    bent = _bend_manifest(bytes(data), lambda e: e.update(blobs=entry["blobs"]))
    p = tmp_path / "bent.cpz"
    p.write_bytes(bent)
    with pytest.raises(WeightFileError, match="N:M") as info:
        load_compressed(p)
    assert str(p) in str(info.value)


def test_offsets_that_name_no_position_set_are_refused():
    # Offsets are only chosen on a tie (n = 1, where every field is a valid position); for n >= 2 the
    # decoder still refuses repeated or decreasing offsets.
    from coreprune.errors import CompressionError
    from coreprune.packing import pack_bits

    bad = pack_bits(np.array([1, 1, 0, 2], np.uint16), 2)
    with pytest.raises(CompressionError, match="increasing"):
        decode_nm_index(bad, 2, 4, "offset", 2)
    assert decode_nm_index(pack_bits(np.array([1, 3, 0, 2], np.uint16), 2), 2, 4, "offset", 2).tolist() == [
        [1, 3], [0, 2]]


def test_expansion_budget_applies_to_nm(tmp_path):
    p = tmp_path / "m.cpz"
    save_compressed({"w": pruned((64, 64), 1, 16)}, p)
    with pytest.raises(WeightFileError, match="expan"):
        load_compressed(p, max_expansion=1000)


def reference_plan_nm(stored: np.ndarray, itemsize: int, bits: int | None):
    """plan_nm the simple way: each group's count by a reshape and sum, every (m, index) sized."""
    best = None
    for m in (2, 4, 8, 16):
        if stored.shape[1] % m:
            break
        counts = np.moveaxis(stored, 1, -1).reshape(-1, m).sum(axis=1)
        n, groups = max(1, int(counts.max())), stored.size // m
        if n >= m:
            continue
        values = math.ceil(groups * n * bits / 8) if bits is not None else groups * n * itemsize
        rank = math.ceil(groups * max(1, (math.comb(m, n) - 1).bit_length()) / 8)
        offset = math.ceil(groups * n * math.ceil(math.log2(m)) / 8)
        for index, size in (("offset", offset), ("rank", rank)):
            if best is None or values + size < best[3]:
                best = (n, m, index, values + size)
    return best


@pytest.mark.parametrize("shape", [(3, 16), (5, 32, 3), (2, 48, 2, 2), (7, 8), (4, 6), (3, 2), (9, 64)])
@pytest.mark.parametrize("density", [0.05, 0.3, 0.6])
def test_plan_matches_the_simple_reference(shape, density):
    rng = np.random.default_rng(int(density * 100) + len(shape))
    patterns = [rng.random(shape) < density]
    if shape[1] % 2 == 0:  # and an exact 1:2 pattern
        patterns.append(nm_masks({"w": rng.standard_normal(shape)}, 1, 2)["w"])
    for stored in patterns:
        for itemsize, bits in ((4, None), (1, 4), (2, 3)):
            got = plan_nm(stored, itemsize=itemsize, bits=bits)
            want = reference_plan_nm(stored, itemsize, bits)
            assert (None if got is None else (got.n, got.m, got.index, got.nbytes)) == want
