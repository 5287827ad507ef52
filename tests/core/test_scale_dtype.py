"""float16 scales: which tensors get them, that the codes follow them, and their .cpz round trip."""

from __future__ import annotations

import numpy as np
import pytest

from coreprune import CompressionError, QuantizedArray, load_compressed, quantize, save_compressed
from coreprune.io import open_weights
from tests.core.test_compressed import read_manifest, rewrite_manifest


def up16(scale32: np.ndarray) -> np.ndarray:
    """Reference: the smallest float16 at or above each float32 value."""
    half = scale32.astype(np.float16)
    return np.where(half.astype(np.float32) < scale32, np.nextafter(half, np.float16(np.inf)), half)


def rtn_reference(w: np.ndarray, bits: int, group: int, symmetric: bool) -> tuple[np.ndarray, ...]:
    """Groups of ``group`` along the last axis of a 2-D float32 ``w`` (dividing it), in plain NumPy."""
    rows = w.reshape(-1, group).astype(np.float64)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        peak = np.abs(rows).max(axis=1)
        scale = up16(np.where(peak > 0, peak / qmax, 1.0).astype(np.float32))
        codes = np.clip(np.rint(rows.astype(np.float32) / scale.astype(np.float32)[:, None]), -qmax, qmax)
        return codes.reshape(w.shape), scale.reshape(w.shape[0], -1), None
    top = 2**bits - 1
    lo, hi = np.minimum(rows.min(axis=1), 0), np.maximum(rows.max(axis=1), 0)
    scale = up16(np.where(hi > lo, (hi - lo) / top, 1.0).astype(np.float32))
    zero = np.clip(np.rint(-lo / scale.astype(np.float64)), 0, top)
    q = np.rint(rows.astype(np.float32) / scale.astype(np.float32)[:, None]) + zero[:, None]
    return np.clip(q, 0, top).reshape(w.shape), scale.reshape(w.shape[0], -1), zero.reshape(w.shape[0], -1)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("order", ["C", "F"])  # C: the blocked fast path; F: the reference path
def test_float16_scales_are_rounded_up_and_the_codes_follow_them(symmetric, order):
    w = np.random.default_rng(0).standard_normal((96, 256)).astype(np.float32) * 0.05
    q = quantize({"w": np.asarray(w, order=order)}, 4, symmetric=symmetric, group_size=64)["w"]
    codes, scale, zero = rtn_reference(w, 4, 64, symmetric)
    assert q.scale.dtype == np.float16
    np.testing.assert_array_equal(q.scale, scale)
    np.testing.assert_array_equal(q.codes, codes.astype(q.codes.dtype))
    if zero is not None:
        np.testing.assert_array_equal(q.zero_point, zero.astype(q.zero_point.dtype))
    # what float32 storage would give, rounded up: never below it, at most 2**-10 above
    s32 = quantize({"w": w}, 4, symmetric=symmetric, group_size=64, scale_dtype="float32")["w"].scale
    ratio = q.scale.astype(np.float64) / s32
    assert (ratio >= 1).all() and (ratio <= 1 + 2.0**-10).all() and (ratio > 1).any()
    err = np.abs(q.dequantize().astype(np.float64) - w).reshape(-1, 64)
    assert (err <= q.scale.astype(np.float64).reshape(-1, 1) / 2 * (1 + 2.0**-20)).all()


def test_auto_storage_by_layout_width_and_range():
    rng = np.random.default_rng(1)
    w = {
        "fc.weight": rng.standard_normal((32, 256)).astype(np.float32),  # groups of 64 at 4 bits
        "dw.weight": rng.standard_normal((32, 1, 3, 3)).astype(np.float32),  # 8 bits per channel
        "huge.weight": (rng.standard_normal((20, 256)) * 1e6).astype(np.float32),  # scales > 65504
    }
    q = quantize(w, bits=4)  # a 4-bit request: float16 where the scales fit, the 8-bit depthwise too
    assert {n: v.scale.dtype.name for n, v in q.items()} == {
        "fc.weight": "float16", "dw.weight": "float16", "huge.weight": "float32"}
    assert q["dw.weight"].bits == 8 and q["dw.weight"].nbytes == 32 * 9 + 32 * 2
    assert 8 * q["fc.weight"].nbytes / w["fc.weight"].size == 4.25
    # 8 bits and more: float32 (torch's int8 parity), whatever the layout
    assert {v.scale.dtype.name for v in quantize(w, bits=8).values()} == {"float32"}
    assert quantize(w, bits=8, group_size=64)["fc.weight"].scale.dtype == np.float32
    assert quantize(w, bits=4, axis=0)["fc.weight"].scale.dtype == np.float16
    # a mapping and a budget are size choices: float16 wherever it fits, 8-bit tensors included
    mixed = quantize(w, bits={"fc.weight": 8, "dw.weight": 4, "huge.weight": 4})
    assert [mixed[n].scale.dtype.name for n in w] == ["float16", "float16", "float32"]
    chosen = quantize(w, budget=6)
    assert [chosen[n].scale.dtype.name for n in ("fc.weight", "dw.weight")] == ["float16", "float16"]
    # huge: float16 only where its scales fit (max|w| / qmax <= 65504: 8 bits, not 4)
    huge = chosen["huge.weight"]
    fits = float(np.abs(w["huge.weight"]).max()) / 127 <= 65504 and huge.bits == 8
    assert huge.scale.dtype == (np.float16 if fits else np.float32)
    assert {v.bits for v in chosen.values()} >= {4, 8}
    # the huge tensor kept float32 scales and lost nothing to them
    np.testing.assert_array_equal(
        q["huge.weight"].codes, quantize(w, bits=4, scale_dtype="float32")["huge.weight"].codes)
    every = quantize({"fc.weight": w["fc.weight"]}, bits=4, axis=0, scale_dtype="float16")["fc.weight"]
    assert every.scale.dtype == np.float16  # explicit: every layout


