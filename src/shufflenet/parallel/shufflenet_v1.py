"""Group-parallel ShuffleNet v1: rank ``r`` of ``P`` holds groups ``[r g/P, (r+1) g/P)`` of every group conv.

Activation layouts (channel indices of the single-device model held by rank ``r``; ``B_r(C)`` is the
``r``-th of ``P`` contiguous blocks of ``C`` channels):

- stem, max pool: replicated (3 input channels; the first unit's 1x1 conv is dense and needs all of them).
  Each rank backpropagates only its part of the stem's output gradient, and the stem's parameter gradients
  are all-reduced (kilobytes, where the output gradient would be megabytes);
- unit input, stride 1: ``B_r(C)`` (the groups of ``compress`` and the residual add agree on it);
- ``compress`` output: ``B_r(mid)``. The shuffle is a relabelling: rank r's data are the shuffled channels
  ``perm^-1[B_r(mid)]``. Depthwise conv and BN act per channel, so they run on that relabelled shard (their
  weights sliced accordingly) and the one all-to-all to ``B_r(mid)``, which ``expand``'s groups read, comes
  after them: at the strided resolution in a stride-2 unit (4x fewer bytes than exchanging before it);
- stride-2 output ``[AvgPool(x) | branch]``: rank r holds its pooled input channels followed by
  ``C_in + B_r(branch)``; the next unit exchanges what its groups need. When ``x`` is replicated (first unit),
  each pooled channel is taken by the rank whose ``B_r(C_out)`` contains it, so that exchange is minimal;
- head: global pooling per channel, an all-gather of the pooled features, then the classifier
  (``dense="split"``: column-parallel, logits all-gathered; ``"replicate"``: every rank computes it).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..layers.shuffle_unit import ShuffleUnit
from ..layers.squeeze_excite import SqueezeExcite
from ..models.shufflenet_v1 import ShuffleNetV1
from .comm import ParallelContext
from .functional import allreduce_grads_of
from .layers import SeededDropout
from .layout import ChannelLayout, shuffle_permutation
from .modules import (
    CopyToShards,
    GatherChannels,
    GroupParallelModel,
    SelectChannels,
    convert_layout,
)
from .sharding import (
    check_elementwise,
    conv_input_layout,
    shard_batch_norm,
    shard_conv,
    shard_linear,
)

__all__ = ["GroupParallelShuffleNetV1", "ParallelShuffleUnit", "ParallelSqueezeExcite"]


def _shard_conv_bn_act(
    block: nn.Sequential, layout: ChannelLayout, rank: int, where: str
) -> nn.Sequential:
    """A ConvBnAct (children conv / bn / act) cut to this rank's output channels ``layout``."""
    out = nn.Sequential()
    for name, child in block.named_children():
        if isinstance(child, nn.Conv2d):
            out.add_module(name, shard_conv(child, layout, rank))
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            out.add_module(name, shard_batch_norm(child, layout, rank))
        else:
            out.add_module(name, copy.deepcopy(check_elementwise(child, f"{where}.{name}")))
    return out


