"""Group-parallel two-group AlexNet, laid out as Krizhevsky et al. (2012, Sec. 3.2, Fig. 2) split it over two
GPUs, generalised to P ranks (P divides the groups):

    conv1 (column-parallel: 96/P kernels per rank) -> ReLU -> LRN (halo of 2 channels from each neighbour)
    -> pool -> conv2 (g/P groups per rank, no communication) -> ReLU -> LRN (halo) -> pool
    -> all-gather -> conv3 (column-parallel, reads all 256 channels: "the kernels of the third layer are
    connected to all kernel maps in the second layer") -> conv4, conv5 (own groups) -> pool
    -> all-gather -> fc6, fc7, fc8 (column-parallel, each preceded by an all-gather) -> all-gather of logits

``dense="replicate"`` instead runs the dense layers (conv1, conv3, fc6-8) whole on every rank. Replicated
layers before the first sharded one (conv1 then) backpropagate each rank's partial gradient and all-reduce
their parameters' gradients, which is smaller than the activation gradient at the boundary.

The conversion walks ``features`` and ``classifier`` layer by layer, carrying the channel layout of the
activation, and puts the collectives in each layer's ``pre``/``post`` (modules without state, so the state
dict keeps the single-device keys).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..models.alexnet import AlexNet
from .comm import ParallelContext
from .functional import allreduce_grads_of
from .layers import HaloLocalResponseNorm, SeededDropout
from .layout import ChannelLayout
from .modules import (
    CopyToShards,
    GatherChannels,
    GroupParallelModel,
    SelectChannels,
    convert_layout,
)
from .sharding import check_elementwise, conv_input_layout, shard_conv, shard_linear

__all__ = ["GroupParallelAlexNet", "ParallelConv2d", "ParallelLinear"]

_PER_CHANNEL = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class _WithCollectives:
    """Mixin for a layer class: ``pre`` and ``post`` collectives (identity until set) around its ``forward``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pre: nn.Module = nn.Identity()
        self.post: nn.Module = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(super().forward(self.pre(x)))


class ParallelConv2d(_WithCollectives, nn.Conv2d):
    """A sharded or replicated conv with its collectives: ``post(conv(pre(x)))``."""


class ParallelLinear(_WithCollectives, nn.Linear):
    """A sharded or replicated linear layer with its collectives: ``post(linear(pre(x)))``."""


