"""What every file format shares: the lazy reader, bounded reads, atomic writes.

A format module (``npz_format``, ``mxnet_params``, ``torch_format``,
``safetensors_format``) reads a file's header into :class:`TensorSpec` records and
serves tensors one at a time through a :class:`WeightReader`, so that listing or
inspecting a 4 GiB file never needs 4 GiB of memory. Writers take any
``Mapping[str, ndarray]`` -- a reader included -- and touch one value at a time.

Nothing here trusts a file: every declared size is checked against the bytes
that are really there (:func:`check_extent`) before anything is allocated.

Writers receive an open binary file, not a path: they raise
:class:`~coreprune.errors.WeightFileError` naming the tensor, and
:func:`coreprune.io.save` puts the destination path in front of the message.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from abc import abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeVar

import numpy as np

from ..errors import WeightFileError

__all__ = [
    "TensorSpec",
    "WeightReader",
    "spec_of",
    "check_extent",
    "read_exact",
    "atomic_write",
    "element_count",
    "check_shape",
    "write_c_order",
    "declared_little_endian",
    "MAX_NDIM",
    "EXPANSION_RATIO",
    "EXPANSION_FLOOR",
    "CPZ_EXPANSION_RATIO",
    "expansion_budget",
    "ExpansionMeter",
    "file_region",
    "strided_view",
    "check_names_encodable",
]

#: The most dimensions a stored tensor may declare (NumPy 1.x's limit); more is treated as corruption.
MAX_NDIM = 32

# NumPy cannot create an array whose byte size (counting only the non-zero dims) exceeds intp.
_MAX_ARRAY_BYTES = 2**62

#: Default expansion budget, as a multiple of the file size: bytes a reader may build beyond the bytes
#: the file stores for them (deflated npz members, MXNet sparse arrays expanded, .cpz sparse layouts
#: and bit-packed codes, torch views that overlap). Pruned checkpoints expand 5-10x.
EXPANSION_RATIO = 32
#: ... and at least this many bytes, so that small files with a few zero-initialised buffers read.
EXPANSION_FLOOR = 128 << 20


#: The default ratio for ``.cpz`` files, whose whole point is to expand: Deep Compression files
#: (pruned, shared-weight codes, entropy-coded) measure 46-51x smaller than float32
#: (docs/deep-compression.md), and the paper reports up to 49x; 256x leaves room for sparser models.
CPZ_EXPANSION_RATIO = 256


def expansion_budget(
    file_size: int, max_expansion: int | None = None, *, ratio: int = EXPANSION_RATIO
) -> int:
    """Bytes a reader of a ``file_size``-byte file may build beyond what the file stores.

    ``max_expansion`` (bytes) replaces the default ``max(ratio * file_size, EXPANSION_FLOOR)``
    (``ratio`` is :data:`EXPANSION_RATIO`, :data:`CPZ_EXPANSION_RATIO` for ``.cpz`` files).

    Examples
    --------
    >>> expansion_budget(10 << 20) == 320 << 20, expansion_budget(1000) == 128 << 20
    (True, True)
    >>> expansion_budget(1000, max_expansion=2**40)
    1099511627776
    """
    if max_expansion is not None:
        if isinstance(max_expansion, bool) or not isinstance(max_expansion, (int, np.integer)) or (
            max_expansion < 0
        ):
            raise WeightFileError(f"max_expansion must be a number of bytes >= 0, got {max_expansion!r}")
        return int(max_expansion)
    return max(ratio * file_size, EXPANSION_FLOOR)


class ExpansionMeter:
    """Counts the bytes a reader builds beyond what the file stores; refuses past the budget.

    One meter per open reader, shared by all its tensors: each tensor is charged once (reading it
    again costs nothing more), ``produced - stored`` bytes, so ``load`` of a whole file and a
    command streaming it tensor by tensor are bounded alike.

    Parameters
    ----------
    path : path-like
        Named in the error.
    file_size : int
    max_expansion : int, optional
        The budget in bytes (default :func:`expansion_budget`).
    ratio : int
        The default budget's multiple of the file size (:data:`CPZ_EXPANSION_RATIO` for ``.cpz``).
    credit : int
        Bytes that may be produced on top of the budget (the torch reader: the file size, which
        non-overlapping views of its storages never exceed).

    Examples
    --------
    >>> m = ExpansionMeter("a.npz", 1000, max_expansion=100)
    >>> m.charge("w", 80, what="array 'w'")
    >>> m.charge("w", 80, what="array 'w'")   # the same tensor again: no new charge
    >>> m.charge("v", 30, what="array 'v'")
    Traceback (most recent call last):
    ...
    coreprune.errors.WeightFileError: a.npz: array 'v' would build 30 bytes beyond what the file ...
    """

    def __init__(
        self,
        path: str | os.PathLike,
        file_size: int,
        max_expansion: int | None = None,
        *,
        credit: int = 0,
        ratio: int = EXPANSION_RATIO,
    ) -> None:
        self.path = path
        self.ratio = ratio
        self.budget = expansion_budget(file_size, max_expansion, ratio=ratio)
        self.explicit = max_expansion is not None
        self.used = -credit
        self._charged: set[str] = set()

    def charge(self, name: str, produced: int, stored: int = 0, *, what: str, hint: str = "") -> None:
        """Charge ``produced - stored`` bytes for tensor ``name`` (once per name).

        ``what`` names the tensor in the message; ``hint`` ends it.
        """
        if name in self._charged:
            return
        extra = max(int(produced) - int(stored), 0)
        if self.used + extra > self.budget:
            how = "it was set with max_expansion" if self.explicit else (
                f"max({self.ratio} x the file size, {EXPANSION_FLOOR >> 20} MiB) by default"
            )
            raise WeightFileError(
                f"{self.path}: {what} would build {extra} bytes beyond what the file stores, past the "
                f"expansion budget of {self.budget} bytes ({how}; {max(self.used, 0)} already used); if the "
                "file is trusted, raise it: max_expansion=BYTES in the library, --max-expansion in the CLI"
                + (f"; {hint}" if hint else "")
            )
        self.used += extra
        self._charged.add(name)


def check_names_encodable(names: Any, fmt: str) -> None:
    """Refuse a tensor name that UTF-8 cannot encode (a lone surrogate such as ``'\\udc80'``).

    Such names come from decoding bytes with ``surrogateescape`` or from a pickle; npz, safetensors,
    MXNet and .cpz files store names as UTF-8, so they are refused by name instead of failing inside
    a writer (torch files keep them, as ``pickle`` does).

    Examples
    --------
    >>> check_names_encodable(["fc.weight"], "npz")
    >>> check_names_encodable(["a\\udc80"], "npz")
    Traceback (most recent call last):
    ...
    coreprune.errors.WeightFileError: tensor 'a\\udc80': the name holds a lone surrogate (U+DC80 at ...
    """
    for name in names:
        if not isinstance(name, str):
            continue
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as e:
            raise WeightFileError(
                f"tensor {name[:80]!r}: the name holds a lone surrogate (U+{ord(name[e.start]):04X} at "
                f"character {e.start}), which {fmt} files cannot store as UTF-8; rename it"
            ) from None


def file_region(path: str | os.PathLike, offset: int, nbytes: int, *, mmap: bool, what: str) -> np.ndarray:
    """``nbytes`` bytes of a file at ``offset``, as a read-only 1-D ``uint8`` array.

    With ``mmap=True`` a memory map (no read now; pages are read when touched). A file truncated
    or rewritten while it is mapped kills the process with SIGBUS when a page past its new end is
    touched: use it only on files nothing else writes. With ``mmap=False`` the bytes are read now
    into memory the array owns; a file that has become shorter is a
    :class:`~coreprune.errors.WeightFileError`, never a signal.

    Examples
    --------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "f.bin")
    >>> _ = open(p, "wb").write(b"abcdef")
    >>> file_region(p, 2, 3, mmap=False, what="field").tobytes()
    b'cde'
    """
    if nbytes == 0:
        return np.empty(0, np.uint8)
    if mmap:
        return np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(nbytes,))
    out = np.empty(nbytes, np.uint8)
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            # NumPy's stubs give ndarray the buffer protocol (__buffer__) only for Python >= 3.12
            got = f.readinto(memoryview(out))  # type: ignore[arg-type]
    except OSError as e:
        raise WeightFileError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    if got != nbytes:
        raise WeightFileError(
            f"{path}: {what} needs {nbytes} bytes at offset {offset} but the file ends after {got} "
            "(it changed while it was being read?)"
        )
    out.flags.writeable = False
    return out


def strided_view(
    path: str | os.PathLike,
    what: str,
    buf: np.ndarray,
    dtype: np.dtype,
    shape: tuple[int, ...],
    offset: int,
    strides: tuple[int, ...],
) -> np.ndarray:
    """A view of ``buf`` (1-D ``uint8``) as ``dtype`` elements, checked to lie inside ``buf``.

    ``offset`` and ``strides`` are in bytes and must be non-negative. Every element the view can
    reach -- ``offset + sum((d - 1) * s) + itemsize`` bytes -- must lie within ``buf``; the array is
    built with :class:`numpy.ndarray`'s buffer constructor, which checks the extent again, so no
    view can read outside its storage.

    Examples
    --------
    >>> import numpy as np
    >>> b = np.arange(16, dtype=np.uint8)
    >>> strided_view("f", "t", b, np.dtype(np.uint16), (2, 2), 0, (2, 4)).shape
    (2, 2)
    >>> strided_view("f", "t", b, np.dtype(np.uint32), (3,), 8, (4,))
    Traceback (most recent call last):
    ...
    coreprune.errors.WeightFileError: f: t reaches byte 20 of a storage of 16 bytes (corrupted)
    """
    dtype = np.dtype(dtype)
    if offset < 0 or any(s < 0 for s in strides) or len(shape) != len(strides):
        raise WeightFileError(f"{path}: {what} has a negative offset or stride (corrupted)")
    if element_count(shape) == 0:
        return np.empty(shape, dtype)
    end = offset + sum((d - 1) * s for d, s in zip(shape, strides)) + dtype.itemsize
    if end > buf.size:
        raise WeightFileError(
            f"{path}: {what} reaches byte {end} of a storage of {buf.size} bytes (corrupted)"
        )
    try:
        out = np.ndarray(shape, dtype, buffer=buf, offset=offset, strides=strides)
    except (TypeError, ValueError) as e:  # numpy's own extent and alignment checks, as a second line
        raise WeightFileError(f"{path}: {what} is not a valid view of its storage ({e})") from None
    # A view of a mapping says so (coreprune.io.load copies memory maps so its result outlives the file).
    return out.view(np.memmap) if isinstance(buf, np.memmap) else out


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a stored tensor, known without reading its data.

    Attributes
    ----------
    shape : tuple of int
    dtype : numpy.dtype

    Examples
    --------
    >>> import numpy as np
    >>> TensorSpec((2, 3), np.dtype(np.float16)).nbytes
    12
    """

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def size(self) -> int:
        """Number of elements."""
        return element_count(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the dense data, ``size * dtype.itemsize``."""
        return self.size * np.dtype(self.dtype).itemsize


def element_count(shape: tuple[int, ...]) -> int:
    """Product of ``shape`` as an exact Python int (no int64 overflow on lying headers).

    Examples
    --------
    >>> element_count((2**40, 2**40))
    1208925819614629174706176
    >>> element_count(())
    1
    """
    n = 1
    for d in shape:
        n *= int(d)
    return n


def spec_of(weights: Mapping[str, Any], name: str) -> TensorSpec:
    """The :class:`TensorSpec` of ``weights[name]``, without reading it when ``weights`` is a reader.

    Examples
    --------
    >>> import numpy as np
    >>> spec_of({"w": np.zeros((2, 2), np.int8)}, "w")
    TensorSpec(shape=(2, 2), dtype=dtype('int8'))
    """
    if isinstance(weights, WeightReader):
        return weights.spec(name)
    value = weights[name]
    return TensorSpec(tuple(value.shape), np.dtype(value.dtype))


def check_extent(path: str | os.PathLike, what: str, offset: int, nbytes: int, file_size: int) -> None:
    """Raise :class:`WeightFileError` unless ``[offset, offset + nbytes)`` lies inside the file.

    Called before any allocation sized by a header, so a lying header costs nothing.

    Examples
    --------
    >>> check_extent("f.params", "tensor 'w'", 100, 24, 124)
    >>> check_extent("f.params", "tensor 'w'", 100, 2**40, 124)
    Traceback (most recent call last):
    ...
    coreprune.errors.WeightFileError: f.params: tensor 'w' needs 1099511627776 bytes at offset 100 ...
    """
    if offset < 0 or nbytes < 0 or offset + nbytes > file_size:
        left = max(file_size - offset, 0)
        raise WeightFileError(
            f"{path}: {what} needs {nbytes} bytes at offset {offset} but the file has only {left} bytes left "
            "(truncated or corrupted)"
        )


def check_shape(
    path: str | os.PathLike, what: str, shape: Any, itemsize: int, *, max_ndim: int = MAX_NDIM
) -> tuple[int, ...]:
    """Validate a shape read from a file and return it as a tuple of Python ints.

    Refuses anything but a sequence of at most ``max_ndim`` non-negative ints (``bool``
    is not an int here), and shapes NumPy could not allocate even with a zero dimension
    (the product of the non-zero dims times ``itemsize`` must stay below 2**62). Checking
    the byte count against the file is :func:`check_extent`'s job.

    Parameters
    ----------
    path : path-like
        The file, for the message.
    what : str
        The field, for the message (``"tensor 'w'"``).
    shape : sequence of int
    itemsize : int
        Bytes per element.
    max_ndim : int

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> check_shape("f.bin", "tensor 'w'", [2, 3], 4)
    (2, 3)
    >>> check_shape("f.bin", "tensor 'w'", [2, -1], 4)
    Traceback (most recent call last):
    ...
    coreprune.errors.WeightFileError: f.bin: tensor 'w' has an invalid shape [2, -1] (dims must be \
non-negative integers)
    """
    if not isinstance(shape, (tuple, list)):
        raise WeightFileError(f"{path}: {what} has a shape of type {type(shape).__name__}, not a sequence")
    if len(shape) > max_ndim:
        raise WeightFileError(
            f"{path}: {what} declares {len(shape)} dimensions; at most {max_ndim} are allowed (corrupted?)"
        )
    dims = []
    for d in shape:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)) or d < 0:
            raise WeightFileError(
                f"{path}: {what} has an invalid shape {list(shape)} (dims must be non-negative integers)"
            )
        dims.append(int(d))
    if element_count(tuple(d for d in dims if d)) * max(int(itemsize), 1) >= _MAX_ARRAY_BYTES:
        raise WeightFileError(f"{path}: {what} declares an impossibly large shape {tuple(dims)} (corrupted?)")
    return tuple(dims)


def read_exact(f: IO[bytes], n: int, path: str | os.PathLike, what: str) -> bytes:
    """Read exactly ``n`` bytes or raise :class:`WeightFileError` naming the file and the field.

    Examples
    --------
    >>> import io
    >>> read_exact(io.BytesIO(b"abcd"), 2, "x.bin", "magic")
    b'ab'
    """
    data = f.read(n)
    if len(data) != n:
        raise WeightFileError(f"{path}: file ends inside {what} (wanted {n} bytes, got {len(data)})")
    return data


_Reader = TypeVar("_Reader", bound="WeightReader")


class WeightReader(Mapping[str, np.ndarray]):
    """A read-only, lazy mapping of the tensors in one weight file.

    Names, shapes and dtypes come from the header when the reader opens; ``reader[name]``
    reads that one tensor (a fresh array, or a read-only memory map where the format
    stores it contiguously). Use it as a context manager so the file is closed.

    Subclasses fill ``self._specs`` and implement ``_read(name)``.

    Attributes
    ----------
    path : pathlib.Path
    format : str
        ``"npz"``, ``"mxnet"``, ``"torch"``, ``"safetensors"`` or ``"cpz"``.
    extras : dict
        Values in the file that are not tensors (a checkpoint's ``epoch``, an optimizer's
        hyper-parameters), by dotted name. Reported, never dropped silently.
    metadata : dict of str to str
        The file's own string metadata (safetensors ``__metadata__``, a ``.cpz`` manifest's
        metadata); empty for formats that have none.
    aliases : dict of str to str
        Tensors stored once under several names (tied weights in a ``torch.save`` file): each
        later name -> the first name viewing the same elements. Empty for formats that store
        every name separately.
    structure : object or None
        How a nested checkpoint holds its tensors and other values (a ``torch.save`` file of
        ``{"state_dict": ..., "epoch": ...}``, or a ``.cpz`` file written from one), as
        JSON-ready nodes (:mod:`coreprune.io.structure`); None for a flat mapping of tensors.
        The torch and ``.cpz`` writers take it back (``structure=``) to rebuild the nesting.

    Examples
    --------
    >>> import numpy as np, tempfile, os, coreprune.io as cio
    >>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> cio.save({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, path)
    >>> with cio.open_weights(path) as r:
    ...     print(list(r), r.spec("w").shape, float(r["w"].sum()))
    ['w'] (2, 3) 15.0
    """

    format: str = ""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._specs: dict[str, TensorSpec] = {}
        self.extras: dict[str, Any] = {}
        self.metadata: dict[str, str] = {}
        self.aliases: dict[str, str] = {}
        self.structure: Any = None

    def spec(self, name: str) -> TensorSpec:
        """Shape and dtype of ``name`` without reading its data."""
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(name) from None

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._specs:
            raise KeyError(name)
        return self._read(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    @property
    def nbytes(self) -> int:
        """Sum of the dense sizes of all tensors, from the header."""
        return sum(s.nbytes for s in self._specs.values())

    @abstractmethod
    def _read(self, name: str) -> np.ndarray:
        """The tensor ``name`` (known to exist), read from the file: each format's own decoding."""

    def close(self) -> None:
        """Release the file. Arrays already returned stay valid."""

    def __enter__(self: _Reader) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.format} {str(self.path)!r}: {len(self)} tensors>"


