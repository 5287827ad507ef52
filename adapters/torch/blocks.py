"""Lightweight building blocks and two tiny student networks in PyTorch.

The blocks mirror :mod:`coreprune.mxnet.blocks` attribute for attribute, so a
``state_dict`` key here (``blocks.0.pointwise.weight``) is the structural name
Gluon's ``save_parameters`` writes for the same tensor, except for batch
normalisation, whose leaves PyTorch calls ``weight``/``bias`` and Gluon
``gamma``/``beta`` (PyTorch also keeps a ``num_batches_tracked`` counter that Gluon
has no equivalent of). Their sizes are predicted by :mod:`coreprune.arch`.

* :class:`Fire` -- SqueezeNet: 1x1 squeeze, then 1x1 and 3x3 expands, concatenated.
* :class:`DepthwiseSeparable` -- MobileNet: 3x3 depthwise + BN + ReLU, 1x1 pointwise + BN + ReLU,
  channels thinned by the width multiplier ``alpha``.
* :class:`ChannelShuffle` and :class:`ShuffleUnit` -- ShuffleNet.
* :func:`mobilenet_student` and :func:`squeezenet_student` -- students for 28x28 digits.

The resolution multiplier ``rho`` of MobileNet is not a layer: feed the network
images of ``round(rho * 28)`` pixels (every student ends with global average
pooling, so it takes any input size), and :func:`coreprune.arch.mobilenet_student_cost`
predicts the MACs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from coreprune.arch import (
    MOBILENET_STUDENT_BLOCKS,
    MOBILENET_STUDENT_STEM,
    SQUEEZENET_STUDENT_FIRES,
    SQUEEZENET_STUDENT_STEM,
    scale_channels,
)
from coreprune.errors import CompressionError
from torch import nn

__all__ = [
    "Fire",
    "DepthwiseSeparable",
    "ChannelShuffle",
    "ShuffleUnit",
    "MobileNetStudent",
    "SqueezeNetStudent",
    "mobilenet_student",
    "squeezenet_student",
    "num_parameters",
]


class Fire(nn.Module):
    """SqueezeNet Fire module: ``relu(squeeze 1x1)`` then ``cat(relu(expand 1x1), relu(expand 3x3))``.

    Input (N, in_channels, H, W) -> output (N, expand1x1 + expand3x3, H, W). All three
    convolutions have biases. Parameters: :func:`coreprune.arch.fire_cost`.

    Examples
    --------
    >>> import torch
    >>> Fire(32, 8, 16, 16)(torch.zeros(2, 32, 7, 7)).shape
    torch.Size([2, 32, 7, 7])
    """

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, kernel_size=1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], dim=1)


class DepthwiseSeparable(nn.Module):
    """MobileNet depthwise-separable block with width multiplier ``alpha``.

    ``relu(bn2(pointwise(relu(bn1(depthwise(x))))))`` where ``depthwise`` is a 3x3
    convolution (padding 1, stride ``stride``, one filter per channel) on
    ``M = round(alpha in_channels)`` channels and ``pointwise`` a 1x1 convolution to
    ``N = round(alpha out_channels)``; no biases (the batch norms have them).
    Input (B, M, H, W) -> output (B, N, ceil(H / stride), ceil(W / stride)).
    Parameters: :func:`coreprune.arch.depthwise_separable_cost` with ``batch_norm=True``.

    Examples
    --------
    >>> import torch
    >>> block = DepthwiseSeparable(32, 64, stride=2, alpha=0.5)
    >>> block(torch.zeros(1, 16, 14, 14)).shape
    torch.Size([1, 32, 7, 7])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, alpha: float = 1.0) -> None:
        super().__init__()
        m = scale_channels(in_channels, alpha)
        n = scale_channels(out_channels, alpha)
        self.depthwise = nn.Conv2d(m, m, kernel_size=3, stride=stride, padding=1, groups=m, bias=False)
        self.bn1 = nn.BatchNorm2d(m)
        self.pointwise = nn.Conv2d(m, n, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.depthwise(x)))
        return F.relu(self.bn2(self.pointwise(x)))


def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c = x.shape[0], x.shape[1]
    if c % groups:
        raise CompressionError(f"groups ({groups}) must divide the {c} channels")
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


