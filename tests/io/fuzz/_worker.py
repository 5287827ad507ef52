"""Child process of :mod:`guard`: reads one file per request and reports what happened.

Protocol: one JSON request per stdin line ``{"path", "format", "options", "kind"}``; one JSON
reply per stdout line. The address space is capped (RLIMIT_AS) before the first request, so a
reader that tries to allocate gigabytes fails here (a MemoryError is reported as a bug) instead
of taking the machine down; a signal or a hang kills only this process, which the parent sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import traceback
import tracemalloc
import warnings


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _exercise(request: dict) -> dict:
    import numpy as np

    import coreprune.io as cio
    from coreprune.errors import CompressionError

    path, kind = request["path"], request.get("kind", "read")
    options = request.get("options") or {}
    try:
        if kind == "map":  # the gluon-to-torch name mapping over the file's names
            from coreprune.name_mapping import gluon_to_torch_names

            with cio.open_weights(path, **options) as reader:
                names = list(reader)
            return {"outcome": "ok", "tensors": {"mapped": [len(gluon_to_torch_names(names)), "", ""]}}
        if kind == "truncate":  # open (no mmap), then the file shrinks before the tensors are read
            import shutil

            copy = path + ".copy" + os.path.splitext(path)[1]
            shutil.copyfile(path, copy)
            try:
                with cio.open_weights(copy, mmap=False, **options) as reader:
                    os.truncate(copy, os.path.getsize(copy) // 2)
                    for name in reader:
                        np.asarray(reader[name]).sum()
            finally:
                os.unlink(copy)
            return {"outcome": "ok", "tensors": {}}
        if kind == "save-as":  # read, then write to an output name of NAME_MAX bytes beside the file
            folder = os.path.dirname(path)
            out = os.path.join(folder, request["output"])
            try:
                cio.save(cio.load(path, **options), out)
                left = [n for n in os.listdir(folder) if n.endswith(".tmp")]
                return {"outcome": "ok" if not left else "bug", "tensors": {}, "message": str(left)}
            finally:
                if os.path.exists(out):
                    os.unlink(out)
        if kind == "cli":  # the command line, in process: exit status and its stderr
            import contextlib
            import io as _io

            from coreprune.cli import main as cli_main

            err, out = _io.StringIO(), _io.StringIO()
            folder = os.path.dirname(path)
            argv = [a.replace("{path}", path).replace("{dir}", folder) for a in request["argv"]]
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                code = cli_main(argv)
            lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
            if code == 2 and len(lines) == 1:
                return {"outcome": "error", "type": "WeightFileError", "message": lines[0]}
            if code == 0:
                return {"outcome": "ok", "tensors": {}, "message": out.getvalue()[-2000:]}
            return {"outcome": "bug", "type": f"exit {code}", "message": err.getvalue()[-2000:]}
        if kind == "cpz-raw":
            from coreprune.io.cpz import load_compressed

            values = load_compressed(path)
            digest = {n: [list(v.shape), str(v.dtype), "raw"] for n, v in values.items()}
            return {"outcome": "ok", "tensors": digest}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with cio.open_weights(path, format=request.get("format"), **options) as reader:
                digest = {}
                for name in reader:
                    spec = reader.spec(name)
                    value = reader[name]
                    if hasattr(value, "tocsr"):  # scipy sparse: do not densify
                        data = np.asarray(value.data)
                        shape = tuple(value.shape)
                        dtype = value.dtype
                    else:
                        data = np.asarray(value)
                        shape, dtype = tuple(data.shape), data.dtype
                    if shape != tuple(spec.shape) or dtype != spec.dtype:
                        return {
                            "outcome": "bug",
                            "type": "Inconsistent",
                            "message": f"{name!r}: read {shape} {dtype}, spec {spec.shape} {spec.dtype}",
                        }
                    raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8) if data.size else b""
                    digest[name] = [list(shape), str(dtype), hashlib.sha256(raw).hexdigest()[:16]]
                    del value, data, raw
                len(repr(reader.extras)[:1000])
        return {"outcome": "ok", "tensors": digest}
    except CompressionError as e:
        text = str(e)
        return {"outcome": "error", "type": type(e).__name__, "message": text[:2000]}
    except BaseException as e:  # everything else is a bug: report it with the traceback
        return {
            "outcome": "bug",
            "type": type(e).__name__,
            "message": str(e)[:500],
            "traceback": traceback.format_exc()[-3000:],
        }


def main() -> None:
    import numpy  # noqa: F401  (import before capping the address space)

    import coreprune.io  # noqa: F401
    import coreprune.io.cpz  # noqa: F401

    limit = int(os.environ.get("COREPRUNE_FUZZ_AS_BYTES", str(1 << 30)))
    cap = _vm_size() + limit
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    sys.setrecursionlimit(10_000)
    out = sys.stdout
    out.write("ready\n")  # the parent times cases from here, not the interpreter's start
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        tracemalloc.start()
        try:
            reply = _exercise(request)
            reply["peak"] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
