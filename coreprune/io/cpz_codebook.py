"""The ``codebook`` tensor kind of ``.cpz``: shared-weight codes, a codebook and relative index gaps.

A :class:`~coreprune.weight_sharing.CodebookArray` is stored as three blobs:

* ``codebook``: the ``2**bits`` float32 centroids, little-endian;
* ``index``: the positions of the surviving weights as relative gap fields of ``gap_width`` bits
  (:func:`coreprune.sparse_index.gap_fields`, escape scheme: a field of ``2**gap_width - 1`` skips
  that many entries and stores nothing);
* ``codes``: the surviving weights' codes, in position order.

Two layouts hold the two streams:

* ``"ans"``: each stream entropy-coded with :func:`coreprune.entropy.encode_symbols` (ANS with the
  stream's own histogram); ``gap_width`` is the width :func:`coreprune.sparse_index.best_gap_width`
  finds cheapest;
* ``"packed"``: codes bit-packed at ``bits`` and fields at ``gap_width`` bits
  (:func:`coreprune.packing.pack_bits`), no entropy coding.

Manifest fields: ``kind="codebook"``, ``layout``, ``shape``, ``dtype``, ``bits``, ``nnz`` (surviving
weights), ``gap_width``, ``entries`` (index fields); a tensor whose every weight survives has
``nnz`` equal to its size and an all-zero gap stream. Decoding restores the same codes, codebook
and mask, so the same values bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..entropy import decode_symbols, encode_symbols
from ..errors import CompressionError, WeightFileError
from ..packing import pack_bits, unpack_bits
from ..sparse_index import best_gap_width, gap_fields, positions_from_fields
from ..weight_sharing import CodebookArray

__all__ = ["LAYOUTS", "encode", "expected_blobs", "decode"]

LAYOUTS = ("ans", "packed")
_PACKED_GAP_WIDTH = 4


def encode(value: CodebookArray, *, entropy: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Manifest fields and blobs (uint8 arrays, in write order) of one CodebookArray.

    Examples
    --------
    >>> import numpy as np
    >>> from coreprune.weight_sharing import kmeans_codebook
    >>> w = np.zeros(1000, np.float32); w[::10] = np.linspace(-1, 1, 100)
    >>> fields, blobs = encode(kmeans_codebook(w, bits=2), entropy=True)
    >>> fields["layout"], fields["nnz"], sorted(blobs)
    ('ans', 100, ['codebook', 'codes', 'index'])
    """
    flat_codes = value.codes.reshape(-1)
    if value.mask is None:
        positions = np.arange(flat_codes.size, dtype=np.int64)
    else:
        positions = np.flatnonzero(value.mask.reshape(-1))
    codes = flat_codes[positions]
    width = best_gap_width(positions) if entropy else _PACKED_GAP_WIDTH
    fields, _ = gap_fields(positions, width)
    if entropy:
        index = np.frombuffer(encode_symbols(fields, 1 << width), np.uint8)
        coded = np.frombuffer(encode_symbols(codes, 1 << value.bits), np.uint8)
    else:
        index = pack_bits(fields, width)
        coded = pack_bits(codes, value.bits)
    meta = {"kind": "codebook", "layout": "ans" if entropy else "packed", "bits": value.bits,
            "nnz": int(positions.size), "gap_width": width, "entries": int(fields.size)}
    blobs = {"codebook": value.codebook.astype("<f4").view(np.uint8), "index": index, "codes": coded}
    return meta, blobs


def expected_blobs(
    layout: str, bits: int, nnz: int, width: int, entries: int, n: int, where: str
) -> dict[str, int]:
    """Blob lengths the manifest implies (-1: any length, an entropy-coded stream), after validation."""
    if layout not in LAYOUTS:
        raise WeightFileError(f"{where}: unknown codebook layout {layout!r}")
    if not 1 <= bits <= 16 or not 1 <= width <= 16 or not 0 <= nnz <= n or entries < nnz:
        raise WeightFileError(f"{where}: bad codebook parameters (bits {bits}, gap width {width}, "
                              f"{nnz} weights in {entries} fields of {n})")
    if layout == "packed":
        index, codes = math.ceil(entries * width / 8), math.ceil(nnz * bits / 8)
        return {"codebook": 4 << bits, "index": index, "codes": codes}
    return {"codebook": 4 << bits, "index": -1, "codes": -1}


def decode(
    blob: Callable[[str], np.ndarray],
    *,
    layout: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    bits: int,
    nnz: int,
    gap_width: int,
    entries: int,
    where: str,
) -> CodebookArray:
    """Rebuild the CodebookArray from its blobs (``blob(role)`` returns the checked uint8 bytes).

    Raises
    ------
    WeightFileError
        Streams that do not decode, disagree with the manifest or point outside the tensor.
    """
    n = int(np.prod(shape, dtype=np.int64))
    try:
        codebook = blob("codebook").view("<f4").astype(np.float32)
        if layout == "ans":
            fields = decode_symbols(blob("index"), max_count=entries)
            codes = decode_symbols(blob("codes"), max_count=nnz)
            if fields.size != entries or codes.size != nnz:
                raise CompressionError(f"streams hold {fields.size} fields and {codes.size} codes, "
                                       f"the manifest says {entries} and {nnz}")
        else:
            fields = unpack_bits(blob("index"), gap_width, entries, np.dtype(np.uint16))
            codes = unpack_bits(blob("codes"), bits, nnz, np.dtype(np.uint16))
        positions = positions_from_fields(fields, gap_width, n=n)
        if positions.size != nnz:
            raise CompressionError(f"the index names {positions.size} weights, the manifest {nnz}")
        if codes.size and int(codes.max()) >= 1 << bits:
            raise CompressionError(f"a code is outside [0, {(1 << bits) - 1}]")
        full = np.zeros(n, dtype=np.uint8 if bits <= 8 else np.uint16)
        full[positions] = codes
        mask: np.ndarray | None = None
        if nnz != n:
            mask = np.zeros(n, dtype=bool)
            mask[positions] = True
            mask = mask.reshape(shape)
        return CodebookArray(codes=full.reshape(shape), codebook=codebook, mask=mask, bits=bits, dtype=dtype)
    except CompressionError as exc:
        if isinstance(exc, WeightFileError):
            raise
        raise WeightFileError(f"{where}: {exc}") from None
