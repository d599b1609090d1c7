"""Network-in-Network for CIFAR-10 (Lin, Chen, Yan 2014) with the "root" filter groups of Deep Roots
(Ioannou, Robertson, Cipolla, Criminisi: "Deep Roots: Improving CNN Efficiency with Hierarchical Filter Groups",
CVPR 2017, Sec. 4.1 and Table 1).

Layout for a 32x32 input (output sides in brackets). Every conv has a bias and is followed by batch norm and
ReLU, except ``conv3c`` whose global average is the logits:

    conv1a 5x5, 192 [32] -> conv1b 1x1, 160 -> conv1c 1x1, 96 -> maxpool 3/2 [16]
    conv2a 5x5, 192 /N groups [16] -> conv2b 1x1, 192 -> conv2c 1x1, 192 -> avgpool 3/2 [8]
    conv3a 3x3, 192 /(N/2) groups [8] -> conv3b 1x1, 192 -> conv3c 1x1, classes -> global average pool

"root-N" gives ``conv2a`` N filter groups and ``conv3a`` N/2 (root-2: conv3a dense); root-1 is the original.
Pools use Caffe's ceil rounding (32 -> 16 -> 8).

Batch norm without a learned scale and shift (``bn_affine=False``, the Caffe ``BatchNorm`` layer): the conv
bias is the shift. With it the parameter counts are those published (Deep Roots Table 1 / the thesis data):

    =========  ==========  ==========================================
    model      parameters  multiply-adds (MACs)
    =========  ==========  ==========================================
    original      966,986  222,486,528  (published 222,487,946)
    root-2        736,586  163,504,128  (published 163,505,546)
    root-4        455,498  123,396,096  (published 123,397,514)
    root-8        314,954  103,342,080  (published 103,343,498)
    root-16       244,682   93,315,072  (published  93,316,490)
    =========  ==========  ==========================================

The published multiply-adds are ours plus 1,418, the number of conv biases: that counter charges one
multiply-add per filter for its bias (the same offset, 10,568 = the biases of AlexNet, separates our AlexNet
counts from the AlexNet figures of the same work).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ..layers.conv_bn_act import ConvBnAct
from ..ops.validate import check_positive_int
from ._registry import register_model
from ._variant import variant

__all__ = ["NIN", "NIN_BLOCKS", "nin_root_groups", "ROOTS"]

# (name, out_channels or None for num_classes, kernel) per block; the first conv of each block is spatial.
NIN_BLOCKS: tuple[tuple[tuple[str, int | None, int], ...], ...] = (
    (("conv1a", 192, 5), ("conv1b", 160, 1), ("conv1c", 96, 1)),
    (("conv2a", 192, 5), ("conv2b", 192, 1), ("conv2c", 192, 1)),
    (("conv3a", 192, 3), ("conv3b", 192, 1), ("conv3c", None, 1)),
)
# Registered root variants (root-32 gives conv3a the 16 groups of the densest correlation panel).
ROOTS = (2, 4, 8, 16, 32)


def nin_root_groups(root: int) -> dict[str, int]:
    """Filter groups per conv of NIN root-``root``: ``conv2a`` gets ``root``, ``conv3a`` ``root // 2``.

    Raises:
        ValueError: unless ``root`` is 1 or an even positive integer.
    """
    root = check_positive_int(root, "root")
    if root != 1 and root % 2:
        raise ValueError(
            f"root={root} must be 1 (the original NIN) or even (conv3a gets root/2 groups)"
        )
    return {"conv2a": root, "conv3a": max(1, root // 2)}


class NIN(nn.Module):
    """Network-in-Network. (N, in_chans, H, W) -> logits (N, num_classes); any H, W >= 5 works.

    Args:
        root: Deep Roots variant: 1 = original, N = ``conv2a`` with N groups and ``conv3a`` with N/2.
        num_classes: outputs of ``conv3c``.
        in_chans: input channels.
        drop_rate: dropout after each of the two pools (the original NIN used 0.5; 0 keeps the counts).
        bn_affine: learn a scale and shift in every batch norm (adds 2 parameters per channel).
        groups: per-conv groups overriding ``root`` (e.g. ``{"conv2b": 2}``) for further experiments.
    """

    def __init__(
        self,
        root: int = 1,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        bn_affine: bool = False,
        groups: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_chans, "in_chans")
        layer_groups = nin_root_groups(root)
        names = {name for block in NIN_BLOCKS for name, _, _ in block}
        for name, g in (groups or {}).items():
            if name not in names:
                raise ValueError(
                    f"groups names an unknown layer {name!r}; layers are {sorted(names)}"
                )
            layer_groups[name] = check_positive_int(g, f"groups[{name!r}]")
        self.root = root
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.layer_groups = dict(layer_groups)
        norm = functools.partial(nn.BatchNorm2d, affine=bn_affine)

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        pools: Sequence[nn.Module] = (
            nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.AvgPool2d(3, 2, ceil_mode=True),
        )
        in_ch = in_chans
        for i, block in enumerate(NIN_BLOCKS):
            for name, out_ch, kernel in block:
                if out_ch is None:  # conv3c: the classifier, built below
                    continue
                groups_here = layer_groups.get(name, 1)
                layers[name] = ConvBnAct(
                    in_ch, out_ch, kernel, groups=groups_here, norm_layer=norm, bias=True
                )
                in_ch = out_ch
            if i < len(pools):
                layers[f"pool{i + 1}"] = pools[i]
                if drop_rate > 0:
                    layers[f"drop{i + 1}"] = nn.Dropout(drop_rate)
        self.features = nn.Sequential(layers)
        self.num_features = in_ch
        self.conv3c = nn.Conv2d(in_ch, num_classes, 1, groups=layer_groups.get("conv3c", 1))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> conv3b output (N, 192, H/4, W/4) (8x8 for 32x32)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(N, 192, h, w) -> (N, num_classes): conv3c then global average; ``pre_logits``: pooled (N, 192)."""
        if pre_logits:
            return self.global_pool(x).flatten(1)
        return self.global_pool(self.conv3c(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def extra_repr(self) -> str:
        return f"root={self.root}, groups={self.layer_groups}"


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    nn.init.normal_(model.conv3c.weight, 0.0, 0.01)


def _register() -> None:
    doc = 'Network-in-Network for CIFAR-10 with batch norm (Deep Roots\' "Orig."), 966,986 parameters.'
    register_model(variant(NIN, "nin_cifar10", doc, root=1))
    for root in ROOTS:
        doc = f"NIN root-{root} (Deep Roots): conv2a with {root} filter groups, conv3a with {root // 2}."
        register_model(variant(NIN, f"nin_root{root}", doc, root=root))


_register()
