"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) with its original two filter groups, and the one-group form.

Layout for a 224x224 input (output sides in brackets); ``/2g`` marks layers split into two filter groups in the
original, one group per GPU:

    conv1 11x11/4, 96 [55] -> LRN -> maxpool 3/2 [27]
    conv2 5x5, 256 /2g [27] -> LRN -> maxpool 3/2 [13]
    conv3 3x3, 384 [13]  (dense: the only conv that mixes the two groups)
    conv4 3x3, 384 /2g [13]
    conv5 3x3, 256 /2g [13] -> maxpool 3/2 [6]
    fc6 4096 -> fc7 4096 -> fc8 classes   (dropout 0.5 before fc6 and fc7)

Two groups: 60,965,224 parameters (the count of the Caffe reference model, bvlc_alexnet) and about 724M
multiply-adds; one group: 62,378,344 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_model
from ._variant import variant

__all__ = ["AlexNet"]


class AlexNet(nn.Module):
    """AlexNet. (N, in_chans, 224, 224) -> (N, num_classes); other sizes >= 63 px work (adaptive pooling).

    Args:
        groups: filter groups of conv2, conv4 and conv5 (2 = the original, 1 = dense).
        lrn: use local response normalisation after conv1 and conv2 (the original does).
    """

    def __init__(
        self,
        groups: int = 2,
        num_classes: int = 1000,
        in_chans: int = 3,
        lrn: bool = True,
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        if groups not in (1, 2):
            raise ValueError(f"groups={groups!r} must be 1 or 2 for AlexNet")
        self.groups = groups
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = 256

        def norm() -> nn.Module:
            return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0) if lrn else nn.Identity()

        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 96, 11, stride=4, padding=2),  # conv1
            nn.ReLU(inplace=True),
            norm(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(96, 256, 5, padding=2, groups=groups),  # conv2
            nn.ReLU(inplace=True),
            norm(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 384, 3, padding=1),  # conv3
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1, groups=groups),  # conv4
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, groups=groups),  # conv5
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self.global_pool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Linear(256 * 6 * 6, 4096),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(4096, 4096),  # fc7
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),  # fc8
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> (N, 256, h, w) (6x6 for 224x224)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)  # (N, 9216)
        if pre_logits:
            return self.classifier[:-1](x)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


register_model(
    variant(
        AlexNet,
        "alexnet_g2",
        "AlexNet with the original two filter groups in conv2, conv4 and conv5.",
        groups=2,
    )
)
register_model(
    variant(AlexNet, "alexnet_g1", "AlexNet with dense (one-group) convolutions.", groups=1)
)
