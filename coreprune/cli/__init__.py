"""The ``coreprune`` command line: inspect, prune, quantize, compress, decompress and convert weight files.

Every command reads its input lazily, one tensor at a time (``--sparsity --global``
reads it two or three times: first to find the one threshold over all selected tensors,
then to prune tensor by tensor), and writes its output atomically -- a temporary file
beside the output, renamed over it at the end -- and never over its input. A user error
(bad arguments, a missing or corrupted file, a tensor that cannot be compressed) prints
one line ``coreprune: error: ...`` on stderr and exits with status 2. See ``docs/cli.md``.

Run it as ``coreprune`` (the console script) or ``python -m coreprune``. Neither
imports torch or mxnet: files written by either framework are read with NumPy alone.

One module per command group: :mod:`~coreprune.cli.inspect`; :mod:`~coreprune.cli.compress`
(prune, quantize, compress); :mod:`~coreprune.cli.convert` (decompress, convert); the lazy pipeline
they write through, :mod:`~coreprune.cli.streaming`; sharded outputs (``--jobs``, ``--scheduler``,
``--max-shard-size``), :mod:`~coreprune.cli.sharded`; shared helpers, :mod:`~coreprune.cli.common`;
the parser and :func:`main`, :mod:`~coreprune.cli.app`.
"""

from __future__ import annotations

from .app import build_parser, main

__all__ = ["main", "build_parser"]
