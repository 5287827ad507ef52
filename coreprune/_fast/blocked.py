"""Cache-sized blocks and one shared thread pool for the element-wise fast paths.

Compression is memory-bound: each weight is read once and one or two outputs are written, so the
speed limit is memory bandwidth, not arithmetic. Two things keep the fast paths near it:

* **Blocks.** A whole-tensor expression such as ``w * (abs(w) > t)`` writes full-size temporaries
  (``abs(w)``, the bool mask, the product) to RAM and reads them back. The kernels instead walk the
  tensor in blocks of :data:`BLOCK_ELEMENTS` values (256 KiB of float32) and run every step of a
  block with ``out=`` into small per-thread scratch buffers, so the temporaries stay in the L2
  cache and RAM sees only the input read and the output writes.
* **Threads.** NumPy releases the GIL inside its loops, so the blocks of one call are spread over a
  :class:`concurrent.futures.ThreadPoolExecutor` of ``os.cpu_count()`` workers (the calling thread
  works too). Work is handed out by a shared counter, one block at a time, which balances the
  load when other processes take a core. A call made from inside a worker runs inline, so the pool
  is never oversubscribed or deadlocked by nesting.
* **Jobs.** The work on a whole dict is a list of jobs (one per tensor, or one for a global
  ranking), each a generator yielding the block tasks of its phases; :func:`run_jobs` runs the
  current phase of all jobs in one sweep, so threads wait for each other once per phase, not
  once per tensor.

Small inputs (fewer than :data:`MIN_FAST_ELEMENTS` values) do not reach this module: the public
functions use their plain NumPy reference there, which is just as fast for them.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from ..errors import CompressionError

__all__ = [
    "BLOCK_ELEMENTS",
    "MIN_FAST_ELEMENTS",
    "num_threads",
    "set_num_threads",
    "block_ranges",
    "run_parallel",
    "run_jobs",
    "run_job",
    "gather",
    "Job",
    "scratch",
]

#: Values per block: 256 Ki float32 = 1 MiB of input. Smaller blocks keep the temporaries in L2
#: but pay NumPy's per-call overhead (a few microseconds per ufunc call) more often; on the
#: machines measured (1 MiB L2, 32 MiB shared L3) 2**18 was the fastest of 2**14 .. 2**20.
BLOCK_ELEMENTS = 1 << 18
#: Tensors smaller than this take the plain reference path (the fast path pays off above it).
MIN_FAST_ELEMENTS = 1 << 16

T = TypeVar("T")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_threads = max(1, os.cpu_count() or 1)
_local = threading.local()


def num_threads() -> int:
    """Number of threads the fast paths use (default ``os.cpu_count()``), ``coreprune.num_threads``.

    Returns
    -------
    int
        At least 1; the calling thread counts as one of them.

    Examples
    --------
    >>> import coreprune
    >>> coreprune.num_threads() >= 1
    True
    """
    return _threads


def set_num_threads(n: int) -> int:
    """Use ``n`` threads in the fast paths from now on, ``coreprune.set_num_threads``.

    Results do not depend on it (every fast path is bit-identical whatever the number of threads);
    only the speed does. Waits for the work in flight, then replaces the thread pool.

    Parameters
    ----------
    n : int
        Number of threads, ``>= 1`` (1: everything runs in the calling thread).

    Returns
    -------
    int
        The previous number, to restore it.

    Raises
    ------
    CompressionError
        ``n`` is not an int ``>= 1``.

    Examples
    --------
    >>> import coreprune
    >>> previous = coreprune.set_num_threads(1)
    >>> coreprune.num_threads()
    1
    >>> _ = coreprune.set_num_threads(previous)
    """
    global _threads, _executor
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CompressionError(f"the number of threads must be an int >= 1, got {n!r}")
    with _lock:
        previous, _threads = _threads, n
        if _executor is not None:
            _executor.shutdown(wait=True)
            _executor = None
    return previous


def _forget_pool_after_fork() -> None:
    # A forked child inherits the executor object but not its threads: work submitted to it would
    # never run. Start from scratch (and with a fresh lock: the parent may have held it).
    global _executor, _lock
    _executor = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            # the calling thread is one of the workers, the pool supplies the others
            _executor = ThreadPoolExecutor(max_workers=_threads - 1, thread_name_prefix="coreprune")
        return _executor


def block_ranges(n: int, block: int | None = None, align: int = 1) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in blocks of ``block`` values (default
    :data:`BLOCK_ELEMENTS`), each start a multiple of ``align``.

    Examples
    --------
    >>> block_ranges(10, 4)
    [(0, 4), (4, 8), (8, 10)]
    >>> block_ranges(20, 9, align=4)
    [(0, 8), (8, 16), (16, 20)]
    """
    size = block or BLOCK_ELEMENTS
    size = max(align, size - size % align)
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def run_parallel(tasks: Sequence[T], fn: Callable[[T], Any]) -> list[Any]:
    """``[fn(t) for t in tasks]``, spread over the thread pool; results in task order.

    Workers take the next task from a shared counter, so a worker that the OS descheduled (other
    processes share the cores) holds up at most one task. The first exception raised by ``fn`` is
    re-raised here after every worker has stopped.

    Examples
    --------
    >>> run_parallel(range(5), lambda i: i * i)
    [0, 1, 4, 9, 16]
    """
    tasks = list(tasks)
    results: list[Any] = [None] * len(tasks)
    threads = min(_threads, len(tasks))
    if threads <= 1 or getattr(_local, "in_worker", False):
        return [fn(t) for t in tasks]
    counter = itertools.count()  # next() on it is atomic under the GIL
    failed = threading.Event()

    def worker() -> None:
        was, _local.in_worker = getattr(_local, "in_worker", False), True
        try:
            while not failed.is_set():
                i = next(counter)
                if i >= len(tasks):
                    return
                results[i] = fn(tasks[i])
        except BaseException:
            failed.set()
            raise
        finally:
            _local.in_worker = was

    futures = [_pool().submit(worker) for _ in range(threads - 1)]
    error: BaseException | None = None
    try:
        worker()
    except BaseException as exc:  # re-raised once the other workers are done
        error = exc
    for future in futures:
        raised = future.exception()
        if raised is not None and error is None:
            error = raised
    if error is not None:
        raise error
    return results


