"""Private fast kernels: blocked, threaded, bit-identical to the plain NumPy references they replace.

* :mod:`~coreprune._fast.blocked`: cache-sized blocks over one shared thread pool, jobs and phases
  (``coreprune.set_num_threads`` / ``coreprune.num_threads`` are its public face);
* :mod:`~coreprune._fast.kernels`: pruning, masking, (de)quantization and range kernels;
* :mod:`~coreprune._fast.kth`: the one k-th smallest magnitude engine (sample bracket and counting
  pass, radix select, and the concatenate-and-partition reference);
* :mod:`~coreprune._fast.bitpack`: word-level bit packing and unpacking.

Nothing here is public API: the functions of :mod:`coreprune` choose these paths for large inputs
and their references otherwise, and ``tests/core/test_fast_paths.py`` compares the two.
"""
