"""The grouped-convolution family as ``nn.Conv2d`` subclasses that check their arguments.

A grouped convolution with ``g`` groups has ``h * w * c1 * c2 / g`` weights and, per output position,
``h * w * c1 * c2 / g`` multiply-adds: ``1/g`` of the dense convolution. Two special cases have names:

- pointwise group convolution: ``h = w = 1`` (ShuffleNet's GConv);
- depthwise convolution: ``g = c1 = c2`` (one filter per channel).

Padding defaults to "same" for odd kernels (``dilation * (k - 1) // 2``).
"""

from __future__ import annotations

from torch import nn

from ..ops.validate import check_group_conv_args, check_positive_int

__all__ = ["GroupConv2d", "PointwiseGroupConv2d", "DepthwiseConv2d"]


def _same_padding(kernel_size: int, dilation: int) -> int:
    return dilation * (kernel_size - 1) // 2


class GroupConv2d(nn.Conv2d):
    """Grouped 2-D convolution: (N, c1, H, W) -> (N, c2, H', W') with ``groups`` independent filter groups.

    Args:
        in_channels: ``c1``, divisible by ``groups``.
        out_channels: ``c2``, divisible by ``groups``.
        kernel_size: square kernel side ``k``.
        stride: spatial stride.
        groups: ``g``; ``1`` is an ordinary convolution.
        padding: defaults to "same" padding for odd ``k``.
        bias: learn a bias per output channel.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        bias: bool = False,
    ) -> None:
        check_group_conv_args(in_channels, out_channels, groups)
        check_positive_int(kernel_size, "kernel_size")
        check_positive_int(stride, "stride")
        check_positive_int(dilation, "dilation")
        if padding is None:
            padding = _same_padding(kernel_size, dilation)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )


class PointwiseGroupConv2d(GroupConv2d):
    """1x1 grouped convolution (ShuffleNet's "GConv"): ``c1 * c2 / g`` weights."""

    def __init__(
        self, in_channels: int, out_channels: int, groups: int = 1, bias: bool = False
    ) -> None:
        super().__init__(in_channels, out_channels, 1, stride=1, groups=groups, bias=bias)


class DepthwiseConv2d(GroupConv2d):
    """Depthwise convolution: one ``k x k`` filter per channel (``groups = in = out = channels``)."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        bias: bool = False,
    ) -> None:
        check_positive_int(channels, "channels")
        super().__init__(
            channels,
            channels,
            kernel_size,
            stride=stride,
            groups=channels,
            padding=padding,
            dilation=dilation,
            bias=bias,
        )
