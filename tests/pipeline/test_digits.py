"""The pipeline's data: scikit-learn's digits upscaled to 28x28, a fixed stratified split."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn")

from adapters.digits import load_digits_28, upscale  # noqa: E402
from coreprune import CompressionError  # noqa: E402


@pytest.fixture(scope="module")
def split():
    return load_digits_28(seed=0)


def test_shapes_dtypes_and_sizes(split):
    assert split.x_train.shape == (1347, 1, 28, 28) and split.x_test.shape == (450, 1, 28, 28)
    assert split.x_train.dtype == np.float32 and split.y_train.dtype == np.int64
    assert split.x_train.flags.c_contiguous and split.x_test.flags.c_contiguous


def test_standardised_with_training_statistics(split):
    assert abs(float(split.x_train.mean())) < 1e-4
    assert abs(float(split.x_train.std()) - 1.0) < 1e-4
    # The test part uses the training statistics, so it is close to, not exactly, standard.
    assert abs(float(split.x_test.mean())) < 0.1


def test_split_is_fixed_by_seed_and_stratified(split):
    again = load_digits_28(seed=0)
    np.testing.assert_array_equal(again.x_test, split.x_test)
    np.testing.assert_array_equal(again.y_train, split.y_train)
    other = load_digits_28(seed=1)
    assert not np.array_equal(other.y_test, split.y_test)
    counts = np.bincount(split.y_test, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 47  # 25% of 174..183 images per class


def test_images_are_the_digits_upscaled(split):
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Undo the standardisation and compare corners with the source image (corners are kept exactly).
    raw = split.x_test[:, 0] * split.std + split.mean
    corners = {(round(float(a), 4), round(float(b), 4)) for a, b in zip(raw[:, 0, 0], raw[:, -1, -1])}
    source = {
        (round(float(a) / 16, 4), round(float(b) / 16, 4))
        for a, b in zip(digits.images[:, 0, 0], digits.images[:, -1, -1])
    }
    assert corners <= source


def test_upscale_is_bilinear_and_keeps_the_range():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 16, size=(5, 8, 8))
    out = upscale(images)
    assert out.shape == (5, 28, 28) and out.dtype == np.float32
    assert out.min() >= images.min() - 1e-5 and out.max() <= images.max() + 1e-5
    np.testing.assert_allclose(out[:, 0, 0], images[:, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(out[:, -1, -1], images[:, -1, -1], rtol=1e-6)
    # A linear ramp stays a linear ramp under bilinear interpolation.
    ramp = np.tile(np.arange(8.0), (8, 1))[None]
    np.testing.assert_allclose(upscale(ramp)[0, 3], np.linspace(0, 7, 28), atol=1e-5)


@pytest.mark.parametrize(
    "images, size, message",
    [
        (np.zeros((2, 8, 7)), 28, "square"),
        (np.zeros((8, 8)), 28, "square"),
        (np.zeros((1, 8, 8)), 0, "positive integer"),
    ],
)
def test_upscale_rejects_bad_input(images, size, message):
    with pytest.raises(CompressionError, match=message):
        upscale(images, size)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5])
def test_test_fraction_out_of_range(fraction):
    with pytest.raises(CompressionError, match="test_fraction"):
        load_digits_28(test_fraction=fraction)
