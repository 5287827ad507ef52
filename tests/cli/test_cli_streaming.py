"""``--sparsity S --global`` streams: the threshold comes from passes over the lazy reader, then each
tensor is pruned on its own, with exactly the masks of ``prune_magnitude(..., scope="global")``.

Cross-checks: the CLI output against ``prune_magnitude`` on the loaded dict (every format, ties,
mixed dtypes, selections); ``global_magnitude_threshold`` on a reader against the same function on
the dict and against the concatenate-and-partition reference, with hypothesis, also with the
budget forced down so that every radix pass and the single-value bucket run; the NaN error; and
the memory held while the CLI prunes globally (tracemalloc).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import coreprune.io as cio
from coreprune._fast import kth as _select
from coreprune._fast.kth import kth_smallest_abs_reference as _kth_smallest_abs_reference
from coreprune.cli import main
from coreprune.errors import CompressionError
from coreprune.pruning import global_magnitude_threshold, prune_magnitude


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.ascontiguousarray(a).tobytes() == (
        np.ascontiguousarray(b).tobytes()
    )


def read(path) -> dict:
    with cio.open_weights(path) as r:
        return {k: np.array(r[k]) for k in r}


def model(seed: int, ties: bool) -> dict[str, np.ndarray]:
    """Weights of several float dtypes; ``ties``: small integers, so the cut falls inside a tie."""
    rng = np.random.default_rng(seed)

    def values(shape, dtype):
        if ties:
            return rng.integers(-3, 4, size=shape).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)

    return {
        "conv.weight": values((8, 3, 3, 3), np.float32),
        "conv.bias": values((8,), np.float32),
        "fc1.weight": values((64, 40), np.float16),
        "fc2.weight": values((30, 20), np.float64),
        "fc2.bias": values((30,), np.float64),
        "steps": np.array(7, np.int64),
        "head.weight": values((10, 64), np.float32),
    }


@pytest.fixture(params=[".npz", ".safetensors", ".pt", ".cpz"])
def ext(request) -> str:
    return request.param


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("sparsity", ["0", "0.3", "0.5", "0.95", "1"])
def test_cli_global_equals_prune_magnitude(tmp_path, ext, ties, sparsity):
    weights = model(3, ties)
    src = tmp_path / f"m{ext}"
    cio.save(weights, src)
    out = tmp_path / "p.npz"
    assert main(["prune", str(src), "-o", str(out), "--sparsity", sparsity, "--global", "-q"]) == 0
    expected, _ = prune_magnitude(weights, float(sparsity), scope="global")
    got = read(out)
    assert list(got) == list(expected)
    for name in expected:
        assert same(got[name], expected[name]), name


def test_cli_global_with_a_selection_and_compress_equals_the_library(tmp_path):
    weights = model(4, True)
    src = tmp_path / "m.safetensors"
    cio.save(weights, src)
    out = tmp_path / "p.cpz"
    argv = ["compress", str(src), "-o", str(out), "--sparsity", "0.6", "--global", "--include", "*.weight",
            "--include", "fc2.bias", "--exclude", "conv.*", "-q"]
    assert main(argv) == 0
    expected, _ = prune_magnitude(weights, 0.6, scope="global", include=["*.weight", "fc2.bias"],
                                  exclude="conv.*")
    got = read(out)
    for name in expected:
        assert same(got[name], expected[name]), name
    assert same(got["conv.weight"], weights["conv.weight"])


def test_cli_global_names_the_first_tensor_holding_nan(tmp_path, capsys):
    weights = model(5, False)
    weights["fc1.weight"][3, 4] = np.nan
    weights["head.weight"][0, 0] = np.inf
    src = tmp_path / "m.safetensors"
    cio.save(weights, src)
    with pytest.raises(CompressionError) as lib:
        prune_magnitude(weights, 0.5, scope="global")
    assert main(["prune", str(src), "-o", str(tmp_path / "p.npz"), "--sparsity", "0.5", "--global"]) == 2
    err = capsys.readouterr().err
    assert str(lib.value) in err and "'fc1.weight'" in err
    assert not (tmp_path / "p.npz").exists()


# ------------------------------------------------------------------ the threshold over a lazy reader


def _check_reader_threshold(tmp_path, weights: dict, sparsity: float) -> None:
    path = tmp_path / "w.safetensors"
    cio.save(weights, path)
    in_memory = global_magnitude_threshold(weights, sparsity)
    with cio.open_weights(path) as reader:
        lazy = global_magnitude_threshold(reader, sparsity)
        assert lazy == in_memory
        expected, masks = prune_magnitude(weights, sparsity, scope="global")
        for name in lazy.removed_at_value:
            pruned, mask = lazy.prune(name, reader[name])
            assert same(mask, masks[name]) and same(pruned, expected[name]), name
    names = list(lazy.removed_at_value)
    work = np.dtype(lazy.work)
    if lazy.k:
        v, r = _kth_smallest_abs_reference([weights[n] for n in names], lazy.k, work)
        assert lazy.value == float(v) and sum(lazy.removed_at_value.values()) == r
    else:
        assert lazy.value == -np.inf and set(lazy.removed_at_value.values()) == {0}


tensor_lists = st.lists(
    st.tuples(
        st.integers(1, 40), st.integers(1, 30), st.sampled_from(["float16", "float32", "float64"]),
        st.sampled_from(["normal", "ties", "zeros", "tiny"]),
    ),
    min_size=1, max_size=5,
)


def _build(spec, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, (rows, cols, dtype, kind) in enumerate(spec):
        if kind == "normal":
            a = rng.standard_normal((rows, cols))
        elif kind == "ties":
            a = rng.integers(-2, 3, size=(rows, cols)) * 0.5
        elif kind == "zeros":
            a = np.where(rng.random((rows, cols)) < 0.7, 0.0, rng.standard_normal((rows, cols)))
        else:
            a = rng.standard_normal((rows, cols)) * 1e-6
        out[f"t{i}.weight"] = a.astype(dtype)
    return out


@settings(max_examples=40, deadline=None)
@given(spec=tensor_lists, seed=st.integers(0, 1000), sparsity=st.floats(0, 1))
def test_reader_threshold_equals_the_in_memory_one_and_the_reference(tmp_path_factory, spec, seed, sparsity):
    _check_reader_threshold(tmp_path_factory.mktemp("h"), _build(spec, seed), sparsity)


@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reader_threshold_with_every_radix_pass(tmp_path, monkeypatch, sparsity, dtype):
    """A budget of one value: each pass narrows the bucket by 16 bits until it is a single value
    (2 passes for float32, 4 for float64), whose count per tensor is then taken in another pass."""
    monkeypatch.setattr(_select, "CANDIDATE_MIN", 1)
    monkeypatch.setattr(_select, "CANDIDATE_SHARE", 1 << 40)
    rng = np.random.default_rng(7)
    weights = {
        "a.weight": (rng.integers(-4, 5, size=(50, 30)) * 0.25).astype(dtype),
        "b.weight": rng.standard_normal((20, 25)).astype(dtype),
        "c.weight": (rng.integers(-4, 5, size=(40, 10)) * 0.25).astype(dtype),
    }
    _check_reader_threshold(tmp_path, weights, sparsity)


def test_threshold_prune_refuses_an_unselected_name():
    w = {"a": np.ones((2, 2), np.float32), "b": np.ones(3, np.float32)}
    t = global_magnitude_threshold(w, 0.5)
    assert list(t.removed_at_value) == ["a"] and t.total == 4 and t.k == 2
    with pytest.raises(CompressionError, match="'b' was not selected"):
        t.prune("b", w["b"])


# ------------------------------------------------------------------------------------------- memory


@pytest.mark.parametrize("ext", [".npz", ".pt"])
@pytest.mark.parametrize("command", ["prune", "compress"])
def test_global_prune_holds_one_tensor_at_a_time(tmp_path, ext, command):
    import tracemalloc

    rng = np.random.default_rng(0)
    src = tmp_path / f"big{ext}"
    weights = {f"layer{i}.weight": rng.standard_normal((512, 512)).astype(np.float32) for i in range(16)}
    cio.save(weights, src)
    out = tmp_path / ("b.cpz" if command == "compress" else "b.npz")
    tracemalloc.start()
    try:
        code = main([command, str(src), "-o", str(out), "--sparsity", "0.7", "--global", "-q"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 0
    # 16 MiB of weights in 1 MiB tensors: loading them all peaked at 23.6 MiB; now ~4-5 MiB (one
    # tensor, its pruned copy, and per-thread block scratch)
    assert peak < 8 * 2**20, peak / 2**20
    expected, _ = prune_magnitude(weights, 0.7, scope="global")
    got = read(out)
    for name in expected:
        assert same(got[name], expected[name]), name
