"""The original project's LeNet for MNIST-sized input, in PyTorch.

Its twin :func:`coreprune_digits.mxnet_models.lenet` builds the same network in Gluon with
the same parameter names and layouts, so that one ``dict[str, numpy.ndarray]`` loads
into both and both compute the same function:

=================  =======================  ==========================
name               shape                    layer
=================  =======================  ==========================
``conv1.weight``   (20, 1, 5, 5)            Conv 5x5, 20 maps (O,I,H,W)
``conv1.bias``     (20,)
``conv2.weight``   (50, 20, 3, 3)           Conv 3x3, 50 maps (O,I,H,W)
``conv2.bias``     (50,)
``dense1.weight``  (128, 1250)              Dense 128 (out, in)
``dense1.bias``    (128,)
``dense2.weight``  (num_classes, 128)       Dense num_classes (logits)
``dense2.bias``    (num_classes,)
=================  =======================  ==========================

Input ``(N, 1, 28, 28)`` float32, NCHW. Shapes through the network:
28 -conv5-> 24 -pool2-> 12 -conv3-> 10 -pool2-> 5, so ``dense1`` sees
``50 * 5 * 5 = 1250`` features flattened in C order (channel, row, column), as
Gluon's ``Dense(flatten=True)`` flattens. ReLU after every layer but the last;
max pooling 2x2 with stride 2; the output is logits (no softmax).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LeNet", "lenet"]


class LeNet(nn.Module):
    """Conv(20,5)-ReLU-MaxPool(2)-Conv(50,3)-ReLU-MaxPool(2)-Dense(128)-ReLU-Dense(num_classes).

    Parameters
    ----------
    num_classes : int, default 10
        Width of the last layer (logits).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=3)
        self.dense1 = nn.Linear(50 * 5 * 5, 128)
        self.dense2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for images ``(N, 1, 28, 28)``."""
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), kernel_size=2, stride=2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), kernel_size=2, stride=2)
        x = torch.relu(self.dense1(torch.flatten(x, start_dim=1)))
        return self.dense2(x)


def lenet(num_classes: int = 10) -> LeNet:
    """The source project's LeNet, with PyTorch's default initialisation.

    Parameters
    ----------
    num_classes : int, default 10

    Returns
    -------
    LeNet
        Parameters named ``conv1.weight`` ... ``dense2.bias`` (see the module docstring),
        float32 on the CPU.

    Examples
    --------
    >>> import torch
    >>> net = lenet()
    >>> list(net.state_dict())
    ['conv1.weight', 'conv1.bias', 'conv2.weight', 'conv2.bias',
     'dense1.weight', 'dense1.bias', 'dense2.weight', 'dense2.bias']
    >>> tuple(net(torch.zeros(2, 1, 28, 28)).shape)
    (2, 10)
    """
    return LeNet(num_classes)
