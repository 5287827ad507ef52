"""Write the crafted-file corpus of issue 11: a few small files per failure class, with expected outcomes.

Run from the repository root (it rewrites tests/io/corpus/<class>/ and expected.json)::

    python tests/io/corpus/make_corpus.py

Every file is built here from the format's layout (with the test builders in tests/io), so the
corpus is reproducible. ``expected.json`` maps ``<class>/<file>`` to ``{"outcome": "ok" | "error",
"match": text the error must contain, "kind": how to replay it, "options": reader options}``;
tests/io/test_corpus.py replays every entry in a guarded child process (tests/io/fuzz/guard.py).
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "fuzz"))

from _torchpickle import Call, Global, Storage, Tensor, legacy_file, zip_file  # noqa: E402
from builders import hostile_snippets  # noqa: E402
from mxnet_records import MAGIC, params_file, tshape  # noqa: E402

import coreprune.io as cio  # noqa: E402
from coreprune.io import cpz, npz_format  # noqa: E402

CLASSES = {
    1: "01-pickle-budgets",
    2: "02-storage-views",
    3: "03-shared-storage",
    4: "04-names",
    5: "05-cpz-manifest",
    6: "06-expansion",
    7: "07-name-mapping",
    8: "08-changing-files",
    9: "09-atomic-writes",
    10: "10-cli-output",
    11: "11-unknown-globals",
}
EXPECTED: dict[str, dict] = {}


def put(cls: int, name: str, data: bytes, outcome: str, match: str = "", **replay) -> None:
    folder = HERE / CLASSES[cls]
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(data)
    EXPECTED[f"{CLASSES[cls]}/{name}"] = {"outcome": outcome, "match": match, **replay}


def torch_with_value(snippet: bytes) -> bytes:
    """A torch zip whose checkpoint dict holds one tensor and ``{"x": <snippet's value>}``."""
    s = Storage(np.arange(4, dtype=np.float32).tobytes(), "FloatStorage", "0")
    tensor_pickle, storages = __import__("_torchpickle").dumps({"w": Tensor(s, 0, (4,), (1,)), "x": "@@"})
    at = tensor_pickle.find(b"X\x02\x00\x00\x00@@")
    body = tensor_pickle[:at] + snippet + tensor_pickle[at + 7 :]
    return zip_file(pickle_bytes=body, storages=storages)


def cpz_with(entry: dict, value: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    cpz.write({"w": np.zeros(8, np.float32) if value is None else value}, buf)
    data = buf.getvalue()
    offset, length, _, end = cpz._FOOTER.unpack_from(data, len(data) - cpz._FOOTER.size)
    manifest = json.loads(data[offset : offset + length])
    manifest["tensors"][0].update(entry)
    text = json.dumps(manifest).encode()
    return data[:offset] + text + cpz._FOOTER.pack(offset, len(text), zlib.crc32(text), end)


def main() -> None:
    for folder in CLASSES.values():
        shutil.rmtree(HERE / folder, ignore_errors=True)
    snippets = dict(hostile_snippets())
    # smaller twins of the fuzzer's snippets, still past each budget
    P = 2**61 - 1
    snippets["deep tuples"] = b")" + b"\x85" * 1000
    snippets["deep lists"] = b"]" * 3000 + b"a" * 2999
    snippets["colliding int keys"] = b"}(" + b"".join(
        b"\x8a\x0a" + (i * P + 5).to_bytes(10, "little", signed=True) + b"K\x01" for i in range(1, 100)
    ) + b"u"
    # 1: pickle VM budgets (each small enough to commit)
    for key, match in [("deep tuples", "deeper than"), ("hash DAG as key", "shared ones counted"),
                       ("DAG in set", "shared ones counted"), ("equal DAGs compared", "shared ones counted"),
                       ("5000-digit int", "integer of 2100 bytes"), ("colliding int keys", "same hash"),
                       ("amplified set", "amplification"), ("deep lists", "nest deeper than")]:
        put(1, key.replace(" ", "-") + ".pt", torch_with_value(snippets[key]), "error", match)
    put(1, "plain-checkpoint.pt", torch_with_value(b"K\x07"), "ok")
    # 2: storage views
    raw = np.arange(3, dtype=np.float32).tobytes()
    put(2, "float32-and-float64-views.pt", zip_file({
        "f": Tensor(Storage(raw, "FloatStorage", "0"), 0, (3,), (1,)),
        "d": Tensor(Storage(raw, "DoubleStorage", "0", itemsize=8, numel=1), 0, (1,), (1,))}), "ok")
    s = Storage(np.arange(12, dtype=np.float32).tobytes(), "FloatStorage", "0")
    put(2, "view-past-storage.pt", zip_file({"w": Tensor(s, 2, (3, 4), (4, 1))}), "error", "reaches element")
    put(2, "huge-offset.pt", zip_file({"w": Tensor(s, 2**62, (1,), (1,))}), "error", "reaches element")
    put(2, "huge-stride.pt", zip_file({"w": Tensor(s, 0, (2,), (2**40,))}), "error", "reaches element")
    put(2, "legacy-view-past-storage.pt", legacy_file({"w": Tensor(s, 9, (4,), (1,))}), "error", "reaches")
    # 3: one storage under many names
    big = Storage(np.arange(1 << 12, dtype=np.float32).tobytes(), "FloatStorage", "0")  # 16 KiB
    shared = zip_file({f"w{i}": Tensor(big, 0, (1 << 12,), (1,)) for i in range(200)})  # 3.2 MB of views
    put(3, "one-storage-200-names.pt", shared, "ok")
    put(3, "one-storage-200-names-small-budget.pt", shared, "error", "expansion budget",
        options={"max_expansion": 1 << 20})
    stride0 = zip_file({"w": Tensor(s, 0, (1 << 30,), (0,))})
    put(3, "stride-0-view.pt", stride0, "error", "larger than the file")
    # 4: names
    esc = io.BytesIO()
    npz_format.write({"evil\x1b[2J.weight": np.ones(2, np.float32)}, esc)
    put(4, "escape-sequence-name.npz", esc.getvalue(), "ok")
    put(4, "escape-sequence-name-cli.npz", esc.getvalue(), "ok", kind="cli", argv=["inspect", "{path}"])
    put(4, "lone-surrogate-name.pt", zip_file({"w\udc80": Tensor(s, 0, (2,), (1,))}), "ok")
    put(4, "lone-surrogate-name-to-npz.pt", zip_file({"w\udc80": Tensor(s, 0, (2,), (1,))}), "error",
        "lone surrogate", kind="cli", argv=["convert", "{path}", "{dir}/out.npz"])
    # 5: .cpz manifests
    put(5, "40-dims.cpz", cpz_with({"shape": [1] * 40}), "error", "40 dims")
    put(5, "2-to-the-70.cpz", cpz_with({"shape": [2**70]}), "error", "shape")
    put(5, "bool-dim.cpz", cpz_with({"shape": [True, 8]}), "error", "bad shape")
    put(5, "shape-vs-payload.cpz", cpz_with({"shape": [9]}, np.ones(8, np.float32)), "error",
        "bytes, the shape says")
    lying = {"shape": [300_000_000], "layout": "csr", "nnz": 0, "entries": 0, "width": 8,
             "blobs": {"values": [16, 0, 0], "index": [16, 0, 0]}}
    put(5, "300M-zeros-in-300-bytes.cpz", cpz_with(lying), "error", "expansion budget")
    # 6: expansion
    zeros = io.BytesIO()
    npz_format.write({"z": np.zeros(16 << 20, np.uint8)}, zeros, compressed=True)
    put(6, "deflate-16MiB.npz", zeros.getvalue(), "error", "expansion budget",
        options={"max_expansion": 1 << 20})
    put(6, "deflate-16MiB-default-budget.npz", zeros.getvalue(), "ok")
    record = (struct.pack("<Ii", MAGIC[2], 1) + tshape((1, 3)) + tshape((2**40, 3))
              + struct.pack("<iii", 1, 0, 0) + struct.pack("<i", 6) + tshape((1,))
              + np.ones(3, "<f4").tobytes() + np.array([7], "<i8").tobytes())
    put(6, "row-sparse-2-to-the-40-rows.params", params_file([record], ["r"]), "error", "expansion budget")
    # 7: long legacy names for the gluon-to-torch mapping
    names = ["net0_" + "_".join(f"b{i}" for i in range(2000)) + f"_x{j}_weight" for j in range(3)]
    buf = io.BytesIO()
    from coreprune.io import mxnet_params

    mxnet_params.write({n: np.ones(2, np.float32) for n in names}, buf)
    put(7, "long-legacy-names.params", buf.getvalue(), "ok", kind="map")
    # 8: a file that shrinks after it was opened (replayed without mmap: an error, never SIGBUS)
    for ext in (".npz", ".safetensors", ".params", ".pt"):
        out = io.BytesIO()
        cio_module = {".npz": npz_format, ".safetensors": cio._module("safetensors"),
                      ".params": mxnet_params, ".pt": cio._module("torch")}[ext]
        cio_module.write({"w": np.ones(1 << 12, np.float32)}, out)
        put(8, f"shrinks-after-open{ext}", out.getvalue(), "error", "", kind="truncate")
    # 9: an output name of NAME_MAX bytes
    small = io.BytesIO()
    npz_format.write({"w": np.ones(3, np.float32)}, small)
    put(9, "write-to-255-byte-name.npz", small.getvalue(), "ok", kind="save-as", output="w" * 251 + ".npz")
    # 10: the CLI's output paths
    dollar = io.BytesIO()
    npz_format.write({"cost$^$x.weight": np.ones((3, 3), np.float32)}, dollar)
    put(10, "mathtext-name-plot.npz", dollar.getvalue(), "ok", kind="cli",
        argv=["inspect", "{path}", "--plot", "{dir}/plot.png"])
    put(10, "deep-structure-cli.pt", torch_with_value(b"]" + b"]" * 3000 + b"a" * 3000), "error", "deeper",
        kind="cli", argv=["inspect", "{path}"])
    # 11: unknown globals
    config = Call(Global("myproject.config", "TrainConfig"), (3,))
    cfg = zip_file({"w": Tensor(s, 0, (2,), (1,)), "cfg": config})
    put(11, "unknown-global.pt", cfg, "error", "myproject.config.TrainConfig")
    put(11, "unknown-global-allowed.pt", cfg, "ok",
        options={"allow_globals": ["myproject.config.TrainConfig"]})
    put(11, "unknown-global-allowed-cli.pt", cfg, "ok", kind="cli",
        argv=["inspect", "{path}", "--allow-global", "myproject.config.TrainConfig"])
    put(11, "os-system.pt", zip_file({"x": Call(Global("posix", "system"), ("echo pwned",))}), "error",
        "posix.system")
    (HERE / "expected.json").write_text(json.dumps(EXPECTED, indent=1, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
    print(f"{len(EXPECTED)} files, {total} bytes")


if __name__ == "__main__":
    main()
