"""The one zip reader both zip formats use: spans of stored members checked against the file and the
central directory, compressed members through zipfile with their CRC checked, one error for all."""

from __future__ import annotations

import struct
import zipfile

import pytest

from coreprune.errors import WeightFileError
from coreprune.io.zip_reader import ZipArchive


def _archive(tmp_path, method=zipfile.ZIP_STORED):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", compression=method) as z:
        z.writestr("x/first.bin", b"0123456789")
        z.writestr("x/second.bin", b"abcdef" * 50)
    return path


def test_stored_spans_are_the_bytes_zipfile_reads(tmp_path):
    path = _archive(tmp_path)
    with ZipArchive(path) as z, zipfile.ZipFile(path) as ref:
        for info in z.members:
            offset, length = z.stored_span(info, info.filename)
            assert z.read_span(offset, length, info.filename) == ref.read(info.filename)


def test_a_local_header_that_names_another_member_is_refused(tmp_path):
    path = _archive(tmp_path)
    data = bytearray(path.read_bytes())
    data[30:41] = b"x/evil.bin!"  # the first local header's name, same length
    path.write_bytes(bytes(data))
    with ZipArchive(path) as z, pytest.raises(WeightFileError, match="local and central zip headers"):
        z.stored_span(z.members[0], "record x/first.bin")


def test_a_header_offset_past_the_file_is_refused(tmp_path):
    path = _archive(tmp_path)
    with ZipArchive(path) as z:
        info = z.members[1]
        info.header_offset = z.size + 100
        with pytest.raises(WeightFileError, match=str(path)):
            z.stored_span(info, "record x/second.bin")


def test_a_member_larger_than_the_file_is_refused(tmp_path):
    path = _archive(tmp_path)
    with ZipArchive(path) as z:
        info = z.members[0]
        info.file_size = info.compress_size = 10**9
        with pytest.raises(WeightFileError, match=str(path)):
            z.stored_span(info, "record x/first.bin")


def test_compressed_members_are_read_and_a_bad_crc_is_one_error(tmp_path):
    path = _archive(tmp_path, zipfile.ZIP_DEFLATED)
    with ZipArchive(path) as z:
        with z.open_compressed(z.members[1], "x/second.bin") as member:
            assert member.read() == b"abcdef" * 50
        with pytest.raises(WeightFileError, match="compressed"):
            z.stored_span(z.members[1], "x/second.bin")
    data = bytearray(path.read_bytes())
    central = data.rindex(b"PK\x01\x02")  # the second member's central record: corrupt its CRC
    data[central + 16 : central + 20] = struct.pack("<I", 0)
    path.write_bytes(bytes(data))
    with ZipArchive(path) as z, pytest.raises(WeightFileError, match="cannot decompress"):
        with z.open_compressed(z.members[1], "x/second.bin") as member:
            member.read()


def test_not_a_zip_is_one_error_naming_the_file(tmp_path):
    path = tmp_path / "n.zip"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(WeightFileError, match="not a readable npz archive"):
        ZipArchive(path, "npz")
