"""The generic restricted pickle interpreter with NumPy's allowlist: arrays read exactly as
``pickle.loads`` reads them (numpy's own pickles, protocols 2 to 5, gzipped files, Python 2 pickles),
and anything outside the allowlist is refused with nothing run.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct

import numpy as np
import pytest

from coreprune.errors import CompressionError, UnsafePickleError, WeightFileError
from coreprune.io.pickle_vm import NUMPY_GLOBALS, PickleGlobal, restricted_load, restricted_loads

NUMPY = [
    "numpy.core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
    "_codecs.encode",
    "builtins.bytes",
    "numpy.core.numeric._frombuffer",
    "numpy.core.multiarray.scalar",
]


def same(a, b) -> bool:
    """Same type, dtype, shape, memory order and bits (numpy 2 swaps a big-endian array to native
    order on loading, numpy 1 does not: the values are compared in native order)."""
    native = lambda x: x.astype(x.dtype.newbyteorder("="))  # noqa: E731
    return (type(a) is type(b) and native(a).dtype == native(b).dtype and a.shape == b.shape
            and native(a).tobytes() == native(b).tobytes() and a.flags.f_contiguous == b.flags.f_contiguous)


ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.arange(6, dtype=np.int64),
    np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    np.arange(4, dtype=">i4"),
    np.array([True, False]),
    np.array(3.5, np.float16),
    np.zeros((0, 5), np.uint8),
    np.array([1 + 2j], np.complex64),
]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numeric_arrays_read_as_pickle_reads_them(protocol):
    data = pickle.dumps(ARRAYS, protocol=protocol)
    expected = pickle.loads(data)
    got = restricted_loads(data, NUMPY)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert same(g, e), (g, e)
        assert g.flags.writeable


def test_gzipped_mnist_like_tuples_read_with_the_numpy_allowlist(tmp_path):
    rng = np.random.default_rng(0)
    split = (rng.random((5, 784), dtype=np.float32), rng.integers(0, 10, 5).astype(np.int64))
    path = tmp_path / "digits.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump((split, split), f, protocol=2)
    with gzip.open(path, "rb") as f:
        (x, y), (x2, _) = restricted_load(f, NUMPY, source=str(path))
    assert same(x, split[0]) and same(y, split[1]) and same(x2, split[0])


def test_a_python2_pickle_reads_with_latin1():
    # numpy under Python 2 writes the array data as a py2 str (SHORT_BINSTRING), as in mnist.pkl.gz.
    raw = np.array([1.0, -2.5, 3.25], np.float32).tobytes()

    def U(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    dtype = (b"cnumpy\ndtype\n" + U(b"f4") + b"K\x00K\x01\x87R"
             + b"(K\x03" + U(b"<") + b"NNN" + b"J" + struct.pack("<i", -1) * 1 + b"J" + struct.pack("<i", -1)
             + b"K\x00tb")
    prog = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + U(b"b") + b"\x87R"
            + b"(K\x01K\x03\x85" + dtype + b"\x89" + U(raw) + b"tb.")
    assert same(pickle.loads(prog, encoding="latin1"), np.array([1.0, -2.5, 3.25], np.float32))
    got = restricted_loads(prog, NUMPY, encoding="latin1")
    assert same(got, np.array([1.0, -2.5, 3.25], np.float32))
    with pytest.raises(WeightFileError, match="not ASCII"):
        restricted_loads(prog, NUMPY)


def test_numpy_scalars_read():
    data = pickle.dumps([np.int64(7), np.float32(0.5)], protocol=2)
    got = restricted_loads(data, NUMPY)
    assert got == pickle.loads(data) and [type(v) for v in got] == [np.int64, np.float32]


def test_object_arrays_and_unlisted_globals_are_refused():
    with pytest.raises(UnsafePickleError, match="only numeric NumPy dtypes"):
        restricted_loads(pickle.dumps(np.array([None, 1], dtype=object), protocol=2), NUMPY)
    with pytest.raises(UnsafePickleError, match="numpy.ndarray, which is not in the allowlist"):
        restricted_loads(pickle.dumps(np.arange(3), protocol=4), ["numpy.core.multiarray._reconstruct"])
    with pytest.raises(UnsafePickleError, match="posix.system"):
        import os

        restricted_loads(pickle.dumps(os.system, protocol=2), NUMPY_GLOBALS)


def test_structured_dtypes_are_refused():
    data = pickle.dumps(np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]), protocol=2)
    with pytest.raises(UnsafePickleError):
        restricted_loads(data, NUMPY)


def test_truncated_array_data_is_an_error():
    data = pickle.dumps(np.arange(100, dtype=np.int32), protocol=3)  # no frames: the length is edited
    cut = data.replace(np.arange(100, dtype=np.int32).tobytes(), np.arange(99, dtype=np.int32).tobytes())
    cut = cut.replace(struct.pack("<I", 400), struct.pack("<I", 396), 1)
    with pytest.raises(WeightFileError, match="396 bytes of data for shape"):
        restricted_loads(cut, NUMPY, source="cut.pkl")


def test_allowlist_entries_must_have_a_stand_in():
    with pytest.raises(CompressionError, match="no stand-in for the global 'os.system'"):
        restricted_loads(pickle.dumps(1), ["os.system"])
    with pytest.raises(CompressionError, match="not one string"):
        restricted_loads(pickle.dumps(1), "numpy.dtype")


def test_a_caller_stand_in_is_applied_and_persistent_ids_need_a_resolver():
    double = PickleGlobal("mymod.double", "call", None, lambda vm, x: 2 * x)
    data = b"\x80\x02cmymod\ndouble\nK\x15\x85R."
    assert restricted_loads(data, [double]) == 42
    with pytest.raises(UnsafePickleError, match="mymod.double"):
        restricted_loads(data, [])
    pid = b"\x80\x02K\x01Q."
    with pytest.raises(UnsafePickleError, match="persistent id"):
        restricted_loads(pid, [])
    assert restricted_loads(pid, [], persistent_load=lambda vm, p: ("resolved", p)) == ("resolved", 1)


def test_restricted_load_is_unbounded_without_end_and_stops_after_stop():
    buf = io.BytesIO(pickle.dumps([1, 2], protocol=2) + b"trailing")
    assert restricted_load(buf, []) == [1, 2]
    assert buf.read() == b"trailing"
