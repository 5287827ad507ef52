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
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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
]

#: The most dimensions a stored tensor may declare (NumPy 1.x's limit); more is treated as corruption.
MAX_NDIM = 32

# NumPy cannot create an array whose byte size (counting only the non-zero dims) exceeds intp.
_MAX_ARRAY_BYTES = 2**62


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


def read_exact(f: BinaryIO, n: int, path: str | os.PathLike, what: str) -> bytes:
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

    def _read(self, name: str) -> np.ndarray:  # pragma: no cover - every format overrides it
        raise NotImplementedError(f"{type(self).__name__} must implement _read")

    def close(self) -> None:
        """Release the file. Arrays already returned stay valid."""

    def __enter__(self) -> WeightReader:
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
            f.write(flat[start : start + chunk_bytes])
        return int(flat.size)
    row_bytes = max(a[0].nbytes, 1)
    step = max(1, chunk_bytes // row_bytes)
    for start in range(0, a.shape[0], step):
        f.write(np.ascontiguousarray(a[start : start + step]).reshape(-1).view(np.uint8))
    return int(a.nbytes)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, *, inputs: tuple[str | os.PathLike, ...] = ()
) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on success rename it over ``path``, on error delete it.

    Readers of ``path`` see either the old file or the complete new one, never a partial
    write. Refuses to write over any of ``inputs`` (the files being read).

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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
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