def declared_little_endian(name: str, array: object, spec: TensorSpec) -> np.ndarray:
    """``array`` in little-endian byte order, after checking it is the array ``spec`` declared.

    Writers that size a header from the specs first and write the data after call this on each
    value, so that a mapping whose values changed between the two reads cannot corrupt the file.
    The layout is kept (a transpose stays one; :func:`write_c_order` writes it in C order).

    Raises
    ------
    WeightFileError
        Not a ``numpy.ndarray`` of the declared shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.arange(3, dtype=">i4")
    >>> declared_little_endian("a", a, TensorSpec((3,), a.dtype)).dtype.str
    '<i4'
    """
    if not isinstance(array, np.ndarray) or tuple(array.shape) != spec.shape or array.dtype != spec.dtype:
        raise WeightFileError(
            f"tensor {name!r} is not the numpy.ndarray of shape {spec.shape} it was declared"
        )
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and not np.little_endian):
        array = array.astype(array.dtype.newbyteorder("<"))
    return array


def write_c_order(f: BinaryIO, array: np.ndarray, *, chunk_bytes: int = 16 << 20) -> int:
    """Write the elements of ``array`` as raw bytes in C (row-major) order, a chunk at a time.

    A C-contiguous array is written straight from its buffer; any other layout (a slice,
    a transpose) is copied ``chunk_bytes`` at a time, so no full-size copy is made.
    Byte order is the array's own: convert first if the format fixes one.

    Parameters
    ----------
    f : binary file
    array : numpy.ndarray
        Any shape, any fixed-size dtype.
    chunk_bytes : int
        Largest temporary copy, in bytes.

    Returns
    -------
    int
        Bytes written, ``array.nbytes``.

    Examples
    --------
    >>> import io, numpy as np
    >>> buf = io.BytesIO()
    >>> write_c_order(buf, np.arange(6, dtype=np.uint8).reshape(2, 3).T)
    6
    >>> list(buf.getvalue())
    [0, 3, 1, 4, 2, 5]
    """
    a = np.asarray(array)
    if a.size == 0:
        return 0
    if a.flags.c_contiguous:
        flat = a.reshape(-1).view(np.uint8)
        for start in range(0, flat.size, chunk_bytes):
            # NumPy's stubs give ndarray the buffer protocol (__buffer__) only for Python >= 3.12
            f.write(flat[start : start + chunk_bytes])  # type: ignore[call-overload]
        return int(flat.size)
    row_bytes = max(a[0].nbytes, 1)
    step = max(1, chunk_bytes // row_bytes)
    for start in range(0, a.shape[0], step):
        # NumPy's stubs give ndarray the buffer protocol (__buffer__) only for Python >= 3.12
        f.write(np.ascontiguousarray(a[start : start + step]).reshape(-1).view(np.uint8))  # type: ignore[call-overload]
    return int(a.nbytes)


#: Longest file name the temporary file may have, in bytes (NAME_MAX on Linux and macOS).
_NAME_MAX = 255


def _temp_prefix(name: str) -> str:
    """``.<name>.`` cut so that mkstemp's name (prefix + 8 random characters + ``.tmp``) fits NAME_MAX.

    The output name itself may be up to NAME_MAX bytes; its temporary sibling keeps as much of it as
    fits, cut at a character boundary of its file-system encoding.

    Examples
    --------
    >>> _temp_prefix("w.npz")
    '.w.npz.'
    >>> len(_temp_prefix("x" * 255).encode())
    243
    """
    room = _NAME_MAX - 8 - len(".tmp") - 2
    # File names are bytes: a cut inside a multi-byte character round-trips through surrogateescape.
    return f".{os.fsdecode(os.fsencode(name)[:room])}."


class _Terminated(BaseException):
    """SIGTERM arrived during an atomic write: unwind (deleting the temporary file), then die of it."""


@contextlib.contextmanager
def _cleanup_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into an exception while the block runs, so ``finally`` clauses delete temp files.

    Only in the main thread and only when SIGTERM has its default action (a program's own handler
    is left alone); afterwards the default action is restored and, if the signal came, re-raised so
    the process still ends as killed by SIGTERM.
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise _Terminated

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise  # only reached where the signal cannot kill (it was blocked): still unwind
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, *, inputs: tuple[str | os.PathLike, ...] = ()
) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on success rename it over ``path``, on error delete it.

    Readers of ``path`` see either the old file or the complete new one, never a partial
    write. Refuses to write over any of ``inputs`` (the files being read). The temporary file
    is deleted on any exception, Ctrl-C, and SIGTERM (while SIGTERM has its default action, it
    is caught for the duration of the write, the file deleted, and the signal delivered again).
    Its name is at most NAME_MAX (255) bytes whatever the length of ``path``'s name.

    Parameters
    ----------
    path : path-like
        Destination.
    inputs : tuple of path-like
        Files that must not be overwritten.

    Examples
    --------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "out.bin")
    >>> with atomic_write(p) as f:
    ...     _ = f.write(b"data")
    >>> open(p, "rb").read()
    b'data'
    """
    path = Path(path)
    for src in inputs:
        src = Path(src)
        if not src.exists():
            continue
        if src.resolve() == path.resolve() or (path.exists() and os.path.samefile(src, path)):
            raise WeightFileError(f"{path}: refusing to overwrite the input file; choose another output path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise WeightFileError(f"{path}: the folder {parent} does not exist")
    with _cleanup_on_sigterm():
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=parent)
        try:
            # mkstemp creates 0600; the finished file gets the permissions a plain open() would give.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