class ChannelShuffle(nn.Module):
    """ShuffleNet channel shuffle of (N, C, ...) tensors; the same permutation as
    :func:`coreprune.arch.channel_shuffle` (output channel ``k`` is input channel
    ``(k % g) (C / g) + k // g``).

    Examples
    --------
    >>> import torch
    >>> ChannelShuffle(2)(torch.arange(6.0).reshape(1, 6, 1, 1)).flatten().tolist()
    [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise CompressionError(f"groups must be a positive integer, got {groups!r}")
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class ShuffleUnit(nn.Module):
    """Stride-1 ShuffleNet unit: grouped 1x1, shuffle, 3x3 depthwise, grouped 1x1, residual add.

    ``relu(x + bn3(expand(bn2(depthwise(shuffle(relu(bn1(compress(x)))))))))`` with
    ``compress`` a 1x1 convolution ``channels -> bottleneck_channels`` in ``groups``
    groups and ``expand`` the way back; no biases. Shape-preserving.
    Parameters: :func:`coreprune.arch.shuffle_unit_cost`.

    Examples
    --------
    >>> import torch
    >>> ShuffleUnit(24, 12, groups=3)(torch.zeros(1, 24, 5, 5)).shape
    torch.Size([1, 24, 5, 5])
    """

    def __init__(self, channels: int, bottleneck_channels: int, groups: int) -> None:
        super().__init__()
        self.compress = nn.Conv2d(channels, bottleneck_channels, kernel_size=1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(bottleneck_channels)
        self.shuffle = ChannelShuffle(groups)
        self.depthwise = nn.Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            padding=1,
            groups=bottleneck_channels,
            bias=False,
        )
        self.bn2 = nn.BatchNorm2d(bottleneck_channels)
        self.expand = nn.Conv2d(bottleneck_channels, channels, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle(F.relu(self.bn1(self.compress(x))))
        out = self.bn3(self.expand(self.bn2(self.depthwise(out))))
        return F.relu(out + x)


class MobileNetStudent(nn.Module):
    """A tiny MobileNet: stem 3x3 conv + BN + ReLU, depthwise-separable blocks, global average pool, dense.

    Structure (channels before ``alpha``): ``stem`` 3x3 ``in_channels -> 16`` (padding 1,
    no bias), ``bn``, then ``blocks.0`` 16 -> 32 (stride 1), ``blocks.1`` 32 -> 64
    (stride 2), ``blocks.2`` 64 -> 128 (stride 2) (:data:`coreprune.arch.MOBILENET_STUDENT_BLOCKS`),
    global average pooling and ``classifier`` (dense with bias). Input (N, in_channels, H, W),
    any ``H, W >= 1``; output logits (N, num_classes).

    Examples
    --------
    >>> import torch
    >>> MobileNetStudent(alpha=0.5)(torch.zeros(3, 1, 28, 28)).shape
    torch.Size([3, 10])
    """

    def __init__(self, alpha: float = 1.0, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        stem = scale_channels(MOBILENET_STUDENT_STEM, alpha)
        self.stem = nn.Conv2d(in_channels, stem, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(stem)
        self.blocks = nn.Sequential(
            *(DepthwiseSeparable(m, n, stride, alpha) for m, n, stride in MOBILENET_STUDENT_BLOCKS)
        )
        self.classifier = nn.Linear(scale_channels(MOBILENET_STUDENT_BLOCKS[-1][1], alpha), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.classifier(x.mean(dim=(2, 3)))


class SqueezeNetStudent(nn.Module):
    """A tiny SqueezeNet: stem 3x3 conv, max-pool, two Fire modules, max-pool, a Fire, 1x1 classifier, mean.

    Structure: ``stem`` 3x3 ``in_channels -> 32`` (padding 1, bias) + ReLU, 2x2 max-pool,
    ``fire1`` and ``fire2`` (:data:`coreprune.arch.SQUEEZENET_STUDENT_FIRES`), 2x2 max-pool,
    ``fire3``, ``classifier`` a 1x1 convolution with bias to ``num_classes`` (no ReLU: the
    output are logits), global average pooling. Input (N, in_channels, H, W), ``H, W >= 4``;
    output (N, num_classes).

    Examples
    --------
    >>> import torch
    >>> SqueezeNetStudent()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, SQUEEZENET_STUDENT_STEM, kernel_size=3, padding=1)
        self.fire1 = Fire(*SQUEEZENET_STUDENT_FIRES[0])
        self.fire2 = Fire(*SQUEEZENET_STUDENT_FIRES[1])
        self.fire3 = Fire(*SQUEEZENET_STUDENT_FIRES[2])
        last = SQUEEZENET_STUDENT_FIRES[2][2] + SQUEEZENET_STUDENT_FIRES[2][3]
        self.classifier = nn.Conv2d(last, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem(x)), 2)
        x = F.max_pool2d(self.fire2(self.fire1(x)), 2)
        return self.classifier(self.fire3(x)).mean(dim=(2, 3))


def mobilenet_student(alpha: float = 1.0, num_classes: int = 10, in_channels: int = 1) -> MobileNetStudent:
    """Build the MobileNet student (see :class:`MobileNetStudent`) with width multiplier ``alpha``.

    Its trainable parameter count equals :func:`coreprune.arch.mobilenet_student_cost` ``.params``.

    Examples
    --------
    >>> from coreprune.arch import mobilenet_student_cost
    >>> num_parameters(mobilenet_student(0.5)) == mobilenet_student_cost(0.5).params
    True
    """
    return MobileNetStudent(alpha, num_classes, in_channels)


def squeezenet_student(num_classes: int = 10, in_channels: int = 1) -> SqueezeNetStudent:
    """Build the SqueezeNet student (see :class:`SqueezeNetStudent`).

    Its trainable parameter count equals :func:`coreprune.arch.squeezenet_student_cost` ``.params``.

    Examples
    --------
    >>> from coreprune.arch import squeezenet_student_cost
    >>> num_parameters(squeezenet_student()) == squeezenet_student_cost().params
    True
    """
    return SqueezeNetStudent(num_classes, in_channels)


def num_parameters(module: nn.Module) -> int:
    """Number of trainable scalars of ``module`` (batch-norm running statistics are buffers, not counted).

    Examples
    --------
    >>> from torch import nn
    >>> num_parameters(nn.Linear(4, 3))
    15
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
