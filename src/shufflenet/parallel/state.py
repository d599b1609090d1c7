"""Checkpoints of a group-parallel model are those of the single-device model.

The group-parallel model keeps the single-device state-dict keys; a sharded tensor holds this rank's
channels along dim 0, as recorded by :mod:`.sharding`. :func:`gather_state_dict` reassembles the ordinary
state dict (every rank takes part), :func:`load_full_state_dict` cuts an ordinary one back into this rank's
shard, and :func:`save_group_parallel` writes an ordinary model file with
:func:`shufflenet.model_file.save_model` (so ``load_model``, evaluation and export work unchanged).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model_file import save_model
from ..models import create_model
from .comm import ParallelContext
from .layout import ChannelLayout
from .modules import GatherChannels
from .sharding import SHARD_ATTR

__all__ = [
    "shard_layouts",
    "gather_state_dict",
    "gather_grads",
    "load_full_state_dict",
    "gather_model",
    "save_group_parallel",
]


def _context(pmodel: nn.Module) -> ParallelContext:
    ctx = getattr(pmodel, "parallel_context", None)
    if not isinstance(ctx, ParallelContext):
        raise TypeError(
            f"{type(pmodel).__name__} is not a group-parallel model; build one with "
            "shufflenet.parallel.build_group_parallel"
        )
    return ctx


def shard_layouts(pmodel: nn.Module) -> dict[str, ChannelLayout]:
    """State-dict key -> layout (dim 0) of every sharded tensor; keys not listed are replicated."""
    out = {}
    for prefix, m in pmodel.named_modules():
        for name, layout in getattr(m, SHARD_ATTR, {}).items():
            if getattr(m, name, None) is not None:
                out[f"{prefix}.{name}" if prefix else name] = layout
    return out


@torch.no_grad()
def _gather_dim0(t: torch.Tensor, layout: ChannelLayout, ctx: ParallelContext) -> torch.Tensor:
    gather = GatherChannels(layout, ctx).to(t.device)
    gather.tag = "gather_state_dict"
    return gather(t.unsqueeze(0)).squeeze(0)  # channels at dim 1 for the gather


def _gather(pmodel: nn.Module, tensors: dict[str, torch.Tensor | None], dst: int | None):
    ctx = _context(pmodel)
    layouts = shard_layouts(pmodel)
    out: dict[str, torch.Tensor | None] = {}
    for key, t in tensors.items():  # the same keys in the same order on every rank
        layout = layouts.get(key)
        if layout is not None:
            t = _gather_dim0(t, layout, ctx)
        out[key] = None if t is None else t.detach().clone()
    return out if dst is None or ctx.rank == dst else None


def gather_state_dict(pmodel: nn.Module, dst: int | None = None) -> dict[str, torch.Tensor] | None:
    """The single-device model's state dict, on every rank (``dst=None``) or on rank ``dst`` only (others
    get ``None``). A collective: every rank must call it."""
    return _gather(pmodel, pmodel.state_dict(), dst)


def gather_grads(
    pmodel: nn.Module, dst: int | None = None
) -> dict[str, torch.Tensor | None] | None:
    """Full gradients keyed like the single-device model's parameters (a sharded parameter without a
    gradient counts as zeros). A collective."""
    layouts = shard_layouts(pmodel)
    grads = {}
    for name, p in pmodel.named_parameters():
        g = p.grad
        if g is None and name in layouts:
            g = torch.zeros_like(p)
        grads[name] = g
    return _gather(pmodel, grads, dst)


@torch.no_grad()
def load_full_state_dict(
    pmodel: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True
):
    """Load a single-device state dict (e.g. from a model file) into the group-parallel model: each rank
    takes its channels. Returns ``load_state_dict``'s result."""
    ctx = _context(pmodel)
    layouts = shard_layouts(pmodel)
    local = {}
    for key, value in state_dict.items():
        layout = layouts.get(key)
        if layout is not None:
            if value.shape[0] != layout.channels:
                raise ValueError(
                    f"{key}: {tuple(value.shape)} does not fit the model ({layout.channels} channels at dim 0)"
                )
            idx = torch.tensor(layout.local(ctx.rank), dtype=torch.long, device=value.device)
            value = value.index_select(0, idx)
        local[key] = value
    return pmodel.load_state_dict(local, strict=strict)


def gather_model(pmodel: nn.Module, dst: int | None = 0) -> nn.Module | None:
    """The ordinary single-device model (rebuilt from ``model_cfg`` with the gathered weights) on rank
    ``dst`` (every rank if ``None``); ``None`` elsewhere. A collective."""
    cfg = getattr(pmodel, "model_cfg", None)
    if not cfg:
        raise ValueError(
            "the group-parallel model has no model_cfg (build the original with shufflenet.create_model), "
            "so it cannot rebuild the single-device model; use gather_state_dict instead"
        )
    state = gather_state_dict(pmodel, dst)
    if state is None:
        return None
    model = create_model(cfg["arch"], **cfg.get("kwargs", {}))
    model.load_state_dict(state)
    return model.train(pmodel.training)


def save_group_parallel(
    path: str | os.PathLike[str], pmodel: nn.Module, dst: int = 0, **save_kwargs: Any
) -> Path | None:
    """Save as an ordinary model file (:func:`shufflenet.model_file.save_model`) from rank ``dst``; every
    rank must call it. Returns the path on ``dst``, ``None`` elsewhere."""
    model = gather_model(pmodel, dst)
    return None if model is None else save_model(path, model, **save_kwargs)
