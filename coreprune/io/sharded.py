"""Sharded checkpoints: an index file or a folder of shards read and written as one checkpoint.

Published weights are often split over several files (*shards*) named
``model-00001-of-00004.safetensors`` ... with an index ``model.safetensors.index.json``
(``pytorch_model-0000N-of-0000M.bin`` with ``pytorch_model.bin.index.json`` for PyTorch)::

    {"metadata": {"total_size": 16060522496},
     "weight_map": {"lm_head.weight": "model-00004-of-00004.safetensors", ...}}

:func:`open_sharded` reads such an index -- or a folder holding one index, or a folder of
``NAME-0000i-of-0000N.EXT`` files without one -- as one lazy :class:`ShardedReader`: every shard's
header is read and checked against the index when it opens, each tensor's data when it is indexed
(one shard open at a time). Tensors come in shard order (shard file names sorted), then in each
shard's own order; that order is the mapping order that global pruning breaks ties by.

:func:`save_sharded` writes a checkpoint as shards plus a new index: all shards are written to
temporary files first and renamed only when every one succeeded, the index last, so an error leaves
no partial checkpoint behind.

Nothing in an index is trusted: a shard that is missing, a tensor listed twice or stored in two
shards, a shard holding tensors the index does not list, a shard path that is absolute or climbs out
of the index's folder (``../``) -- each is one :class:`~coreprune.errors.WeightFileError` naming the
index, raised before anything is read or written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CompressionError, WeightFileError
from .base import TensorSpec, WeightReader, atomic_write, spec_of

if TYPE_CHECKING:  # typing.TypeGuard is 3.10+; the package supports 3.9
    from typing import TypeGuard

__all__ = [
    "INDEX_SUFFIX",
    "MAX_INDEX_SIZE",
    "ShardedReader",
    "is_sharded",
    "is_sharded_reader",
    "open_sharded",
    "save_sharded",
    "parse_size",
    "plan_shards",
    "shard_paths",
    "index_path_for",
    "write_shard_part",
    "commit_shards",
]

#: The suffix that marks an index file (``model.safetensors.index.json``).
INDEX_SUFFIX = ".index.json"
#: Largest index file read, in bytes (a real one is well under a megabyte per thousand tensors).
MAX_INDEX_SIZE = 256 << 20

_SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})(?P<ext>\.[A-Za-z0-9]+)$")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def is_sharded(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a sharded checkpoint: a folder, or a file ending in ``.index.json``.

    Examples
    --------
    >>> is_sharded("model.safetensors.index.json"), is_sharded("model.safetensors")
    (True, False)
    """
    p = Path(path)
    return p.name.endswith(INDEX_SUFFIX) or p.is_dir()


