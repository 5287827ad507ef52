"""Shard-by-shard processing of a checkpoint: one process per shard, or tasks on a Dask cluster.

The work on a sharded checkpoint is split into **output shards**: each is a pure function of
``(ShardJob, ShardSettings)`` -- read its tensors from the input files it names, prune / quantize
them one at a time, write one output shard to a temporary file -- so the jobs can run anywhere:

* in this process, one after the other (``jobs=1``);
* in ``jobs`` worker processes on this machine (:class:`concurrent.futures.ProcessPoolExecutor`);
* as tasks on an existing Dask cluster (``scheduler="tcp://host:8786"`` or a
  ``distributed.Client``; ``pip install "coreprune[dask]"``). Every worker must see the input and
  output folders at the same paths (a shared file system).

The output is bit-identical whichever runs it. Global magnitude pruning keeps one threshold for all
shards: it is found first as a reduction over per-shard histograms -- the radix select of
:mod:`coreprune._fast.kth`, 16 bits of the magnitudes' bit patterns per pass, the per-shard
histograms summed, then the candidates of the last bucket gathered -- and equals
:func:`coreprune.global_magnitude_threshold` on the whole checkpoint. Only when every shard was
written are they renamed into place and the new index written
(:func:`coreprune.io.sharded.commit_shards`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np

from ._fast import blocked as _blocked
from ._fast import kth as _kth
from .errors import CompressionError
from .io import _format_for_extension, open_weights
from .io.base import TensorSpec, WeightReader
from .io.sharded import (
    _check_not_input,
    commit_shards,
    dense_nbytes,
    discard_parts,
    index_path_for,
    is_sharded_reader,
    plan_shards,
    shard_paths,
    write_shard_part,
)
from .pruning import GlobalThreshold, _cut, _spec_view, prune_magnitude, prune_threshold
from .quantization import QuantizedArray, quantize
from .selection import _everything, require_finite, select

__all__ = [
    "ShardSettings", "ShardJob", "ShardResult", "ShardRun", "process_shards", "sharded_global_threshold",
    "run_shard", "prune_one", "quantize_one", "shard_pass", "shard_count_equal", "shard_check_finite",
]

_ALL = _everything  # names are selected once, by the driver


@dataclass(frozen=True)
class ShardSettings:
    """What to do to every tensor: the settings of the ``coreprune`` commands.

    Attributes
    ----------
    threshold : float, optional
        Zero every selected weight with ``|w| <= threshold``.
    sparsity : float, optional
        Zero the ``round(sparsity * n)`` smallest-``|w|`` weights of each selected tensor, or, with
        ``scope="global"``, of all selected tensors together (one threshold for all shards).
    scope : {"layer", "global"}
    bits : int, optional
        Quantize the selected tensors to ``bits``-bit codes (kept packed in ``.cpz`` shards,
        dequantized in other formats).
    symmetric, axis, group_size, flatten, method, full_range, rounding, scale_dtype
        As :func:`coreprune.quantize` (the same defaults: a layout per tensor).
    include, exclude : glob or list of globs, optional
        Which tensors; default every floating tensor with ``ndim >= 2``.
    rename : Mapping[str, str], optional
        Old name -> new name; tensors it lacks are dropped.
    added : Mapping[str, tuple[str, numpy.ndarray]], optional
        New tensors: name -> (the output name it follows, value).
    metadata : Mapping[str, str], optional
        Added to every ``.cpz`` shard's metadata (provenance); safetensors and ``.cpz`` shards also
        keep their input shard's own metadata.
    reader_options : Mapping[str, Any]
        Passed to every input file's reader.
    """

    threshold: float | None = None
    sparsity: float | None = None
    scope: str = "layer"
    bits: int | None = None
    symmetric: bool = True
    axis: int | None = None
    group_size: int | str | None = "auto"
    flatten: bool = False
    method: str = "rtn"
    full_range: bool = False
    rounding: str = "auto"
    scale_dtype: str = "auto"
    include: str | Sequence[str] | None = None
    exclude: str | Sequence[str] | None = None
    rename: Mapping[str, str] | None = None
    added: Mapping[str, tuple[str, np.ndarray]] | None = None
    metadata: Mapping[str, str] | None = None
    reader_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def prunes(self) -> bool:
        """Whether a pruning step runs."""
        return self.threshold is not None or self.sparsity is not None


@dataclass(frozen=True)
class ShardJob:
    """One output shard: where it goes and which input tensors it holds, in order.

    Attributes
    ----------
    output : str
        The output shard's final path.
    sources : tuple of (str, tuple of str)
        ``(input file, tensor names)`` pairs, in output order (old names, before ``rename``).
    selected : frozenset of str
        The names (old) the pruning and quantization steps apply to.
    """

    output: str
    sources: tuple[tuple[str, tuple[str, ...]], ...]
    selected: frozenset[str]


@dataclass(frozen=True)
class ShardResult:
    """What one job wrote: the temporary file, its final path, its tensors and what the steps did."""

    part: str
    output: str
    names: tuple[str, ...]
    dense_bytes: int
    pruned: int = 0
    zeros: int = 0
    size: int = 0
    quantized: int = 0


# -------------------------------------------------------------------------------------- the per-tensor work


def prune_one(name: str, w: np.ndarray, settings: ShardSettings, cut: GlobalThreshold | None) -> np.ndarray:
    """The pruning step on one selected tensor: threshold, per-layer sparsity or the global cut.

    Examples
    --------
    >>> prune_one("w", np.array([[0.1, -2.0]], np.float32), ShardSettings(threshold=0.5), None).tolist()
    [[0.0, -2.0]]
    """
    if settings.threshold is not None:
        return prune_threshold({name: w}, settings.threshold, include=_ALL)[0][name]
    if settings.sparsity is None:
        return w
    if settings.scope == "global":
        if cut is None:
            raise CompressionError("global pruning needs the threshold found over all shards")
        return cut.prune(name, w)[0]
    return prune_magnitude({name: w}, settings.sparsity, include=_ALL)[0][name]


def quantize_one(name: str, w: np.ndarray, settings: ShardSettings, keep_codes: bool) -> Any:
    """The quantization step on one selected tensor: a QuantizedArray, or its dequantized values.

    Examples
    --------
    >>> q = quantize_one("w", np.array([[0.5, -1.0]], np.float32), ShardSettings(bits=8), False)
    >>> q.dtype.name
    'float32'
    """
    # include=_ALL selects it, so quantize returns it quantized
    q = cast(QuantizedArray, quantize(
        {name: w}, settings.bits, symmetric=settings.symmetric, axis=settings.axis,
        group_size=settings.group_size, flatten=settings.flatten, method=settings.method,
        full_range=settings.full_range, rounding=settings.rounding, scale_dtype=settings.scale_dtype,
        include=_ALL,
    )[name])
    return q if keep_codes else q.dequantize()


class _JobView(WeightReader):
    """The tensors of one job, lazily: renamed, transformed, one at a time (what the writer reads)."""

    format = "shard-job"

    def __init__(self, job: ShardJob, settings: ShardSettings, cut: GlobalThreshold | None,
                 keep_codes: bool) -> None:
        super().__init__(job.output)
        self._job, self._settings, self._cut, self._keep = job, settings, cut, keep_codes
        self._readers: dict[str, WeightReader] = {}
        self._from: dict[str, tuple[str, str]] = {}  # output name -> (file, old name)
        self._added: dict[str, np.ndarray] = {}
        after: dict[str, list[str]] = {}
        for new, (anchor, _value) in (settings.added or {}).items():
            after.setdefault(anchor, []).append(new)
        self.counts = {"pruned": 0, "zeros": 0, "size": 0, "quantized": 0}
        for file, names in job.sources:
            reader = self._reader(file)
            for old in names:
                new = settings.rename[old] if settings.rename is not None else old
                self._from[new] = (file, old)
                self._specs[new] = reader.spec(old)
                for extra in after.get(new, []):
                    value = np.asarray(settings.added[extra][1])  # type: ignore[index]
                    self._added[extra] = value
                    self._specs[extra] = TensorSpec(tuple(value.shape), value.dtype)
        metas = [dict(r.metadata) for r in self._readers.values()]
        common = {k: v for k, v in metas[0].items() if all(m.get(k) == v for m in metas)} if metas else {}
        # provenance belongs to .cpz manifests; safetensors shards keep their input's own metadata
        self.metadata = {**common, **(settings.metadata or {})} if keep_codes else common

    def _reader(self, file: str) -> WeightReader:
        if file not in self._readers:
            self._readers[file] = open_weights(file, **dict(self._settings.reader_options))
        return self._readers[file]

    def _read(self, name: str) -> Any:
        if name in self._added:
            return self._added[name]
        file, old = self._from[name]
        value = self._reader(file)[old]
        if old not in self._job.selected:
            return value
        w = np.asarray(value)
        if self._settings.prunes:
            w = prune_one(old, w, self._settings, self._cut)
            self.counts["pruned"] += 1
            self.counts["zeros"] += int(w.size - np.count_nonzero(w))
            self.counts["size"] += int(w.size)
        if self._settings.bits is None:
            return w
        self.counts["quantized"] += 1
        return quantize_one(old, w, self._settings, self._keep)

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()


def run_shard(job: ShardJob, settings: ShardSettings, cut: GlobalThreshold | None = None,
              inputs: Sequence[str] = ()) -> ShardResult:
    """Write one output shard to a temporary file beside its final path: the pure per-shard work.

    Parameters
    ----------
    job : ShardJob
    settings : ShardSettings
    cut : GlobalThreshold, optional
        The one threshold of ``scope="global"`` (from :func:`sharded_global_threshold`).
    inputs : sequence of str
        Files never to overwrite.

    Returns
    -------
    ShardResult
        ``part`` is renamed to ``output`` by :func:`coreprune.io.sharded.commit_shards`.

    Examples
    --------
    >>> import tempfile, os, coreprune.io as cio
    >>> d = tempfile.mkdtemp(); src = os.path.join(d, "in.npz")
    >>> cio.save({"w": np.array([[0.1, -2.0]], np.float32)}, src)
    >>> job = ShardJob(os.path.join(d, "out-00001-of-00001.npz"), ((src, ("w",)),), frozenset({"w"}))
    >>> r = run_shard(job, ShardSettings(threshold=0.5))
    >>> cio.load(r.part, format="npz")["w"].tolist(), r.zeros
    ([[0.0, -2.0]], 1)
    """
    fmt = _format_for_extension(Path(job.output))
    keep_codes = fmt == "cpz"
    view = _JobView(job, settings, cut, keep_codes)
    try:
        options: dict[str, Any] = {}
        if fmt in ("cpz", "safetensors") and view.metadata:
            options["metadata"] = view.metadata
        part = write_shard_part(view, job.output, inputs=inputs, **options)
        dense = sum(dense_nbytes(view.spec(n)) for n in view)
        return ShardResult(str(part), job.output, tuple(view), dense, **view.counts)
    finally:
        view.close()


# ------------------------------------------------------------------------------ the global threshold, reduced


def _flat(reader: WeightReader, name: str) -> np.ndarray:
    return np.ascontiguousarray(reader[name]).reshape(-1)


def _blocks_job(fn: Callable[..., Any], flat: np.ndarray) -> Any:
    parts = yield [partial(fn, flat, span) for span in _blocked.block_ranges(flat.size)]
    return parts


def shard_pass(file: str, names: Sequence[str], reader_options: Mapping[str, Any], work: str, known: int,
               prefix: int, check: bool, collect: bool) -> Any:
    """One pass of the radix select over the selected tensors of one input file.

    ``collect=False``: the histogram (``int64[65536]``) of the 16 bits after the ``known`` top bits of
    the magnitudes whose top bits equal ``prefix``. ``collect=True``: those magnitudes, one array per
    tensor. With ``check``, a tensor holding NaN/Inf raises :class:`~coreprune.errors.CompressionError`
    naming it (the first one of the file).
    """
    dtype = np.dtype(work)
    fn = _kth._bucket_block if collect else _kth._histogram_block
    out: list[np.ndarray] = []
    hist = np.zeros(1 << 16, np.int64)
    with open_weights(file, **dict(reader_options)) as reader:
        for name in names:
            flat = _flat(reader, name)
            step = partial(fn, work=dtype, known=known, prefix=prefix, check=check)
            parts = _blocked.run_job(_blocks_job(step, flat))
            if any(p is None for p in parts):
                require_finite(name, reader[name])
            if collect:
                out.append(np.concatenate([np.zeros(0, dtype), *parts]))
            else:
                for h in parts:
                    hist += h
    return out if collect else hist


def shard_count_equal(file: str, names: Sequence[str], reader_options: Mapping[str, Any], work: str,
                      value: float) -> list[int]:
    """How many magnitudes equal ``value`` in each selected tensor of one input file."""
    dtype = np.dtype(work)
    with open_weights(file, **dict(reader_options)) as reader:
        return [int(np.count_nonzero(np.abs(_flat(reader, n).astype(dtype)) == dtype.type(value)))
                for n in names]


def shard_check_finite(file: str, names: Sequence[str], reader_options: Mapping[str, Any]) -> None:
    """Raise for the first selected tensor of one file holding NaN/Inf."""
    with open_weights(file, **dict(reader_options)) as reader:
        for name in names:
            require_finite(name, reader[name])


Mapper = Callable[..., list[Any]]


def sharded_global_threshold(
    groups: Sequence[tuple[str, Sequence[str]]],
    specs: Mapping[str, TensorSpec],
    sparsity: float,
    *,
    reader_options: Mapping[str, Any] | None = None,
    mapper: Mapper | None = None,
) -> GlobalThreshold:
    """The exact global magnitude cut over tensors spread across files, as a reduction over files.

    Parameters
    ----------
    groups : sequence of (path, names)
        The selected tensors of each input file, in mapping order (files in order).
    specs : Mapping[str, TensorSpec]
        Shape and dtype of every selected name.
    sparsity : float
        In ``[0, 1]``.
    reader_options : Mapping, optional
    mapper : callable, optional
        ``mapper(fn, *iterables) -> list`` in order (a process pool's or a Dask client's map);
        default: the built-in map in this process.

    Returns
    -------
    GlobalThreshold
        The same as :func:`coreprune.global_magnitude_threshold` on the tensors in that order.

    Examples
    --------
    >>> import tempfile, os, coreprune, coreprune.io as cio
    >>> d = tempfile.mkdtemp(); a, b = os.path.join(d, "a.npz"), os.path.join(d, "b.npz")
    >>> cio.save({"x": np.array([[1.0, 2.0], [2.0, 5.0]])}, a); cio.save({"y": np.array([[2.0, 0.5]])}, b)
    >>> specs = {"x": cio.open_weights(a).spec("x"), "y": cio.open_weights(b).spec("y")}
    >>> cut = sharded_global_threshold([(a, ["x"]), (b, ["y"])], specs, 0.5)
    >>> cut.value, cut.removed_at_value
    (2.0, {'x': 1, 'y': 0})
    """
    from .pruning import _check_sparsity, _work_dtype

    s = _check_sparsity(sparsity)
    opts = dict(reader_options or {})
    run = mapper or (lambda fn, *its: list(map(fn, *its)))
    groups = [(str(f), list(n)) for f, n in groups if n]
    files = [f for f, _ in groups]
    lists = [n for _, n in groups]
    names = [n for _, ns in groups for n in ns]
    total = sum(specs[n].size for n in names)
    k = round(s * total)
    wide = any(_work_dtype(specs[n].dtype).itemsize == 8 for n in names)
    work = np.dtype(np.float64 if wide else np.float32)
    each = [opts] * len(files)
    if k == 0:
        run(shard_check_finite, files, lists, each)
        return _cut(names, work.type(-np.inf), 0, [0] * len(names), 0, total, work)
    # the radix select of coreprune._fast.kth.radix_job, each pass mapped over the files and summed
    nbits = 8 * work.itemsize
    budget = max(_kth.CANDIDATE_MIN, total // _kth.CANDIDATE_SHARE)
    prefix, known, remaining, bucket, check = 0, 0, k, total, True
    n = len(files)
    while bucket > budget and known < nbits:
        hists = run(shard_pass, files, lists, each, [work.name] * n, [known] * n, [prefix] * n,
                    [check] * n, [False] * n)
        check = False
        prefix, known, remaining, bucket = _kth.next_digit(sum(hists), prefix, known, remaining)
    if known == nbits:  # the bucket is one value
        # indexing a 0-d array by () gives a scalar; NumPy's stubs say ndarray
        v = cast(np.generic, np.array(prefix, dtype=np.dtype(f"u{work.itemsize}")).view(work)[()])
        equal = [c for counts in run(shard_count_equal, files, lists, each, [work.name] * n, [float(v)] * n)
                 for c in counts]
        return _cut(names, v, remaining, equal, k, total, work)
    parts = run(shard_pass, files, lists, each, [work.name] * n, [known] * n, [prefix] * n, [check] * n,
                [True] * n)
    candidates = [c for per_file in parts for c in per_file]
    v, r = _kth._kth_in_place(candidates, remaining)
    return _cut(names, v, r, [int(np.count_nonzero(c == v)) for c in candidates], k, total, work)


# ------------------------------------------------------------------------------------------------ executors


def _limit_threads(n: int) -> None:
    _blocked.set_num_threads(n)


@contextlib.contextmanager
def _mapper(jobs: int, scheduler: Any) -> Iterator[Mapper]:
    """An ordered ``map`` over this process, a process pool, or a Dask cluster. Errors are raised in
    input order, so the first failing shard is the one reported, whichever finished first."""
    if scheduler is not None:
        try:
            from distributed import Client
        except ImportError:
            raise CompressionError(
                'running on a Dask cluster needs the dask extra: pip install "coreprune[dask]"'
            ) from None
        client = scheduler if isinstance(scheduler, Client) else None
        if client is None:
            try:
                client = Client(scheduler)  # connect timeout: dask config distributed.comm.timeouts.connect
            except (OSError, TimeoutError, ValueError) as e:
                raise CompressionError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None

        def dask_map(fn: Callable[..., Any], *its: Sequence[Any]) -> list[Any]:
            futures = client.map(fn, *its, pure=False)
            try:
                return [f.result() for f in futures]
            finally:
                for f in futures:
                    f.cancel()

        try:
            yield dask_map
        finally:
            if client is not scheduler:
                client.close()
        return
    if jobs <= 1:
        yield lambda fn, *its: list(map(fn, *its))
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, initializer=_limit_threads, initargs=(threads,)) as pool:
        yield lambda fn, *its: list(pool.map(fn, *its))


def _layout(reader: WeightReader) -> list[tuple[str, list[str]]]:
    if is_sharded_reader(reader):
        return [(str(s), reader.names_in(s)) for s in reader.shards]
    return [(str(reader.path), list(reader))]


@dataclass(frozen=True)
class ShardRun:
    """What :func:`process_shards` wrote."""

    index: Path
    shards: tuple[Path, ...]
    results: tuple[ShardResult, ...]


def process_shards(
    source: str | os.PathLike,
    output: str | os.PathLike,
    settings: ShardSettings,
    *,
    jobs: int = 1,
    scheduler: Any = None,
    max_shard_size: int | str | None = None,
    on_done: Callable[[ShardResult], None] | None = None,
) -> ShardRun:
    """Process a checkpoint shard by shard into a new sharded checkpoint, with a new index.

    Parameters
    ----------
    source : path-like
        An index ``*.index.json``, a folder of shards, or one weight file.
    output : path-like
        The new index ``DIR/NAME.EXT.index.json`` (or ``DIR/NAME.EXT``); ``EXT`` sets the shards'
        format; ``DIR`` must exist.
    settings : ShardSettings
    jobs : int
        Worker processes on this machine (1: this process).
    scheduler : str or distributed.Client, optional
        Run the jobs as tasks on this Dask cluster instead (``"tcp://host:8786"``); needs
        ``coreprune[dask]`` and the folders at the same paths on every worker.
    max_shard_size : int or str, optional
        Most bytes of dense tensor data per output shard; default: the input's shard layout.
    on_done : callable, optional
        Called with each :class:`ShardResult`, in order.

    Returns
    -------
    ShardRun

    Raises
    ------
    CompressionError
        Bad settings, NaN/Inf in a tensor to prune (named), a bad input (before anything is written),
        or a writer error; no output shard or index is left behind then.

    Examples
    --------
    >>> import tempfile, os, coreprune.io as cio
    >>> d = tempfile.mkdtemp()
    >>> a = np.arange(8, dtype=np.float32)
    >>> cio.save({"a": a.reshape(2, 4), "b": -a.reshape(4, 2)}, os.path.join(d, "in.safetensors"),
    ...          max_shard_size=32)
    >>> settings = ShardSettings(sparsity=0.5, scope="global")
    >>> run = process_shards(os.path.join(d, "in.safetensors.index.json"),
    ...                      os.path.join(d, "out.npz.index.json"), settings)
    >>> [p.name for p in run.shards]
    ['out-00001-of-00002.npz', 'out-00002-of-00002.npz']
    >>> out = cio.load(os.path.join(d, "out.npz.index.json"))
    >>> int((out["a"] == 0).sum() + (out["b"] == 0).sum())
    8
    """
    if settings.scope not in ("layer", "global"):
        raise CompressionError(f"scope must be 'layer' or 'global', got {settings.scope!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise CompressionError(f"jobs must be a positive integer, got {jobs!r}")
    index = index_path_for(output)
    with open_weights(source, **dict(settings.reader_options)) as reader:
        layout = _layout(reader)
        inputs = [str(p) for p in (reader.files if is_sharded_reader(reader) else [reader.path])]
        specs = {n: reader.spec(n) for n in reader}
        selected = frozenset(select(_spec_view(reader), settings.include, settings.exclude)) \
            if (settings.prunes or settings.bits is not None) else frozenset()
    rename = settings.rename
    where = {n: f for f, names in layout for n in names}
    order = [n for _, names in layout for n in names if rename is None or n in rename]
    if max_shard_size is None:
        groups = [[n for n in names if rename is None or n in rename] for _, names in layout]
        groups = [g for g in groups if g]
    else:
        groups = plan_shards([(n, dense_nbytes(specs[n])) for n in order], max_shard_size)
    finals = shard_paths(index, len(groups))
    for final in [*finals, index]:  # before any work: never over an input file
        _check_not_input(final, inputs)
    job_list = []
    for group, final in zip(groups, finals):
        sources: list[tuple[str, list[str]]] = []
        for n in group:
            if not sources or sources[-1][0] != where[n]:
                sources.append((where[n], []))
            sources[-1][1].append(n)
        job_list.append(ShardJob(str(final), tuple((f, tuple(ns)) for f, ns in sources),
                                 selected & frozenset(group)))
    results: list[ShardResult] = []
    with _mapper(jobs, scheduler) as run:
        cut = None
        if settings.sparsity is not None and settings.threshold is None and settings.scope == "global":
            chosen = [(f, [n for n in names if n in selected]) for f, names in layout]
            cut = sharded_global_threshold(chosen, specs, settings.sparsity,
                                           reader_options=settings.reader_options, mapper=run)
        try:
            jobs_n = len(job_list)
            for result in run(run_shard, job_list, [settings] * jobs_n, [cut] * jobs_n, [inputs] * jobs_n):
                results.append(result)
                if on_done is not None:
                    on_done(result)
        except BaseException:
            discard_parts([r.part for r in results])
            _discard_strays(finals)
            raise
    weight_map = {name: Path(r.output).name for r in results for name in r.names}
    total = sum(r.dense_bytes for r in results)
    commit_shards([(r.part, r.output) for r in results], index, weight_map, {"total_size": total},
                  inputs=inputs)
    return ShardRun(index, tuple(finals), tuple(results))


def _discard_strays(finals: Sequence[Path]) -> None:
    """Delete the temporary parts of jobs that finished after another one failed."""
    for final in finals:
        folder = final.parent
        with contextlib.suppress(OSError):
            for p in folder.iterdir():
                if p.name.startswith(f".{final.name}.") and p.name.endswith(".part"):
                    p.unlink()
