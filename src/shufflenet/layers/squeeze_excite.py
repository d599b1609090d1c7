"""Squeeze-and-excitation (Hu et al. 2018): per-channel gates from globally pooled features."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SqueezeExcite"]


class SqueezeExcite(nn.Module):
    """(N, C, H, W) -> (N, C, H, W) scaled by ``sigmoid(fc2(relu(fc1(mean_hw(x)))))``.

    Args:
        channels: ``C``.
        reduction: hidden width is ``max(8, C // reduction)`` (SENet uses 16).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))  # (N, C, 1, 1)
        return x * s
