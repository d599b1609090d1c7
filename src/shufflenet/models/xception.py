"""Xception (Chollet 2017, arXiv:1610.02357), Fig. 5: entry, middle and exit flows of depthwise-separable
convolutions with residual connections, for 299x299 inputs.

Separable convolutions here have no activation between the depthwise and pointwise parts and no normalisation in
between, as in the paper. At 1000 classes the model has 22,855,952 parameters (the trainable count of the
reference Keras model).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers.conv_bn_act import ConvBnAct
from ..layers.separable import DepthwiseSeparableConv2d
from ._registry import register_model
from ._variant import variant
from ._width import scaled_channels

__all__ = ["Xception", "XceptionBlock"]


def _separable(in_ch: int, out_ch: int) -> DepthwiseSeparableConv2d:
    # depthwise 3x3 -> pointwise 1x1 -> BN, no activation inside (the block places the ReLUs)
    return DepthwiseSeparableConv2d(in_ch, out_ch, 3, mid_norm=False, mid_act=False, act_layer=None)


class XceptionBlock(nn.Module):
    """``reps`` x (ReLU -> separable conv -> BN), then a 3x3 stride-2 max pool if ``stride == 2``, plus a
    shortcut (identity, or 1x1 stride-2 conv + BN). (N, in, H, W) -> (N, out, H / stride, W / stride).

    ``grow_first``: the first separable conv widens to ``out`` (entry flow) rather than the last (exit flow).
    ``start_with_relu=False`` omits the first ReLU (the first entry block follows a ReLU already).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        reps: int,
        stride: int = 1,
        start_with_relu: bool = True,
        grow_first: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for i in range(reps):
            # entry/middle flow widen at the first conv, the exit flow at the last
            nxt = out_channels if grow_first or i == reps - 1 else in_channels
            if i > 0 or start_with_relu:
                layers.append(nn.ReLU())
            layers.append(_separable(ch, nxt))
            ch = nxt
        if stride == 2:
            layers.append(nn.MaxPool2d(3, 2, 1))
        self.body = nn.Sequential(*layers)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ConvBnAct(
                in_channels, out_channels, 1, stride, act_layer=None
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class Xception(nn.Module):
    """Xception. (N, in_chans, H, W) -> logits; 299x299 in the paper, any size >= 71 px works.

    Args:
        middle_blocks: repeats of the middle flow (8 in the paper).
        width_mult: scales every channel count (1.0 = the paper), rounded to a multiple of 8 (at least 8);
            for small experiments.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        middle_blocks: int = 8,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult={width_mult!r} must be positive")

        # the paper's channel counts (Fig. 5), scaled
        ch = {n: scaled_channels(n, width_mult) for n in (32, 64, 128, 256, 728, 1024, 1536, 2048)}
        self.width_mult = width_mult
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.stem = nn.Sequential(
            ConvBnAct(in_chans, ch[32], 3, stride=2, padding=0),
            ConvBnAct(ch[32], ch[64], 3, padding=0),
        )
        blocks = [
            XceptionBlock(ch[64], ch[128], 2, 2, start_with_relu=False),
            XceptionBlock(ch[128], ch[256], 2, 2),
            XceptionBlock(ch[256], ch[728], 2, 2),
        ]
        blocks += [XceptionBlock(ch[728], ch[728], 3, 1) for _ in range(middle_blocks)]
        blocks.append(XceptionBlock(ch[728], ch[1024], 2, 2, grow_first=False))
        self.blocks = nn.Sequential(*blocks)
        self.exit = nn.Sequential(
            _separable(ch[1024], ch[1536]),
            nn.ReLU(),
            _separable(ch[1536], ch[2048]),
            nn.ReLU(),
        )
        self.num_features = ch[2048]
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> (N, num_features, ~H/32, ~W/32)."""
        return self.exit(self.blocks(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Model files written before the width multiplier had its common name pass ``width``.
_RENAMED = {"width": "width_mult"}
register_model(
    variant(Xception, "xception", "Xception as in the paper (22.9M parameters).", _RENAMED)
)
register_model(
    variant(
        Xception,
        "xception_tiny",
        "A small Xception for experiments: quarter width, two middle-flow blocks.",
        _RENAMED,
        width_mult=0.25,
        middle_blocks=2,
    )
)
