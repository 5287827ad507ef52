"""Magnitude pruning, apply_masks and sparsity, checked against plain sort-based references."""

from __future__ import annotations

import copy
from functools import partial

import ml_dtypes
import numpy as np
import pytest

from coreprune import CompressionError, apply_masks, prune_magnitude, prune_threshold, sparsity
from coreprune._fast.kth import kth_smallest_abs_reference as _kth_smallest_abs_reference
from coreprune._fast.kth import radix_select

_kth_smallest_abs = partial(radix_select, budget=0)  # the engine's radix select, every pass

BF16 = np.dtype(ml_dtypes.bfloat16)


def reference_masks(weights, names, s, scope):
    """Stable argsort of |w| (float64): ties keep their position order, the first k go."""
    def prune_first_k(mags, k):
        keep = np.ones(mags.size, bool)
        keep[np.argsort(mags, kind="stable")[:k]] = False
        return keep

    mags = {n: np.abs(weights[n].astype(np.float64)).reshape(-1) for n in names}
    if scope == "layer":
        return {n: prune_first_k(mags[n], round(s * mags[n].size)).reshape(weights[n].shape) for n in names}
    everything = np.concatenate([mags[n] for n in names])
    keep = prune_first_k(everything, round(s * everything.size))
    out, start = {}, 0
    for n in names:
        out[n] = keep[start : start + mags[n].size].reshape(weights[n].shape)
        start += mags[n].size
    return out


@pytest.fixture
def model():
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(4).astype(np.float32),
        "bn.weight": np.ones(4, np.float32),
        "bn.num_batches_tracked": np.array(5, np.int64),
        "fc.weight": (0.1 * rng.standard_normal((3, 8))).astype(np.float32),
        "fc.bias": np.zeros(3, np.float32),
        "table": np.arange(6, dtype=np.int32).reshape(2, 3),
    }


def assert_unchanged(before, after):
    assert list(before) == list(after)
    for n in before:
        assert before[n].dtype == after[n].dtype
        np.testing.assert_array_equal(before[n].astype(np.float64), after[n].astype(np.float64))


# ----------------------------------------------------------------- prune_threshold


def test_threshold_is_strict_and_removes_zeros():
    w = {"w": np.array([[0.0, 0.5, -0.5], [0.25, -1.0, 2.0]])}
    pruned, masks = prune_threshold(w, 0.5)
    assert masks["w"].tolist() == [[False, False, False], [False, True, True]]
    assert pruned["w"].tolist() == [[0.0, 0.0, 0.0], [0.0, -1.0, 2.0]]
    _, masks0 = prune_threshold(w, 0)
    assert masks0["w"].tolist() == [[False, True, True], [True, True, True]]


def test_threshold_passes_unselected_through_as_same_objects(model):
    pruned, masks = prune_threshold(model, 0.5)
    assert list(masks) == ["conv.weight", "fc.weight"]
    assert list(pruned) == list(model)
    for name in ("conv.bias", "bn.weight", "bn.num_batches_tracked", "fc.bias", "table"):
        assert pruned[name] is model[name]
    for name in masks:
        assert masks[name].dtype == np.bool_ and masks[name].shape == model[name].shape
        np.testing.assert_array_equal(masks[name], np.abs(model[name]) > np.float32(0.5))


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32, np.float64])
def test_threshold_compares_in_the_tensors_dtype(dtype):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((20, 30)) * 0.3).astype(dtype)
    for t in (0.0, 0.1, 0.2, 1 / 3, 0.5, 1e-8, 3.0):
        _, masks = prune_threshold({"w": w}, t)
        # NumPy's own comparison in the tensor's dtype is the reference
        np.testing.assert_array_equal(masks["w"], np.abs(w) > np.array(t).astype(dtype))
    w32 = np.array([[np.float32(0.2), np.nextafter(np.float32(0.2), np.float32(1))]])
    assert prune_threshold({"w": w32}, 0.2)[1]["w"].tolist() == [[False, True]]


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32])
def test_threshold_beyond_the_dtype_range_prunes_everything(dtype):
    w = {"w": np.full((2, 2), 60000.0).astype(dtype)}
    for t in (1e10, 1e300, np.inf):
        pruned, masks = prune_threshold(w, t)
        assert not masks["w"].any()
        assert pruned["w"].dtype == dtype and not pruned["w"].astype(np.float32).any()


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32, np.float64])
def test_pruned_entries_are_positive_zero_of_the_same_dtype(dtype):
    w = {"w": np.array([[-0.1, 0.2], [-3.0, -0.0]]).astype(dtype)}
    for pruned, _ in (prune_threshold(w, 0.5), prune_magnitude(w, 0.75)):
        out = pruned["w"]
        assert out.dtype == dtype
        as32 = out.astype(np.float32)
        assert as32.tolist() == [[0.0, 0.0], [-3.0, 0.0]]
        assert not np.signbit(as32[as32 == 0]).any()