class ParallelSqueezeExcite(nn.Module):
    """SE on a channel shard: pooled (N, C/P) all-gathered, ``fc1`` replicated, ``fc2`` column-parallel."""

    def __init__(self, se: SqueezeExcite, layout: ChannelLayout, ctx: ParallelContext) -> None:
        super().__init__()
        self.pool = copy.deepcopy(se.pool)
        self.gather = GatherChannels(layout, ctx, "split")
        self.fc1 = copy.deepcopy(se.fc1)
        self.act = copy.deepcopy(se.act)
        self.copy = CopyToShards(ctx)
        self.fc2 = shard_conv(se.fc2, layout, ctx.rank)
        self.gate = copy.deepcopy(se.gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.act(self.fc1(self.gather(self.pool(x))))  # (N, hidden, 1, 1), replicated
        return x * self.gate(self.fc2(self.copy(s)))  # (N, C/P, 1, 1) gates for the local channels


class ParallelShuffleUnit(nn.Module):
    """A :class:`ShuffleUnit` on this rank's groups; ``in_layout`` is the layout of its input."""

    def __init__(
        self,
        unit: ShuffleUnit,
        in_layout: ChannelLayout,
        ctx: ParallelContext,
        where: str,
        partial_grad_ok: bool = False,
    ) -> None:
        super().__init__()
        P, r = ctx.world_size, ctx.rank
        self.stride = unit.stride
        mid, branch = unit.compress.out_channels, unit.expand.out_channels
        mid_blocks, branch_blocks = ChannelLayout.blocks(mid, P), ChannelLayout.blocks(branch, P)
        # B_r(C_in) for a grouped compress, replicated for a dense one
        needed = conv_input_layout(unit.compress.conv, mid_blocks)
        # entry: bring x into a layout that both compress and the shortcut can read.
        if in_layout.is_replicated:
            # sharded consumers: all-reduce x's gradient, unless the layers before sum their own gradients
            self.entry: nn.Module = nn.Identity() if partial_grad_ok else CopyToShards(ctx)
            x_layout = in_layout
        elif needed.is_replicated:
            self.entry = GatherChannels(in_layout, ctx, "sum")  # dense, column-parallel compress
            x_layout = needed
        else:
            self.entry = convert_layout(in_layout, needed, ctx)
            x_layout = needed
        self.compress_in = convert_layout(x_layout, needed, ctx)
        self.compress = _shard_conv_bn_act(unit.compress, mid_blocks, r, f"{where}.compress")
        shuffled = mid_blocks.relabel(shuffle_permutation(unit.shuffle, mid))
        dw_layout = shuffled if unit.shuffle_position == "before_dw" else mid_blocks
        self.depthwise = _shard_conv_bn_act(unit.depthwise, dw_layout, r, f"{where}.depthwise")
        if conv_input_layout(unit.expand.conv, branch_blocks) != mid_blocks:
            raise AssertionError("expand's groups must read contiguous blocks of the bottleneck")
        # the channel shuffle: one all-to-all
        self.shuffle = convert_layout(shuffled, mid_blocks, ctx)
        self.expand = _shard_conv_bn_act(unit.expand, branch_blocks, r, f"{where}.expand")
        if isinstance(unit.se, SqueezeExcite):
            self.se: nn.Module = ParallelSqueezeExcite(unit.se, branch_blocks, ctx)
        else:
            self.se = copy.deepcopy(unit.se)
        if unit.stride == 1:
            self.shortcut = convert_layout(x_layout, branch_blocks, ctx)
            self.out_layout = branch_blocks
        else:
            if x_layout.is_replicated:
                # take pooled channel c on the rank that the next unit needs it on
                owner = ChannelLayout.blocks(unit.out_channels, P).owner()
                pooled = ChannelLayout.from_parts(
                    unit.in_channels,
                    [[c for c in range(unit.in_channels) if owner[c] == s] for s in range(P)],
                )
                # pool, then select: a rank may take no pooled channel, and pooling is cheap
                self.shortcut = nn.Sequential(
                    copy.deepcopy(unit.shortcut), SelectChannels(pooled.local(r))
                )
            else:
                pooled = x_layout
                self.shortcut = copy.deepcopy(unit.shortcut)
            self.out_layout = pooled.concat(branch_blocks)
        self.act = copy.deepcopy(check_elementwise(unit.act, f"{where}.act"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(x)
        out = self.depthwise(self.compress(self.compress_in(x)))  # (N, mid/P, H/s, W/s)
        out = self.se(self.expand(self.shuffle(out)))  # (N, branch/P, H/s, W/s)
        if self.stride == 1:
            return self.act(self.shortcut(x) + out)
        return self.act(torch.cat([self.shortcut(x), out], dim=1))


class GroupParallelShuffleNetV1(GroupParallelModel):
    """Group-parallel form of a :class:`ShuffleNetV1`; ``forward`` returns the full logits on every rank.

    ``forward_features`` returns this rank's channel shard of the features (layout ``feature_layout``).
    """

    adopted_attrs = ("groups", "width_mult", "num_classes", "num_features", "stage_channels")

    def _build(self, model: ShuffleNetV1, ctx: ParallelContext, dense: str, seed: int) -> None:
        P, r = ctx.world_size, ctx.rank
        self.stem = copy.deepcopy(model.stem)
        self.pool = copy.deepcopy(model.pool)
        # the stem's output gradient stays partial per rank; its few parameter gradients are all-reduced
        allreduce_grads_of({f"stem.{n}": p for n, p in self.stem.named_parameters()}, ctx)
        layout = ChannelLayout.replicated(model.stem.out_channels, P)
        stages = []
        for i, stage in enumerate(model.stages):
            units = []
            for j, unit in enumerate(stage):
                if unit.groups != model.groups:
                    raise ValueError(
                        f"stages.{i}.{j} has groups={unit.groups}, the model {model.groups}"
                    )
                first = i == 0 and j == 0
                units.append(
                    ParallelShuffleUnit(unit, layout, ctx, f"stages.{i}.{j}", partial_grad_ok=first)
                )
                layout = units[-1].out_layout
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.feature_layout = layout
        self.global_pool = copy.deepcopy(model.global_pool)
        p = model.head_drop.p if isinstance(model.head_drop, nn.Dropout) else 0.0
        self.head_drop = SeededDropout(p, seed) if p > 0 else nn.Identity()
        if dense == "split":
            logits = ChannelLayout.blocks(model.num_classes, P)
            self.head_gather = GatherChannels(layout, ctx, "sum")
            self.fc = shard_linear(model.fc, logits, r)
            self.logits_gather: nn.Module = GatherChannels(logits, ctx, "split")
        elif dense == "replicate":
            self.head_gather = GatherChannels(layout, ctx, "split")
            self.fc = copy.deepcopy(model.fc)
            self.logits_gather = nn.Identity()
        else:
            raise ValueError(f"dense={dense!r} must be 'split' or 'replicate'")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W), the same batch on every rank -> this rank's (N, |feature shard|, h, w)."""
        return self.stages(self.pool(self.stem(self.input_grad(self.input_check(x)))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.head_gather(self.global_pool(x).flatten(1)))  # (N, num_features)
        return x if pre_logits else self.logits_gather(self.fc(x))
