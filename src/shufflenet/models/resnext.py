"""ResNeXt (Xie et al. 2017, arXiv:1611.05431): ResNet bottlenecks whose 3x3 conv is a grouped convolution.

The block is ``1x1 (width) -> 3x3 grouped (cardinality C) -> 1x1 (4 x planes)`` with
``width = planes * base_width / 64 * C``. ResNeXt-50 (32x4d) has 25.0M parameters (25,028,904 at 1000 classes)
and 4.2G multiply-adds at 224x224 (Table 1 of the paper: 4.2 GFLOPs, i.e. multiply-adds).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..layers.conv_bn_act import ConvBnAct
from ._registry import register_model
from ._variant import variant

__all__ = ["ResNeXt", "ResNeXtBottleneck"]


class ResNeXtBottleneck(nn.Module):
    """(N, in, H, W) -> (N, 4 * planes, H / stride, W / stride); grouped 3x3 with ``cardinality`` groups."""

    expansion = 4

    def __init__(
        self, in_channels: int, planes: int, stride: int, cardinality: int, base_width: int
    ) -> None:
        super().__init__()
        width = planes * base_width // 64 * cardinality
        out = planes * self.expansion
        self.conv1 = ConvBnAct(in_channels, width, 1)
        self.conv2 = ConvBnAct(width, width, 3, stride, groups=cardinality)
        self.conv3 = ConvBnAct(width, out, 1, act_layer=None)
        self.downsample = (
            ConvBnAct(in_channels, out, 1, stride, act_layer=None)
            if stride != 1 or in_channels != out
            else nn.Identity()
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv3(self.conv2(self.conv1(x))) + self.downsample(x))


class ResNeXt(nn.Module):
    """ResNeXt. (N, in_chans, H, W) -> logits (N, num_classes).

    Args:
        layers: bottleneck blocks per stage (ResNeXt-50: 3, 4, 6, 3).
        cardinality, base_width: ``C`` and ``d`` of "C x d".
        small_input: 3x3 stride-1 stem without max pool (for 32x32 images).
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        cardinality: int = 32,
        base_width: int = 4,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        stem_channels: int = 64,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        if small_input:
            self.stem = ConvBnAct(in_chans, stem_channels, 3)
            self.pool: nn.Module = nn.Identity()
        else:
            self.stem = ConvBnAct(in_chans, stem_channels, 7, stride=2)
            self.pool = nn.MaxPool2d(3, 2, 1)
        stages = []
        in_ch = stem_channels
        for i, n in enumerate(layers):
            planes = 64 * 2**i
            blocks = []
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                blocks.append(ResNeXtBottleneck(in_ch, planes, stride, cardinality, base_width))
                in_ch = planes * ResNeXtBottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = in_ch
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> (N, num_features, H/32, W/32)."""
        return self.stages(self.pool(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Registered depths, all 32x4d: (name, blocks per stage, description).
VARIANTS = (
    (
        "resnext50_32x4d",
        (3, 4, 6, 3),
        "ResNeXt-50 (32x4d): 25.0M parameters, 4.2G multiply-adds at 224x224.",
    ),
    ("resnext26_32x4d", (2, 2, 2, 2), "A smaller ResNeXt (2 blocks per stage, 32x4d)."),
)


def _register() -> None:
    for name, layers, doc in VARIANTS:
        register_model(variant(ResNeXt, name, doc, layers=layers, cardinality=32, base_width=4))


_register()
