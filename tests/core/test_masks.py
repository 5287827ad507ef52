"""coreprune.masks.check_masks: the one rule for which tensors a mask applies to (no framework needed).

tests/interop/test_same_verbs.py holds apply_masks and both adapters' attach_masks to the same rule.
"""

from __future__ import annotations

import numpy as np
import pytest

from coreprune import CompressionError, apply_masks
from coreprune.masks import check_masks

SHAPES = {"a.weight": (3, 4), "a.bias": (3,), "b.weight": (2, 3)}


def test_valid_masks_come_back_in_the_masks_order_as_the_same_arrays():
    masks = {"b.weight": np.ones((2, 3), bool), "a.bias": np.zeros(3, bool)}
    checked = check_masks(masks, SHAPES)
    assert list(checked) == ["b.weight", "a.bias"]
    assert all(checked[name] is masks[name] for name in masks)
    assert check_masks({}, SHAPES) == {}


def test_every_problem_is_listed_in_one_error_prefixed_by_the_verb():
    masks = {
        "c.weight": np.ones(2, bool),
        "a.weight": np.ones((3, 4), np.float32),
        "a.bias": np.ones((1, 3), bool),
        "d": np.ones(1, bool),
    }
    with pytest.raises(CompressionError) as info:
        check_masks(masks, SHAPES, verb="attach_masks")
    assert str(info.value) == (
        "attach_masks: no tensor named 'c.weight', 'd' (the names are: a.weight, a.bias, b.weight); "
        "mask 'a.weight' has dtype float32, expected bool (True = keep; `mask != 0` converts 0/1 "
        "numbers); mask 'a.bias' has shape (1, 3), the tensor (3,)"
    )


def test_long_name_lists_are_abbreviated_and_an_empty_target_says_so():
    shapes = {f"t{i}": (1,) for i in range(25)}
    with pytest.raises(CompressionError, match=r"the names are: t0, t1, .*, t19, \.\.\. \(25 in all\)\)$"):
        check_masks({"x": np.ones(1, bool)}, shapes)
    with pytest.raises(CompressionError, match=r"no tensor named 'x' \(the names are: none\)"):
        check_masks({"x": np.ones(1, bool)}, {})


@pytest.mark.parametrize("masks", [[np.ones(3, bool)], {"a.bias": [True] * 3}, {1: np.ones(3, bool)}])
def test_non_mappings_non_arrays_and_non_str_names_are_refused(masks):
    with pytest.raises(CompressionError, match="masks"):
        check_masks(masks, SHAPES)


def test_apply_masks_follows_the_rule():
    weights = {name: np.ones(shape, np.float32) for name, shape in SHAPES.items()}
    bad = {"a.weight": np.ones((3, 4), np.int8), "z": np.ones(1, bool)}
    with pytest.raises(CompressionError) as info:
        apply_masks(weights, bad)
    with pytest.raises(CompressionError) as rule:
        check_masks(bad, SHAPES)
    assert str(info.value) == str(rule.value)
