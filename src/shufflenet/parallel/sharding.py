"""Slicing the layers of a model into this rank's share, by output channel.

Each sliced module records, in ``module._group_parallel_shards``, the :class:`ChannelLayout` of every
parameter or buffer it slices along dim 0 (all ranks' indices, so any rank can reassemble the full tensor);
anything not listed is replicated. Parameter names are kept, so the group-parallel model's state dict has the
same keys as the single-device model, with sharded tensors cut to this rank's channels.
"""

from __future__ import annotations

import torch
from torch import nn

from .layout import ChannelLayout

__all__ = [
    "SHARD_ATTR",
    "check_elementwise",
    "conv_input_layout",
    "shard_batch_norm",
    "shard_conv",
    "shard_linear",
]

SHARD_ATTR = "_group_parallel_shards"


def _param(t: torch.Tensor | None, idx: torch.Tensor) -> nn.Parameter | None:
    if t is None:
        return None
    return nn.Parameter(
        t.detach().index_select(0, idx.to(t.device)).clone(), requires_grad=t.requires_grad
    )


def _groups_of(conv: nn.Conv2d, out_index: tuple[int, ...]) -> list[int]:
    """The filter groups covered by ``out_index``, which must list whole groups in order."""
    per = conv.out_channels // conv.groups
    groups = []
    for i in range(0, len(out_index), per):
        chunk = out_index[i : i + per]
        j = chunk[0] // per
        if tuple(chunk) != tuple(range(j * per, (j + 1) * per)):
            raise ValueError(
                f"output channels {list(chunk)[:8]}... of a conv with groups={conv.groups} do not form a "
                "whole filter group: a rank must hold whole groups"
            )
        groups.append(j)
    return groups


def conv_input_layout(conv: nn.Conv2d, out_layout: ChannelLayout) -> ChannelLayout:
    """The input layout a conv sharded by ``out_layout`` reads: replicated for a dense conv, the input
    channels of each rank's groups for a grouped one."""
    if conv.groups == 1 or out_layout.is_replicated:
        return ChannelLayout.replicated(conv.in_channels, out_layout.world_size)
    per_in = conv.in_channels // conv.groups
    parts = []
    for part in out_layout.parts:
        parts.append(
            tuple(c for j in _groups_of(conv, part) for c in range(j * per_in, (j + 1) * per_in))
        )
    return ChannelLayout(conv.in_channels, out_layout.world_size, tuple(parts))


def shard_conv(
    conv: nn.Conv2d, out_layout: ChannelLayout, rank: int, cls: type[nn.Conv2d] = nn.Conv2d
) -> nn.Conv2d:
    """The filters of ``conv`` for this rank's output channels (whole groups; any channels for a dense conv,
    which then becomes column-parallel and reads the full input). A replicated ``out_layout`` copies it."""
    index = out_layout.local(rank)
    if conv.groups == 1 or out_layout.is_replicated:
        groups, in_channels = 1, conv.in_channels
    else:
        groups = len(_groups_of(conv, index))
        in_channels = groups * (conv.in_channels // conv.groups)
    if out_layout.is_replicated:
        groups = conv.groups
    new = cls(
        in_channels,
        len(index),
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device="meta",
    )
    idx = torch.tensor(index, dtype=torch.long)
    new.weight = _param(conv.weight, idx)
    new.bias = _param(conv.bias, idx)
    if not out_layout.is_replicated:
        setattr(new, SHARD_ATTR, {"weight": out_layout, "bias": out_layout})
    return new


def shard_batch_norm(bn: nn.BatchNorm2d, layout: ChannelLayout, rank: int) -> nn.BatchNorm2d:
    """Batch norm of this rank's channels: per-channel statistics, so the sharded layer is exact."""
    if not isinstance(bn, nn.BatchNorm2d) or isinstance(bn, nn.SyncBatchNorm):
        raise TypeError(
            f"group parallelism shards batch norm per channel; {type(bn).__name__} is not nn.BatchNorm2d"
        )
    index = layout.local(rank)
    idx = torch.tensor(index, dtype=torch.long)
    new = nn.BatchNorm2d(
        len(index), bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device="meta"
    )
    shards = {}
    if bn.affine:
        new.weight, new.bias = _param(bn.weight, idx), _param(bn.bias, idx)
        shards.update(weight=layout, bias=layout)
    if bn.track_running_stats:
        new.running_mean = bn.running_mean.index_select(0, idx.to(bn.running_mean.device)).clone()
        new.running_var = bn.running_var.index_select(0, idx.to(bn.running_var.device)).clone()
        new.num_batches_tracked = bn.num_batches_tracked.clone()
        shards.update(running_mean=layout, running_var=layout)
    new.train(bn.training)
    if not layout.is_replicated:
        setattr(new, SHARD_ATTR, shards)
    return new


def shard_linear(
    fc: nn.Linear, out_layout: ChannelLayout, rank: int, cls: type[nn.Linear] = nn.Linear
) -> nn.Linear:
    """Column-parallel linear: this rank's output features, reading all input features (replicated
    ``out_layout``: a copy)."""
    index = out_layout.local(rank)
    idx = torch.tensor(index, dtype=torch.long)
    new = cls(fc.in_features, len(index), bias=fc.bias is not None, device="meta")
    new.weight = _param(fc.weight, idx)
    new.bias = _param(fc.bias, idx)
    if not out_layout.is_replicated:
        setattr(new, SHARD_ATTR, {"weight": out_layout, "bias": out_layout})
    return new


_ELEMENTWISE = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
)


def check_elementwise(module: nn.Module, where: str) -> nn.Module:
    """``module`` if it acts on each element alone (so it runs unchanged on a channel shard), else TypeError."""
    if isinstance(module, _ELEMENTWISE) or (
        isinstance(module, nn.PReLU) and module.num_parameters == 1
    ):
        return module
    raise TypeError(
        f"{where}: {type(module).__name__} is not a known elementwise activation, so it cannot run on a "
        "channel shard; group parallelism supports ReLU-like activations"
    )
