"""``build_group_parallel``: the entry point (used by ``shufflenet train --parallel groups`` under torchrun)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from ..distributed import init_distributed
from ..models.alexnet import AlexNet
from ..models.shufflenet_v1 import ShuffleNetV1
from .alexnet import GroupParallelAlexNet
from .comm import ParallelContext
from .modules import CopyToShards, Exchange, GatherChannels
from .shufflenet_v1 import GroupParallelShuffleNetV1

__all__ = ["build_group_parallel", "convert_group_parallel"]


def convert_group_parallel(
    model: nn.Module,
    ctx: ParallelContext,
    dense: str = "split",
    seed: int = 0,
    check_inputs: bool = True,
) -> nn.Module:
    """The group-parallel form of ``model`` for rank ``ctx.rank`` (no communication while converting).

    ``ParallelContext.single()`` gives the one-process form, which needs no process group.
    """
    if isinstance(model, ShuffleNetV1):
        pmodel: nn.Module = GroupParallelShuffleNetV1(model, ctx, dense, seed, check_inputs)
    elif isinstance(model, AlexNet):
        pmodel = GroupParallelAlexNet(model, ctx, dense, seed, check_inputs)
    else:
        raise TypeError(
            f"group parallelism supports ShuffleNetV1 and AlexNet models, not {type(model).__name__}"
        )
    for name, m in pmodel.named_modules():  # name the layers in byte counts and error messages
        if isinstance(m, Exchange | GatherChannels | CopyToShards):
            m.tag = name
    param = next(model.parameters(), None)
    if param is not None:
        pmodel.to(param.device)
    return pmodel.train(model.training)


def build_group_parallel(
    model: nn.Module,
    process_group: dist.ProcessGroup | None = None,
    *,
    dense: str = "split",
    seed: int | None = None,
    check_inputs: bool = True,
) -> nn.Module:
    """Convert a :class:`ShuffleNetV1` (``P`` must divide its ``g``) or a two-group :class:`AlexNet` into its
    group-parallel form on ``process_group`` (default: the whole world), with the same weights.

    Every rank calls it with the same model (same weights: build it with the same seed, or load the same
    file); rank ``r`` keeps the filters of its ``g / P`` groups. Initialises torch.distributed from torchrun's
    environment when needed (:func:`shufflenet.distributed.init_distributed`, with its timeout
    ``SHUFFLENET_DIST_TIMEOUT``). On NCCL, move ``model`` to this rank's GPU first.

    Args:
        dense: ``"split"``: the layers that mix all channels (AlexNet's conv1, conv3 and fc layers, the
            classifier) are column-parallel, each rank computing ``1/P`` of their outputs; ``"replicate"``:
            they run whole on every rank (less communication, ``P`` times their parameters and compute).
            ShuffleNet's stem is always replicated.
        seed: seed of the dropout masks (identical on every rank); default: drawn from torch's RNG on every
            rank (keeping the ranks' RNG states in step) and rank 0's value broadcast.
        check_inputs: check at every forward that all ranks got the same batch (one all-reduce of 4
            numbers) and raise :class:`GroupParallelError` if not.

    Returns:
        A module whose ``forward`` takes the same batch on every rank and returns the full logits on every
        rank; its state dict has the single-device keys with sharded tensors (see
        :func:`shufflenet.parallel.gather_state_dict`).
    """
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ:
            raise RuntimeError(
                "torch.distributed is not initialised and WORLD_SIZE is not set: launch with "
                "`torchrun --nproc-per-node P ...` or call torch.distributed.init_process_group first"
            )
        init_distributed()
    ctx = ParallelContext.from_group(process_group)
    param = next(model.parameters(), None)
    if dist.get_backend(process_group) == "nccl" and (param is None or param.device.type != "cuda"):
        raise ValueError(
            "the NCCL backend needs the model on this rank's GPU: call model.cuda() first"
        )
    if seed is None:
        # drawn on every rank, so that their RNG states stay in step; rank 0's value wins
        box = [int(torch.randint(0, 2**31 - 1, ()).item())]
        src = dist.get_global_rank(process_group, 0) if process_group is not None else 0
        dist.broadcast_object_list(box, src=src, group=process_group)
        seed = box[0]
    return convert_group_parallel(model, ctx, dense, seed, check_inputs)
