"""Read and write weight files with nothing but NumPy.

``load(path)`` returns ``dict[str, numpy.ndarray]``; ``open_weights(path)`` returns a
lazy :class:`~coreprune.io.base.WeightReader` that reads one tensor at a time;
``save(weights, path)`` writes atomically. The format is chosen by the file
extension and checked against the file's magic bytes:

===============  =============================  ==========================================
format           extensions                     module
===============  =============================  ==========================================
``npz``          ``.npz``, ``.npy``             :mod:`coreprune.io.npz_format`
``mxnet``        ``.params``, ``.nd``           :mod:`coreprune.io.mxnet_params`
``torch``        ``.pt``, ``.pth``, ``.bin``,   :mod:`coreprune.io.torch_format`
                 ``.ckpt``
``safetensors``  ``.safetensors``               :mod:`coreprune.io.safetensors_format`
``cpz``          ``.cpz``                       :mod:`coreprune.io.cpz` (reads dequantized)
===============  =============================  ==========================================

A sharded checkpoint -- an index file ``*.index.json`` (``model.safetensors.index.json``,
``pytorch_model.bin.index.json``) or a folder of shards -- is one lazy checkpoint to
``open_weights`` and ``load`` (:mod:`coreprune.io.sharded`); ``save(weights, "NAME.EXT.index.json")``
or ``save(..., max_shard_size="5GB")`` writes one.

Each format module provides ``FORMAT``, ``EXTENSIONS``, ``sniff(head: bytes) -> bool``,
``open_reader(path, **options) -> WeightReader`` and
``write(weights: Mapping, f: BinaryIO, **options) -> None``; optionally
``EXTENSION_OPTIONS`` (extension -> default writer options, e.g. ``.npy`` -> one array).
Writers raise the :class:`~coreprune.errors.CompressionError` family naming the tensor;
:func:`save` re-raises it as a :class:`~coreprune.errors.WeightFileError` whose message starts with
the destination path. A format module that fails to import disables only that
format, and error messages say so.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import CompressionError, WeightFileError
from .base import TensorSpec, WeightReader, atomic_write, check_names_encodable
from .sharded import ShardedReader, is_sharded, open_sharded, save_sharded

__all__ = [
    "load", "save", "open_weights", "detect_format", "FORMATS", "TensorSpec", "WeightReader", "ShardedReader",
]

#: format name -> module that implements it
FORMATS: dict[str, str] = {
    "npz": "coreprune.io.npz_format",
    "mxnet": "coreprune.io.mxnet_params",
    "torch": "coreprune.io.torch_format",
    "safetensors": "coreprune.io.safetensors_format",
    "cpz": "coreprune.io.cpz",
}

_HEAD_BYTES = 64


def _module(fmt: str) -> ModuleType:
    if fmt not in FORMATS:
        raise WeightFileError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    try:
        return importlib.import_module(FORMATS[fmt])
    except ImportError as e:
        raise WeightFileError(
            f"the {fmt} format is unavailable: {FORMATS[fmt]} failed to import ({e})"
        ) from e


def _available(fmt: str) -> ModuleType | None:
    # A format module that cannot be imported must not take the other formats down with it.
    try:
        return _module(fmt)
    except WeightFileError:
        return None


def _unavailable_note() -> str:
    missing = [fmt for fmt in FORMATS if _available(fmt) is None]
    return f"; these formats could not be imported: {', '.join(missing)}" if missing else ""


def _format_for_extension(path: Path) -> str | None:
    suffix = path.suffix.lower()
    for fmt in FORMATS:
        module = _available(fmt)
        if module is not None and suffix in module.EXTENSIONS:
            return fmt
    return None


def detect_format(path: str | os.PathLike) -> str:
    """The format of an existing file: by extension, confirmed by its magic bytes.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    str
        One of the keys of :data:`FORMATS`.

    Raises
    ------
    WeightFileError
        The file is missing, empty, or its bytes match no known format (or another
        format than its extension says).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> save({"w": np.zeros(2)}, p)
    >>> detect_format(p)
    'npz'
    """
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    if not head:
        raise WeightFileError(f"{path}: the file is empty")
    by_ext = _format_for_extension(path)
    if by_ext is not None and _module(by_ext).sniff(head):
        return by_ext
    by_magic = [fmt for fmt in FORMATS if (m := _available(fmt)) is not None and m.sniff(head)]
    if by_ext is not None:
        seen = f"it looks like {by_magic[0]}" if by_magic else "its first bytes match no known format"
        raise WeightFileError(
            f"{path}: the extension says {by_ext} but {seen} (corrupted, or misnamed: rename it)"
        )
    if by_magic:
        return by_magic[0]
    raise WeightFileError(
        f"{path}: not a weight file this library reads (extension {path.suffix or 'none'!r}; "
        f"known formats: {', '.join(FORMATS)}){_unavailable_note()}"
    )


def open_weights(
    path: str | os.PathLike,
    *,
    format: str | None = None,
    mmap: bool = True,
    max_expansion: int | None = None,
    allow_globals: Iterable[str] = (),
    **options: Any,
) -> WeightReader:
    """Open a weight file lazily: names and shapes now, each tensor when it is indexed.

    Parameters
    ----------
    path : path-like
        A weight file, or a sharded checkpoint: an index ``*.index.json`` or a folder of shards
        (a :class:`~coreprune.io.sharded.ShardedReader`; ``reader.shard_of(name)`` tells the shard).
    format : str, optional
        Skip detection and read as this format.
    mmap : bool
        ``True`` (default): tensors stored contiguously are read-only memory maps, read from disk
        as they are touched. Fast and frugal, but a file truncated or rewritten while it is mapped
        kills the process with SIGBUS: use it on files nothing else writes. ``False``: each tensor
        is read into memory when it is indexed (one at a time, so streaming stays frugal); a file
        that changes underneath is a :class:`~coreprune.errors.WeightFileError`, never a signal.
        The ``coreprune`` command reads with ``mmap=False``. See ``docs/security.md``.
    max_expansion : int, optional
        Bytes a reader may build beyond what the file stores -- decompressed npz members, expanded
        MXNet sparse arrays, .cpz sparse layouts and packed codes, overlapping torch views -- all
        tensors together. Default: ``max(32 x file size, 128 MiB)``
        (:func:`coreprune.io.base.expansion_budget`).
    allow_globals : iterable of str
        torch files: ``"module.Name"`` globals outside the allowlist that the pickle may name,
        read as opaque records (nothing is imported or called). Ignored by formats without pickles.
    **options
        Passed to the format's reader (e.g. ``sparse="scipy"`` for MXNet csr/row_sparse arrays).

    Returns
    -------
    WeightReader
        A read-only ``Mapping[str, numpy.ndarray]``; use it as a context manager.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> save({"a": np.ones((2, 2), np.float32)}, p)
    >>> with open_weights(p) as r:
    ...     print(r.spec("a").shape, r.spec("a").dtype)
    (2, 2) float32
    >>> with open_weights(p, mmap=False) as r:
    ...     print(type(r["a"]).__name__)
    ndarray
    """
    if format is None and is_sharded(path):
        return open_sharded(path, **options)
    fmt = format or detect_format(path)
    options = {"mmap": mmap, "max_expansion": max_expansion, **options}
    if fmt == "torch":
        options["allow_globals"] = tuple(allow_globals)
    return _module(fmt).open_reader(Path(path), **options)


def _own(value: Any, copies: dict[int, tuple[np.ndarray, np.ndarray]]) -> Any:
    """``value`` in memory the result owns: a memory map is copied, its storage once for all its views.

    Tensors that share a storage (torch views, tied weights) stay views of one copy, so loading a
    file never materialises more than its storages hold.
    """
    if not isinstance(value, np.memmap):
        return value
    root: np.ndarray = value
    while isinstance(root.base, np.ndarray):
        root = root.base
    if root is value:
        return np.array(value)
    key = id(root)
    if key not in copies:
        copies[key] = (root, np.array(root, copy=True))  # the root is kept so its id stays unique
    copy = copies[key][1]
    offset = value.ctypes.data - root.ctypes.data
    return np.ndarray(value.shape, value.dtype, buffer=copy, offset=offset, strides=value.strides)


def load(path: str | os.PathLike, *, format: str | None = None, **options: Any) -> dict[str, np.ndarray]:
    """Read every tensor of a weight file into a dict.

    Values that are not tensors (a checkpoint's ``epoch``) are not returned; a
    ``UserWarning`` names them, and ``open_weights(path).extras`` holds them.

    Parameters
    ----------
    path : path-like
        A weight file, an index ``*.index.json`` or a folder of shards.
    format : str, optional
    **options
        Passed to :func:`open_weights` (``mmap``, ``max_expansion``, ``allow_globals``) and the
        format's reader. Memory maps are copied into memory the result owns; tensors that share
        a storage (torch views, tied weights) stay views of one copy.

    Returns
    -------
    dict of str to numpy.ndarray

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> save({"w": np.arange(3, dtype=np.int8)}, p)
    >>> load(p)["w"].tolist()
    [0, 1, 2]
    """
    with open_weights(path, format=format, **options) as reader:
        out = {}
        copies: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for name in reader:
            # An eager load must outlive the file: memory maps are copied into RAM, shared storage once.
            out[name] = _own(reader[name], copies)
        if reader.extras:
            names = ", ".join(list(reader.extras)[:10])
            warnings.warn(
                f"{path}: {len(reader.extras)} non-tensor value(s) not returned by load ({names}); "
                "open_weights(path).extras holds them",
                UserWarning,
                stacklevel=2,
            )
    return out


def save(
    weights: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    *,
    format: str | None = None,
    inputs: tuple[str | os.PathLike, ...] = (),
    max_shard_size: int | str | None = None,
    **options: Any,
) -> None:
    """Write ``weights`` to ``path`` atomically (temporary file, then rename).

    A ``path`` ending in ``.index.json``, or a ``max_shard_size``, writes a sharded checkpoint
    (:func:`coreprune.io.sharded.save_sharded`): ``NAME-0000i-of-0000N.EXT`` shards and the index
    ``NAME.EXT.index.json``, all or nothing.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Any mapping, including a lazy :class:`WeightReader`: values are read one at a time.
    path : path-like
        The format follows the extension unless ``format`` is given.
    format : str, optional
    inputs : tuple of path-like
        Files this output must never overwrite.
    max_shard_size : int or str, optional
        Shard the output: at most this many bytes of dense tensor data per shard (``"5GB"``,
        ``"2GiB"`` or an int).
    **options
        Passed to the format's writer.

    Raises
    ------
    WeightFileError
        The format cannot be told, the destination is one of ``inputs``, or the writer refused a
        value (a dtype the format cannot store, a bad option value): the message starts with
        ``path`` and names the tensor. The file at ``path`` is left as it was.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> save({"w": np.ones(3, np.float32)}, p)
    >>> load(p)["w"].tolist()
    [1.0, 1.0, 1.0]
    """
    from ..selection import check_weights

    path = Path(path)
    if max_shard_size is not None or path.name.endswith(".index.json"):
        if not isinstance(weights, WeightReader):
            check_weights(weights)
        save_sharded(weights, path, max_shard_size=max_shard_size, inputs=inputs,
                     **({"format": format} if format else {}), **options)
        return
    fmt = format or _format_for_extension(path)
    if fmt is None:
        raise WeightFileError(
            f"{path}: cannot tell the format from the extension {path.suffix or 'none'!r}; "
            f"use one of {', '.join(sorted(e for m in map(_available, FORMATS) if m for e in m.EXTENSIONS))}"
            f" or pass format={_unavailable_note()}"
        )
    if not isinstance(weights, WeightReader):
        check_weights(weights)
    if fmt != "torch":  # pickle keeps lone surrogates; the other formats store UTF-8
        check_names_encodable(weights, fmt)
    module = _module(fmt)
    # Some formats have several extensions that mean different layouts (.npy is one array, .npz many).
    options = {**getattr(module, "EXTENSION_OPTIONS", {}).get(path.suffix.lower(), {}), **options}
    try:
        with atomic_write(path, inputs=inputs) as f:
            module.write(weights, f, **options)
    except CompressionError as e:
        # Writers see only an open file; the user needs the destination in the message.
        if str(e).startswith(str(path)):
            raise
        raise WeightFileError(f"{path}: {e}") from e
