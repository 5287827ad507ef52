"""Per-layer control of magnitude pruning (floor, per-layer sparsity map), the record of layers
left empty, and tied weights counted once -- checked against a plain walk over the global ranking."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import coreprune.io as cio
from coreprune import (
    CompressionError,
    EmptyLayerWarning,
    global_magnitude_threshold,
    prune_magnitude,
)
from coreprune.aliases import group_aliases


def walk_reference(weights, names, s, min_keep=0.0, own=None):
    """Rank every entry of the pool by (|w|, tensor position, flat index); walk up the ranking
    removing entries whose tensor is still above its floor, until round(s * N_pool) are gone.
    Tensors in ``own`` (name -> sparsity) lose their own round(s * n) smallest, floor permitting."""
    own = own or {}
    cap = {n: weights[n].size - math.ceil(round(min_keep * weights[n].size, 9)) for n in names}
    masks = {}
    for n in own:
        k = min(round(own[n] * weights[n].size), cap[n])
        keep = np.ones(weights[n].size, bool)
        keep[np.argsort(np.abs(weights[n].astype(np.float64)).reshape(-1), kind="stable")[:k]] = False
        masks[n] = keep.reshape(weights[n].shape)
    pool = [n for n in names if n not in own]
    entries = [
        (float(abs(v)), i, j)
        for i, n in enumerate(pool)
        for j, v in enumerate(weights[n].astype(np.float64).ravel())
    ]
    entries.sort()
    k = round(s * sum(weights[n].size for n in pool))
    keep = {n: np.ones(weights[n].size, bool) for n in pool}
    lost = dict.fromkeys(pool, 0)
    for _, i, j in entries:
        if k == 0:
            break
        n = pool[i]
        if lost[n] < cap[n]:
            keep[n][j] = False
            lost[n] += 1
            k -= 1
    masks.update({n: keep[n].reshape(weights[n].shape) for n in pool})
    return masks


@pytest.fixture
def model():
    rng = np.random.default_rng(3)
    return {
        "embed.weight": (rng.standard_normal((30, 8)) * 0.001).astype(np.float32),  # small: goes first
        "conv.weight": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(4).astype(np.float32),
        "fc1.weight": rng.standard_normal((16, 12)).astype(np.float64),
        "fc2.weight": (rng.standard_normal((3, 16)) * 0.3).astype(np.float32),
    }


NAMES = ["embed.weight", "conv.weight", "fc1.weight", "fc2.weight"]


@pytest.mark.parametrize("s", [0.3, 0.7, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("min_keep", [0.0, 0.05, 0.1, 0.5])
def test_global_floor_equals_the_walk_reference(model, s, min_keep):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyLayerWarning)
        result = prune_magnitude(model, s, scope="global", min_keep=min_keep)
    expected = walk_reference(model, NAMES, s, min_keep)
    for n in NAMES:
        np.testing.assert_array_equal(result.masks[n], expected[n], err_msg=n)
        assert result.masks[n].sum() >= math.ceil(round(min_keep * model[n].size, 9))
    total = sum(model[n].size for n in NAMES)
    removed = sum(int((~result.masks[n]).sum()) for n in NAMES)
    caps = sum(model[n].size - math.ceil(round(min_keep * model[n].size, 9)) for n in NAMES)
    assert removed == min(round(s * total), caps)  # the budget still goes when the floors allow it


def test_high_global_sparsity_empties_a_layer_warns_and_records_it(model):
    with pytest.warns(EmptyLayerWarning, match=r"1 layer\(s\): embed\.weight.*min_keep"):
        result = prune_magnitude(model, 0.45, scope="global")
    assert result.empty == ("embed.weight",) and not result.masks["embed.weight"].any()
    pruned, masks = result  # still unpacks as the two dicts
    assert pruned is result.pruned and masks is result.masks
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        floored = prune_magnitude(model, 0.45, scope="global", min_keep=0.02)
    assert floored.empty == () and floored.masks["embed.weight"].sum() == math.ceil(0.02 * 240)
    cut = global_magnitude_threshold(model, 0.45)
    assert cut.empty == ("embed.weight",) and cut.removed["embed.weight"] == 240
    assert cut.k == sum(cut.removed.values()) == round(0.45 * sum(model[n].size for n in NAMES))


def test_sparsity_one_records_but_does_not_warn(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = prune_magnitude(model, 1.0)
    assert set(result.empty) == set(NAMES)


@pytest.mark.parametrize("min_keep", [0.0, 0.25])
def test_layer_scope_floor_and_map(model, min_keep):
    layer = {"fc*": 0.9, "conv.weight": 0.1}
    result = prune_magnitude(model, 0.5, min_keep=min_keep, layer_sparsity=layer)
    for n, rate in {"embed.weight": 0.5, "conv.weight": 0.1, "fc1.weight": 0.9, "fc2.weight": 0.9}.items():
        size = model[n].size
        k = min(round(rate * size), size - math.ceil(min_keep * size))
        expected = walk_reference({n: model[n]}, [n], 0.0, min_keep, own={n: rate})[n]
        np.testing.assert_array_equal(result.masks[n], expected, err_msg=n)
        assert int((~result.masks[n]).sum()) == k


def test_global_map_takes_a_layer_out_of_the_ranking(model):
    own = {"embed.weight": 0.2}
    result = prune_magnitude(model, 0.4, scope="global", layer_sparsity=own)
    expected = walk_reference(model, NAMES, 0.4, 0.0, own=own)
    for n in NAMES:
        np.testing.assert_array_equal(result.masks[n], expected[n], err_msg=n)
    assert result.empty == ()
    cut = global_magnitude_threshold(model, 0.4, layer_sparsity=own)
    assert cut.layer_k == {"embed.weight": 48} and "embed.weight" not in cut.removed_at_value


def test_exact_name_beats_a_glob_and_bad_maps_are_refused(model):
    result = prune_magnitude(model, 0.0, layer_sparsity={"*.weight": 0.5, "fc2.weight": 0.0})
    assert result.masks["fc2.weight"].all() and not result.masks["fc1.weight"].all()
    with pytest.raises(CompressionError, match=r"layer_sparsity key 'fc3\*' matches no selected tensor"):
        prune_magnitude(model, 0.5, layer_sparsity={"fc3*": 0.5})
    with pytest.raises(CompressionError, match=r"layer_sparsity\['fc1.weight'\] must be in \[0, 1\]"):
        prune_magnitude(model, 0.5, layer_sparsity={"fc1.weight": 1.5})
    with pytest.raises(CompressionError, match=r"min_keep must be in \[0, 1\]"):
        prune_magnitude(model, 0.5, min_keep=-0.1)


def test_streaming_threshold_with_floor_and_map_equals_in_memory(tmp_path, model):
    path = tmp_path / "m.safetensors"
    cio.save(model, path)
    options = {"min_keep": 0.05, "layer_sparsity": {"conv.*": 0.3}}
    in_memory = global_magnitude_threshold(model, 0.9, **options)
    expected = prune_magnitude(model, 0.9, scope="global", **options)
    with cio.open_weights(path) as reader:
        lazy = global_magnitude_threshold(reader, 0.9, **options)
        assert lazy == in_memory
        for name in NAMES:
            pruned, mask = lazy.prune(name, reader[name])
            np.testing.assert_array_equal(mask, expected.masks[name])
            np.testing.assert_array_equal(pruned, expected.pruned[name])


# ---- tied weights ---------------------------------------------------------------------------


def tied_model(view: bool):
    rng = np.random.default_rng(5)
    emb = rng.standard_normal((50, 8)).astype(np.float32)
    storage = np.empty(emb.size + 10, np.float32)  # two views of one buffer, as a loader gives them
    storage[: emb.size] = emb.ravel()
    first = storage[: emb.size].reshape(50, 8) if view else emb
    second = storage[: emb.size].reshape(50, 8) if view else emb
    return {
        "embed.weight": first,
        "hidden.weight": rng.standard_normal((8, 8)).astype(np.float32),
        "lm_head.weight": second,
    }


@pytest.mark.parametrize("view", [False, True])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_tied_tensor_is_counted_once_and_both_names_get_one_mask(view, scope):
    w = tied_model(view)
    assert (w["embed.weight"] is w["lm_head.weight"]) != view
    result = prune_magnitude(w, 0.5, scope=scope)
    assert result.aliases == {"lm_head.weight": "embed.weight"}
    assert result.masks["lm_head.weight"] is result.masks["embed.weight"]
    assert result.pruned["lm_head.weight"] is result.pruned["embed.weight"]  # the tie survives
    untied = {"embed.weight": w["embed.weight"], "hidden.weight": w["hidden.weight"]}
    expected = prune_magnitude({k: v.copy() for k, v in untied.items()}, 0.5, scope=scope)
    for n in untied:
        np.testing.assert_array_equal(result.masks[n], expected.masks[n])
    if scope == "global":  # N counts the tied tensor once: 400 + 64, not 864
        assert global_magnitude_threshold(w, 0.5).total == 464


def test_partially_overlapping_arrays_are_refused():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    with pytest.raises(CompressionError, match="share memory without being the same tensor"):
        prune_magnitude({"a": a, "t": a.T}, 0.5)
    whole = np.ones(20, np.float32)
    assert group_aliases({"x": whole[:10].reshape(2, 5), "y": whole[10:].reshape(2, 5)}, ["x", "y"]) == {}


def test_tied_names_with_different_map_entries_are_refused():
    w = tied_model(False)
    with pytest.raises(CompressionError, match="one tensor .tied."):
        prune_magnitude(w, 0.5, layer_sparsity={"lm_head.weight": 0.9})


def test_tied_checkpoint_loaded_from_a_file_keeps_its_alias(tmp_path):
    torch = pytest.importorskip("torch", reason="writes a tied torch checkpoint")
    emb = torch.nn.Embedding(20, 6)
    head = torch.nn.Linear(6, 20, bias=False)
    head.weight = emb.weight
    path = tmp_path / "tied.pt"
    torch.save({"embed.weight": emb.weight, "head.weight": head.weight}, path)
    with cio.open_weights(path) as reader:  # tensors of one storage are views of one mapping
        loaded = {name: reader[name] for name in reader}
        assert group_aliases(loaded, list(loaded)) == {"head.weight": "embed.weight"}
        result = prune_magnitude(loaded, 0.5, scope="global")
    assert result.aliases == {"head.weight": "embed.weight"}
    assert result.masks["head.weight"] is result.masks["embed.weight"]
