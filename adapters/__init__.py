"""Framework adapters for coreprune.

``adapters.torch`` and ``adapters.mxnet`` convert a framework's parameter
collections to and from ``dict[str, numpy.ndarray]`` and nothing more; all the
maths lives in :mod:`coreprune`. Importing ``adapters`` imports no framework:
each submodule imports its own framework, and only when it is imported.
"""
