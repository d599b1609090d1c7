"""What a training loop does differently with a group-parallel model.

- No DistributedDataParallel wrapper, no DistributedSampler: every rank feeds the **same batch** (same
  sampler seed and augmentation seed on every rank, or load on rank 0 and :func:`broadcast_batch`).
- The logits, the loss and the metrics come out identical on every rank: call ``loss.backward()`` on every
  rank and log from rank 0 only.
- Gradients need no all-reduce: a sharded parameter's gradient is complete on the rank that holds it, and a
  replicated one (ShuffleNet's stem, ``dense="replicate"`` layers) is computed from identical inputs and
  identical upstream gradients on every rank, so it is already the same everywhere. A plain per-rank
  optimizer (SGD, momentum, weight decay: all elementwise) keeps the ranks consistent.
  :func:`sync_replicated_grads` is a safety net for GPU kernels that are not bitwise deterministic.
- Anything that reduces over *all* parameters must reduce over the ranks: use :func:`clip_grad_norm_`
  instead of ``torch.nn.utils.clip_grad_norm_``.
- Checkpoints: :func:`shufflenet.parallel.save_group_parallel` (every rank calls it, rank 0 writes).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from .comm import collective
from .state import _context, shard_layouts

__all__ = [
    "sharded_parameters",
    "replicated_parameters",
    "sync_replicated_grads",
    "clip_grad_norm_",
    "broadcast_batch",
    "replica_divergence",
]


def sharded_parameters(pmodel: nn.Module) -> list[nn.Parameter]:
    """Parameters that hold only this rank's channels."""
    layouts = shard_layouts(pmodel)
    return [p for n, p in pmodel.named_parameters() if n in layouts]


def replicated_parameters(pmodel: nn.Module) -> list[nn.Parameter]:
    """Parameters held whole, and kept identical, on every rank."""
    layouts = shard_layouts(pmodel)
    return [p for n, p in pmodel.named_parameters() if n not in layouts]


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


@torch.no_grad()
def sync_replicated_grads(pmodel: nn.Module) -> None:
    """Average the gradients of the replicated parameters over the ranks (one all-reduce).

    Not needed for correctness on CPU (they are bitwise equal already); use it where non-deterministic
    kernels could make replicas drift. Costs ``2 (P-1)/P`` times the replicated parameters' bytes.
    """
    ctx = _context(pmodel)
    params = [p for p in replicated_parameters(pmodel) if p.grad is not None]
    if ctx.world_size == 1 or not params:
        return
    flat = _flat([p.grad for p in params])
    nbytes = 2 * (ctx.world_size - 1) * flat.numel() * flat.element_size() // ctx.world_size
    collective(
        ctx,
        "all_reduce",
        "sync_replicated_grads",
        nbytes,
        lambda: dist.all_reduce(flat, group=ctx.group),
    )
    flat /= ctx.world_size
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


@torch.no_grad()
def clip_grad_norm_(pmodel: nn.Module, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for a group-parallel model: the norm of the full model's gradient
    (sharded gradients reduced over the ranks, replicated ones counted once); the same on every rank."""
    ctx = _context(pmodel)
    sharded = [p.grad for p in sharded_parameters(pmodel) if p.grad is not None]
    replicated = [p.grad for p in replicated_parameters(pmodel) if p.grad is not None]
    device = next(pmodel.parameters()).device
    inf = math.isinf(norm_type)

    def part(grads: list[torch.Tensor]) -> torch.Tensor:
        if not grads:
            return torch.zeros((), device=device)
        flat = _flat(grads).float().abs()
        return flat.max() if inf else flat.pow(norm_type).sum()

    local = part(sharded).reshape(1)
    if ctx.world_size > 1:
        op = dist.ReduceOp.MAX if inf else dist.ReduceOp.SUM
        collective(
            ctx,
            "all_reduce",
            "clip_grad_norm_",
            2 * (ctx.world_size - 1) * local.element_size() // ctx.world_size,
            lambda: dist.all_reduce(local, op, group=ctx.group),
        )
    rep = part(replicated)
    total = torch.maximum(local[0], rep) if inf else (local[0] + rep).pow(1.0 / norm_type)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in sharded + replicated:
        g.mul_(coef.to(g.dtype))
    return total


def broadcast_batch(*tensors: torch.Tensor, src: int = 0, group=None) -> tuple[torch.Tensor, ...]:
    """Broadcast a batch from rank ``src`` in place, so every rank trains on the same data."""
    for t in tensors:
        dist.broadcast(t, src, group=group)
    return tensors


@torch.no_grad()
def replica_divergence(pmodel: nn.Module, grads: bool = False) -> float:
    """Largest difference between ranks over the replicated parameters (or their gradients): 0.0 when the
    replicas agree. A collective (two all-reduces of the flattened replicated tensors)."""
    ctx = _context(pmodel)
    params = replicated_parameters(pmodel)
    tensors = [(p.grad if grads else p) for p in params]
    tensors = [t for t in tensors if t is not None]
    if ctx.world_size == 1 or not tensors:
        return 0.0
    flat = _flat(tensors).double()
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, dist.ReduceOp.MAX, group=ctx.group)
    dist.all_reduce(lo, dist.ReduceOp.MIN, group=ctx.group)
    return float((hi - lo).max())
