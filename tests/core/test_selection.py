import numpy as np
import pytest

from coreprune import CompressionError, select
from coreprune.selection import is_floating, require_finite


@pytest.fixture
def weights():
    return {
        "features.0.weight": np.ones((4, 1, 5, 5), np.float32),
        "features.0.bias": np.ones(4, np.float32),
        "bn.running_mean": np.zeros(4, np.float32),
        "bn.num_batches_tracked": np.array(7, np.int64),
        "dense0.weight": np.ones((10, 16), np.float16),
        "table": np.ones((3, 3), np.int32),
    }


def test_default_selects_floating_matrices_only(weights):
    assert select(weights) == ["features.0.weight", "dense0.weight"]


def test_include_overrides_ndim_rule_but_not_dtype_rule(weights):
    assert select(weights, include="*") == [
        "features.0.weight",
        "features.0.bias",
        "bn.running_mean",
        "dense0.weight",
    ]


def test_exclude_dense_expresses_the_source_material(weights):
    assert select(weights, exclude=["*dense*"]) == ["features.0.weight"]


def test_predicate(weights):
    assert select(weights, include=lambda n, a: a.size > 50) == ["features.0.weight", "dense0.weight"]


def test_unmatched_glob_lists_names(weights):
    with pytest.raises(CompressionError, match=r"'conv\*' matches no tensor.*features\.0\.weight"):
        select(weights, include="conv*")
    with pytest.raises(CompressionError, match="exclude pattern"):
        select(weights, exclude=["*dense*", "nope"])


@pytest.mark.parametrize("bad", [[1, 2], 3.0, None])
def test_non_array_value_is_named(bad):
    with pytest.raises(CompressionError, match=r"weights\['x'\] is a"):
        select({"x": bad})


def test_not_a_mapping():
    with pytest.raises(CompressionError, match="mapping"):
        select([np.zeros(2)])


def test_bfloat16_is_floating():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert is_floating(np.dtype(ml_dtypes.bfloat16))
    assert select({"w": np.ones((2, 2), ml_dtypes.bfloat16)}) == ["w"]


def test_require_finite_counts():
    with pytest.raises(CompressionError, match="'w' has 2 NaN/Inf"):
        require_finite("w", np.array([[np.inf, 1.0], [np.nan, 0.0]], np.float32))
    require_finite("w", np.zeros((0, 3)))
    require_finite("i", np.array([1, 2]))


def test_is_subclass_of_value_error():
    assert issubclass(CompressionError, ValueError)
