"""ShuffleNet v1 (Zhang, Zhou, Lin, Sun: "ShuffleNet: An Extremely Efficient Convolutional Neural Network for
Mobile Devices", CVPR 2018, arXiv:1707.01083), Table 1.

Architecture at width 1x, for input 224x224:

    Conv1 3x3/2, 24 ch -> MaxPool 3x3/2 -> Stage2 (4 units) -> Stage3 (8) -> Stage4 (4) -> GlobalPool -> FC

Each stage starts with a stride-2 unit. Stage output widths at 1x (Table 1):
g=1: 144/288/576, g=2: 200/400/800, g=3: 240/480/960, g=4: 272/544/1088, g=8: 384/768/1536.
The first 1x1 conv of the first unit of Stage2 is not grouped (its input has only 24 channels).

Width multiplier ``s`` ("ShuffleNet s x", Table 2) scales the number of filters. Channel rounding rule:
``stage2 = round_half_up(s * C1x / 4g) * 4g``, stages 3 and 4 are 2x and 4x that. The stem grows in
powers of two with the width, as in the released models (12 channels at 0.5x, 24 at 1x and 1.5x, 48 at 2x):
``stem = ceil_to_multiple(max(12, 24 * 2**floor(log2 s)), g)``. For very small ``s`` (below about 0.1),
``stage2`` is raised to the smallest multiple of ``4g`` above ``stem``, since the first stride-2 unit
concatenates its input and must add channels. So every stage width is divisible by ``4g``
(the bottleneck, a quarter of it, stays divisible by ``g``) and the stem by ``g`` (the branch of a stride-2 unit,
``out - in``, stays divisible by ``g``). With this rule the multiply-adds of Table 2 are reproduced
(0.25x: 13M, 0.5x: 38M, 1.5x: 292M, 2x: 524M for g=3), and for g=3 and g=8 the stage widths are those of the
released models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..layers.conv_bn_act import ConvBnAct
from ..layers.shuffle_unit import ShuffleMode, ShufflePosition, ShuffleUnit
from ._features import feature_info
from ._init import init_weights
from ._registry import register_model
from ._variant import variant

__all__ = ["ShuffleNetV1", "shufflenet_v1_channels", "STAGE2_CHANNELS_1X", "WIDTHS"]

# Table 1: output channels of Stage2 at width 1x, per number of groups g.
STAGE2_CHANNELS_1X = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
STAGE_REPEATS = (4, 8, 4)
STEM_CHANNELS_1X = 24
# Table 2 widths, registered as shufflenet_v1_g{g}_x{w}.
WIDTHS = (0.25, 0.5, 1.0, 1.5, 2.0)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def shufflenet_v1_channels(
    groups: int, width_mult: float = 1.0
) -> tuple[int, tuple[int, int, int]]:
    """Stem and stage output channels ``(stem, (c2, c3, c4))`` for ``groups`` and ``width_mult``.

    Raises:
        ValueError: for ``groups`` outside {1, 2, 3, 4, 8} or a non-positive ``width_mult``.
    """
    if isinstance(groups, bool) or groups not in STAGE2_CHANNELS_1X:
        raise ValueError(
            f"groups={groups!r} is not a ShuffleNet v1 configuration; choose one of "
            f"{sorted(STAGE2_CHANNELS_1X)} (or pass stage_channels and stem_channels explicitly)"
        )
    if not isinstance(width_mult, int | float) or isinstance(width_mult, bool) or width_mult <= 0:
        raise ValueError(f"width_mult={width_mult!r} must be a positive number")
    unit = 4 * groups
    stem = max(12, STEM_CHANNELS_1X * 2 ** math.floor(math.log2(width_mult)))
    stem = math.ceil(stem / groups) * groups
    # Stage2's first unit concatenates the stem's channels: it must output more than the stem.
    c2 = max(
        (stem // unit + 1) * unit,
        _round_half_up(width_mult * STAGE2_CHANNELS_1X[groups] / unit) * unit,
    )
    return stem, (c2, 2 * c2, 4 * c2)


class ShuffleNetV1(nn.Module):
    """ShuffleNet v1. (N, in_chans, H, W) -> logits (N, num_classes).

    Args:
        groups: ``g`` of the pointwise group convolutions (1, 2, 3, 4 or 8 for the paper's tables).
        width_mult: the paper's scale factor ``s`` (0.25, 0.5, 1, 1.5, 2 or any positive number).
        num_classes: classifier outputs.
        in_chans: input channels.
        small_input: for 32x32 images (CIFAR): stem stride 1 and no max pool, so the network downsamples
            8x instead of 32x.
        stage_channels, stem_channels, stage_repeats: override the table (e.g. to match other releases).
        shuffle, shuffle_position, se: passed to every :class:`ShuffleUnit` (ablations and variants).
        classifier_bias: the paper's FC has a bias; some releases have none.
        drop_rate: dropout before the classifier.

    ``feature_info`` describes the maps of ``forward_features(x, return_stages=True)`` (channels,
    reduction, module name; see :mod:`shufflenet.models._features`).
    """

    def __init__(
        self,
        groups: int = 3,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        stage_channels: Sequence[int] | None = None,
        stem_channels: int | None = None,
        stage_repeats: Sequence[int] = STAGE_REPEATS,
        shuffle: ShuffleMode | bool = "shuffle",
        shuffle_position: ShufflePosition = "before_dw",
        se: bool = False,
        classifier_bias: bool = True,
        drop_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if stage_channels is None or stem_channels is None:
            default_stem, default_stages = shufflenet_v1_channels(groups, width_mult)
            stage_channels = default_stages if stage_channels is None else stage_channels
            stem_channels = default_stem if stem_channels is None else stem_channels
        if len(stage_channels) != len(stage_repeats):
            raise ValueError(
                f"stage_channels={list(stage_channels)} and stage_repeats={list(stage_repeats)} "
                "must have the same length"
            )
        self.groups = groups
        self.width_mult = width_mult
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.stage_channels = tuple(stage_channels)

        self.stem = ConvBnAct(
            in_chans,
            stem_channels,
            3,
            stride=1 if small_input else 2,
            norm_layer=norm_layer,
            act_layer=act_layer,
        )
        self.pool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        stages = []
        in_ch = stem_channels
        for stage_idx, (out_ch, repeats) in enumerate(zip(stage_channels, stage_repeats)):
            units = []
            for i in range(repeats):
                units.append(
                    ShuffleUnit(
                        in_ch,
                        out_ch,
                        stride=2 if i == 0 else 1,
                        groups=groups,
                        first_grouped=not (stage_idx == 0 and i == 0),
                        shuffle=shuffle,
                        shuffle_position=shuffle_position,
                        se=se,
                        norm_layer=norm_layer,
                        act_layer=act_layer,
                    )
                )
                in_ch = out_ch
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.num_features = in_ch
        # stem and max pool divide by 4 (1 with small_input), every stage's first unit by 2
        first = 1 if small_input else 4
        self.feature_info = [
            feature_info(c, first * 2 ** (i + 1), f"stages.{i}")
            for i, c in enumerate(stage_channels)
        ]
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_ch, num_classes, bias=classifier_bias)
        init_weights(self)

    def forward_features(
        self, x: torch.Tensor, return_stages: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """(N, in_chans, H, W) -> (N, num_features, H/32, W/32) (H/8, W/8 with ``small_input``).

        With ``return_stages=True``: the output of every stage, a list of (N, C_i, H/r_i, W/r_i) maps with
        ``C_i`` and ``r_i`` as in :attr:`feature_info` (strides 8, 16, 32; 2, 4, 8 with ``small_input``),
        for detection and segmentation heads. The last map is the tensor returned without it.
        """
        x = self.pool(self.stem(x))
        if not return_stages:
            return self.stages(x)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(N, num_features, h, w) -> (N, num_classes), or the pooled (N, num_features) if ``pre_logits``."""
        x = self.head_drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _width_tag(width_mult: float) -> str:
    """0.25 -> ``x0_25``, 0.5 -> ``x0_5``, 1.0 -> ``x1_0``, 1.5 -> ``x1_5``."""
    if width_mult < 1:
        return f"x{width_mult:.2f}".rstrip("0").replace(".", "_")
    return f"x{width_mult:.1f}".replace(".", "_")


def _register() -> None:
    for groups in STAGE2_CHANNELS_1X:
        for width_mult in WIDTHS:
            name = f"shufflenet_v1_g{groups}_{_width_tag(width_mult)}"
            doc = f"ShuffleNet v1 {width_mult}x, g={groups} (Zhang et al. 2017, Tables 1-2)."
            register_model(variant(ShuffleNetV1, name, doc, groups=groups, width_mult=width_mult))


_register()
