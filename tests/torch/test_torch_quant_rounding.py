"""quantize(..., rounding="torch") against torch.quantize_per_tensor / quantize_per_channel, bit for bit,
on inputs built to hit every rounding edge for the scale in use: exact half-way values (with odd zero
points), values one to three ulps either side of half-way points, subnormals and the range extremes.
The default rounding (rint(w / scale) + zero_point) differs from torch on some of them: checked too,
so that the adversarial set is known to be adversarial.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")

from coreprune import quantize  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_:UserWarning")

SUBNORMALS = np.array([1e-45, -1e-45, 1e-40, -3e-39, 5e-39, 1.1754942e-38, 0.0, -0.0], np.float32)


def adversarial(scale: np.float32, zp: int, lo: float, hi: float, rng) -> np.ndarray:
    """Values within [lo, hi] around every half-way point of ``scale`` (from both sides of the
    reciprocal: ``(m + 1/2) * scale`` and ``(m + 1/2) / (1 / scale)``), 3 ulps either side."""
    m = np.arange(-zp - 1, 300, dtype=np.float64)
    inv = np.float32(1) / scale
    centers = np.concatenate([
        ((m + 0.5) * np.float64(scale)).astype(np.float32),
        ((m + 0.5 - zp) * np.float64(scale)).astype(np.float32),
        ((m + 0.5) / np.float64(inv)).astype(np.float32),
        (np.float32(m + 0.5) / inv).astype(np.float32),
    ])
    around = [centers]
    up, down = centers.copy(), centers.copy()
    for _ in range(3):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        around += [up, down]
    values = np.concatenate([*around, SUBNORMALS, rng.standard_normal(500).astype(np.float32)])
    return values[(values >= lo) & (values <= hi)]


def affine_tensor(lo: float, hi: float, bits: int, rng) -> tuple[np.ndarray, np.float32, int]:
    """A float32 tensor with min ``lo`` and max ``hi`` (so its scale is fixed) and adversarial values."""
    probe = quantize({"w": np.array([[lo, hi]], np.float32)}, bits, symmetric=False, group_size=None)["w"]
    scale, zp = np.float32(probe.scale), int(probe.zero_point)
    body = adversarial(scale, zp, lo, hi, rng)
    w = np.concatenate([[np.float32(lo), np.float32(hi)], body]).astype(np.float32)
    return w.reshape(1, -1), scale, zp


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("lo, hi", [(-1.3, 2.0), (-0.37, 0.9), (-1000.0, 7.5), (-3e30, 1e30)])
def test_per_tensor_affine_codes_equal_quantize_per_tensor(lo, hi, bits):
    rng = np.random.default_rng(bits)
    w, scale, zp = affine_tensor(lo, hi, bits, rng)
    q = quantize({"w": w}, bits, symmetric=False, group_size=None, rounding="torch")["w"]
    assert float(q.scale) == float(scale) and int(q.zero_point) == zp
    for n in (w.size, 1, 7, 9, 33):  # the vector body and the scalar tail of torch's kernel
        part = w[:, :n]
        mine = quantize({"w": part}, bits, symmetric=False, group_size=None, rounding="torch")["w"]
        if float(mine.scale) != float(scale):  # a prefix with another range: compare at its own scale
            scale_n, zp_n = float(mine.scale), int(mine.zero_point)
        else:
            scale_n, zp_n = float(scale), zp
        theirs = torch.quantize_per_tensor(torch.from_numpy(part), scale_n, zp_n, torch.quint8).int_repr()
        np.testing.assert_array_equal(mine.codes.astype(np.int64), theirs.numpy().astype(np.int64))


def test_odd_zero_points_and_half_way_values_are_where_the_default_differs():
    rng = np.random.default_rng(0)
    seen_odd = 0
    differ = 0
    for lo, hi in [(-1.3, 2.0), (-0.37, 0.9), (-1000.0, 7.5), (-0.55, 0.55)]:
        w, scale, zp = affine_tensor(lo, hi, 8, rng)
        seen_odd += zp % 2
        torch_mode = quantize({"w": w}, 8, symmetric=False, group_size=None, rounding="torch")["w"].codes
        default = quantize({"w": w}, 8, symmetric=False, group_size=None)["w"].codes
        theirs = torch.quantize_per_tensor(torch.from_numpy(w), float(scale), zp, torch.quint8)
        theirs = theirs.int_repr().numpy()
        np.testing.assert_array_equal(torch_mode, theirs)
        assert np.abs(default.astype(int) - theirs.astype(int)).max() <= 1  # one code apart at most
        differ += int((default != theirs).sum())
    assert seen_odd >= 1 and differ > 0


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_codes_equal_quantize_per_channel(symmetric, axis):
    rng = np.random.default_rng(3)
    rows = []
    for lo, hi in [(-1.3, 2.0), (-0.37, 0.9), (-1000.0, 7.5), (-2.5e20, 1e20)]:
        row, _, _ = affine_tensor(lo, hi, 8, rng)
        rows.append(row[0, :400] if row.size >= 400 else np.resize(row[0], 400))
    w = np.stack(rows).astype(np.float32)
    w = w if axis == 0 else np.ascontiguousarray(w.T)
    q = quantize({"w": w}, 8, symmetric=symmetric, axis=axis, group_size=None, rounding="torch")["w"]
    scales = torch.from_numpy(q.scale.astype(np.float64))
    if symmetric:
        zps, dtype = torch.zeros(q.scale.shape, dtype=torch.int64), torch.qint8
    else:
        zps, dtype = torch.from_numpy(q.zero_point.astype(np.int64)), torch.quint8
    theirs = torch.quantize_per_channel(torch.from_numpy(w), scales, zps, axis, dtype).int_repr().numpy()
    np.testing.assert_array_equal(q.codes.astype(np.int64), theirs.astype(np.int64))


def test_float64_and_float16_inputs_round_as_torch_does_after_float():
    rng = np.random.default_rng(9)
    w32, scale, zp = affine_tensor(-1.3, 2.0, 8, rng)
    for dtype in (np.float64, np.float16):
        w = w32.astype(dtype)
        q = quantize({"w": w}, 8, symmetric=False, group_size=None, rounding="torch")["w"]
        x = torch.from_numpy(w).float()
        theirs = torch.quantize_per_tensor(x, float(q.scale), int(q.zero_point), torch.quint8)
        theirs = theirs.int_repr().numpy()
        np.testing.assert_array_equal(q.codes, theirs)