def test_explicit_float16_refuses_scales_above_its_range():
    w = {"big.weight": np.full((2, 64), 1e6, np.float32)}
    with pytest.raises(CompressionError,
                       match=r"'big.weight': a quantization scale \(142857\) exceeds float16's largest"):
        quantize(w, bits=4, group_size=64, scale_dtype="float16")
    q = quantize(w, bits=4, group_size=64)["big.weight"]  # auto: float32 then
    assert q.scale.dtype == np.float32


@pytest.mark.parametrize("bits", [4, 8])
def test_near_zero_channels_cost_at_most_2_to_the_minus_25_more_error(bits):
    """Real networks carry dead channels (EfficientNet-Lite0: scales of 1e-11): below float16's
    normal range the scale is a subnormal or 2**-24, rounded up; the codes follow it, so each value
    stays within half a stored step, at most 2**-25 beyond what a float32 scale gives."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((6, 96)).astype(np.float32)
    w *= np.array([1.0, 1e-2, 1e-4, 1e-6, 1e-9, 0.0], np.float32)[:, None]
    q16 = quantize({"w": w}, bits, axis=0, scale_dtype="float16")["w"]
    q32 = quantize({"w": w}, bits, axis=0, scale_dtype="float32")["w"]
    assert q16.scale.dtype == np.float16 and (q16.scale > 0).all()
    assert (q16.scale.astype(np.float32) >= q32.scale).all()
    assert (q16.scale.astype(np.float64) - q32.scale <= np.maximum(q32.scale * 2.0**-10, 2.0**-24)).all()
    assert float(q16.scale[4]) == 2.0**-24 and float(q16.scale[5]) == 1.0  # below every subnormal; all zero
    err16 = np.abs(q16.dequantize().astype(np.float64) - w).max(axis=1)
    err32 = np.abs(q32.dequantize().astype(np.float64) - w).max(axis=1)
    assert (err16 <= q16.scale.astype(np.float64) / 2 * (1 + 2.0**-20)).all()
    # float32's bound scale / 2, plus half the rounding up: 2**-11 of it, or 2**-25 in absolute terms
    bound32 = q32.scale.astype(np.float64) / 2
    assert (err16 <= bound32 + np.maximum(bound32 * 2.0**-10, 2.0**-25) * (1 + 2.0**-20)).all()
    assert (err32 <= bound32 * (1 + 2.0**-20)).all()


@pytest.mark.parametrize("bad", ["float64", "bfloat16", None, np.float16])
def test_unknown_scale_dtype_is_refused(bad):
    with pytest.raises(CompressionError, match="scale_dtype must be one of auto, float32, float16"):
        quantize({"w": np.ones((2, 64), np.float32)}, bits=4, scale_dtype=bad)


@pytest.mark.parametrize("method", ["clip", "hqq"])
def test_searched_scales_are_stored_in_float16_too(method):
    w = np.random.default_rng(2).standard_normal((16, 128)).astype(np.float32)
    q = quantize({"w": w}, 3, group_size=32, method=method)["w"]
    q32 = quantize({"w": w}, 3, group_size=32, method=method, scale_dtype="float32")["w"]
    assert q.scale.dtype == np.float16
    np.testing.assert_array_equal(q.scale, up16(q32.scale))  # the same search, its result rounded up
    np.testing.assert_array_equal(q.codes, np.clip(np.rint(w.reshape(-1, 32) / q.scale.astype(np.float32)
                                                           .reshape(-1, 1)), -3, 3).reshape(w.shape))


def test_budget_counts_float16_scales():
    w = {f"l{i}.weight": np.random.default_rng(i).standard_normal((64, 512)).astype(np.float32)
         for i in range(4)}
    q = quantize(w, budget=4.25)
    sizes = sum(v.nbytes for v in q.values())
    assert 8 * sizes <= 4.25 * sum(v.size for v in w.values())
    assert {v.bits for v in q.values()} == {4}  # 4.25 = 4 bits + 16 / 64: float16 scales fit exactly
    as32 = quantize(w, budget=4.25, scale_dtype="float32")
    assert 8 * sum(as32[n].nbytes for n in w) <= 4.25 * 4 * 64 * 512


def test_cpz_round_trip_and_manifest(tmp_path):
    rng = np.random.default_rng(3)
    w = {"a.weight": rng.standard_normal((8, 200)).astype(np.float16),
         "b.weight": rng.standard_normal((8, 16, 3, 3)).astype(np.float32)}
    q = quantize(w, bits=3, symmetric=False)
    path = tmp_path / "q.cpz"
    save_compressed(q, path)
    back = load_compressed(path)
    for name in w:
        assert isinstance(q[name], QuantizedArray) and q[name].scale.dtype == np.float16
        assert back[name].scale.dtype == np.float16
        np.testing.assert_array_equal(back[name].scale, q[name].scale)
        np.testing.assert_array_equal(back[name].codes, q[name].codes)
        np.testing.assert_array_equal(back[name].dequantize(), q[name].dequantize())
    with open_weights(path) as reader:
        raw = reader.raw("b.weight")
        assert raw.scale.dtype == np.float16 and np.array_equal(raw.scale, q["b.weight"].scale)
    entries = {e["name"]: e for e in read_manifest(path)[0]["tensors"]}
    assert entries["b.weight"]["scale_dtype"] == "float16"
    assert entries["b.weight"]["blobs"]["scale"][1] == q["b.weight"].scale.size * 2
    # float32 scales write no scale_dtype field: such files are byte for byte what they were
    path32 = tmp_path / "q32.cpz"
    save_compressed(quantize(w, bits=3, scale_dtype="float32"), path32)
    assert all("scale_dtype" not in e for e in read_manifest(path32)[0]["tensors"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda e: e.update(scale_dtype="float64"), "bad scale_dtype 'float64'"),
        (lambda e: e.update(scale_dtype=16), "bad scale_dtype 16"),
        (lambda e: e.pop("scale_dtype"), "blob 'scale' has 192 bytes, the shape says 384"),
    ],
)
def test_bent_scale_dtype_fields_are_one_error_naming_the_file(tmp_path, edit, message):
    w = {"a.weight": np.random.default_rng(4).standard_normal((24, 200)).astype(np.float32)}
    path = tmp_path / "q.cpz"
    save_compressed(quantize(w, bits=4), path)

    def bend(manifest):
        edit(manifest["tensors"][0])

    rewrite_manifest(path, bend)
    with pytest.raises(CompressionError, match=f"{path.name}.*{message}"):
        load_compressed(path)


@pytest.mark.parametrize("value", [np.inf, np.nan, 0.0, -1.0])
def test_a_bad_float16_scale_in_a_file_is_one_error(tmp_path, value):
    w = {"a.weight": np.random.default_rng(5).standard_normal((8, 200)).astype(np.float32)}
    q = quantize(w, bits=4)
    path = tmp_path / "q.cpz"
    save_compressed(q, path)
    (entry,) = read_manifest(path)[0]["tensors"]
    offset, length, _ = entry["blobs"]["scale"]
    data = bytearray(path.read_bytes())
    data[offset:offset + 2] = np.array([value], "<f2").tobytes()
    blob = bytes(data[offset:offset + length])
    path.write_bytes(bytes(data))

    def fix_crc(manifest):  # a well-formed file whose scale is wrong, not a checksum failure
        import zlib
        manifest["tensors"][0]["blobs"]["scale"][2] = zlib.crc32(blob)

    rewrite_manifest(path, fix_crc)
    with pytest.raises(CompressionError, match=f"{path.name}.*scale must be finite and > 0"):
        load_compressed(path)


def test_the_fast_rounding_up_equals_numpys_float16_rounding_up():
    """The bit trick of the fast path (add 2**13 - 1, clear 13 bits) against astype + nextafter, on
    float32 values spread over float16's whole range, subnormals and the largest value included."""
    from coreprune.quantization import _half_up

    rng = np.random.default_rng(7)
    values = np.exp2(rng.uniform(-30, 16, 200_000)).astype(np.float32)
    values = np.concatenate([values[values <= 65504], np.float32([65504, 2.0**-14, 2.0**-24, 2.0**-30,
                                                                  np.nextafter(np.float32(2.0**-14), 0)])])
    for part in (values[values >= 2.0**-14], values):  # the normal-range path, then the general one
        got = _half_up(part)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, up16(part).astype(np.float32))
    assert _half_up(np.float32([1.0, 65505.0])) is None
