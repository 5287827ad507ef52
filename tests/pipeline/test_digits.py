"""The pipeline's data: scikit-learn's digits upscaled to 28x28, a fixed stratified split."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn")

from coreprune_digits.data import load_digits_28, random_shift, upscale  # noqa: E402

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


def test_random_shift_translates_each_image_within_the_bound():
    n, m = 400, 2
    images = np.zeros((n, 1, 9, 9), np.float32)
    images[:, 0, 4, 4] = 1.0  # one bright pixel in the centre of blank paper
    out = random_shift(images, m, np.random.default_rng(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert np.all(out.sum(axis=(1, 2, 3)) == 1.0)  # nothing lost: the pixel stays inside
    rows, cols = np.nonzero(out[:, 0])[1:]
    offsets = set(zip((rows - 4).tolist(), (cols - 4).tolist()))
    assert offsets == {(dy, dx) for dy in range(-m, m + 1) for dx in range(-m, m + 1)}  # all 25, no more
    assert np.all(images[:, 0, 4, 4] == 1.0)  # input untouched


def test_random_shift_fills_with_the_background_and_matches_a_reference():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(6, 2, 5, 7)).astype(np.float32)
    out = random_shift(images, 1, np.random.default_rng(3))
    dy, dx = np.random.default_rng(3).integers(0, 3, size=(2, 6))
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=images.min())
    for i in range(6):
        np.testing.assert_array_equal(out[i], padded[i, :, dy[i] : dy[i] + 5, dx[i] : dx[i] + 7])


def test_random_shift_zero_is_a_copy_and_bad_input_is_refused():
    images = np.ones((2, 1, 4, 4))
    out = random_shift(images, 0, np.random.default_rng(0))
    assert np.array_equal(out, images) and out is not images
    with pytest.raises(CompressionError, match="max_shift"):
        random_shift(images, -1, np.random.default_rng(0))
    with pytest.raises(CompressionError, match=r"\(n, c, h, w\)"):
        random_shift(np.ones((4, 4)), 1, np.random.default_rng(0))
