"""Convolution -> batch norm -> activation, the building block of every model here."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import nn

from .group_conv import GroupConv2d

__all__ = ["ConvBnAct"]


class ConvBnAct(nn.Sequential):
    """``conv`` (grouped, no bias) -> ``bn`` -> ``act``; ``act_layer=None`` leaves the output linear.

    Shapes: (N, c1, H, W) -> (N, c2, H / stride, W / stride) with "same" padding.
    The children are named ``conv``, ``bn`` and ``act`` so that deployment code can fold ``bn`` into ``conv``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        padding: int | None = None,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Module] | None = nn.ReLU,
        bias: bool | None = None,
    ) -> None:
        if bias is None:
            bias = norm_layer is None
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv"] = GroupConv2d(
            in_channels, out_channels, kernel_size, stride, groups, padding=padding, bias=bias
        )
        if norm_layer is not None:
            layers["bn"] = norm_layer(out_channels)
        if act_layer is not None:
            layers["act"] = act_layer()
        super().__init__(layers)
        self.in_channels = in_channels
        self.out_channels = out_channels
