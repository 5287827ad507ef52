"""scikit-learn's bundled handwritten digits, upscaled to LeNet's 28x28 input, with a fixed split.

The pipeline's real data. ``sklearn.datasets.load_digits`` ships inside scikit-learn (no
download): 1,797 grey 8x8 images of the digits 0-9 with 17 intensity levels (0-16). LeNet was
designed for 28x28 MNIST digits, so the images are resized with bilinear interpolation
(``scipy.ndimage.zoom``, order 1) and standardised with the training set's mean and standard
deviation. The split is stratified (every class in proportion) and fixed by ``seed``.

Framework-free: NumPy arrays out, for either framework's training loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from coreprune.errors import CompressionError

__all__ = ["DigitsSplit", "load_digits_28", "random_shift", "upscale"]


@dataclass(frozen=True)
class DigitsSplit:
    """A train/test split of the digits as float32 images and int64 labels.

    Attributes
    ----------
    x_train, x_test : numpy.ndarray of float32, shape (n, 1, size, size)
        Standardised images (NCHW): zero mean and unit variance over the training pixels.
    y_train, y_test : numpy.ndarray of int64, shape (n,)
        Digit labels 0-9.
    mean, std : float
        The training-set statistics used to standardise both parts (in units of the 0-16
        intensity scale divided by 16).
    seed : int
        The split's seed.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: float
    std: float
    seed: int


def upscale(images: np.ndarray, size: int = 28) -> np.ndarray:
    """Resize square images ``(n, h, h)`` to ``(n, size, size)`` with bilinear interpolation.

    Parameters
    ----------
    images : numpy.ndarray, shape (n, h, h)
        Any real dtype; computed in float32.
    size : int, default 28
        Output side in pixels, ``>= 1``.

    Returns
    -------
    numpy.ndarray of float32, shape (n, size, size)
        Corner pixels keep their values (``grid_mode=False``), so the range is preserved.

    Examples
    --------
    >>> import numpy as np
    >>> out = upscale(np.arange(4.0).reshape(1, 2, 2), size=3)
    >>> out.shape, out[0, 1].tolist()
    ((1, 3, 3), [1.0, 1.5, 2.0])
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.shape[1] == 0:
        raise CompressionError(f"upscale expects square images of shape (n, h, h), got {images.shape}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise CompressionError(f"size must be a positive integer, got {size!r}")
    side = images.shape[1]
    out = np.empty((images.shape[0], size, size), dtype=np.float32)
    # zoom with an explicit output shape maps corner to corner, the same for every image.
    for i, image in enumerate(images):
        out[i] = ndimage.zoom(image, size / side, order=1, output=np.float32, grid_mode=False)
    return out


def load_digits_28(*, seed: int = 0, test_fraction: float = 0.25, size: int = 28) -> DigitsSplit:
    """Load scikit-learn's digits, upscale them to ``size`` x ``size``, split and standardise them.

    Parameters
    ----------
    seed : int, default 0
        Seed of the stratified split; the same seed always gives the same split.
    test_fraction : float, default 0.25
        Share of the images held out for testing, in (0, 1): 450 of the 1,797 at 0.25.
    size : int, default 28
        Side of the upscaled images in pixels.

    Returns
    -------
    DigitsSplit
        ``x_*`` of shape (n, 1, size, size) float32, ``y_*`` of shape (n,) int64.

    Raises
    ------
    CompressionError
        When scikit-learn is missing or an argument is out of range.

    Examples
    --------
    >>> split = load_digits_28()
    >>> split.x_train.shape, split.x_test.shape, split.x_train.dtype
    ((1347, 1, 28, 28), (450, 1, 28, 28), dtype('float32'))
    >>> sorted(set(split.y_test.tolist())) == list(range(10))
    True
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise CompressionError(
            "the digits data needs scikit-learn: pip install 'coreprune[examples]'"
        ) from exc
    if not 0.0 < float(test_fraction) < 1.0:
        raise CompressionError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    digits = load_digits()
    images = upscale(digits.images / 16.0, size)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=float(test_fraction), random_state=int(seed), stratify=labels
    )
    mean, std = float(x_train.mean()), float(x_train.std())
    x_train = ((x_train - mean) / std).astype(np.float32)[:, None]
    x_test = ((x_test - mean) / std).astype(np.float32)[:, None]
    return DigitsSplit(
        x_train=np.ascontiguousarray(x_train),
        y_train=y_train,
        x_test=np.ascontiguousarray(x_test),
        y_test=y_test,
        mean=mean,
        std=std,
        seed=int(seed),
    )


def random_shift(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translate each image by its own random offset of up to ``max_shift`` pixels in each direction.

    The training-time augmentation of the pipeline's teacher: a digit written a little off
    centre is the same digit. Uncovered pixels take the background value (the batch's minimum,
    which for the standardised digits is the blank paper).

    Parameters
    ----------
    images : numpy.ndarray, shape (n, c, h, w)
    max_shift : int
        ``>= 0``; offsets are drawn uniformly from ``[-max_shift, max_shift]`` per image and axis.
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray
        A new array of the same shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((1, 1, 3, 3), np.float32); x[0, 0, 1, 1] = 1.0
    >>> out = random_shift(x, 1, np.random.default_rng(0))
    >>> float(out.sum()), out.shape
    (1.0, (1, 1, 3, 3))
    """
    if isinstance(max_shift, bool) or not isinstance(max_shift, (int, np.integer)) or max_shift < 0:
        raise CompressionError(f"max_shift must be a non-negative integer, got {max_shift!r}")
    images = np.asarray(images)
    if images.ndim != 4:
        raise CompressionError(f"random_shift expects images of shape (n, c, h, w), got {images.shape}")
    if max_shift == 0 or images.size == 0:
        return images.copy()
    m = int(max_shift)
    n, _, h, w = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (m, m), (m, m)), constant_values=images.min())
    windows = np.lib.stride_tricks.sliding_window_view(
        padded, (h, w), axis=(2, 3)
    )  # (n, c, 2m+1, 2m+1, h, w)
    dy, dx = rng.integers(0, 2 * m + 1, size=(2, n))
    return np.ascontiguousarray(windows[np.arange(n), :, dy, dx])
