"""Module forms of the collectives: each one stores its plan (as non-persistent index buffers, so that
``.to(device)`` moves them and the state dict does not change) and delegates to :mod:`.functional`.

``tag`` names the layer in byte counts and error messages; :func:`shufflenet.parallel.build_group_parallel`
sets it to the module's qualified name.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from .comm import GroupParallelError, ParallelContext, collective
from .functional import copy_to_shards, exchange, gather
from .layout import ChannelLayout, plan_exchange

__all__ = [
    "Exchange",
    "GatherChannels",
    "CopyToShards",
    "SelectChannels",
    "InputCheck",
    "convert_layout",
    "GroupParallelModel",
]


def _index(values) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.long)


class Exchange(nn.Module):
    """All-to-all from layout ``src`` to layout ``dst``: (N, |src_r|, *S) -> (N, |dst_r|, *S) on rank r."""

    def __init__(self, src: ChannelLayout, dst: ChannelLayout, ctx: ParallelContext) -> None:
        super().__init__()
        self.src, self.dst, self.ctx, self.tag = src, dst, ctx, ""
        self.plan = plan_exchange(src, dst, ctx.rank)
        order = list(self.plan.recv_order)
        inv = [0] * len(order)
        for i, row in enumerate(order):
            inv[row] = i
        self.register_buffer("send_index", _index(self.plan.send_index), persistent=False)
        self.register_buffer("recv_order", _index(order), persistent=False)
        self.register_buffer("inv_recv_order", _index(inv), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return exchange(
            x, self.send_index, self.recv_order, self.inv_recv_order, self.plan, self.ctx, self.tag
        )

    def extra_repr(self) -> str:
        return (
            f"channels={self.src.channels}, local={len(self.src.local(self.ctx.rank))}->"
            f"{len(self.dst.local(self.ctx.rank))}, sends={self.plan.sent_to_others}, "
            f"receives={self.plan.received_from_others}"
        )


class GatherChannels(nn.Module):
    """All-gather: (N, |src_r|, *S) sharded by ``src`` (a partition) -> (N, C, *S) on every rank.

    ``grad_mode="split"`` when what follows is replicated, ``"sum"`` when it is column-parallel.
    """

    def __init__(self, src: ChannelLayout, ctx: ParallelContext, grad_mode: str = "split") -> None:
        super().__init__()
        if not src.is_partition():
            raise ValueError(
                "gathering needs a layout in which every channel is held by exactly one rank"
            )
        if grad_mode not in ("split", "sum"):
            raise ValueError(f"grad_mode={grad_mode!r} must be 'split' or 'sum'")
        self.src, self.ctx, self.grad_mode, self.tag = src, ctx, grad_mode, ""
        self.max_local = max(len(p) for p in src.parts)
        rows = [0] * src.channels  # rows[c]: row of channel c in the rank-major padded buffer
        for s, part in enumerate(src.parts):
            for i, c in enumerate(part):
                rows[c] = s * self.max_local + i
        self.register_buffer("gather_rows", _index(rows), persistent=False)
        self.register_buffer("local_index", _index(src.local(ctx.rank)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gather(
            x,
            self.gather_rows,
            self.local_index,
            self.max_local,
            self.ctx,
            self.tag,
            self.grad_mode,
        )

    def extra_repr(self) -> str:
        return f"channels={self.src.channels}, grad_mode={self.grad_mode!r}"


class CopyToShards(nn.Module):
    """Identity; all-reduces the gradient (a replicated tensor read by sharded layers)."""

    def __init__(self, ctx: ParallelContext) -> None:
        super().__init__()
        self.ctx, self.tag = ctx, ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return copy_to_shards(x, self.ctx, self.tag)


class SelectChannels(nn.Module):
    """Local channel selection from a replicated tensor: (N, C, *S) -> (N, len(index), *S); no communication."""

    def __init__(self, index) -> None:
        super().__init__()
        self.register_buffer("index", _index(index), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)

    def extra_repr(self) -> str:
        return f"channels={self.index.numel()}"


class InputCheck(nn.Module):
    """Raises :class:`GroupParallelError` unless every rank got the same input batch.

    A group-parallel model fed different batches on different ranks still returns identical logits
    everywhere (they are all-gathered), but trains on a mixture: the check makes that mistake (a
    ``DistributedSampler``, unsynchronised augmentation seeds) loud. Cost: one all-reduce of 4 numbers.
    """

    def __init__(self, ctx: ParallelContext) -> None:
        super().__init__()
        self.ctx, self.tag = ctx, "input check"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ctx.world_size == 1:
            return x
        with torch.no_grad():
            flat = x.detach().flatten(1).double()
            weights = torch.arange(1, flat.shape[0] + 1, device=x.device, dtype=flat.dtype)
            v = torch.stack([flat.sum(), (flat.sum(1) * weights).sum()])  # order-sensitive checksum
            both = torch.cat([v, -v])
            collective(
                self.ctx,
                "all_reduce",
                self.tag,
                2 * (self.ctx.world_size - 1) * 32 // self.ctx.world_size,
                lambda: dist.all_reduce(both, dist.ReduceOp.MAX, group=self.ctx.group),
            )
            if not torch.equal(both[:2], -both[2:]):
                raise GroupParallelError(
                    f"rank {self.ctx.rank}/{self.ctx.world_size}: the ranks got different input batches; a "
                    "group-parallel model needs the same batch on every rank (no DistributedSampler; same "
                    "data-loader and augmentation seeds, or broadcast the batch from rank 0)"
                )
        return x


def convert_layout(
    src: ChannelLayout, dst: ChannelLayout, ctx: ParallelContext, grad_mode: str = "split"
) -> nn.Module:
    """The module that turns ``src`` into ``dst``; ``nn.Identity`` when they are the same.

    Replicated -> sharded is a local selection (put a :class:`CopyToShards` before it);
    sharded -> replicated is a gather (``grad_mode`` as in :class:`GatherChannels`).
    """
    if src.channels != dst.channels:
        raise ValueError(f"cannot convert {src.channels} channels into {dst.channels}")
    if src == dst:
        return nn.Identity()
    if src.is_replicated:
        return SelectChannels(dst.local(ctx.rank))
    if dst.is_replicated:
        return GatherChannels(src, ctx, grad_mode)
    return Exchange(src, dst, ctx)


class GroupParallelModel(nn.Module):
    """Base of the group-parallel forms of a model: ``forward`` is ``forward_head(forward_features(x))``.

    The constructor checks that the world size divides ``model.groups``, copies :attr:`adopted_attrs` and
    ``model_cfg`` from ``model``, adds the input's check (if ``check_inputs``) and gradient reduction, and
    then has the subclass build this rank's shards (:meth:`_build`).
    """

    #: attributes copied from the model
    adopted_attrs: tuple[str, ...] = ()

    def __init__(
        self,
        model: nn.Module,
        ctx: ParallelContext,
        dense: str = "split",
        seed: int = 0,
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        P = ctx.world_size
        if model.groups % P:
            raise ValueError(f"world size P={P} must divide the number of groups g={model.groups}")
        for attr in self.adopted_attrs:
            setattr(self, attr, getattr(model, attr))
        if hasattr(model, "model_cfg"):
            self.model_cfg = copy.deepcopy(model.model_cfg)
        self.parallel_context, self.dense = ctx, dense
        self.input_check = InputCheck(ctx) if check_inputs else nn.Identity()
        self.input_grad = CopyToShards(ctx)  # sums the input batch's gradient, if it has one
        self._build(model, ctx, dense, seed)

    def _build(self, model: nn.Module, ctx: ParallelContext, dense: str, seed: int) -> None:
        """Build this rank's shards of ``model``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
