"""ShuffleNet v2 (Ma, Zhang, Zheng, Sun: "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design", ECCV 2018, arXiv:1807.11164), Table 5.

    Conv1 3x3/2 (24) -> MaxPool 3x3/2 -> Stage2 (4 units) -> Stage3 (8) -> Stage4 (4) -> Conv5 1x1 -> Pool -> FC

Output channels (Conv1, Stage2, Stage3, Stage4, Conv5) per width:

    0.5x: 24, 48, 96, 192, 1024     1x: 24, 116, 232, 464, 1024
    1.5x: 24, 176, 352, 704, 1024   2x: 24, 244, 488, 976, 2048

The unit (Fig. 3 (c) and (d)). Stride 1: split the channels in two halves, keep the first, send the second
through 1x1 conv -> BN -> ReLU -> 3x3 DW conv -> BN -> 1x1 conv -> BN -> ReLU, concatenate, shuffle with 2
groups. Stride 2: both halves see the whole input; the left branch is 3x3 DW conv/2 -> BN -> 1x1 conv -> BN -> ReLU.

Module and parameter names follow torchvision's ``shufflenet_v2_x*`` (``conv1.0``, ``stage2.0.branch2.3``,
``conv5.1``, ``fc``), so torchvision state dicts load unchanged::

    model = create_model("shufflenet_v2_x1_0", weights="shufflenetv2_x1-5666bf0f80.pth")

Those weights expect RGB in [0, 1] normalised with the ImageNet mean and std (the default ``InputSpec``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..layers.group_conv import DepthwiseConv2d, GroupConv2d, PointwiseGroupConv2d
from ..ops.channel_shuffle import ChannelShuffle
from ._features import feature_info
from ._init import init_weights
from ._registry import register_model
from ._variant import variant

__all__ = ["ShuffleNetV2", "ShuffleNetV2Unit", "SHUFFLENET_V2_CHANNELS", "STAGE_REPEATS"]

# (conv1, stage2, stage3, stage4, conv5) per width multiplier (paper Table 5).
SHUFFLENET_V2_CHANNELS: dict[float, tuple[int, int, int, int, int]] = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
STAGE_REPEATS = (4, 8, 4)


class ShuffleNetV2Unit(nn.Module):
    """One ShuffleNet v2 unit. (N, in, H, W) -> (N, out, H / stride, W / stride).

    Children (named as torchvision's ``InvertedResidual``): ``branch1`` (stride 2 only) and ``branch2``,
    ``nn.Sequential`` of convolutions, batch norms and activations, and ``shuffle`` (no parameters).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride={stride!r} must be 1 or 2")
        if out_channels % 2:
            raise ValueError(
                f"out_channels={out_channels} must be even (two branches of equal width)"
            )
        branch = out_channels // 2
        if stride == 1 and in_channels != out_channels:
            raise ValueError(
                f"a stride-1 unit splits its input in two halves, so in_channels={in_channels} must equal "
                f"out_channels={out_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        if stride == 2:
            self.branch1 = nn.Sequential(
                DepthwiseConv2d(in_channels, 3, stride=2),
                norm_layer(in_channels),
                PointwiseGroupConv2d(in_channels, branch),
                norm_layer(branch),
                act_layer(),
            )
        self.branch2 = nn.Sequential(
            PointwiseGroupConv2d(in_channels if stride == 2 else branch, branch),
            norm_layer(branch),
            act_layer(),
            DepthwiseConv2d(branch, 3, stride=stride),
            norm_layer(branch),
            PointwiseGroupConv2d(branch, branch),
            norm_layer(branch),
            act_layer(),
        )
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            keep, x2 = x.chunk(2, dim=1)  # (N, out/2, H, W) each
            out = torch.cat([keep, self.branch2(x2)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)  # (N, out, H/2, W/2)
        return self.shuffle(out)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, stride={self.stride}"


class ShuffleNetV2(nn.Module):
    """ShuffleNet v2. (N, in_chans, H, W) -> logits (N, num_classes); any input size.

    Args:
        width_mult: 0.5, 1, 1.5 or 2 (the paper's widths); ignored when ``stage_channels`` is given.
        num_classes: classifier outputs.
        in_chans: input channels.
        small_input: for 32x32 images (CIFAR): Conv1 stride 1 and no max pool (8x instead of 32x
            downsampling). Changes no parameter shapes.
        stage_channels: override the table: five widths (Conv1, Stage2, Stage3, Stage4, Conv5).
        stage_repeats: units per stage.
        drop_rate: dropout before the classifier.

    ``feature_info`` describes the maps of ``forward_features(x, return_stages=True)`` (channels,
    reduction, module name; see :mod:`shufflenet.models._features`).
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        stage_channels: Sequence[int] | None = None,
        stage_repeats: Sequence[int] = STAGE_REPEATS,
        drop_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if stage_channels is None:
            if width_mult not in SHUFFLENET_V2_CHANNELS:
                raise ValueError(
                    f"width_mult={width_mult!r} is not one of the paper's widths "
                    f"{sorted(SHUFFLENET_V2_CHANNELS)}; pass stage_channels explicitly"
                )
            stage_channels = SHUFFLENET_V2_CHANNELS[width_mult]
        stage_channels = tuple(int(c) for c in stage_channels)
        if len(stage_channels) != len(stage_repeats) + 2:
            raise ValueError(
                f"stage_channels={list(stage_channels)} needs {len(stage_repeats) + 2} widths "
                f"(conv1, one per stage, conv5) for stage_repeats={list(stage_repeats)}"
            )
        self.width_mult = width_mult
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.stage_channels = stage_channels
        self.stage_repeats = tuple(stage_repeats)

        stem = stage_channels[0]
        self.conv1 = nn.Sequential(
            GroupConv2d(in_chans, stem, 3, stride=1 if small_input else 2),
            norm_layer(stem),
            act_layer(),
        )
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        in_ch = stem
        self.stage_names: tuple[str, ...] = tuple(
            f"stage{i + 2}" for i in range(len(stage_repeats))
        )
        for name, out_ch, repeats in zip(self.stage_names, stage_channels[1:-1], stage_repeats):
            units = [ShuffleNetV2Unit(in_ch, out_ch, 2, norm_layer, act_layer)]
            units += [
                ShuffleNetV2Unit(out_ch, out_ch, 1, norm_layer, act_layer)
                for _ in range(repeats - 1)
            ]
            self.add_module(name, nn.Sequential(*units))
            in_ch = out_ch
        last = stage_channels[-1]
        self.conv5 = nn.Sequential(PointwiseGroupConv2d(in_ch, last), norm_layer(last), act_layer())
        self.num_features = last
        # Conv1 and the max pool divide by 4 (1 with small_input), every stage's first unit by 2; the last
        # stage's map is taken after Conv5
        first = 1 if small_input else 4
        widths = (*stage_channels[1:-2], last)
        modules = (*self.stage_names[:-1], "conv5")
        self.feature_info = [
            feature_info(c, first * 2 ** (i + 1), m)
            for i, (c, m) in enumerate(zip(widths, modules))
        ]
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(last, num_classes)
        init_weights(self)

    def forward_features(
        self, x: torch.Tensor, return_stages: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """(N, in_chans, H, W) -> (N, num_features, H/32, W/32) (H/8, W/8 with ``small_input``).

        With ``return_stages=True``: a list of (N, C_i, H/r_i, W/r_i) maps with ``C_i`` and ``r_i`` as in
        :attr:`feature_info`: the outputs of Stage2 and Stage3 (strides 8 and 16) and, for the last stage,
        Conv5 applied to Stage4 (stride 32; strides 2, 4, 8 with ``small_input``). The last map is the tensor
        returned without it.
        """
        x = self.maxpool(self.conv1(x))
        maps = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            maps.append(x)
        maps[-1] = self.conv5(x)
        return maps if return_stages else maps[-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(N, num_features, h, w) -> (N, num_classes), or the pooled (N, num_features) if ``pre_logits``."""
        x = self.head_drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _register() -> None:
    for width_mult in SHUFFLENET_V2_CHANNELS:
        name = f"shufflenet_v2_x{width_mult:.1f}".replace(".", "_")
        doc = (
            f"ShuffleNet v2 {width_mult}x (Ma et al. 2018, Table 5); loads torchvision's {name} state dict "
            "unchanged."
        )
        register_model(variant(ShuffleNetV2, name, doc, width_mult=width_mult))


_register()
