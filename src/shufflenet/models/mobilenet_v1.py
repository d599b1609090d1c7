"""MobileNet v1 (Howard et al. 2017, arXiv:1704.04861), Table 1: a 3x3 stem and 13 depthwise-separable blocks.

At width 1x and 224x224: 4.2M parameters and 569M multiply-adds (Table 8 of the paper).
Width multiplier ``alpha`` scales every layer; channels are rounded to a multiple of 8 (at least 8).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..layers.conv_bn_act import ConvBnAct
from ..layers.separable import DepthwiseSeparableConv2d
from ._features import feature_info
from ._registry import register_model
from ._variant import variant
from ._width import scaled_channels

__all__ = ["MobileNetV1"]

# (output channels at 1x, stride) of the depthwise-separable blocks, Table 1.
BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class MobileNetV1(nn.Module):
    """MobileNet v1. (N, in_chans, H, W) -> logits (N, num_classes).

    Args:
        width_mult: the paper's ``alpha``.
        small_input: stem stride 1 and the first stride-2 block made stride 1 (for 32x32 images).

    ``feature_info`` describes the maps of ``forward_features(x, return_stages=True)`` (channels,
    reduction, module name; see :mod:`shufflenet.models._features`).
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        drop_rate: float = 0.0,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult={width_mult!r} must be positive")
        self.width_mult = width_mult
        self.num_classes = num_classes
        self.in_chans = in_chans
        stem = scaled_channels(32, width_mult)
        self.stem = ConvBnAct(
            in_chans, stem, 3, stride=1 if small_input else 2, act_layer=act_layer
        )
        blocks = []
        in_ch = stem
        reduction = self.stem.conv.stride[0]
        last_at: dict[int, tuple[int, int]] = {}  # reduction -> (index, channels) of its last block
        for i, (channels_1x, paper_stride) in enumerate(BLOCKS):
            out_ch = scaled_channels(channels_1x, width_mult)
            stride = 1 if (small_input and i == 1) else paper_stride
            blocks.append(DepthwiseSeparableConv2d(in_ch, out_ch, 3, stride, act_layer=act_layer))
            reduction *= stride
            last_at[reduction] = (i, out_ch)
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.num_features = in_ch
        # the three deepest reductions: 8, 16, 32 (2, 4, 8 with small_input)
        stage_ends = sorted(last_at.items())[-3:]
        self._stage_ends = tuple(i for _, (i, _) in stage_ends)
        self.feature_info = [feature_info(c, r, f"blocks.{i}") for r, (i, c) in stage_ends]
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward_features(
        self, x: torch.Tensor, return_stages: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """(N, in_chans, H, W) -> (N, num_features, H/32, W/32) (H/8, W/8 with ``small_input``).

        With ``return_stages=True``: the output of the last block at strides 8, 16 and 32 (2, 4 and 8 with
        ``small_input``), a list of (N, C_i, H/r_i, W/r_i) maps with ``C_i`` and ``r_i`` as in
        :attr:`feature_info`. The last map is the tensor returned without it.
        """
        x = self.stem(x)
        if not return_stages:
            return self.blocks(x)
        maps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self._stage_ends:
                maps.append(x)
        return maps

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Registered widths: (name, width multiplier, multiply-adds, parameters at 224x224), Table 6 of the paper.
VARIANTS = (
    ("mobilenet_v1_x1_0", 1.0, "569M", "4.2M"),
    ("mobilenet_v1_x0_5", 0.5, "149M", "1.3M"),
    ("mobilenet_v1_x0_25", 0.25, "41M", "0.5M"),
)


def _register() -> None:
    for name, width_mult, macs, params in VARIANTS:
        doc = f"MobileNet v1 {width_mult} ({macs} multiply-adds, {params} parameters at 224x224)."
        register_model(variant(MobileNetV1, name, doc, width_mult=width_mult))


_register()
