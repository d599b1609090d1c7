"""Channel shuffle (ShuffleNet, Zhang et al. 2017, Sec. 3.1) and its inverse.

With ``C = g * n`` channels, :func:`channel_shuffle` views the channel axis as ``(g, n)``, transposes it to
``(n, g)`` and flattens it back, so that output channel ``i * g + j`` is input channel ``j * n + i``: every
group of the next grouped convolution receives channels from every group of the previous one.
For 12 channels and 3 groups the output takes input channels ``0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11``.

:func:`channel_unshuffle` is the inverse permutation (view as ``(n, g)``, transpose). It is the convention some
published checkpoints were trained with; it equals ``channel_shuffle(x, C // groups)``.

Both work on any tensor with channels at dim 1 and at least 3 dims, keep the input's memory format
(a channels-last input gives a channels-last output), support autograd, and export to ONNX as
Reshape-Transpose-Reshape with dynamic batch and spatial sizes.

Graph capture: ``torch.export`` traces through both functions. ``torch.fx.symbolic_trace`` records
a call of :class:`ChannelShuffle` / :class:`ChannelUnshuffle` as one ``call_function`` node whose target is
:func:`channel_shuffle` / :func:`channel_unshuffle` with arguments ``(x, groups)``, so FX passes can find the
permutation, and the traced module runs the function itself (argument checks and memory-format handling
included). Called on an FX proxy from elsewhere, the functions trace into view/transpose nodes instead.
"""

from __future__ import annotations

import torch
from torch import nn

from .validate import check_channels_divisible, check_groups_arg, check_positive_int

__all__ = [
    "channel_shuffle",
    "channel_unshuffle",
    "channel_shuffle_indices",
    "ChannelShuffle",
    "ChannelUnshuffle",
]


def _check_input(x: torch.Tensor, groups: int, name: str) -> None:
    if isinstance(x, torch.fx.Proxy):
        # symbolic tracing: the shape is unknown here; the traced module checks real tensors when it runs
        check_groups_arg(groups)
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 3:
        raise ValueError(
            f"{name} expects a tensor of 3 or more dims with channels at dim 1 (N, C, ...), "
            f"got shape {tuple(x.shape)}"
        )
    check_groups_arg(groups)
    check_channels_divisible(x.shape[1], groups, what="channels")


def _is_channels_last(x: torch.Tensor) -> bool:
    """True when the channel dim is the innermost one in memory (channels_last / channels_last_3d).

    Always false for an FX proxy, which has no memory layout to ask about.
    """
    if isinstance(x, torch.fx.Proxy) or x.is_contiguous():
        return False
    perm = (0, *range(2, x.dim()), 1)
    return x.permute(perm).is_contiguous()


def _permute_channels(x: torch.Tensor, outer: int | torch.fx.Proxy) -> torch.Tensor:
    """View channels as (outer, C/outer), swap the two axes, flatten; keeps the memory format."""
    if _is_channels_last(x):
        # (N, *S, C) contiguous view: shuffle the innermost axis, then view back as (N, C, *S).
        perm = (0, *range(2, x.dim()), 1)
        inv = (0, x.dim() - 1, *range(1, x.dim() - 1))
        y = x.permute(perm)  # (N, *S, C)
        y = y.unflatten(-1, (outer, -1)).transpose(-1, -2).flatten(-2)  # (N, *S, C)
        return y.permute(inv)
    y = x.unflatten(1, (outer, -1))  # (N, outer, C/outer, *S)
    return y.transpose(1, 2).flatten(1, 2)  # (N, C, *S)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Shuffle channels across ``groups`` groups.

    Args:
        x: tensor of shape (N, C, *S) with ``C`` divisible by ``groups``.
        groups: number of channel groups ``g``.

    Returns:
        Tensor of the same shape and memory format; output channel ``i * g + j`` is input channel
        ``j * (C // g) + i``.
    """
    _check_input(x, groups, "channel_shuffle")
    if groups == 1:
        return x
    return _permute_channels(x, groups)


def channel_unshuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Inverse of :func:`channel_shuffle`: ``channel_unshuffle(channel_shuffle(x, g), g) == x``.

    Output channel ``j * (C // g) + i`` is input channel ``i * g + j``.
    """
    _check_input(x, groups, "channel_unshuffle")
    if groups == 1:
        return x
    return _permute_channels(x, x.shape[1] // groups)


def channel_shuffle_indices(channels: int, groups: int, inverse: bool = False) -> torch.Tensor:
    """Source channel of every output channel of the shuffle, as a permutation.

    ``channel_shuffle(x, groups) == x[:, idx]`` with ``idx = channel_shuffle_indices(C, groups)``, and
    ``channel_unshuffle(x, groups) == x[:, channel_shuffle_indices(C, groups, inverse=True)]``.
    For 12 channels and 3 groups: ``0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11`` (inverse:
    ``0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11``).

    Args:
        channels: ``C``, divisible by ``groups``.
        groups: ``g``.
        inverse: the permutation of :func:`channel_unshuffle` instead.

    Returns:
        int64 tensor of shape (C,), a permutation of ``0 .. C-1``.
    """
    channels = check_positive_int(channels, "channels")
    groups = check_groups_arg(groups)
    check_channels_divisible(channels, groups, "channels")
    n = channels // groups
    if inverse:
        # unshuffle: output j * n + i reads input i * g + j
        return torch.arange(channels).view(n, groups).t().reshape(-1)
    # shuffle: output i * g + j reads input j * n + i
    return torch.arange(channels).view(groups, n).t().reshape(-1)


# Recorded as single graph nodes by torch.fx.symbolic_trace (see the module docstring).
torch.fx.wrap("channel_shuffle")
torch.fx.wrap("channel_unshuffle")


class ChannelShuffle(nn.Module):
    """Module form of :func:`channel_shuffle`."""

    inverse = False  # as for channel_shuffle_indices(channels, self.groups, self.inverse)

    def __init__(self, groups: int) -> None:
        super().__init__()
        check_groups_arg(groups)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class ChannelUnshuffle(nn.Module):
    """Module form of :func:`channel_unshuffle`."""

    inverse = True  # as for channel_shuffle_indices(channels, self.groups, self.inverse)

    def __init__(self, groups: int) -> None:
        super().__init__()
        check_groups_arg(groups)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_unshuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
