"""The original project's LeNet for MNIST-sized input, in MXNet Gluon.

Its twin :func:`coreprune_digits.torch_models.lenet` builds the same network in PyTorch.
Both use the child names ``conv1``, ``conv2``, ``dense1``, ``dense2``, so the
structural names (the keys of ``Block.save_parameters`` and of
:func:`coreprune.mxnet.to_numpy`) equal PyTorch's ``state_dict`` keys, and the layouts
agree: convolution weights ``(out, in, kh, kw)``, dense weights ``(out, in)``, and
``dense1`` flattens its ``(N, 50, 5, 5)`` input in C order (channel, row, column),
like ``torch.flatten(x, 1)``. One ``dict[str, numpy.ndarray]`` therefore loads into
both and both compute the same logits.

Input ``(N, 1, 28, 28)`` float32, NCHW: 28 -conv5-> 24 -pool2-> 12 -conv3-> 10 -pool2-> 5.
"""

from __future__ import annotations

import mxnet as mx
from mxnet import gluon
from mxnet.gluon import nn

__all__ = ["LeNet", "lenet"]


class LeNet(gluon.HybridBlock):
    """Conv(20,5)-ReLU-MaxPool(2)-Conv(50,3)-ReLU-MaxPool(2)-Dense(128)-ReLU-Dense(num_classes).

    Every layer is given its input size, so no parameter waits for deferred
    initialisation.

    Parameters
    ----------
    num_classes : int, default 10
        Width of the last layer (logits).
    """

    def __init__(self, num_classes: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv1 = nn.Conv2D(20, kernel_size=5, in_channels=1, activation="relu")
            self.pool1 = nn.MaxPool2D(pool_size=2, strides=2)
            self.conv2 = nn.Conv2D(50, kernel_size=3, in_channels=20, activation="relu")
            self.pool2 = nn.MaxPool2D(pool_size=2, strides=2)
            self.dense1 = nn.Dense(128, in_units=50 * 5 * 5, activation="relu")  # flatten=True: C order
            self.dense2 = nn.Dense(num_classes, in_units=128)

    def hybrid_forward(self, F, x):
        """Logits ``(N, num_classes)`` for images ``(N, 1, 28, 28)``."""
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        return self.dense2(self.dense1(x))


def lenet(num_classes: int = 10, *, ctx: mx.Context | None = None) -> LeNet:
    """The source project's LeNet, initialised (Xavier) on ``ctx`` (default: the current context).

    Parameters
    ----------
    num_classes : int, default 10
    ctx : mxnet.Context, optional

    Returns
    -------
    LeNet
        Structural names ``conv1.weight`` ... ``dense2.bias`` (the pooling layers have
        no parameters), float32.

    Examples
    --------
    >>> import mxnet as mx
    >>> from coreprune.mxnet import to_numpy
    >>> net = lenet()
    >>> list(to_numpy(net))
    ['conv1.weight', 'conv1.bias', 'conv2.weight', 'conv2.bias',
     'dense1.weight', 'dense1.bias', 'dense2.weight', 'dense2.bias']
    >>> net(mx.nd.zeros((2, 1, 28, 28))).shape
    (2, 10)
    """
    net = LeNet(num_classes)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    return net