#: A job: a generator that yields lists of zero-argument tasks (one list per phase), receives the
#: list of their results, and finally returns its result.
Job = Generator[list[Callable[[], Any]], list[Any], Any]


def gather(jobs: Sequence[Job]) -> Job:
    """A job that runs several jobs side by side: its phase ``i`` holds the phase-``i`` tasks of each.

    Jobs with fewer phases finish early. Returns the list of the jobs' results.
    """
    results: list[Any] = [None] * len(jobs)
    pending: dict[int, list[Callable[[], Any]]] = {}

    def advance(i: int, sent: list[Any] | None) -> None:
        try:
            pending[i] = next(jobs[i]) if sent is None else jobs[i].send(sent)
        except StopIteration as stop:
            results[i] = stop.value

    for i in range(len(jobs)):
        advance(i, None)
    while pending:
        current, pending = pending, {}
        outputs = yield [task for i in current for task in current[i]]
        start = 0
        for i, tasks in current.items():
            advance(i, outputs[start : start + len(tasks)])
            start += len(tasks)
    return results


def run_job(job: Job) -> Any:
    """Run a job: the tasks of each phase in parallel (:func:`run_parallel`), phase after phase."""
    try:
        tasks = next(job)
        while True:
            tasks = job.send(run_parallel(tasks, _call))
    except StopIteration as stop:
        return stop.value


def run_jobs(jobs: Sequence[Job]) -> list[Any]:
    """Run several jobs phase by phase: the tasks of the current phase of every job run in one sweep.

    One sweep over all tensors of a dict, rather than one per tensor, means one wait for the
    slowest worker per phase instead of one per tensor. Each job receives the results of its own
    tasks, in order, and may then yield the tasks of its next phase. Jobs should not raise for bad
    data (they return a marker instead), so that one tensor's problem does not hide another's.

    Examples
    --------
    >>> def job(n):
    ...     squares = yield [lambda i=i: i * i for i in range(n)]
    ...     return sum(squares)
    >>> run_jobs([job(3), job(4)])
    [5, 14]
    """
    return run_job(gather(jobs))


def _call(task: Callable[[], Any]) -> Any:
    return task()


def scratch(slot: str, n: int, dtype: np.dtype | type) -> np.ndarray:
    """A 1-D scratch array of ``n`` values of ``dtype``, private to the calling thread.

    The same ``slot`` and dtype return the same memory on every call from a thread (grown when
    needed), so a kernel can use several scratch arrays at once under different slot names.
    Contents are undefined. A thread keeps a few blocks' worth of these alive.

    Examples
    --------
    >>> a = scratch("doc", 8, np.float32)
    >>> a.shape, a.dtype.name, np.shares_memory(a, scratch("doc", 4, np.float32))
    ((8,), 'float32', True)
    """
    try:
        buffers = _local.buffers
    except AttributeError:
        buffers = _local.buffers = {}
    key = (slot, dtype)
    buf = buffers.get(key)
    if buf is None or buf.size < n:
        # at least a block, so that blocks of slightly different sizes share one buffer
        buf = buffers[key] = np.empty(max(n, BLOCK_ELEMENTS), dtype)
    return buf[:n]