@pytest.mark.parametrize("bad", [-1.0, -1e-30, float("nan"), "0.1", None, True, np.array([0.1])])
def test_threshold_rejects_bad_values(bad):
    with pytest.raises(CompressionError, match="threshold"):
        prune_threshold({"w": np.ones((2, 2))}, bad)


def test_threshold_refuses_nonfinite_and_non_arrays():
    with pytest.raises(CompressionError, match=r"'w' has 1 NaN/Inf"):
        prune_threshold({"w": np.array([[1.0, np.inf]])}, 0.1)
    with pytest.raises(CompressionError, match=r"weights\['w'\] is a list"):
        prune_threshold({"w": [[1.0]]}, 0.1)
    # a NaN in a tensor that is not selected is not our business
    pruned, _ = prune_threshold({"w": np.ones((2, 2)), "b": np.array([np.nan])}, 0.1)
    assert np.isnan(pruned["b"]).all()


def test_threshold_selection_include_exclude_predicate(model):
    _, masks = prune_threshold(model, 0.1, include="*.bias")
    assert list(masks) == ["conv.bias", "fc.bias"]
    _, masks = prune_threshold(model, 0.1, exclude="fc.*")
    assert list(masks) == ["conv.weight"]
    _, masks = prune_threshold(model, 0.1, include=lambda n, a: a.ndim == 4)
    assert list(masks) == ["conv.weight"]
    with pytest.raises(CompressionError, match="matches no tensor"):
        prune_threshold(model, 0.1, include="dense*")


# ----------------------------------------------------------------- prune_magnitude


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("s", [0.0, 0.1, 0.25, 0.5, 0.9, 0.999, 1.0])
def test_magnitude_matches_the_stable_sort_reference(model, scope, s):
    pruned, masks = prune_magnitude(model, s, scope=scope)
    names = ["conv.weight", "fc.weight"]
    assert list(masks) == names
    ref = reference_masks(model, names, s, scope)
    for n in names:
        np.testing.assert_array_equal(masks[n], ref[n])
        np.testing.assert_array_equal(pruned[n], np.where(ref[n], model[n], 0))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_ties_are_broken_by_position(scope):
    # integer weights: many equal magnitudes, and +x / -x tie too
    rng = np.random.default_rng(2)
    w = {
        "a": rng.integers(-3, 4, (5, 7)).astype(np.float32),
        "b": rng.integers(-3, 4, (6, 2)).astype(np.float64),
        "c": rng.integers(-3, 4, (3, 3)).astype(np.float16),
    }
    for s in np.linspace(0, 1, 23):
        _, masks = prune_magnitude(w, float(s), scope=scope)
        ref = reference_masks(w, list(w), float(s), scope)
        for n in w:
            np.testing.assert_array_equal(masks[n], ref[n], err_msg=f"{scope} s={s} {n}")


def test_all_equal_weights_prune_the_lowest_positions():
    _, masks = prune_magnitude({"w": np.ones((2, 3))}, 0.5)
    assert masks["w"].tolist() == [[False, False, False], [True, True, True]]
    _, masks = prune_magnitude({"a": np.ones((2, 2)), "b": np.ones((2, 2))}, 0.75, scope="global")
    assert masks["a"].tolist() == [[False, False], [False, False]]
    assert masks["b"].tolist() == [[False, False], [True, True]]


