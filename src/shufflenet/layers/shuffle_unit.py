"""The ShuffleNet unit (Zhang et al. 2017, Sec. 3.2, Fig. 2 (b) and (c)).

    x -> 1x1 GConv -> BN -> ReLU -> shuffle -> 3x3 DWConv (stride s) -> BN -> 1x1 GConv -> BN -> branch
    s = 1:  ReLU(x + branch)                     (in_channels == out_channels)
    s = 2:  ReLU(concat(AvgPool3x3/2(x), branch))  (branch has out_channels - in_channels channels)

The shuffle is a fixed channel permutation and the depthwise conv and its BN act per channel, so placing the
shuffle before the depthwise conv (the paper's figure) or after it (Megvii's released code) gives the same
function up to a permutation of the depthwise weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from ..ops.channel_shuffle import ChannelShuffle, ChannelUnshuffle
from ..ops.validate import check_channels_divisible, check_groups_arg, check_positive_int
from .conv_bn_act import ConvBnAct
from .squeeze_excite import SqueezeExcite

__all__ = ["ShuffleUnit", "ShuffleMode", "ShufflePosition"]

ShuffleMode = Literal["shuffle", "unshuffle", "none"]
ShufflePosition = Literal["before_dw", "after_dw"]
_MODES = ("shuffle", "unshuffle", "none")
_POSITIONS = ("before_dw", "after_dw")


class ShuffleUnit(nn.Module):
    """One ShuffleNet v1 unit. Shapes: (N, in, H, W) -> (N, out, H / stride, W / stride).

    Args:
        in_channels: input channels.
        out_channels: output channels of the unit (for ``stride=2``, including the ``in_channels`` of the
            pooled shortcut that is concatenated).
        stride: 1 (residual add) or 2 (concatenation with a 3x3 stride-2 average pool of the input).
        groups: ``g`` of the two pointwise group convolutions.
        bottleneck_channels: width of the depthwise conv; default ``out_channels // 4`` (paper).
        first_grouped: group the first 1x1 conv (the paper leaves it dense in the first unit of stage 2,
            whose input has only 24 channels).
        shuffle: ``"shuffle"`` (paper), ``"unshuffle"`` (the inverse permutation) or ``"none"`` (ablation).
            ``True``/``False`` are accepted for ``"shuffle"``/``"none"``.
        shuffle_position: ``"before_dw"`` (paper, Fig. 2) or ``"after_dw"``.
        se: add squeeze-and-excitation on the branch (the paper's "with SE" variant).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        groups: int = 3,
        bottleneck_channels: int | None = None,
        first_grouped: bool = True,
        shuffle: ShuffleMode | bool = "shuffle",
        shuffle_position: ShufflePosition = "before_dw",
        se: bool = False,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        groups = check_groups_arg(groups)
        if stride not in (1, 2):
            raise ValueError(f"stride={stride!r} must be 1 or 2")
        if isinstance(shuffle, bool):
            shuffle = "shuffle" if shuffle else "none"
        if shuffle not in _MODES:
            raise ValueError(f"shuffle={shuffle!r} must be one of {_MODES}")
        if shuffle_position not in _POSITIONS:
            raise ValueError(f"shuffle_position={shuffle_position!r} must be one of {_POSITIONS}")
        if stride == 1:
            if in_channels != out_channels:
                raise ValueError(
                    f"a stride-1 unit adds its input, so in_channels={in_channels} must equal "
                    f"out_channels={out_channels}"
                )
            branch_channels = out_channels
        else:
            branch_channels = out_channels - in_channels
            if branch_channels <= 0:
                raise ValueError(
                    f"a stride-2 unit concatenates its input, so out_channels={out_channels} must exceed "
                    f"in_channels={in_channels}"
                )
        mid = out_channels // 4 if bottleneck_channels is None else bottleneck_channels
        check_positive_int(mid, "bottleneck_channels")
        first_groups = groups if first_grouped else 1
        check_channels_divisible(in_channels, first_groups, "in_channels")
        check_channels_divisible(mid, groups, "bottleneck_channels")
        check_channels_divisible(branch_channels, groups, "branch output channels")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.groups = groups
        self.shuffle_mode = shuffle
        self.shuffle_position = shuffle_position

        self.compress = ConvBnAct(
            in_channels, mid, 1, groups=first_groups, norm_layer=norm_layer, act_layer=act_layer
        )
        if shuffle == "none" or groups == 1:
            self.shuffle: nn.Module = nn.Identity()
        elif shuffle == "shuffle":
            self.shuffle = ChannelShuffle(groups)
        else:
            self.shuffle = ChannelUnshuffle(groups)
        self.depthwise = ConvBnAct(
            mid, mid, 3, stride, groups=mid, norm_layer=norm_layer, act_layer=None
        )
        self.expand = ConvBnAct(
            mid, branch_channels, 1, groups=groups, norm_layer=norm_layer, act_layer=None
        )
        self.se = SqueezeExcite(branch_channels) if se else nn.Identity()
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.compress(x)  # (N, mid, H, W)
        if self.shuffle_position == "before_dw":
            out = self.shuffle(out)
        out = self.depthwise(out)  # (N, mid, H/s, W/s)
        if self.shuffle_position == "after_dw":
            out = self.shuffle(out)
        out = self.se(self.expand(out))  # (N, branch, H/s, W/s)
        if self.stride == 1:
            return self.act(x + out)
        return self.act(torch.cat([self.shortcut(x), out], dim=1))  # (N, out, H/2, W/2)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, stride={self.stride}, "
            f"groups={self.groups}, shuffle={self.shuffle_mode!r}, "
            f"shuffle_position={self.shuffle_position!r}"
        )
