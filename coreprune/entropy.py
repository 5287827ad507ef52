"""Entropy coding of symbol streams (codebook codes, index gaps) with an ANS coder.

Deep Compression's third stage Huffman-codes the weight codes and the sparse index gaps. This
module codes such a stream with asymmetric numeral systems (``constriction``'s ``AnsCoder``, a
maintained Rust coder; the version is pinned because the fixed-point probability model it builds
from the stored counts must be the same when decoding). ANS with an order-0 model of the stream's
own histogram spends within a fraction of a percent of the empirical entropy on the data; the
histogram itself is the overhead. ``tests/benchmarks/entropy_coders.py`` measures it against
``zstandard`` on real streams: smaller and faster (figures in ``docs/deep-compression.md``).

Stream layout (:func:`encode_symbols`), little-endian::

    u8  kind        0 = empty, 1 = one distinct symbol, 2 = ANS, 3 = bit-packed
    u64 count       number of symbols n
    u32 alphabet    k; every symbol is in [0, k)
    kind 1: u32 symbol
    kind 2: u8 scaled counts[k] (0 only for symbols that never occur), then u32 ANS words
    kind 3: the n symbols bit-packed at max(1, bit_length(k - 1)) bits each
            (:func:`coreprune.packing.pack_bits`, ceil(n * bits / 8) bytes)

Kind 3 is written only when it is smaller than kind 2: on short streams over a large alphabet the
histogram's byte per alphabet symbol costs more than the entropy coding saves. Streams written
before kind 3 existed decode as before; a reader older than kind 3 refuses a kind-3 stream with
its "unknown entropy-coded stream kind" error.

The model's probabilities are the stored counts divided by their sum (float64): the counts are
the histogram scaled so that its peak is 255, with every symbol that occurs kept at >= 1. That
costs one byte per alphabet entry and, measured, well under 1 % of the data's size in coding
efficiency.
"""

from __future__ import annotations

import struct

import constriction
import numpy as np
import numpy.typing as npt

from .errors import CompressionError
from .packing import pack_bits, unpack_bits

__all__ = ["encode_symbols", "decode_symbols", "empirical_entropy"]

_HEAD = struct.Struct("<BQI")
_EMPTY, _CONSTANT, _ANS, _PACKED = 0, 1, 2, 3
_MAX_ALPHABET = 1 << 16


def _check_alphabet(k: object) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or not 1 <= k <= _MAX_ALPHABET:
        raise CompressionError(f"alphabet size must be an int in 1..{_MAX_ALPHABET}, got {k!r}")
    return int(k)


def _check_symbols(symbols: np.ndarray, k: int) -> np.ndarray:
    if not isinstance(symbols, np.ndarray) or symbols.dtype.kind not in "iu":
        raise CompressionError(f"symbols must be an integer numpy array, got "
                               f"{getattr(symbols, 'dtype', type(symbols).__name__)}")
    flat = symbols.reshape(-1)
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= k):
        raise CompressionError(f"symbols outside [0, {k})")
    return flat


def empirical_entropy(symbols: np.ndarray, alphabet: int) -> float:
    """Order-0 empirical entropy of a stream, in bits per symbol: ``-sum p log2 p`` of its histogram.

    The bound an order-0 coder (Huffman, ANS with the stream's own histogram) approaches.

    Parameters
    ----------
    symbols : numpy.ndarray of int
        Values in ``[0, alphabet)``.
    alphabet : int

    Examples
    --------
    >>> import numpy as np
    >>> empirical_entropy(np.array([0, 1, 2, 3]), 4), empirical_entropy(np.array([5, 5]), 8)
    (2.0, 0.0)
    """
    k = _check_alphabet(alphabet)
    flat = _check_symbols(symbols, k)
    if flat.size == 0:
        return 0.0
    p = np.bincount(flat, minlength=k) / flat.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: no -0.0 for a single symbol


def _scaled_counts(flat: np.ndarray, k: int) -> np.ndarray:
    counts = np.bincount(flat, minlength=k).astype(np.float64)
    scaled = np.rint(counts * (255.0 / counts.max()))
    return np.where(counts > 0, np.maximum(scaled, 1), 0).astype(np.uint8)


def _packed_bits(k: int) -> int:
    return max(1, (k - 1).bit_length())


def _model(scaled: np.ndarray) -> constriction.stream.model.Categorical:
    p = scaled.astype(np.float64) / float(scaled.sum(dtype=np.int64))
    return constriction.stream.model.Categorical(p, perfect=False)