class _Converter:
    """Converts a Sequential of convs, linears, pools, LRN, dropout and activations, carrying the layout.

    ``partial`` marks a replicated tensor whose gradient is still partial per rank (it came from a
    ``"sum"`` all-gather): sharded consumers may read it directly, a replicated layer with parameters may not.
    """

    def __init__(self, ctx: ParallelContext, dense: str, seed: int) -> None:
        if dense not in ("split", "replicate"):
            raise ValueError(f"dense={dense!r} must be 'split' or 'replicate'")
        self.ctx, self.dense, self.seed, self.dropouts = ctx, dense, seed, 0
        # replicated layers before the first sharded one: their parameters' gradients get all-reduced
        self.in_prefix, self.prefix_params = True, {}

    def is_parallel(self, m: nn.Module) -> bool:
        return (isinstance(m, nn.Conv2d) and m.groups > 1) or self.dense == "split"

    def first_layer_parallel(self, seq: nn.Sequential) -> bool:
        return next(self.is_parallel(m) for m in seq if isinstance(m, nn.Conv2d | nn.Linear))

    def _pre(
        self, layout: ChannelLayout, partial: bool, need: ChannelLayout, parallel: bool, where: str
    ):
        if not layout.is_replicated:
            return convert_layout(layout, need, self.ctx, "sum" if parallel else "split")
        if not parallel:
            if partial:
                raise AssertionError(f"{where}: a replicated layer would see a partial gradient")
            return nn.Identity()
        mods = [] if partial else [CopyToShards(self.ctx)]
        if not need.is_replicated:
            mods.append(SelectChannels(need.local(self.ctx.rank)))
        return nn.Sequential(*mods) if mods else nn.Identity()

    def convert(self, seq: nn.Sequential, layout: ChannelLayout, partial: bool, where: str):
        """-> (converted Sequential, output layout, layouts after each module)."""
        P, r = self.ctx.world_size, self.ctx.rank
        out, layouts = nn.Sequential(), []
        for name, m in seq.named_children():
            here = f"{where}.{name}"
            if isinstance(m, nn.Conv2d | nn.Linear):
                parallel = self.is_parallel(m)
                n_out = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
                out_layout = (
                    ChannelLayout.blocks(n_out, P)
                    if parallel
                    else ChannelLayout.replicated(n_out, P)
                )
                if isinstance(m, nn.Conv2d):
                    need = conv_input_layout(m, out_layout)
                    new = shard_conv(m, out_layout, r, cls=ParallelConv2d)
                else:
                    need = ChannelLayout.replicated(m.in_features, P)
                    new = shard_linear(m, out_layout, r, cls=ParallelLinear)
                if parallel and self.in_prefix and layout.is_replicated:
                    # the prefix backpropagates partial gradients and sums its parameters' gradients
                    allreduce_grads_of(self.prefix_params, self.ctx)
                    partial = True
                if parallel:
                    self.in_prefix = False
                new.pre = self._pre(layout, partial, need, parallel, here)
                if self.in_prefix:
                    self.prefix_params.update({f"{here}.{n}": p for n, p in new.named_parameters()})
                layout, partial = out_layout, False
            elif isinstance(m, nn.LocalResponseNorm):
                new = (
                    copy.deepcopy(m)
                    if layout.is_replicated
                    else HaloLocalResponseNorm(m, layout, self.ctx)
                )
            elif isinstance(m, nn.Dropout):
                self.dropouts += 1
                seed = self.seed + 1009 * self.dropouts + (0 if layout.is_replicated else 1 + r)
                new = SeededDropout(m.p, seed)
            elif isinstance(m, _PER_CHANNEL):
                new = copy.deepcopy(m)
            else:
                new = copy.deepcopy(check_elementwise(m, here))
            out.add_module(name, new)
            layouts.append(layout)
        return out, layout, layouts


class GroupParallelAlexNet(GroupParallelModel):
    """Group-parallel form of an :class:`AlexNet`; ``forward`` returns the full logits on every rank."""

    adopted_attrs = ("groups", "num_classes", "num_features")

    def _build(self, model: AlexNet, ctx: ParallelContext, dense: str, seed: int) -> None:
        P = ctx.world_size
        conv = _Converter(ctx, dense, seed)
        in_chans = model.features[0].in_channels
        self.features, layout, _ = conv.convert(
            model.features, ChannelLayout.replicated(in_chans, P), False, "features"
        )
        self.feature_layout = layout
        self.global_pool = copy.deepcopy(model.global_pool)
        head_parallel = conv.first_layer_parallel(model.classifier)
        if layout.is_replicated:
            self.head_gather: nn.Module = CopyToShards(ctx) if head_parallel else nn.Identity()
        else:
            self.head_gather = GatherChannels(layout, ctx, "sum" if head_parallel else "split")
        in_features = next(m.in_features for m in model.classifier if isinstance(m, nn.Linear))
        self.classifier, layout, layouts = conv.convert(
            model.classifier, ChannelLayout.replicated(in_features, P), head_parallel, "classifier"
        )
        self.logits_gather = convert_layout(
            layout, ChannelLayout.replicated(layout.channels, P), ctx
        )
        before_last = layouts[-2]
        self.pre_logits_gather = convert_layout(
            before_last, ChannelLayout.replicated(before_last.channels, P), ctx
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W), the same batch on every rank -> this rank's (N, 256/P, h, w) shard."""
        return self.features(self.input_grad(self.input_check(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_gather(self.global_pool(x)).flatten(1)  # (N, 256 * 6 * 6), replicated
        if pre_logits:
            return self.pre_logits_gather(self.classifier[:-1](x))
        return self.logits_gather(self.classifier(x))