@pytest.mark.parametrize(
    "n, s, k", [(2, 0.25, 0), (6, 0.25, 2), (10, 0.25, 2), (10, 0.35, 4), (7, 0.5, 4), (1, 0.5, 0)]
)
def test_counts_use_python_round_half_to_even(n, s, k):
    _, masks = prune_magnitude({"w": np.arange(1.0, n + 1).reshape(1, n)}, s)
    assert int((~masks["w"]).sum()) == k == round(s * n)


def test_global_prunes_small_layers_harder():
    w = {"big": 5.0 + np.arange(100.0).reshape(10, 10) / 1000, "small": np.full((10, 10), 0.01)}
    _, masks = prune_magnitude(w, 0.5, scope="global")
    assert not masks["small"].any() and masks["big"].all()
    _, masks = prune_magnitude(w, 0.5, scope="layer")
    assert (~masks["small"]).sum() == 50 == (~masks["big"]).sum()


def test_global_ranks_mixed_dtypes_exactly():
    # 1 + 1e-12 is not a float32: the comparison must happen in float64
    w = {
        "a": np.array([[1.0, 1.0 + 1e-12, 0.5]], np.float64),
        "b": np.array([[1.0, 2.0]], np.float16),
        "c": np.array([[1.0, 0.25]], ml_dtypes.bfloat16),
    }
    for s in np.linspace(0, 1, 15):
        _, masks = prune_magnitude(w, float(s), scope="global")
        ref = reference_masks(w, list(w), float(s), "global")
        for n in w:
            np.testing.assert_array_equal(masks[n], ref[n])
    _, masks = prune_magnitude(w, 4 / 7, scope="global")  # k = 4: 0.25, 0.5, then the ties at 1.0
    assert masks["a"].tolist() == [[False, True, False]]
    assert masks["b"].tolist() == [[False, True]]
    assert masks["c"].tolist() == [[True, False]]


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_empty_tensors_and_empty_selection(scope):
    w = {"e": np.zeros((0, 3), np.float32), "w": np.arange(1.0, 7.0).reshape(2, 3)}
    pruned, masks = prune_magnitude(w, 0.5, scope=scope)
    assert masks["e"].shape == (0, 3) and pruned["e"].shape == (0, 3)
    assert int((~masks["w"]).sum()) == 3
    pruned, masks = prune_magnitude({"b": np.ones(3)}, 0.5, scope=scope)
    assert masks == {} and pruned["b"].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_sparsity_zero_and_one(model, scope):
    pruned, masks = prune_magnitude(model, 0.0, scope=scope)
    for n in masks:
        assert masks[n].all()
        np.testing.assert_array_equal(pruned[n], model[n])
        assert pruned[n] is not model[n]
    pruned, masks = prune_magnitude(model, 1, scope=scope)
    for n in masks:
        assert not masks[n].any() and not pruned[n].any()


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan"), float("inf"), "0.5", None, False])
def test_magnitude_rejects_bad_sparsity(bad):
    with pytest.raises(CompressionError, match="sparsity"):
        prune_magnitude({"w": np.ones((2, 2))}, bad)


def test_magnitude_rejects_bad_scope_and_nonfinite():
    with pytest.raises(CompressionError, match="scope must be 'layer' or 'global', got 'model'"):
        prune_magnitude({"w": np.ones((2, 2))}, 0.5, scope="model")
    with pytest.raises(CompressionError, match=r"tensor 'fc.w' has 2 NaN/Inf"):
        prune_magnitude({"fc.w": np.array([[np.nan, -np.inf]])}, 0.5, scope="global")


@pytest.mark.parametrize(
    "call",
    [
        lambda w: prune_threshold(w, 0.3),
        lambda w: prune_magnitude(w, 0.6),
        lambda w: prune_magnitude(w, 0.6, scope="global"),
        lambda w: apply_masks(w, {"conv.weight": np.zeros((4, 2, 3, 3), bool)}),
    ],
)
def test_inputs_are_never_modified(model, call):
    before = copy.deepcopy(model)
    out = call(model)
    pruned = out[0] if isinstance(out, tuple) else out
    assert_unchanged(before, model)
    for n in ("conv.weight",):
        assert not np.shares_memory(pruned[n], model[n])
    assert pruned["conv.bias"] is model["conv.bias"]


