"""The one zip reader of :mod:`coreprune.io`: central directory, member spans, stored and compressed data.

``.npz`` archives and ``torch.save`` files are zip archives. Both readers take the central
directory from :mod:`zipfile` (its exceptions on hostile bytes, which are not documented, all become
one :class:`~coreprune.errors.WeightFileError`), then find where a *stored* member's bytes lie by
parsing its local header themselves, so that the data can be memory-mapped: every offset and length
is checked against the file size before anything is read, and the local header must name the same
member as the central directory. *Compressed* members (deflate, bzip2, lzma) are read through
:mod:`zipfile`, which checks their CRC-32 when the end is reached.

Examples
--------
>>> import io, zipfile, tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "a.zip")
>>> with zipfile.ZipFile(p, "w") as z:
...     z.writestr("x/data.bin", b"hello")
>>> with ZipArchive(p) as z:
...     info = z.members[0]
...     offset, length = z.stored_span(info, "record x/data.bin")
...     print(info.filename, length, z.read_span(offset, length, "record x/data.bin"))
x/data.bin 5 b'hello'
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO

from ..errors import WeightFileError
from .base import check_extent, read_exact

__all__ = [
    "ZipArchive",
    "first_member_name",
    "ZIP_LOCAL_MAGIC",
    "ZIP_EMPTY_MAGIC",
    "LOCAL_HEADER_SIZE",
    "COMPRESSED_METHODS",
]

#: First bytes of a zip archive with at least one member (its first local header).
ZIP_LOCAL_MAGIC = b"PK\x03\x04"
#: First bytes of a zip archive with no member: only an end-of-central-directory record.
ZIP_EMPTY_MAGIC = b"PK\x05\x06"
#: The compression methods read (through zipfile): deflate, bzip2, lzma.
COMPRESSED_METHODS = (zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # 30 bytes, as zipfile.structFileHeader
#: Bytes of a local file header before the member's name.
LOCAL_HEADER_SIZE = _LOCAL_HEADER.size


def first_member_name(head: bytes) -> bytes | None:
    """The name of a zip's first member from the file's first bytes; None when ``head`` ends before it.

    Sniffers tell an ``.npz`` archive (``*.npy`` members) from a ``torch.save`` zip
    (``<archive>/data.pkl``) this way.

    Examples
    --------
    >>> import struct
    >>> first_member_name(ZIP_LOCAL_MAGIC + bytes(22) + struct.pack("<HH", 5, 0) + b"w.npy")
    b'w.npy'
    >>> first_member_name(ZIP_LOCAL_MAGIC + bytes(10)) is None
    True
    """
    if len(head) < LOCAL_HEADER_SIZE:
        return None
    name_len = int.from_bytes(head[26:28], "little")
    name = head[LOCAL_HEADER_SIZE : LOCAL_HEADER_SIZE + name_len]
    return None if len(name) < name_len else name


class ZipArchive:
    """An open zip archive: its members, where stored members' bytes lie, and their contents.

    Parameters
    ----------
    path : path-like
        The archive; named in every error message.
    kind : str
        What the archive should be, for the message when it is not a readable zip
        (``"not a readable <kind> archive (...)"``).

    Attributes
    ----------
    path : pathlib.Path
    size : int
        File size in bytes, the bound of every offset.
    members : list of zipfile.ZipInfo
        The central directory, in order.

    Raises
    ------
    WeightFileError
        The file cannot be opened or its central directory cannot be read.
    """

    def __init__(self, path: str | os.PathLike, kind: str = "zip") -> None:
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        try:
            self.size = os.path.getsize(self.path)
            self._f: BinaryIO | None = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise WeightFileError(f"{self.path}: cannot open ({e.strerror or e})") from e
        try:
            self._zip = zipfile.ZipFile(self._f)
            self.members: list[zipfile.ZipInfo] = self._zip.infolist()
        except Exception as e:  # zipfile's exceptions on hostile bytes are not documented; none may escape
            self.close()
            raise WeightFileError(
                f"{self.path}: not a readable {kind} archive ({type(e).__name__}: {e})"
            ) from None

    def __enter__(self) -> ZipArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the archive (arrays already memory-mapped from it stay valid)."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        if self._f is not None:
            self._f.close()
            self._f = None

    def _file(self) -> BinaryIO:
        if self._f is None:
            raise WeightFileError(f"{self.path}: the reader is closed")
        return self._f

    def check_plain(self, info: zipfile.ZipInfo, what: str) -> None:
        """Refuse an encrypted member; ``what`` names it in the message (``"array 'fc'"``)."""
        if info.flag_bits & 0x1:
            raise WeightFileError(f"{self.path}: {what} is encrypted")

    def stored_span(self, info: zipfile.ZipInfo, what: str) -> tuple[int, int]:
        """``(offset, length)`` of a stored (uncompressed) member's bytes in the file.

        Taken from the member's local header, checked against the central directory (same name,
        equal stored and real sizes) and against the file size; no CRC is trusted or needed.

        Raises
        ------
        WeightFileError
            An encrypted or compressed member, or a header or span that does not fit the file.
        """
        self.check_plain(info, what)
        if info.compress_type != zipfile.ZIP_STORED:
            raise WeightFileError(f"{self.path}: {what} is compressed (method {info.compress_type})")
        if info.compress_size != info.file_size:
            raise WeightFileError(f"{self.path}: {what} is stored with inconsistent sizes (corrupted)")
        check_extent(self.path, f"the local zip header of {what}", info.header_offset, _LOCAL_HEADER.size,
                     self.size)
        f = self._file()
        f.seek(info.header_offset)
        header = read_exact(f, _LOCAL_HEADER.size, self.path, f"the zip header of {what}")
        fields = _LOCAL_HEADER.unpack(header)
        if fields[0] != ZIP_LOCAL_MAGIC:
            raise WeightFileError(
                f"{self.path}: bad local zip header for {what} at offset {info.header_offset} (corrupted)"
            )
        name_len, extra_len = fields[10], fields[11]
        local_name = read_exact(f, name_len, self.path, f"the zip header of {what}")
        if local_name.decode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace") != info.orig_filename:
            raise WeightFileError(
                f"{self.path}: the local and central zip headers of {what} disagree (corrupted)"
            )
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        check_extent(self.path, what, start, info.compress_size, self.size)
        return start, info.file_size

    def read_span(self, offset: int, length: int, what: str) -> bytes:
        """``length`` bytes at ``offset`` (a span from :meth:`stored_span`)."""
        f = self._file()
        f.seek(offset)
        return read_exact(f, length, self.path, what)

    @contextmanager
    def open_compressed(self, info: zipfile.ZipInfo, what: str) -> Iterator[IO[bytes]]:
        """The decompressed stream of a deflate, bzip2 or lzma member.

        Errors of the decompressors and of the CRC-32 check (raised when the end is read) become
        ``WeightFileError("<path>: cannot decompress <what> (...)")``.
        """
        self.check_plain(info, what)
        if info.compress_type not in COMPRESSED_METHODS:
            raise WeightFileError(
                f"{self.path}: {what} uses zip compression method {info.compress_type}, not supported"
            )
        if self._zip is None:
            raise WeightFileError(f"{self.path}: the reader is closed")
        try:
            with self._zip.open(info) as member:
                yield member
        except WeightFileError:
            raise
        except Exception as e:  # zlib.error, BadZipFile ("Bad CRC-32"), EOFError, lzma/bz2 errors
            raise WeightFileError(f"{self.path}: cannot decompress {what} ({type(e).__name__}: {e})") from e
