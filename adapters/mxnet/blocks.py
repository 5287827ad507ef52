"""Lightweight building blocks and two tiny student networks in MXNet Gluon.

Every block mirrors :mod:`coreprune.torch.blocks` attribute for attribute, so the
structural names Gluon's ``save_parameters`` writes (``blocks.0.pointwise.weight``)
are the PyTorch ``state_dict`` keys of the same tensors, except for batch
normalisation, whose leaves Gluon calls ``gamma``/``beta`` where PyTorch says
``weight``/``bias`` (PyTorch's extra ``num_batches_tracked`` has no Gluon
counterpart). :data:`TORCH_LEAF_NAMES` spells out that renaming. The blocks are
HybridBlocks, declare ``in_channels``/``in_units`` everywhere (so shapes are known
before initialisation) and are returned uninitialised, as Gluon blocks are: call
``net.initialize(...)``. Their sizes are predicted by :mod:`coreprune.arch`.

* :class:`Fire` -- SqueezeNet: 1x1 squeeze, then 1x1 and 3x3 expands, concatenated.
* :class:`DepthwiseSeparable` -- MobileNet: 3x3 depthwise + BN + ReLU, 1x1 pointwise + BN + ReLU,
  channels thinned by the width multiplier ``alpha``.
* :class:`ChannelShuffle` and :class:`ShuffleUnit` -- ShuffleNet.
* :func:`mobilenet_student` and :func:`squeezenet_student` -- students for 28x28 digits.

MobileNet's resolution multiplier ``rho`` is not a layer: feed ``round(rho * 28)``-pixel
images (the students end with global average pooling).
"""

from __future__ import annotations

import mxnet as mx
from coreprune.arch import (
    MOBILENET_STUDENT_BLOCKS,
    MOBILENET_STUDENT_STEM,
    SQUEEZENET_STUDENT_FIRES,
    SQUEEZENET_STUDENT_STEM,
    scale_channels,
)
from coreprune.errors import CompressionError
from mxnet import gluon
from mxnet.gluon import nn

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
    "TORCH_LEAF_NAMES",
]

#: Gluon batch-norm leaf name -> PyTorch leaf name; every other leaf is spelt the same.
TORCH_LEAF_NAMES = {
    "gamma": "weight",
    "beta": "bias",
    "running_mean": "running_mean",
    "running_var": "running_var",
}


class Fire(gluon.HybridBlock):
    """SqueezeNet Fire module: ``relu(squeeze 1x1)`` then ``concat(relu(expand 1x1), relu(expand 3x3))``.

    Input (N, in_channels, H, W) -> output (N, expand1x1 + expand3x3, H, W). All three
    convolutions have biases. Parameters: :func:`coreprune.arch.fire_cost`.

    Examples
    --------
    >>> import mxnet as mx
    >>> fire = Fire(32, 8, 16, 16); fire.initialize()
    >>> fire(mx.nd.zeros((2, 32, 7, 7))).shape
    (2, 32, 7, 7)
    """

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int, **kwargs) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.squeeze = nn.Conv2D(squeeze, kernel_size=1, in_channels=in_channels)
            self.expand1x1 = nn.Conv2D(expand1x1, kernel_size=1, in_channels=squeeze)
            self.expand3x3 = nn.Conv2D(expand3x3, kernel_size=3, padding=1, in_channels=squeeze)

    def hybrid_forward(self, F, x):
        x = F.relu(self.squeeze(x))
        return F.concat(F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x)), dim=1)


