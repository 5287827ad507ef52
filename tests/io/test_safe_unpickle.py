"""The restricted unpickler: a corpus of hostile pickles is refused with nothing run; plain data reads
exactly as the standard library reads it.

Each hostile payload is first shown to be live -- ``pickle.loads`` in a child process really creates
the sentinel file -- and then refused by :func:`restricted_loads` (and inside zip and legacy torch
files) with an :class:`UnsafePickleError` naming the global, the sentinel still absent.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from _torchpickle import MAGIC, Storage, Tensor, tensor_of, zip_file  # noqa: E402
from hypothesis import given
from hypothesis import strategies as st

from coreprune.errors import UnsafePickleError, WeightFileError  # noqa: E402
from coreprune.io import torch_format as tf  # noqa: E402
from coreprune.io import torch_pickle as su  # noqa: E402


# -- a tiny pickle assembler -----------------------------------------------------------------------------
def G(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def S(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def T(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def prog(*parts: bytes, proto: int = 2) -> bytes:
    return (b"\x80" + bytes([proto]) if proto >= 2 else b"") + b"".join(parts) + b"."


def call(func: bytes, *args: bytes) -> bytes:
    return func + T(*args) + b"R"


def touch_cmd(sentinel: Path) -> str:
    return f"touch {sentinel}"


def py_touch(sentinel: Path) -> str:
    return f"open({str(sentinel)!r}, 'w').close()"


# Each case: (id, builder(sentinel) -> pickle bytes, the global the error must name, live under pickle.loads?)
CORPUS = [
    ("os.system", lambda s: prog(call(G("os", "system"), S(touch_cmd(s)))), "os.system", True),
    ("posix.system", lambda s: prog(call(G("posix", "system"), S(touch_cmd(s)))), "posix.system", True),
    (
        "subprocess.check_call",
        lambda s: prog(call(G("subprocess", "check_call"), T(S("touch"), S(str(s))))),
        "subprocess.check_call",
        True,
    ),
    ("builtins.eval", lambda s: prog(call(G("builtins", "eval"), S(py_touch(s)))), "builtins.eval", True),
    ("builtins.exec", lambda s: prog(call(G("builtins", "exec"), S(py_touch(s)))), "builtins.exec", True),
    (
        "__builtin__.eval (py2 name)",
        lambda s: prog(call(G("__builtin__", "eval"), S(py_touch(s)))),
        "__builtin__.eval",
        True,
    ),
    (
        "getattr chain",
        lambda s: prog(
            call(
                call(G("builtins", "getattr"), call(G("builtins", "__import__"), S("os")), S("system")),
                S(touch_cmd(s)),
            )
        ),
        "builtins.getattr",
        True,
    ),
    ("__import__", lambda s: prog(call(G("builtins", "__import__"), S("os"))), "builtins.__import__", False),
    (
        "functools.partial(os.system)",
        lambda s: prog(call(call(G("functools", "partial"), G("os", "system"), S(touch_cmd(s))))),
        "functools.partial",
        True,
    ),
    (
        "copyreg._reconstructor",
        lambda s: prog(
            call(G("copyreg", "_reconstructor"), G("collections", "OrderedDict"), G("builtins", "dict"), b"}")
        ),
        "copyreg._reconstructor",
        False,
    ),
    (
        "STACK_GLOBAL (protocol 4)",
        lambda s: prog(b"\x8c\x02os\x8c\x06system\x93" + T(S(touch_cmd(s))) + b"R", proto=4),
        "os.system",
        True,
    ),
    ("INST (protocol 0)", lambda s: b"(" + S(touch_cmd(s)) + b"ios\nsystem\n.", "os.system", True),
    (
        "unknown class torch.nn.Module",
        lambda s: prog(G("torch.nn.modules.module", "Module") + b")\x81"),
        "torch.nn.modules.module.Module",
        False,
    ),
    (
        "numpy array reconstruct",
        lambda s: prog(
            call(G("numpy.core.multiarray", "_reconstruct"), G("numpy", "ndarray"), b"K\x00\x85", b"C\x01b")
        ),
        "numpy.core.multiarray._reconstruct",
        False,
    ),
    (
        "torch.load inside the pickle",
        lambda s: prog(call(G("torch", "load"), S(str(s)))),
        "torch.load",
        False,
    ),
]


def _run_plain_pickle(payload: bytes, tmp_path: Path) -> None:
    """Load ``payload`` with the standard (unsafe) unpickler in a child process."""
    f = tmp_path / "payload.pkl"
    f.write_bytes(payload)
    subprocess.run(
        [sys.executable, "-c", "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())", str(f)],
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, case):
    _, build, global_name, live = case
    sentinel = tmp_path / "pwned"
    payload = build(sentinel)
    if live:  # the payload is real: the standard unpickler runs it
        _run_plain_pickle(payload, tmp_path)
        assert sentinel.exists(), "payload should be live under pickle.loads"
        sentinel.unlink()
    with pytest.raises(UnsafePickleError, match=global_name.replace(".", r"\.")) as e:
        su.loads_torch_pickle(payload, source="evil.pt")
    assert str(e.value).startswith("evil.pt: ") and "refused before anything ran" in str(e.value)
    assert not sentinel.exists()


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
def test_malicious_pickle_inside_a_valid_zip_checkpoint(tmp_path, case):
    _, build, global_name, _ = case
    sentinel = tmp_path / "pwned"
    evil = build(sentinel)
    if not evil.startswith(b"\x80"):
        pytest.skip("protocol-0 payloads cannot be spliced into a protocol-2 dict")
    inner = evil[2:-1]  # drop PROTO and STOP: the payload becomes one value of the checkpoint
    w = tensor_of(np.ones(2, np.float32), "0", "FloatStorage")
    body = prog(b"}(" + S("evil") + inner + b"u")
    p = tmp_path / "ckpt.pt"
    p.write_bytes(zip_file(pickle_bytes=body, storages={"0": w.storage}))
    with pytest.raises(UnsafePickleError, match=global_name.replace(".", r"\.")):
        tf.open_reader(p)
    assert not sentinel.exists()


@pytest.mark.parametrize("position", ["magic", "protocol", "sys_info", "object", "keys"])
def test_malicious_pickle_anywhere_in_a_legacy_file(tmp_path, position):
    sentinel = tmp_path / "pwned"
    evil = prog(call(G("os", "system"), S(touch_cmd(sentinel))))
    parts = {
        "magic": pickle.dumps(MAGIC, protocol=2),
        "protocol": pickle.dumps(1001, protocol=2),
        "sys_info": pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
        "object": pickle.dumps({"epoch": 1}, protocol=2),
        "keys": pickle.dumps([], protocol=2),
    }
    parts[position] = evil
    p = tmp_path / "old.pt"
    p.write_bytes(b"".join(parts.values()))
    if position == "magic":  # no torch magic number: not even recognised as a torch file
        with pytest.raises(WeightFileError):
            tf.open_reader(p)
    else:
        with pytest.raises(UnsafePickleError, match=r"os\.system"):
            tf.open_reader(p)
    assert not sentinel.exists()


# -- opcode-level refusals ----------------------------------------------------------------------------
OPCODE_CASES = [
    ("OBJ", b"(" + G("collections", "OrderedDict") + b"o.", "OBJ"),
    ("EXT1", b"\x80\x02\x82\x01)R.", "extension registry"),
    ("NEWOBJ_EX", b"\x80\x04" + G("collections", "OrderedDict") + b")}\x92.", "NEWOBJ_EX"),
    ("PERSID text", b"P0\n.", "PERSID"),
    ("NEXT_BUFFER", b"\x80\x05\x97.", "out-of-band"),
    (
        "REDUCE on a storage type",
        prog(call(G("torch", "FloatStorage"), b"K\x01")),
        r"calls torch\.FloatStorage",
    ),
    ("REDUCE on a string", prog(S("os.system") + T() + b"R"), "calls str"),
    ("NEWOBJ on a dtype", prog(G("torch", "float32") + b")\x81"), r"torch\.float32 \(NEWOBJ\)"),
    ("BUILD on a list", prog(b"]" + b"}" + b"b"), "BUILD"),
    ("BUILD on a set", prog(call(G("builtins", "set"), b"]") + b"}b"), "BUILD"),
    ("APPEND to a dict", prog(b"}K\x01a"), "APPEND to a dict"),
    ("SETITEM on a list", prog(b"]K\x01K\x02s"), "SETITEM to a list"),
    (
        "persistent id: module",
        prog(T(S("module"), G("collections", "OrderedDict"), S("m.py"), S("src")) + b"Q"),
        "tagged 'module'",
    ),
    ("persistent id: a string", prog(S("storage") + b"Q"), "of type str"),
    ("persistent id: an int", prog(b"K\x07Q"), "of type int"),
    (
        "backward hooks attached",
        prog(
            call(
                G("torch._utils", "_rebuild_tensor_v2"),
                T(S("storage"), G("torch", "FloatStorage"), S("0"), S("cpu"), b"K\x01") + b"Q",
                b"K\x00",
                b"K\x01\x85",
                b"K\x01\x85",
                b"\x89",
                call(G("collections", "OrderedDict"), b"]" + T(b"K\x00", b"K\x01") + b"a"),
            )
        ),
        "backward hooks",
    ),
]


@pytest.mark.parametrize("case", OPCODE_CASES, ids=[c[0] for c in OPCODE_CASES])
def test_refused_opcodes_and_targets(case):
    _, payload, message = case
    with pytest.raises(UnsafePickleError, match=message):
        su.loads_torch_pickle(payload, source="x.pt")


def test_build_on_ordered_dict_sets_no_attribute():
    od = collections.OrderedDict(a=1)
    od._metadata = {"": {"version": 1}}
    od.__dict__["__class__"] = "attempt"  # state a naive BUILD would apply with setattr
    out = su.loads_torch_pickle(pickle.dumps(od, protocol=2))
    assert out == {"a": 1} and type(out) is collections.OrderedDict and vars(out) == {}


def test_allowed_globals_are_exactly_the_documented_list():
    assert "os.system" not in su.ALLOWED_GLOBALS
    assert {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch.FloatStorage",
        "torch.storage.UntypedStorage",
        "torch.bfloat16",
        "_codecs.encode",
    } <= set(su.ALLOWED_GLOBALS)
    modules = {name.rsplit(".", 1)[0] for name in su.ALLOWED_GLOBALS}
    assert modules == {"collections", "torch", "torch._utils", "torch.storage", "_codecs", "builtins"}


def test_bytearray_cannot_allocate_from_a_count():
    with pytest.raises(WeightFileError, match="bytearray"):
        su.loads_torch_pickle(prog(call(G("builtins", "bytearray"), b"J\xff\xff\xff\x7f")))


# -- robustness ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x02X\xff\xff\xff\xff.",  # BINUNICODE of 4 GiB in 8 bytes
        b"\x80\x02\x8b\xff\xff\xff\x7f.",  # LONG4 of 2 GiB
        b"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\x7f.",  # BINBYTES8 of 2**63
        b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\x00\x00.",  # FRAME past the end
    ],
)
def test_declared_lengths_past_the_data_allocate_nothing(payload):
    tracemalloc.start()
    try:
        with pytest.raises(WeightFileError, match="truncated"):
            su.loads_torch_pickle(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_every_truncation_of_a_valid_pickle_is_a_clear_error():
    data = pickle.dumps({"a": [1, 2.5, "x" * 300, (None, True)], "b": {3: b"\x00" * 70000}}, protocol=2)
    for n in range(len(data) - 1, 0, -97):
        with pytest.raises(WeightFileError):
            su.loads_torch_pickle(data[:n])


def test_deep_nesting_is_a_loop_not_a_recursion():
    depth = 200_000  # far past sys.getrecursionlimit()
    data = b"\x80\x02" + b"(" * depth + b"l" * depth + b"."
    out = su.loads_torch_pickle(data)
    for _ in range(5):
        assert type(out) is list and len(out) == 1
        out = out[0]


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x80\x02.", "underflow"),
        (b"\x80\x02t.", "no MARK"),
        (b"\x80\x02h\x05.", "memo entry 5"),
        (b"\x80\x02\xff.", "not a pickle opcode"),
        (b"\x80\x09N.", "protocol 9"),
        (b"\x80\x02}]]s.", "unhashable"),
        (b"\x80\x02X\x02\x00\x00\x00\xff\xfe.", "UTF-8"),
        (prog(call(G("collections", "OrderedDict"), b"K\x01")), "OrderedDict"),
        (prog(call(G("torch._utils", "_rebuild_tensor_v2"), b"K\x01")), "TypeError"),
    ],
)
def test_corrupted_pickles_raise_weight_file_error(payload, message):
    with pytest.raises(WeightFileError, match=message):
        su.loads_torch_pickle(payload)


def test_tensor_bounds_checked_against_storage():
    def tensor(offset, size, stride, numel=4):
        pid = T(S("storage"), G("torch", "FloatStorage"), S("0"), S("cpu"), b"K" + bytes([numel])) + b"Q"
        return prog(
            call(
                G("torch._utils", "_rebuild_tensor_v2"),
                pid,
                b"K" + bytes([offset]),
                T(*size),
                T(*stride),
                b"\x89",
                call(G("collections", "OrderedDict")),
            )
        )

    ok = su.loads_torch_pickle(tensor(1, [b"K\x03"], [b"K\x01"]))
    assert isinstance(ok, su.TensorRef) and (ok.offset, ok.shape, ok.stride) == (1, (3,), (1,))
    with pytest.raises(WeightFileError, match="reaches element 4"):
        su.loads_torch_pickle(tensor(2, [b"K\x03"], [b"K\x01"]))
    with pytest.raises(WeightFileError, match="conj/neg bit on a bool"):
        pid = T(S("storage"), G("torch", "BoolStorage"), S("0"), S("cpu"), b"K\x01") + b"Q"
        neg = b"}" + S("neg") + b"\x88s"
        su.loads_torch_pickle(
            prog(
                call(
                    G("torch._utils", "_rebuild_tensor_v2"),
                    pid,
                    b"K\x00",
                    T(b"K\x01"),
                    T(b"K\x01"),
                    b"\x89",
                    call(G("collections", "OrderedDict")),
                    neg,
                )
            )
        )
    empty = su.loads_torch_pickle(tensor(9, [b"K\x00"], [b"K\x01"]))  # no element: any offset is harmless
    assert empty.shape == (0,)


# -- plain data reads as the standard library reads it ------------------------------------------------
plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.complex_numbers(allow_nan=False),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=4)
        | st.frozensets(st.integers(), max_size=3)
        | st.sets(st.text(max_size=3), max_size=3)
    ),
    max_leaves=20,
)


@given(plain, st.sampled_from([2, 3, 4, 5]))
def test_plain_values_match_pickle_loads(value, protocol):
    data = pickle.dumps(value, protocol=protocol)
    assert su.loads_torch_pickle(data) == pickle.loads(data)


def test_bytearray_and_ordered_dict_and_size():
    value = {"b": bytearray(b"\x00\x01"), "od": collections.OrderedDict([("x", 1)])}
    assert su.loads_torch_pickle(pickle.dumps(value, protocol=2)) == value
    size = prog(call(G("torch", "Size"), T(b"K\x02", b"K\x03")))
    assert su.loads_torch_pickle(size) == (2, 3)


def test_restricted_load_leaves_the_file_after_stop():
    f = io.BytesIO(pickle.dumps(1, protocol=2) + pickle.dumps("two", protocol=2))
    end = len(f.getvalue())
    assert su.load_torch_pickle(f, end=end, source="s") == 1
    assert su.load_torch_pickle(f, end=end, source="s") == "two"


def test_storage_hook_sees_every_storage():
    seen = []
    s = Storage(bytes(8), "DoubleStorage", "k1", itemsize=8)
    data = zip_file({"a": Tensor(s, 0, (1,), (1,)), "b": Tensor(s, 0, (1,), (1,))})
    import zipfile

    body = zipfile.ZipFile(io.BytesIO(data)).read("archive/data.pkl")
    su.loads_torch_pickle(body, storage_hook=seen.append)
    assert [(r.key, r.dtype, r.numel) for r in seen] == [("k1", np.dtype("f8"), 1)] * 2
