"""coreprune's digits application: the end-to-end job behind ``coreprune-pipeline``.

An example of using coreprune from PyTorch or MXNet, kept out of the library: :mod:`.data` (the
digits set upscaled to 28x28), :mod:`.pipeline` (the framework-free job), :mod:`.report` (its table,
targets, JSON and plot), and one backend per framework (:mod:`.torch_train`, :mod:`.mxnet_train`,
with the LeNet teacher in :mod:`.torch_models` / :mod:`.mxnet_models`). Importing this package
imports no framework.
"""
