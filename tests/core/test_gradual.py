"""Gradual pruning: schedules, masks that only tighten, the two readings of an amount, per-layer targets."""

from __future__ import annotations

import numpy as np
import pytest

from coreprune import CompressionError, prune_magnitude
from coreprune.gradual import prune_iterative, remaining_amounts, sparsity_schedule


def test_cubic_schedule_follows_zhu_gupta():
    s = sparsity_schedule(0.92, 10, initial=0.2)
    expected = [0.92 + (0.2 - 0.92) * (1 - t / 10) ** 3 for t in range(1, 11)]
    np.testing.assert_allclose(s, expected)
    assert s[-1] == 0.92 and all(a <= b for a, b in zip(s, s[1:]))
    # cubic front-loads: more than half of the way after a quarter of the steps
    assert s[2] - 0.2 > 0.5 * (0.92 - 0.2)


def test_linear_and_one_shot():
    assert sparsity_schedule(0.6, 3, kind="linear") == pytest.approx([0.2, 0.4, 0.6])
    assert sparsity_schedule(0.6, 3, kind="one-shot") == [0.6, 0.6, 0.6]


@pytest.mark.parametrize("args", [(1.2, 3), (0.5, 0), (0.5, 2.0), (float("nan"), 3), (True, 3)])
def test_bad_schedules_raise(args):
    with pytest.raises(CompressionError):
        sparsity_schedule(*args)
    with pytest.raises(CompressionError):
        sparsity_schedule(0.5, 3, kind="exp")
    with pytest.raises(CompressionError):
        sparsity_schedule(0.5, 3, initial=0.6)


def test_remaining_amounts_compose_to_the_schedule():
    sched = sparsity_schedule(0.92, 6)
    amounts = remaining_amounts(sched)
    alive = 1.0
    for a, s in zip(amounts, sched):
        alive *= 1 - a
        assert 1 - alive == pytest.approx(s)
    assert remaining_amounts([1.0, 1.0]) == [1.0, 0.0]
    with pytest.raises(CompressionError):
        remaining_amounts([0.5, 0.4])


def test_total_mode_matches_prune_magnitude_from_dense():
    rng = np.random.default_rng(0)
    w = {"a.weight": rng.standard_normal((30, 20)).astype(np.float32),
         "b.weight": rng.standard_normal((7, 3, 3, 3)).astype(np.float32)}
    ours, masks = prune_iterative(w, 0.7)
    ref, ref_masks = prune_magnitude(w, 0.7)
    for n in w:
        np.testing.assert_array_equal(masks[n], ref_masks[n])
        np.testing.assert_array_equal(ours[n], ref[n])


def test_masks_only_tighten_even_when_pruned_weights_regrow():
    rng = np.random.default_rng(1)
    w = {"fc.weight": rng.standard_normal((40, 40)).astype(np.float32)}
    masks = None
    current = w
    for s in sparsity_schedule(0.9, 5):
        pruned, new = prune_iterative(current, s, masks=masks)
        if masks is not None:
            assert not np.any(new["fc.weight"] & ~masks["fc.weight"])
        assert np.count_nonzero(~new["fc.weight"]) == round(s * 1600)
        masks = new
        # fine-tuning moves every weight, pruned ones included (a careless optimizer): they stay pruned
        current = {"fc.weight": pruned["fc.weight"] + rng.normal(0, 0.5, (40, 40)).astype(np.float32)}
    assert np.count_nonzero(masks["fc.weight"]) == 160


def test_total_target_below_the_current_sparsity_keeps_the_mask():
    w = {"fc.weight": np.arange(1, 11, dtype=np.float32).reshape(2, 5)}
    _, m = prune_iterative(w, 0.5)
    _, m2 = prune_iterative(w, 0.2, masks=m)
    np.testing.assert_array_equal(m["fc.weight"], m2["fc.weight"])


def test_remaining_mode_counts_survivors_and_breaks_ties_by_index():
    w = {"fc.weight": np.array([[1.0, 1.0, 1.0, 1.0, 5.0, 6.0]], np.float32)}
    _, m = prune_iterative(w, 0.5, mode="remaining")
    assert m["fc.weight"].tolist() == [[False, False, False, True, True, True]]
    _, m = prune_iterative(w, 0.5, masks=m, mode="remaining")  # round(1.5) = 2 of the 3 alive
    assert m["fc.weight"].tolist() == [[False, False, False, False, False, True]]


def test_per_layer_targets_and_untouched_tensors():
    rng = np.random.default_rng(2)
    w = {"conv.weight": rng.standard_normal((8, 1, 5, 5)), "fc.weight": rng.standard_normal((10, 50)),
         "fc.bias": rng.standard_normal(10)}
    pruned, masks = prune_iterative(w, {"conv.weight": 0.34, "fc.weight": 0.92})
    assert set(masks) == {"conv.weight", "fc.weight"}
    assert np.count_nonzero(~masks["conv.weight"]) == round(0.34 * 200)
    assert np.count_nonzero(~masks["fc.weight"]) == 460
    np.testing.assert_array_equal(pruned["fc.bias"], w["fc.bias"])
    assert pruned["fc.bias"] is not w["fc.bias"]
    before = {n: a.copy() for n, a in w.items()}
    prune_iterative(w, 0.5)
    for n in w:
        np.testing.assert_array_equal(w[n], before[n])  # inputs never modified


def test_bad_inputs_raise_the_project_error():
    w = {"fc.weight": np.ones((2, 2), np.float32)}
    with pytest.raises(CompressionError):
        prune_iterative(w, 0.5, mode="relative")
    with pytest.raises(CompressionError):
        prune_iterative(w, {"nope": 0.5})
    with pytest.raises(CompressionError):
        prune_iterative(w, 0.5, masks={"fc.weight": np.ones((2, 2), np.float32)})
    with pytest.raises(CompressionError):
        prune_iterative(w, -0.1)
    with pytest.raises(CompressionError):
        prune_iterative({"fc.weight": np.array([[np.inf, 1.0]])}, 0.5)
