"""Deep Compression (Han et al., ICLR 2016) on real MNIST with coreprune, in PyTorch and MXNet.

Run ``coreprune-deep-compression --framework torch|mxnet``; see ``docs/deep-compression.md``.
"""