def test_kth_smallest_radix_select_matches_reference():
    rng = np.random.default_rng(3)
    cases = [
        [rng.standard_normal(50).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)],
        [rng.integers(-2, 3, 40).astype(np.float32), np.zeros(5, np.float32)],
        [np.array([1e-45, -1e-45, 0.0, -0.0, 3e38], np.float32), np.array([1e-40, 2e-40], np.float32)],
        [rng.standard_normal(30) * 1e300, np.array([5e-324, 1e-310, -1.0])],
        [np.zeros(0, np.float32), rng.standard_normal(9).astype(np.float16)],
    ]
    for tensors in cases:
        work = np.dtype(np.float64 if any(t.dtype.itemsize == 8 for t in tensors) else np.float32)
        total = sum(t.size for t in tensors)
        for k in range(1, total + 1):
            v, r = _kth_smallest_abs(tensors, k, work)
            v_ref, r_ref = _kth_smallest_abs_reference(tensors, k, work)
            assert v.dtype == work and v == v_ref and r == r_ref, (k, v, r, v_ref, r_ref)
            assert np.sort(np.concatenate([np.abs(t.astype(work)).ravel() for t in tensors]))[k - 1] == v


# ----------------------------------------------------------------- apply_masks


def test_apply_masks_zeroes_and_passes_through(model):
    mask = np.random.default_rng(4).random((3, 8)) > 0.5
    out = apply_masks(model, {"fc.weight": mask})
    np.testing.assert_array_equal(out["fc.weight"], np.where(mask, model["fc.weight"], 0))
    assert out["fc.weight"].dtype == np.float32
    assert all(out[n] is model[n] for n in model if n != "fc.weight")
    assert list(out) == list(model)


def test_apply_masks_reproduces_pruning(model):
    pruned, masks = prune_magnitude(model, 0.7, scope="global")
    again = apply_masks(model, masks)
    for n in model:
        np.testing.assert_array_equal(again[n], pruned[n])


def test_apply_masks_errors(model):
    with pytest.raises(CompressionError, match="apply_masks: no tensor named 'nope'"):
        apply_masks(model, {"nope": np.ones((3, 8), bool)})
    shapes = r"mask 'fc.weight' has shape \(8, 3\), the tensor \(3, 8\)"
    with pytest.raises(CompressionError, match=shapes):
        apply_masks(model, {"fc.weight": np.ones((8, 3), bool)})
    with pytest.raises(CompressionError, match="mask 'fc.weight' has dtype int64, expected bool"):
        apply_masks(model, {"fc.weight": np.ones((3, 8), np.int64)})
    with pytest.raises(CompressionError, match=r"masks\['fc.weight'\] is a list"):
        apply_masks(model, {"fc.weight": [[True]]})
    with pytest.raises(CompressionError, match="mapping"):
        apply_masks(model, [np.ones((3, 8), bool)])


# ----------------------------------------------------------------- sparsity


def test_sparsity_counts_exact_zeros(model):
    pruned, masks = prune_magnitude(model, 0.5)
    s = sparsity(pruned)
    assert s["per_tensor"] == {"conv.weight": 0.5, "fc.weight": 0.5}
    assert s["zeros"] == 48 and s["count"] == 96 and s["total"] == 0.5


def test_sparsity_selection_signed_zero_and_dtypes():
    w = {
        "a": np.array([[0.0, -0.0], [1.0, np.nan]], np.float32),
        "b": np.array([[0.0, 2.0]], ml_dtypes.bfloat16),
        "bias": np.zeros(4),
        "e": np.zeros((0, 2), np.float16),
    }
    s = sparsity(w)
    assert s == {"per_tensor": {"a": 0.5, "b": 0.5, "e": 0.0}, "zeros": 3, "count": 6, "total": 0.5}
    s = sparsity(w, include="bias")
    assert s["per_tensor"] == {"bias": 1.0} and s["total"] == 1.0
    s = sparsity(w, include="e")
    assert s == {"per_tensor": {"e": 0.0}, "zeros": 0, "count": 0, "total": 0.0}
    assert sparsity(w, exclude=["a", "b", "e"]) == {"per_tensor": {}, "zeros": 0, "count": 0, "total": 0.0}
