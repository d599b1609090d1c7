"""The classifier head most models here share: global average pool -> dropout -> linear."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PooledLinearClassifier"]


class PooledLinearClassifier(nn.Module):
    """Base of a model whose head is ``global_pool`` -> ``head_drop`` -> ``fc``.

    A subclass builds its body, defines ``forward_features`` ((N, in_chans, H, W) -> (N, num_features, h, w))
    and calls :meth:`_build_head` last; ``forward_head`` and ``forward`` come from here. The children keep the
    names ``global_pool``, ``head_drop`` and ``fc`` (torchvision's names), so state dicts are unchanged.
    """

    def _build_head(
        self, num_features: int, num_classes: int, drop_rate: float = 0.0, bias: bool = True
    ) -> None:
        """Set ``num_features`` and add the head's children (dropout ``drop_rate`` before the classifier)."""
        self.num_features = num_features
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes, bias=bias)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(N, num_features, h, w) -> (N, num_classes), or the pooled (N, num_features) if ``pre_logits``."""
        x = self.head_drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