class DepthwiseSeparable(gluon.HybridBlock):
    """MobileNet depthwise-separable block with width multiplier ``alpha``.

    ``relu(bn2(pointwise(relu(bn1(depthwise(x))))))`` where ``depthwise`` is a 3x3
    convolution (padding 1, stride ``stride``, one filter per channel) on
    ``M = round(alpha in_channels)`` channels and ``pointwise`` a 1x1 convolution to
    ``N = round(alpha out_channels)``; no biases (the batch norms have them).
    Input (B, M, H, W) -> output (B, N, ceil(H / stride), ceil(W / stride)).
    Parameters: :func:`coreprune.arch.depthwise_separable_cost` with ``batch_norm=True``.

    Examples
    --------
    >>> import mxnet as mx
    >>> block = DepthwiseSeparable(32, 64, stride=2, alpha=0.5); block.initialize()
    >>> block(mx.nd.zeros((1, 16, 14, 14))).shape
    (1, 32, 7, 7)
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, alpha: float = 1.0, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        m = scale_channels(in_channels, alpha)
        n = scale_channels(out_channels, alpha)
        with self.name_scope():
            self.depthwise = nn.Conv2D(
                m, kernel_size=3, strides=stride, padding=1, groups=m, use_bias=False, in_channels=m
            )
            self.bn1 = nn.BatchNorm(in_channels=m)
            self.pointwise = nn.Conv2D(n, kernel_size=1, use_bias=False, in_channels=m)
            self.bn2 = nn.BatchNorm(in_channels=n)

    def hybrid_forward(self, F, x):
        x = F.relu(self.bn1(self.depthwise(x)))
        return F.relu(self.bn2(self.pointwise(x)))


class ChannelShuffle(gluon.HybridBlock):
    """ShuffleNet channel shuffle of (N, C, H, W) arrays; the same permutation as
    :func:`coreprune.arch.channel_shuffle` (output channel ``k`` is input channel
    ``(k % g) (C / g) + k // g``). ``groups`` must divide ``C``.

    Examples
    --------
    >>> import mxnet as mx
    >>> ChannelShuffle(2)(mx.nd.arange(6).reshape((1, 6, 1, 1))).reshape(-1).asnumpy().tolist()
    [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    """

    def __init__(self, groups: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise CompressionError(f"groups must be a positive integer, got {groups!r}")
        self.groups = groups

    def forward(self, x, *args):
        if isinstance(x, mx.nd.NDArray) and (x.ndim < 2 or x.shape[1] % self.groups):
            raise CompressionError(f"groups ({self.groups}) must divide the channels of shape {x.shape}")
        return super().forward(x, *args)

    def hybrid_forward(self, F, x):
        # (N, C, H, W) -> (N, g, C/g, H, W) -> swap -> (N, C/g, g, H, W) -> (N, C, H, W)
        x = F.reshape(x, shape=(0, -4, self.groups, -1, -2))
        return F.reshape(F.swapaxes(x, dim1=1, dim2=2), shape=(0, -3, -2))

    def __repr__(self) -> str:
        return f"ChannelShuffle(groups={self.groups})"


class ShuffleUnit(gluon.HybridBlock):
    """Stride-1 ShuffleNet unit: grouped 1x1, shuffle, 3x3 depthwise, grouped 1x1, residual add.

    ``relu(x + bn3(expand(bn2(depthwise(shuffle(relu(bn1(compress(x)))))))))`` with
    ``compress`` a 1x1 convolution ``channels -> bottleneck_channels`` in ``groups``
    groups and ``expand`` the way back; no biases. Shape-preserving.
    Parameters: :func:`coreprune.arch.shuffle_unit_cost`.

    Examples
    --------
    >>> import mxnet as mx
    >>> unit = ShuffleUnit(24, 12, groups=3); unit.initialize()
    >>> unit(mx.nd.zeros((1, 24, 5, 5))).shape
    (1, 24, 5, 5)
    """

    def __init__(self, channels: int, bottleneck_channels: int, groups: int, **kwargs) -> None:
        super().__init__(**kwargs)
        b = bottleneck_channels
        with self.name_scope():
            self.compress = nn.Conv2D(b, kernel_size=1, groups=groups, use_bias=False, in_channels=channels)
            self.bn1 = nn.BatchNorm(in_channels=b)
            self.shuffle = ChannelShuffle(groups)
            self.depthwise = nn.Conv2D(b, kernel_size=3, padding=1, groups=b, use_bias=False, in_channels=b)
            self.bn2 = nn.BatchNorm(in_channels=b)
            self.expand = nn.Conv2D(channels, kernel_size=1, groups=groups, use_bias=False, in_channels=b)
            self.bn3 = nn.BatchNorm(in_channels=channels)

    def hybrid_forward(self, F, x):
        out = self.shuffle(F.relu(self.bn1(self.compress(x))))
        out = self.bn3(self.expand(self.bn2(self.depthwise(out))))
        return F.relu(out + x)


class MobileNetStudent(gluon.HybridBlock):
    """A tiny MobileNet: stem 3x3 conv + BN + ReLU, depthwise-separable blocks, global average pool, dense.

    Same structure and structural names as :class:`coreprune.torch.blocks.MobileNetStudent`:
    ``stem`` 3x3 ``in_channels -> 16`` (padding 1, no bias), ``bn``, ``blocks.0`` 16 -> 32
    (stride 1), ``blocks.1`` 32 -> 64 (stride 2), ``blocks.2`` 64 -> 128 (stride 2)
    (channels before ``alpha``), global average pooling, ``classifier`` (dense with bias).
    Input (N, in_channels, H, W); output logits (N, num_classes).

    Examples
    --------
    >>> import mxnet as mx
    >>> net = MobileNetStudent(alpha=0.5); net.initialize()
    >>> net(mx.nd.zeros((3, 1, 28, 28))).shape
    (3, 10)
    """

    def __init__(self, alpha: float = 1.0, num_classes: int = 10, in_channels: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        stem = scale_channels(MOBILENET_STUDENT_STEM, alpha)
        last = scale_channels(MOBILENET_STUDENT_BLOCKS[-1][1], alpha)
        with self.name_scope():
            self.stem = nn.Conv2D(stem, kernel_size=3, padding=1, use_bias=False, in_channels=in_channels)
            self.bn = nn.BatchNorm(in_channels=stem)
            self.blocks = nn.HybridSequential()
            with self.blocks.name_scope():
                for m, n, stride in MOBILENET_STUDENT_BLOCKS:
                    self.blocks.add(DepthwiseSeparable(m, n, stride, alpha))
            self.classifier = nn.Dense(num_classes, in_units=last)

    def hybrid_forward(self, F, x):
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.classifier(F.mean(x, axis=(2, 3)))


class SqueezeNetStudent(gluon.HybridBlock):
    """A tiny SqueezeNet: stem 3x3 conv, max-pool, two Fire modules, max-pool, a Fire, 1x1 classifier, mean.

    Same structure and structural names as :class:`coreprune.torch.blocks.SqueezeNetStudent`:
    ``stem`` 3x3 ``in_channels -> 32`` (padding 1, bias) + ReLU, 2x2 max-pool, ``fire1``,
    ``fire2``, 2x2 max-pool, ``fire3``, ``classifier`` (1x1 convolution with bias to
    ``num_classes``, no ReLU), global average pooling. Input (N, in_channels, H, W),
    ``H, W >= 4``; output (N, num_classes).

    Examples
    --------
    >>> import mxnet as mx
    >>> net = SqueezeNetStudent(); net.initialize()
    >>> net(mx.nd.zeros((2, 1, 28, 28))).shape
    (2, 10)
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        last = SQUEEZENET_STUDENT_FIRES[2][2] + SQUEEZENET_STUDENT_FIRES[2][3]
        with self.name_scope():
            self.stem = nn.Conv2D(SQUEEZENET_STUDENT_STEM, kernel_size=3, padding=1, in_channels=in_channels)
            self.fire1 = Fire(*SQUEEZENET_STUDENT_FIRES[0])
            self.fire2 = Fire(*SQUEEZENET_STUDENT_FIRES[1])
            self.fire3 = Fire(*SQUEEZENET_STUDENT_FIRES[2])
            self.classifier = nn.Conv2D(num_classes, kernel_size=1, in_channels=last)

    def hybrid_forward(self, F, x):
        x = F.Pooling(F.relu(self.stem(x)), kernel=(2, 2), stride=(2, 2), pool_type="max")
        x = F.Pooling(self.fire2(self.fire1(x)), kernel=(2, 2), stride=(2, 2), pool_type="max")
        return F.mean(self.classifier(self.fire3(x)), axis=(2, 3))


def mobilenet_student(alpha: float = 1.0, num_classes: int = 10, in_channels: int = 1) -> MobileNetStudent:
    """Build the (uninitialised) MobileNet student, see :class:`MobileNetStudent`.

    Its trainable parameter count equals :func:`coreprune.arch.mobilenet_student_cost` ``.params``.

    Examples
    --------
    >>> from coreprune.arch import mobilenet_student_cost
    >>> num_parameters(mobilenet_student(0.5)) == mobilenet_student_cost(0.5).params
    True
    """
    return MobileNetStudent(alpha, num_classes, in_channels)


def squeezenet_student(num_classes: int = 10, in_channels: int = 1) -> SqueezeNetStudent:
    """Build the (uninitialised) SqueezeNet student, see :class:`SqueezeNetStudent`.

    Its trainable parameter count equals :func:`coreprune.arch.squeezenet_student_cost` ``.params``.

    Examples
    --------
    >>> from coreprune.arch import squeezenet_student_cost
    >>> num_parameters(squeezenet_student()) == squeezenet_student_cost().params
    True
    """
    return SqueezeNetStudent(num_classes, in_channels)


def num_parameters(block: gluon.Block) -> int:
    """Number of trainable scalars of ``block``: parameters with ``grad_req != 'null'``.

    Batch-norm running statistics are Gluon parameters with ``grad_req='null'`` and are
    not counted (as PyTorch keeps them as buffers). Works before initialisation when
    every shape is declared.

    Examples
    --------
    >>> from mxnet.gluon import nn
    >>> num_parameters(nn.Dense(3, in_units=4))
    15
    """
    total = 0
    for p in block.collect_params().values():
        if p.grad_req != "null":
            size = 1
            for dim in p.shape:
                size *= dim
            total += size
    return total
