"""Depthwise-separable convolution (MobileNet v1, Howard et al. 2017; Xception, Chollet 2017)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .conv_bn_act import ConvBnAct

__all__ = ["DepthwiseSeparableConv2d"]


class DepthwiseSeparableConv2d(nn.Module):
    """``k x k`` depthwise conv (+BN+act) followed by a 1x1 pointwise conv (+BN+act).

    (N, c1, H, W) -> (N, c2, H / stride, W / stride). Weights: ``k*k*c1 + c1*c2`` instead of ``k*k*c1*c2``.
    ``mid_act=False`` drops the activation between the two convolutions (as in Xception).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Module] | None = nn.ReLU,
        mid_norm: bool = True,
        mid_act: bool = True,
    ) -> None:
        super().__init__()
        self.depthwise = ConvBnAct(
            in_channels,
            in_channels,
            kernel_size,
            stride,
            groups=in_channels,
            norm_layer=norm_layer if mid_norm else None,
            act_layer=act_layer if mid_act else None,
            bias=False,
        )
        self.pointwise = ConvBnAct(
            in_channels, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))