def parse_size(size: int | str) -> int:
    """A shard size limit in bytes, from an int or a string such as ``"5GB"`` (10**9) or ``"2GiB"`` (2**30).

    Raises
    ------
    CompressionError
        Not a positive size.

    Examples
    --------
    >>> parse_size("5GB"), parse_size("2GiB"), parse_size("1500"), parse_size(64)
    (5000000000, 2147483648, 1500, 64)
    """
    if isinstance(size, (bool, np.bool_)):
        raise CompressionError(f"a shard size must be a number of bytes or a string like '5GB', got {size!r}")
    if isinstance(size, (int, np.integer)):
        value = int(size)
    elif isinstance(size, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", size)
        if m is None or m.group(2).lower() not in _UNITS:
            raise CompressionError(f"cannot read the shard size {size!r}; write e.g. 500MB, 5GB or 2GiB")
        value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    else:
        raise CompressionError(f"a shard size must be a number of bytes or a string like '5GB', got {size!r}")
    if value < 1:
        raise CompressionError(f"a shard size must be at least 1 byte, got {size!r}")
    return value


def index_path_for(path: str | os.PathLike) -> Path:
    """The index of a sharded checkpoint named by ``path``: itself if it ends in ``.index.json``,
    else ``path + ".index.json"`` (``model.safetensors`` -> ``model.safetensors.index.json``).

    Examples
    --------
    >>> index_path_for("out/model.cpz").name
    'model.cpz.index.json'
    """
    p = Path(path)
    return p if p.name.endswith(INDEX_SUFFIX) else p.with_name(p.name + INDEX_SUFFIX)


def shard_paths(index: str | os.PathLike, count: int) -> list[Path]:
    """The shard files of a new checkpoint with ``count`` shards, beside its index.

    ``DIR/NAME.EXT.index.json`` -> ``DIR/NAME-00001-of-0000N.EXT`` ... (the naming transformers uses).

    Examples
    --------
    >>> [p.name for p in shard_paths("out/model.safetensors.index.json", 2)]
    ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']
    """
    index = Path(index)
    base = index.name[: -len(INDEX_SUFFIX)]
    stem, ext = os.path.splitext(base)
    if not stem or not ext:
        raise WeightFileError(
            f"{index}: name a sharded output NAME.EXT{INDEX_SUFFIX} (e.g. model.safetensors{INDEX_SUFFIX}); "
            "EXT sets the shards' format"
        )
    return [index.with_name(f"{stem}-{i:05d}-of-{count:05d}{ext}") for i in range(1, count + 1)]


def plan_shards(sizes: Sequence[tuple[str, int]], max_shard_size: int | str | None) -> list[list[str]]:
    """Group tensors, in order, into shards of at most ``max_shard_size`` bytes of dense data.

    A tensor larger than the limit gets a shard of its own (as in transformers). ``None``: one shard.

    Examples
    --------
    >>> plan_shards([("a", 6), ("b", 5), ("c", 4), ("d", 20)], 10)
    [['a'], ['b', 'c'], ['d']]
    """
    if max_shard_size is None:
        return [[name for name, _ in sizes]]
    limit = parse_size(max_shard_size)
    shards: list[list[str]] = [[]]
    used = 0
    for name, nbytes in sizes:
        if shards[-1] and used + nbytes > limit:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards if shards[-1] else []


# ----------------------------------------------------------------------------------------------- reading


def _fail(where: Path, problem: str) -> WeightFileError:
    return WeightFileError(f"{where}: {problem}")


def _no_duplicates(where: Path) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise _fail(where, f"the index lists {key!r} twice")
            out[key] = value
        return out

    return hook


def _safe_relative(where: Path, name: object) -> str:
    """``name`` as a relative POSIX path inside the index's folder, or an error.

    Checked on the text, not by resolving links: a Hugging Face cache links each shard to a blob
    elsewhere, and that is fine; a name that itself leaves the folder is not.
    """
    if not isinstance(name, str) or not name.strip():
        raise _fail(where, f"a shard name must be a non-empty string, got {name!r}")
    if "\x00" in name:
        raise _fail(where, f"the shard name {name!r} holds a NUL byte")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or name.startswith(("/", "\\")):
        raise _fail(where, f"the shard path {name!r} is absolute; an index may only name files in its folder")
    parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
    if ".." in parts:
        raise _fail(where, f"the shard path {name!r} leaves the index's folder ('..')")
    if not parts:
        raise _fail(where, f"the shard name {name!r} names no file")
    if parts[-1].endswith(INDEX_SUFFIX):
        raise _fail(where, f"the shard {name!r} is an index file; an index names weight files")
    return "/".join(parts)


def _read_index(index: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """``(weight_map, metadata)`` of an index file, validated."""
    try:
        size = index.stat().st_size
    except OSError as e:
        raise _fail(index, f"cannot read the index ({e.strerror or e})") from None
    if size > MAX_INDEX_SIZE:
        raise _fail(index, f"the index is {size} bytes, more than the {MAX_INDEX_SIZE} accepted (corrupted?)")
    try:
        doc = json.loads(index.read_bytes().decode("utf-8"), object_pairs_hook=_no_duplicates(index))
    except UnicodeDecodeError:
        raise _fail(index, "not a valid index: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise _fail(index, f"not a valid index: invalid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise _fail(index, "not a valid index: nested too deeply") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
        raise _fail(index, 'not a valid index: no "weight_map" object (tensor name -> shard file)')
    metadata = doc.get("metadata", {})
    if not isinstance(metadata, dict):
        raise _fail(index, '"metadata" must be an object')
    weight_map = {}
    for name, shard in doc["weight_map"].items():
        weight_map[name] = _safe_relative(index, shard)
    if not weight_map:
        raise _fail(index, "the index lists no tensor")
    return weight_map, metadata


def _find_index(folder: Path) -> Path | None:
    found = sorted(p for p in folder.iterdir() if p.name.endswith(INDEX_SUFFIX) and p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise _fail(folder, f"holds several index files ({names}); name the one to read")
    return found[0] if found else None


def _shards_by_name(folder: Path) -> list[str]:
    """The shard files of a folder without an index: one complete ``NAME-0000i-of-0000N.EXT`` set."""
    groups: dict[tuple[str, str, int], set[int]] = {}
    for p in folder.iterdir():
        m = _SHARD_NAME.match(p.name)
        if m and p.is_file():
            groups.setdefault((m["stem"], m["ext"], int(m["n"])), set()).add(int(m["i"]))
    if not groups:
        raise _fail(folder, f"no index (*{INDEX_SUFFIX}) and no shard files (NAME-00001-of-0000N.EXT) here")
    if len(groups) > 1:
        names = ", ".join(f"{s}-*-of-{n:05d}{e}" for s, e, n in sorted(groups))
        raise _fail(folder, f"holds several sets of shards ({names}); name an index file instead")
    (stem, ext, n), present = next(iter(groups.items()))
    missing = [f"{stem}-{i:05d}-of-{n:05d}{ext}" for i in range(1, n + 1) if i not in present]
    if missing or n == 0:
        first = missing[0] if missing else "?"
        raise _fail(folder, f"shard {first} is missing ({len(missing)} of {n} missing)")
    return [f"{stem}-{i:05d}-of-{n:05d}{ext}" for i in range(1, n + 1)]


class ShardedReader(WeightReader):
    """A lazy, read-only mapping over the tensors of every shard of a sharded checkpoint.

    Attributes
    ----------
    path : pathlib.Path
        The index file, or the folder when it has none.
    folder : pathlib.Path
        Where the shards are.
    shards : list of pathlib.Path
        The shard files, in order.
    formats : dict of pathlib.Path to str
        Each shard's format.
    index_metadata : dict
        The index's ``"metadata"`` object as written (``total_size`` ...); empty without an index.
    metadata : dict of str to str
        The string metadata every shard has in common (safetensors ``{"format": "pt"}``).

    Examples
    --------
    >>> import numpy as np, tempfile, os, coreprune.io as cio
    >>> index = os.path.join(tempfile.mkdtemp(), "model.safetensors.index.json")
    >>> cio.save({"a": np.ones(4, np.float32), "b": np.zeros(4, np.float32)}, index, max_shard_size=16)
    >>> with cio.open_weights(index) as r:
    ...     print(list(r), r.shard_of("b").name)
    ['a', 'b'] model-00002-of-00002.safetensors
    """

    format = "sharded"

    def __init__(self, path: str | os.PathLike, **options: Any) -> None:
        super().__init__(path)
        self._options = options
        given = Path(path)
        if given.is_dir():
            index = _find_index(given)
            self.folder = given
        else:
            index, self.folder = given, given.parent
            if not given.is_file():
                raise _fail(given, "no such index file")
        self.index_metadata: dict[str, Any] = {}
        if index is not None:
            self.path = index
            weight_map, self.index_metadata = _read_index(index)
            names = sorted(set(weight_map.values()))
        else:
            weight_map, names = {}, _shards_by_name(given)
        self.shards = [self.folder / n for n in names]
        if index is not None:
            self._check_siblings(names)
        for name, shard in zip(names, self.shards):
            if not shard.is_file():
                raise _fail(self.path, f"the index names the shard {name}, which is missing")
        self._where: dict[str, Path] = {}
        self._in: dict[Path, list[str]] = {}
        self.formats: dict[Path, str] = {}
        metas: list[dict[str, str]] = []
        for name, shard in zip(names, self.shards):
            self._scan(shard, name, weight_map, metas)
        absent = [t for t, s in weight_map.items() if t not in self._where]
        if absent:
            where = weight_map[absent[0]]
            raise _fail(self.path, f"the index puts {absent[0]!r} in {where}, which has no such tensor"
                        + (f" ({len(absent)} such tensors)" if len(absent) > 1 else ""))
        common = metas[0] if metas else {}
        self.metadata = {k: v for k, v in common.items() if all(m.get(k) == v for m in metas)}
        self._open: tuple[Path, WeightReader] | None = None

    def _check_siblings(self, names: list[str]) -> None:
        """An index naming ``model-00001-of-00003`` and ``-00002-of-00003`` while ``-00003-of-00003`` is
        there too leaves that shard's tensors out: refuse it rather than drop them silently."""
        for name in names:
            m = _SHARD_NAME.match(PurePosixPath(name).name)
            if m is None:
                continue
            parent = PurePosixPath(name).parent
            for i in range(1, int(m["n"]) + 1):
                sibling = str(parent / f"{m['stem']}-{i:05d}-of-{m['n']}{m['ext']}")
                if sibling not in names and (self.folder / sibling).is_file():
                    raise _fail(self.path, f"the shard {sibling} is in the folder but the index does not "
                                "list its tensors")
            return

    def _scan(self, shard: Path, name: str, weight_map: dict[str, str], metas: list[dict[str, str]]) -> None:
        from . import detect_format, open_weights

        # the shard's own format, never "sharded" again: an index cannot name an index
        with open_weights(shard, format=detect_format(shard), **self._options) as r:
            self.formats[shard] = r.format
            metas.append(dict(r.metadata))
            unlisted = [t for t in r if weight_map and t not in weight_map]
            if unlisted:
                shown = ", ".join(repr(t) for t in unlisted[:5])
                raise _fail(self.path, f"the shard {name} holds {len(unlisted)} tensor(s) the index does not "
                            f"list: {shown}")
            mine = []
            for t in r:
                if t in self._where:
                    raise _fail(self.path, f"tensor {t!r} is stored in two shards: "
                                f"{self._where[t].name} and {name}")
                if weight_map and weight_map[t] != name:
                    # stored here but the index says elsewhere: the other shard will lack it, or hold it too
                    raise _fail(self.path, f"tensor {t!r} is stored in {name} but the index puts it in "
                                f"{weight_map[t]}")
                self._where[t] = shard
                self._specs[t] = r.spec(t)
                mine.append(t)
            for key, value in r.extras.items():
                self.extras[key] = value
            self._in[shard] = mine

    def shard_of(self, name: str) -> Path:
        """The shard file holding tensor ``name``."""
        try:
            return self._where[name]
        except KeyError:
            raise KeyError(name) from None

    def names_in(self, shard: str | os.PathLike) -> list[str]:
        """The tensors of one shard, in its order."""
        return list(self._in[Path(shard)])

    @property
    def files(self) -> list[Path]:
        """Every file this checkpoint is made of: the index (if any) and the shards."""
        return ([self.path] if self.path.is_file() else []) + list(self.shards)

    def reader_of(self, name: str) -> WeightReader:
        """The open reader of the shard holding ``name`` (e.g. a ``CpzReader`` for its ``storage``);
        it stays open until a tensor of another shard is read or this reader is closed."""
        from . import open_weights

        shard = self.shard_of(name)
        if self._open is None or self._open[0] != shard:
            self.close()
            self._open = (shard, open_weights(shard, format=self.formats[shard], **self._options))
        return self._open[1]

    def _read(self, name: str) -> np.ndarray:
        return self.reader_of(name)[name]

    def close(self) -> None:
        """Close the shard that is open. Arrays already returned stay valid."""
        if self._open is not None:
            self._open[1].close()
            self._open = None

    def __repr__(self) -> str:
        return f"<ShardedReader {str(self.path)!r}: {len(self)} tensors in {len(self.shards)} shards>"


def is_sharded_reader(reader: object) -> TypeGuard[ShardedReader]:
    """Whether ``reader`` reads a sharded checkpoint (has ``shards`` and ``names_in``).

    Checked by its interface rather than ``isinstance``, so that the answer holds even where a
    test runner has executed this module a second time (pytest's doctests in importlib mode).

    Examples
    --------
    >>> is_sharded_reader({"w": None})
    False
    """
    return callable(getattr(reader, "names_in", None)) and isinstance(getattr(reader, "shards", None), list)


def open_sharded(path: str | os.PathLike, **options: Any) -> ShardedReader:
    """Open an index file, or a folder of shards, as one lazy checkpoint.

    Parameters
    ----------
    path : path-like
        ``*.index.json``, or a folder holding one index or one ``NAME-0000i-of-0000N.EXT`` set.
    **options
        Passed to each shard's reader.

    Returns
    -------
    ShardedReader

    Raises
    ------
    WeightFileError
        A bad index (see the module docstring) or a shard its reader refuses.

    Examples
    --------
    >>> import numpy as np, tempfile, os, coreprune.io as cio
    >>> folder = tempfile.mkdtemp()
    >>> cio.save({"a": np.ones(2, np.float32)}, os.path.join(folder, "m.npz.index.json"))
    >>> open_sharded(folder)["a"].tolist()
    [1.0, 1.0]
    """
    return ShardedReader(path, **options)


# ----------------------------------------------------------------------------------------------- writing


def _check_not_input(path: Path, inputs: Sequence[str | os.PathLike]) -> None:
    for src in inputs:
        src = Path(src)
        same = src.exists() and src.resolve() == path.resolve()
        if same or (src.exists() and path.exists() and os.path.samefile(src, path)):
            raise WeightFileError(f"{path}: refusing to overwrite an input file; choose another output path")


def write_shard_part(
    weights: Mapping[str, Any],
    final: str | os.PathLike,
    *,
    inputs: Sequence[str | os.PathLike] = (),
    **options: Any,
) -> Path:
    """Write one shard to a temporary file beside ``final`` and return its path (not renamed yet).

    :func:`commit_shards` renames every part once all of them were written.

    Raises
    ------
    WeightFileError
        ``final`` is an input, its folder is missing, or the writer refused a value (the message
        starts with ``final``).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> final = os.path.join(tempfile.mkdtemp(), "m-00001-of-00001.npz")
    >>> part = write_shard_part({"a": np.ones(2)}, final)
    >>> part.name.startswith(".m-00001-of-00001.npz."), os.path.exists(final)
    (True, False)
    """
    from . import save

    final = Path(final)
    _check_not_input(final, inputs)
    if not final.parent.is_dir():
        raise WeightFileError(f"{final}: the folder {final.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    fmt = options.pop("format", None)
    try:
        save(weights, tmp_path, format=fmt or _format_of(final), inputs=tuple(inputs), **options)
    except WeightFileError as e:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise WeightFileError(str(e).replace(str(tmp_path), str(final))) from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise
    return tmp_path


def _format_of(path: Path) -> str:
    from . import _format_for_extension

    fmt = _format_for_extension(path)
    if fmt is None:
        raise WeightFileError(f"{path}: cannot tell the shards' format from the extension {path.suffix!r}")
    return fmt


def commit_shards(
    parts: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
    index: str | os.PathLike,
    weight_map: Mapping[str, str],
    metadata: Mapping[str, Any],
    *,
    inputs: Sequence[str | os.PathLike] = (),
) -> None:
    """Rename each ``(part, final)`` written by :func:`write_shard_part`, then write the index atomically.

    ``weight_map`` maps each tensor to its shard's file name. On any error the parts not yet renamed
    are deleted.

    Examples
    --------
    >>> import numpy as np, tempfile, os, json
    >>> d = tempfile.mkdtemp(); final = os.path.join(d, "m-00001-of-00001.npz")
    >>> part = write_shard_part({"a": np.ones(2)}, final)
    >>> commit_shards([(part, final)], os.path.join(d, "m.npz.index.json"),
    ...               {"a": "m-00001-of-00001.npz"}, {"total_size": 16})
    >>> json.load(open(os.path.join(d, "m.npz.index.json")))["weight_map"]
    {'a': 'm-00001-of-00001.npz'}
    """
    index = Path(index)
    try:
        _check_not_input(index, inputs)
        doc = {"metadata": dict(metadata), "weight_map": dict(weight_map)}
        text = json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
        for part, final in parts:
            os.replace(part, final)
        with atomic_write(index, inputs=tuple(inputs)) as f:
            f.write(text)
    finally:
        for part, _ in parts:
            with contextlib.suppress(OSError):
                os.unlink(part)


def discard_parts(parts: Sequence[str | os.PathLike]) -> None:
    """Delete temporary shard files after a failure (missing ones are ignored)."""
    for part in parts:
        with contextlib.suppress(OSError):
            os.unlink(part)


class _Subset(Mapping[str, np.ndarray]):
    """The named tensors of a mapping, lazily (a reader stays lazy)."""

    def __init__(self, weights: Mapping[str, Any], names: Sequence[str]) -> None:
        self._weights, self._names = weights, list(names)

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        return self._weights[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class _SubsetReader(WeightReader):
    """A reader restricted to some names, so writers see specs without reading data."""

    def __init__(self, source: WeightReader, names: Sequence[str]) -> None:
        super().__init__(source.path)
        self.format = source.format
        self._source = source
        self._specs = {n: source.spec(n) for n in names}

    def _read(self, name: str) -> np.ndarray:
        return self._source[name]


def dense_nbytes(spec: TensorSpec) -> int:
    """Bytes of a tensor's dense data, the ``total_size`` unit of an index (as transformers counts it)."""
    return spec.nbytes


def save_sharded(
    weights: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    max_shard_size: int | str | None = None,
    layout: Sequence[Sequence[str]] | None = None,
    inputs: Sequence[str | os.PathLike] = (),
    **options: Any,
) -> list[Path]:
    """Write ``weights`` as a sharded checkpoint: shards plus an index.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Any mapping, a lazy reader included (read one tensor at a time).
    path : path-like
        The index ``DIR/NAME.EXT.index.json``, or ``DIR/NAME.EXT`` (the index is then
        ``DIR/NAME.EXT.index.json``); the shards are ``DIR/NAME-0000i-of-0000N.EXT``, in the format of
        ``EXT``. An index is written even for one shard.
    max_shard_size : int or str, optional
        Most bytes of dense tensor data per shard (``"5GB"``, ``"2GiB"``, an int); a larger tensor gets
        a shard of its own. Default: one shard (or ``layout``).
    layout : sequence of sequence of str, optional
        The tensors of each shard, explicitly (every name once).
    inputs : sequence of path-like
        Files that must not be overwritten.
    **options
        Passed to the shards' writer.

    Returns
    -------
    list of pathlib.Path
        The shard files written.

    Raises
    ------
    WeightFileError
        A bad name or layout, an input as destination, or a value the writer refused; nothing is
        left behind then.

    Examples
    --------
    >>> import numpy as np, tempfile, os, coreprune.io as cio
    >>> d = tempfile.mkdtemp()
    >>> w = {"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)}
    >>> [p.name for p in save_sharded(w, os.path.join(d, "model.safetensors"), max_shard_size="16B")]
    ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']
    """
    index = index_path_for(path)
    names = list(weights)
    specs = {n: spec_of(weights, n) for n in names}
    if layout is None:
        groups = plan_shards([(n, dense_nbytes(specs[n])) for n in names], max_shard_size)
    else:
        groups = [list(g) for g in layout]
        flat = [n for g in groups for n in g]
        if sorted(flat) != sorted(names) or len(set(flat)) != len(flat):
            raise WeightFileError(f"{index}: the layout must name every tensor exactly once")
    finals = shard_paths(index, len(groups))
    for final in [*finals, index]:
        _check_not_input(final, inputs)
    parts: list[Path] = []
    try:
        for group, final in zip(groups, finals):
            view = (_SubsetReader(weights, group) if isinstance(weights, WeightReader)
                    else _Subset(weights, group))
            parts.append(write_shard_part(view, final, inputs=inputs, **options))
    except BaseException:
        discard_parts(parts)
        raise
    weight_map = {n: final.name for group, final in zip(groups, finals) for n in group}
    total = sum(dense_nbytes(s) for s in specs.values())
    commit_shards(list(zip(parts, finals)), index, weight_map, {"total_size": total}, inputs=inputs)
    return finals
