"""Cost model of lightweight convolutional layers, from their shapes alone, and a NumPy channel shuffle.

Every ``*_cost`` function returns a :class:`Cost`: the number of trainable
**parameters** and the number of **multiply-accumulates** (MACs, one multiply and
one add; "Mult-Adds" in the MobileNet paper) of one forward pass of one sample.

Conventions
-----------
* A convolution with ``M`` input channels, ``N`` output channels, a ``K_h x K_w``
  kernel, ``g`` groups and an ``H x W`` output has ``N * (M / g) * K_h * K_w``
  weights (``+ N`` with a bias) and performs ``N * (M / g) * K_h * K_w * H * W``
  MACs. Bias additions, activations and pooling are not MACs.
* Batch normalisation counts its two trainable vectors (``gamma``, ``beta``:
  ``2 C`` parameters) and 0 MACs: at inference it folds into the preceding
  convolution. Its running mean and variance are statistics, not parameters
  (PyTorch keeps them as buffers, Gluon as ``grad_req='null'`` parameters).
* A dense layer ``in -> out`` has ``in * out (+ out)`` parameters and ``in * out`` MACs.

The closed forms these functions reproduce
-------------------------------------------
* Replacing a 3x3 kernel by a 1x1 kernel (SqueezeNet's first strategy) divides the
  parameters and the MACs of a bias-free convolution by exactly 9.
* A depthwise-separable convolution (MobileNet) costs
  ``K^2 M D^2 + M N D^2`` MACs against ``K^2 M N D^2`` for the standard one: a ratio of
  exactly ``1/N + 1/K^2`` (the parameters keep the same ratio).
* The width multiplier ``alpha`` thins every layer to ``round(alpha * C)`` channels,
  scaling the pointwise MACs and parameters by ``alpha^2`` (the depthwise part by
  ``alpha``); the resolution multiplier ``rho`` shrinks feature maps to
  ``round(rho * D)``, scaling the MACs by ``rho^2`` and leaving parameters unchanged.

The student networks of :mod:`coreprune.torch.blocks` and
:mod:`coreprune.mxnet.blocks` are described here too (their channel plans are the
constants below), so that their predicted size can be checked against what each
framework actually builds.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
from numpy.typing import ArrayLike

from .errors import CompressionError

__all__ = [
    "Cost",
    "scale_channels",
    "scale_resolution",
    "conv_output_size",
    "conv2d_cost",
    "pointwise_cost",
    "depthwise_cost",
    "batchnorm_cost",
    "linear_cost",
    "depthwise_separable_cost",
    "fire_cost",
    "shuffle_unit_cost",
    "channel_shuffle",
    "MOBILENET_STUDENT_STEM",
    "MOBILENET_STUDENT_BLOCKS",
    "SQUEEZENET_STUDENT_STEM",
    "SQUEEZENET_STUDENT_FIRES",
    "mobilenet_student_cost",
    "squeezenet_student_cost",
]

#: An int for a square size/kernel, or ``(height, width)``.
Size = Union[int, Sequence[int]]

#: Output channels of the MobileNet student's stem (3x3 convolution, stride 1, before ``alpha``).
MOBILENET_STUDENT_STEM = 16
#: ``(in_channels, out_channels, stride)`` of the MobileNet student's depthwise-separable blocks,
#: before the width multiplier ``alpha`` is applied.
MOBILENET_STUDENT_BLOCKS: tuple[tuple[int, int, int], ...] = ((16, 32, 1), (32, 64, 2), (64, 128, 2))
#: Output channels of the SqueezeNet student's stem (3x3 convolution with bias, stride 1).
SQUEEZENET_STUDENT_STEM = 32
#: ``(in_channels, squeeze, expand1x1, expand3x3)`` of the SqueezeNet student's Fire modules
#: ``fire1``, ``fire2`` (both after a 2x2 max-pool of the stem) and ``fire3`` (after a second 2x2 max-pool).
SQUEEZENET_STUDENT_FIRES: tuple[tuple[int, int, int, int], ...] = (
    (32, 8, 32, 32),
    (64, 8, 32, 32),
    (64, 16, 64, 64),
)


@dataclass(frozen=True)
class Cost:
    """Trainable parameters and multiply-accumulates of a layer or a network; costs add up.

    Attributes
    ----------
    params : int
        Number of trainable scalars.
    macs : int
        Multiply-accumulates of one forward pass of one sample.

    Examples
    --------
    >>> Cost(10, 100) + Cost(1, 0)
    Cost(params=11, macs=100)
    """

    params: int
    macs: int

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(self.params + other.params, self.macs + other.macs)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise CompressionError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _pair(name: str, value: Size) -> tuple[int, int]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise CompressionError(f"{name} must be an int or a (height, width) pair, got {value!r}")
        return _positive_int(f"{name}[0]", value[0]), _positive_int(f"{name}[1]", value[1])
    v = _positive_int(name, value)
    return v, v


def _multiplier(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CompressionError(f"{name} must be a positive number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0.0):
        raise CompressionError(f"{name} must be finite and > 0, got {value!r}")
    return v


def scale_channels(channels: int, alpha: float) -> int:
    """Channels of a layer thinned by the width multiplier: ``max(1, round(alpha * channels))``.

    ``round`` is Python's (half to even). ``alpha`` is usually in ``(0, 1]`` (MobileNet
    uses 1, 0.75, 0.5, 0.25); values above 1 widen the layer.

    Parameters
    ----------
    channels : int
        The base number of channels, ``>= 1``.
    alpha : float
        Width multiplier, ``> 0``.

    Returns
    -------
    int

    Examples
    --------
    >>> scale_channels(512, 0.75), scale_channels(16, 0.25), scale_channels(3, 0.1)
    (384, 4, 1)
    """
    c = _positive_int("channels", channels)
    return max(1, round(_multiplier("alpha", alpha) * c))


def scale_resolution(size: int, rho: float) -> int:
    """Side of a feature map shrunk by the resolution multiplier: ``max(1, round(rho * size))``.

    Parameters
    ----------
    size : int
        The base height or width, in pixels, ``>= 1``.
    rho : float
        Resolution multiplier, ``> 0``.

    Returns
    -------
    int

    Examples
    --------
    >>> scale_resolution(224, 192 / 224), scale_resolution(14, 0.714)
    (192, 10)
    """
    s = _positive_int("size", size)
    return max(1, round(_multiplier("rho", rho) * s))


def conv_output_size(
    size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """Output height (or width) of a convolution or pooling: ``floor((size + 2p - d(k - 1) - 1) / s) + 1``.

    The floor rule is PyTorch's default and Gluon's ``'valid'`` convention.

    Parameters
    ----------
    size, kernel_size, stride, dilation : int
        Positive integers.
    padding : int
        Zero padding on each side, ``>= 0``.

    Returns
    -------
    int

    Raises
    ------
    CompressionError
        If the kernel does not fit in the padded input.

    Examples
    --------
    >>> conv_output_size(28, 3, stride=2, padding=1), conv_output_size(14, 2, stride=2)
    (14, 7)
    """
    size = _positive_int("size", size)
    k = _positive_int("kernel_size", kernel_size)
    s = _positive_int("stride", stride)
    d = _positive_int("dilation", dilation)
    if isinstance(padding, bool) or not isinstance(padding, numbers.Integral) or padding < 0:
        raise CompressionError(f"padding must be a non-negative integer, got {padding!r}")
    span = size + 2 * int(padding) - d * (k - 1) - 1
    if span < 0:
        raise CompressionError(
            f"kernel {k} (dilation {d}) does not fit an input of {size} padded by {padding}"
        )
    return span // s + 1


def conv2d_cost(
    in_channels: int,
    out_channels: int,
    kernel_size: Size,
    out_size: Size,
    *,
    groups: int = 1,
    bias: bool = False,
) -> Cost:
    """Cost of a 2-D convolution (standard, 1x1 or grouped) from its shapes.

    ``params = N (M / g) K_h K_w (+ N)``, ``MACs = N (M / g) K_h K_w H W``.

    Parameters
    ----------
    in_channels, out_channels : int
        ``M`` and ``N``; both divisible by ``groups``.
    kernel_size : int or (int, int)
        ``K`` or ``(K_h, K_w)``.
    out_size : int or (int, int)
        Output feature map ``H`` (square) or ``(H, W)``.
    groups : int
        ``g``: each output channel sees ``M / g`` input channels.
    bias : bool
        Whether the layer has a bias (adds ``N`` parameters, no MACs).

    Returns
    -------
    Cost

    Raises
    ------
    CompressionError
        On a non-positive size or channels not divisible by ``groups``.

    Examples
    --------
    >>> conv2d_cost(512, 512, 3, 14)
    Cost(params=2359296, macs=462422016)
    >>> conv2d_cost(64, 128, 1, 7, groups=4, bias=True)
    Cost(params=2176, macs=100352)
    """
    m = _positive_int("in_channels", in_channels)
    n = _positive_int("out_channels", out_channels)
    g = _positive_int("groups", groups)
    kh, kw = _pair("kernel_size", kernel_size)
    h, w = _pair("out_size", out_size)
    if m % g or n % g:
        raise CompressionError(
            f"in_channels ({m}) and out_channels ({n}) must both be divisible by groups ({g})"
        )
    weights = n * (m // g) * kh * kw
    return Cost(weights + (n if bias else 0), weights * h * w)


def pointwise_cost(
    in_channels: int, out_channels: int, out_size: Size, *, groups: int = 1, bias: bool = False
) -> Cost:
    """Cost of a 1x1 (pointwise) convolution, optionally grouped (ShuffleNet's 1x1 GConv).

    ``params = N M / g (+ N)``, ``MACs = N M / g H W``.

    Parameters
    ----------
    in_channels, out_channels : int
    out_size : int or (int, int)
    groups : int
    bias : bool

    Returns
    -------
    Cost

    Examples
    --------
    >>> pointwise_cost(512, 512, 14)
    Cost(params=262144, macs=51380224)
    """
    return conv2d_cost(in_channels, out_channels, 1, out_size, groups=groups, bias=bias)


def depthwise_cost(channels: int, kernel_size: Size, out_size: Size, *, bias: bool = False) -> Cost:
    """Cost of a depthwise convolution: one ``K x K`` filter per channel (``groups = channels``).

    ``params = M K^2 (+ M)``, ``MACs = M K^2 H W``.

    Parameters
    ----------
    channels : int
    kernel_size : int or (int, int)
    out_size : int or (int, int)
    bias : bool

    Returns
    -------
    Cost

    Examples
    --------
    >>> depthwise_cost(512, 3, 14)
    Cost(params=4608, macs=903168)
    """
    c = _positive_int("channels", channels)
    return conv2d_cost(c, c, kernel_size, out_size, groups=c, bias=bias)


def batchnorm_cost(channels: int) -> Cost:
    """Cost of a batch normalisation: ``2 C`` trainable parameters (gamma, beta) and 0 MACs.

    The running mean and variance are not trainable and not counted; at inference
    the layer folds into the preceding convolution, hence no MACs.

    Parameters
    ----------
    channels : int

    Returns
    -------
    Cost

    Examples
    --------
    >>> batchnorm_cost(32)
    Cost(params=64, macs=0)
    """
    return Cost(2 * _positive_int("channels", channels), 0)


def linear_cost(in_features: int, out_features: int, *, bias: bool = True) -> Cost:
    """Cost of a dense layer: ``in * out (+ out)`` parameters and ``in * out`` MACs.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool

    Returns
    -------
    Cost

    Examples
    --------
    >>> linear_cost(128, 10)
    Cost(params=1290, macs=1280)
    """
    i = _positive_int("in_features", in_features)
    o = _positive_int("out_features", out_features)
    return Cost(i * o + (o if bias else 0), i * o)


def depthwise_separable_cost(
    in_channels: int,
    out_channels: int,
    kernel_size: Size,
    out_size: Size,
    *,
    alpha: float = 1.0,
    rho: float = 1.0,
    bias: bool = False,
    batch_norm: bool = False,
) -> Cost:
    """Cost of a MobileNet depthwise-separable convolution with width and resolution multipliers.

    A ``K x K`` depthwise convolution on ``M' = round(alpha M)`` channels followed by a
    1x1 convolution to ``N' = round(alpha N)`` channels, on a feature map of
    ``D' = round(rho D)``:

    ``MACs = K^2 M' D'^2 + M' N' D'^2`` (non-square maps use ``D'_h D'_w``),
    ``params = K^2 M' + M' N'`` (+ ``M' + N'`` with biases, + ``2 M' + 2 N'`` with batch norms).

    With ``alpha = rho = 1`` and no bias or batch norm this is
    ``(1/N + 1/K^2)`` times :func:`conv2d_cost` of the same shapes, exactly.

    Parameters
    ----------
    in_channels, out_channels : int
        Base ``M`` and ``N``, before ``alpha``.
    kernel_size : int or (int, int)
        Depthwise kernel ``K``.
    out_size : int or (int, int)
        Base output feature map ``D`` (of the depthwise convolution, after its stride), before ``rho``.
    alpha : float
        Width multiplier ``> 0``.
    rho : float
        Resolution multiplier ``> 0``.
    bias : bool
        Whether both convolutions have biases.
    batch_norm : bool
        Whether each convolution is followed by a batch norm (as in MobileNet and in the
        ``DepthwiseSeparable`` blocks of the adapters).

    Returns
    -------
    Cost

    Examples
    --------
    The 14x14x512 layer of MobileNet's Table 3:

    >>> depthwise_separable_cost(512, 512, 3, 14)
    Cost(params=266752, macs=52283392)
    >>> depthwise_separable_cost(512, 512, 3, 14, alpha=0.75, rho=0.714)
    Cost(params=150912, macs=15091200)
    """
    m = scale_channels(in_channels, alpha)
    n = scale_channels(out_channels, alpha)
    h, w = _pair("out_size", out_size)
    size = (scale_resolution(h, rho), scale_resolution(w, rho))
    cost = depthwise_cost(m, kernel_size, size, bias=bias) + pointwise_cost(m, n, size, bias=bias)
    if batch_norm:
        cost = cost + batchnorm_cost(m) + batchnorm_cost(n)
    return cost


def fire_cost(
    in_channels: int, squeeze: int, expand1x1: int, expand3x3: int, out_size: Size, *, bias: bool = True
) -> Cost:
    """Cost of a SqueezeNet Fire module: a 1x1 squeeze, then parallel 1x1 and 3x3 expands, concatenated.

    With ``s`` squeeze channels, ``e1`` and ``e3`` expand channels on ``M`` inputs:
    ``MACs = H W (M s + s e1 + 9 s e3)`` and
    ``params = M s + s e1 + 9 s e3 (+ s + e1 + e3 with biases)``. The module outputs
    ``e1 + e3`` channels at the input's resolution (the 3x3 expand is padded by 1).

    Parameters
    ----------
    in_channels, squeeze, expand1x1, expand3x3 : int
    out_size : int or (int, int)
        The module's feature map (same as its input).
    bias : bool
        SqueezeNet's convolutions have biases (the default).

    Returns
    -------
    Cost

    Examples
    --------
    ``fire2`` of SqueezeNet v1.0 (96 -> 16 -> 64 + 64 on 55x55):

    >>> fire_cost(96, 16, 64, 64, 55)
    Cost(params=11920, macs=35622400)
    """
    s = _positive_int("squeeze", squeeze)
    return (
        pointwise_cost(in_channels, s, out_size, bias=bias)
        + pointwise_cost(s, expand1x1, out_size, bias=bias)
        + conv2d_cost(s, expand3x3, 3, out_size, bias=bias)
    )


def shuffle_unit_cost(channels: int, bottleneck_channels: int, groups: int, out_size: Size) -> Cost:
    """Cost of a stride-1 ShuffleNet unit with batch norms.

    1x1 grouped convolution ``C -> B`` + BN + ReLU, channel shuffle, 3x3 depthwise
    convolution on ``B`` + BN, 1x1 grouped convolution ``B -> C`` + BN, residual add,
    ReLU; no biases. ``MACs = H W (2 C B / g + 9 B)``,
    ``params = 2 C B / g + 9 B + 2 (2 B + C)``.

    Parameters
    ----------
    channels : int
        ``C``, input and output channels, divisible by ``groups``.
    bottleneck_channels : int
        ``B``, divisible by ``groups``.
    groups : int
        ``g`` of the grouped 1x1 convolutions and of the shuffle.
    out_size : int or (int, int)

    Returns
    -------
    Cost

    Examples
    --------
    >>> shuffle_unit_cost(240, 60, 3, 28)
    Cost(params=10860, macs=7949760)
    """
    b = _positive_int("bottleneck_channels", bottleneck_channels)
    return (
        pointwise_cost(channels, b, out_size, groups=groups)
        + batchnorm_cost(b)
        + depthwise_cost(b, 3, out_size)
        + batchnorm_cost(b)
        + pointwise_cost(b, channels, out_size, groups=groups)
        + batchnorm_cost(channels)
    )


def mobilenet_student_cost(
    alpha: float = 1.0, num_classes: int = 10, *, in_channels: int = 1, input_size: int = 28, rho: float = 1.0
) -> Cost:
    """Cost of the MobileNet student of the adapters (``mobilenet_student``).

    Stem: 3x3 convolution (padding 1, no bias) ``in_channels -> round(alpha 16)`` + BN + ReLU;
    then the :data:`MOBILENET_STUDENT_BLOCKS` depthwise-separable blocks (3x3 depthwise,
    padding 1, BN, ReLU, 1x1, BN, ReLU); global average pooling; a dense classifier
    with bias. The input is ``round(rho input_size)`` pixels square.

    Parameters
    ----------
    alpha : float
        Width multiplier.
    num_classes : int
    in_channels : int
        Image channels (1 for grey digits).
    input_size : int
        Base image side in pixels, before ``rho``.
    rho : float
        Resolution multiplier: the network is fed ``round(rho input_size)``-pixel images.

    Returns
    -------
    Cost

    Examples
    --------
    >>> mobilenet_student_cost(1.0).params, mobilenet_student_cost(0.5).params
    (13898, 4266)
    """
    size = scale_resolution(input_size, rho)
    stem = scale_channels(MOBILENET_STUDENT_STEM, alpha)
    cost = conv2d_cost(_positive_int("in_channels", in_channels), stem, 3, size) + batchnorm_cost(stem)
    for c_in, c_out, stride in MOBILENET_STUDENT_BLOCKS:
        size = conv_output_size(size, 3, stride, 1)
        cost = cost + depthwise_separable_cost(c_in, c_out, 3, size, alpha=alpha, batch_norm=True)
    last = scale_channels(MOBILENET_STUDENT_BLOCKS[-1][1], alpha)
    return cost + linear_cost(last, _positive_int("num_classes", num_classes))


def squeezenet_student_cost(num_classes: int = 10, *, in_channels: int = 1, input_size: int = 28) -> Cost:
    """Cost of the SqueezeNet student of the adapters (``squeezenet_student``).

    Stem: 3x3 convolution (padding 1, bias) ``in_channels -> 32`` + ReLU; 2x2 max-pool;
    ``fire1``, ``fire2``; 2x2 max-pool; ``fire3`` (:data:`SQUEEZENET_STUDENT_FIRES`);
    a 1x1 convolution with bias to ``num_classes`` (SqueezeNet's classifier); global
    average pooling. Pools use the floor rule.

    Parameters
    ----------
    num_classes : int
    in_channels : int
    input_size : int
        Image side in pixels (``>= 4``).

    Returns
    -------
    Cost

    Examples
    --------
    >>> squeezenet_student_cost()
    Cost(params=19050, macs=1994496)
    """
    size = _positive_int("input_size", input_size)
    cost = conv2d_cost(_positive_int("in_channels", in_channels), SQUEEZENET_STUDENT_STEM, 3, size, bias=True)
    size = conv_output_size(size, 2, 2)
    for i, fire in enumerate(SQUEEZENET_STUDENT_FIRES):
        if i == 2:
            size = conv_output_size(size, 2, 2)
        cost = cost + fire_cost(*fire, size)
    last = SQUEEZENET_STUDENT_FIRES[-1][2] + SQUEEZENET_STUDENT_FIRES[-1][3]
    return cost + pointwise_cost(last, _positive_int("num_classes", num_classes), size, bias=True)


def channel_shuffle(x: ArrayLike, groups: int, axis: int = 1) -> np.ndarray:
    """ShuffleNet's channel shuffle: reshape the channels to ``(groups, C/groups)``, transpose, flatten.

    Output channel ``k`` is input channel ``(k % groups) * (C / groups) + k // groups``,
    so each group of the next grouped convolution receives one channel from every
    group of the previous one. Shuffling with ``groups = g`` and then with
    ``groups = C / g`` restores the original order.

    Parameters
    ----------
    x : array_like, e.g. shape (N, C, H, W)
        Any dtype and number of dimensions.
    groups : int
        ``g >= 1``, must divide ``C = x.shape[axis]``.
    axis : int
        The channel axis (1 for NCHW, 0 for a single CHW image).

    Returns
    -------
    numpy.ndarray
        A new array with ``x``'s shape and dtype; ``x`` is not modified.

    Raises
    ------
    CompressionError
        If ``axis`` is out of range or ``groups`` does not divide the channels.

    Examples
    --------
    >>> import numpy as np
    >>> channel_shuffle(np.arange(6).reshape(1, 6, 1, 1), 2).ravel().tolist()
    [0, 3, 1, 4, 2, 5]
    """
    array = np.asarray(x)
    g = _positive_int("groups", groups)
    valid_axis = isinstance(axis, numbers.Integral) and not isinstance(axis, bool)
    if not valid_axis or not -array.ndim <= axis < array.ndim:
        raise CompressionError(f"axis {axis!r} is out of range for an array of shape {array.shape}")
    axis = int(axis) % array.ndim
    c = array.shape[axis]
    if c % g:
        raise CompressionError(f"groups ({g}) must divide the {c} channels on axis {axis}")
    split = array.shape[:axis] + (g, c // g) + array.shape[axis + 1 :]
    out = np.swapaxes(array.reshape(split), axis, axis + 1).reshape(array.shape)
    # With g == 1 or g == C the reshapes are views of the input: copy so the result never aliases it.
    return out.copy() if np.may_share_memory(out, array) else out
