"""``--parallel``: how training uses several processes (the process group itself: :mod:`shufflenet.distributed`).

- ``ddp``: data parallel. Each rank gets its shard of every batch (``ctx.shard_data``); gradients are
  averaged by DistributedDataParallel; counts and sums are added over ranks (:meth:`DistContext.sum_`).
- ``groups``: model parallel over filter groups, :func:`shufflenet.parallel.build_group_parallel`. Every rank
  gets the *same* batch and computes the channels of its groups; logits, loss and metrics come out identical
  on every rank, so nothing is summed. Saving gathers the full model (a collective); each rank keeps the
  optimiser state of its own shard.

Every rank trains; only rank 0 (``ctx.is_main``) writes files.
"""

from __future__ import annotations

import torch
from torch import nn

from ..distributed import DistContext
from ..parallel import build_group_parallel, gather_model, load_full_state_dict
from .sync_bn import convert_sync_batchnorm

__all__ = ["resolve_parallel", "wrap_model", "unwrap", "full_model", "load_full_weights"]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP or group-parallel wrapper."""
    return getattr(model, "module", model)


def resolve_parallel(parallel: str, ctx: DistContext) -> str:
    """``auto`` -> ``ddp`` under torchrun, else ``none``; checks the mode fits the world."""
    if parallel == "auto":
        return "ddp" if ctx.distributed else "none"
    if parallel == "none" and ctx.distributed:
        raise ValueError(
            f"parallel='none' in a world of {ctx.world} processes would train {ctx.world} separate models; "
            "use --parallel ddp (the default under torchrun) or groups"
        )
    if parallel == "groups" and not ctx.distributed:
        raise ValueError(
            "--parallel groups splits each layer's filter groups over processes: launch several "
            "(--nproc P, or torchrun --nproc-per-node P)"
        )
    if parallel not in ("none", "ddp", "groups"):
        raise ValueError(f"parallel={parallel!r} must be 'auto', 'none', 'ddp' or 'groups'")
    return parallel


def wrap_model(model: nn.Module, mode: str, sync_bn: bool, ctx: DistContext) -> nn.Module:
    """Move ``model`` to ``ctx.device`` and wrap it for ``mode`` (from :func:`resolve_parallel`).

    In ``groups`` mode the process group is the one :func:`shufflenet.distributed.init_distributed` joined
    (with its timeout)."""
    if mode == "groups":
        return build_group_parallel(model.to(ctx.device))
    if sync_bn and ctx.distributed:
        model = convert_sync_batchnorm(model, ctx.device)
    model = model.to(ctx.device)
    if mode == "ddp" and ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model


def full_model(model: nn.Module, mode: str) -> nn.Module | None:
    """The whole single-device model to save: the DDP module, or a group-parallel model gathered on rank 0
    (a collective: every rank calls it; ``None`` on the other ranks)."""
    if mode == "groups":
        return gather_model(model, dst=0)
    return unwrap(model)


def load_full_weights(model: nn.Module, tensors: dict[str, torch.Tensor], mode: str) -> None:
    """Load a single-device state dict into ``model`` (each rank takes its shard in group-parallel mode)."""
    if mode == "groups":
        load_full_state_dict(model, tensors)
    else:
        unwrap(model).load_state_dict(tensors)