def encode_symbols(symbols: np.ndarray, alphabet: int) -> bytes:
    """Entropy-code a stream of integers in ``[0, alphabet)`` into a self-describing blob.

    Parameters
    ----------
    symbols : numpy.ndarray of int
        Any shape (read in C order), values in ``[0, alphabet)``.
    alphabet : int
        1 to 65536 (16-bit codes or gap fields at most).

    Returns
    -------
    bytes
        The layout of the module docstring: 13 bytes of header, then nothing (empty stream), one
        symbol (a constant stream), ``alphabet`` count bytes and the ANS words, or the symbols
        bit-packed, whichever of the last two is smaller (ANS on a tie).

    Raises
    ------
    CompressionError
        Non-integer symbols, symbols outside the alphabet, a bad alphabet size.

    Examples
    --------
    >>> import numpy as np
    >>> codes = np.random.default_rng(0).integers(0, 4, 1000)
    >>> blob = encode_symbols(codes, 4)
    >>> len(blob) < 1000 * 2 / 8 + 13 + 4 + 8, np.array_equal(decode_symbols(blob), codes)
    (True, True)
    >>> short = encode_symbols(np.arange(10), 256)  # 256 histogram bytes: packing (10 bytes) is smaller
    >>> short[0], len(short), decode_symbols(short).tolist() == list(range(10))
    (3, 23, True)
    """
    k = _check_alphabet(alphabet)
    flat = _check_symbols(symbols, k)
    n = flat.size
    if n == 0:
        return _HEAD.pack(_EMPTY, 0, k)
    first = int(flat[0])
    if np.all(flat == first):
        return _HEAD.pack(_CONSTANT, n, k) + struct.pack("<I", first)
    scaled = _scaled_counts(flat, k)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(flat.astype(np.int32), _model(scaled))
    words = coder.get_compressed().astype("<u4")
    bits = _packed_bits(k)
    if k + 4 * words.size > -(-n * bits // 8):
        return _HEAD.pack(_PACKED, n, k) + pack_bits(flat.astype(np.uint16), bits).tobytes()
    return _HEAD.pack(_ANS, n, k) + scaled.tobytes() + words.tobytes()


def decode_symbols(
    blob: bytes | memoryview | npt.NDArray[np.uint8], *, max_count: int | None = None
) -> np.ndarray:
    """Decode a blob of :func:`encode_symbols` back into its symbols, exactly.

    Parameters
    ----------
    blob : bytes, memoryview or numpy.ndarray of uint8, shape ``(nbytes,)``
    max_count : int, optional
        Refuse blobs that declare more symbols (a caller that knows the tensor's size passes it, so
        a corrupted count cannot ask for a huge allocation).

    Returns
    -------
    numpy.ndarray of int64, shape ``(n,)``

    Raises
    ------
    CompressionError
        A truncated or corrupted blob: wrong kind, sizes that do not add up, a histogram that does
        not match, or ANS words that do not decode to exactly ``n`` symbols.

    Examples
    --------
    >>> import numpy as np
    >>> decode_symbols(encode_symbols(np.array([3, 3, 3], np.uint8), 8)).tolist()
    [3, 3, 3]
    """
    data = bytes(blob)
    if len(data) < _HEAD.size:
        raise CompressionError(f"entropy-coded stream of {len(data)} bytes is shorter than its header")
    kind, n, k = _HEAD.unpack_from(data)
    if not 1 <= k <= _MAX_ALPHABET:
        raise CompressionError(f"entropy-coded stream declares an alphabet of {k} symbols")
    if max_count is not None and n > max_count:
        raise CompressionError(f"entropy-coded stream declares {n} symbols, more than {max_count}")
    body = data[_HEAD.size:]
    if kind == _EMPTY:
        if n or body:
            raise CompressionError("empty entropy-coded stream carries data")
        return np.zeros(0, dtype=np.int64)
    if kind == _CONSTANT:
        if len(body) != 4:
            raise CompressionError("constant entropy-coded stream is not one u32 symbol")
        (value,) = struct.unpack("<I", body)
        if value >= k or n == 0:
            raise CompressionError(f"constant stream symbol {value} outside [0, {k}) or no symbols")
        return np.full(n, value, dtype=np.int64)
    if kind == _PACKED:
        bits = _packed_bits(k)
        if n == 0 or len(body) != -(-n * bits // 8):
            raise CompressionError(f"bit-packed stream of {n} symbols at {bits} bits has {len(body)} bytes")
        out = unpack_bits(np.frombuffer(body, dtype=np.uint8), bits, int(n), np.dtype(np.uint16))
        if int(out.max()) >= k:
            raise CompressionError(f"bit-packed stream holds a symbol outside [0, {k})")
        return out.astype(np.int64)
    if kind != _ANS:
        raise CompressionError(f"unknown entropy-coded stream kind {kind}")
    if len(body) < k or (len(body) - k) % 4:
        raise CompressionError("ANS stream is truncated (counts and words do not fill it)")
    scaled = np.frombuffer(body, dtype=np.uint8, count=k)
    if np.count_nonzero(scaled) < 2 or n < 2:
        raise CompressionError("ANS stream's histogram names fewer than two symbols")
    words = np.frombuffer(body, dtype="<u4", offset=k).astype(np.uint32)
    if words.size == 0:
        raise CompressionError("ANS stream has no words")
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        out = np.asarray(coder.decode(_model(scaled), int(n)), dtype=np.int64)
        exact = coder.is_empty()
    except Exception as exc:  # the Rust decoder's own errors: the words are corrupted
        raise CompressionError(f"ANS stream does not decode: {exc}") from None
    if not exact or out.size != n or np.any(scaled[out] == 0):
        raise CompressionError("ANS stream is corrupted (its words do not decode to exactly its symbols)")
    return out
