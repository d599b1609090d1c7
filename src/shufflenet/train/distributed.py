"""Processes and devices: torchrun environment, DDP and group-parallel wrapping, reductions, launching.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`init_distributed` joins the process group:
gloo on CPU, NCCL on CUDA (one GPU per local rank). Every rank trains; only rank 0 (``ctx.is_main``) writes
files. A single process is rank 0 of a world of 1 and every helper here is then a no-op.

Two ways to use several processes (``--parallel``):

- ``ddp``: data parallel. Each rank gets its shard of every batch (``ctx.shard_data``); gradients are
  averaged by DistributedDataParallel; counts and sums are added over ranks (:meth:`DistContext.sum_`).
- ``groups``: model parallel over filter groups, :func:`shufflenet.parallel.build_group_parallel`. Every rank
  gets the *same* batch and computes the channels of its groups; logits, loss and metrics come out identical
  on every rank, so nothing is summed. Saving gathers the full model (a collective); each rank keeps the
  optimiser state of its own shard.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .sync_bn import convert_sync_batchnorm

__all__ = [
    "DistContext",
    "init_distributed",
    "resolve_device",
    "resolve_parallel",
    "wrap_model",
    "unwrap",
    "full_model",
    "load_full_weights",
    "broadcast_object",
    "launch",
]


@dataclasses.dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False
    shard_data: bool = (
        True  # data parallel: one shard of each batch per rank (False: the same batch on all)
    )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def data_rank(self) -> int:
        """This rank's index among the shards of the data (0 when every rank reads the same data)."""
        return self.rank if self.shard_data else 0

    @property
    def data_world(self) -> int:
        return self.world if self.shard_data else 1

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the data shards in place (a no-op unless data parallel); returns ``t``."""
        if self.distributed and self.shard_data:
            dist.all_reduce(t)
        return t

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: this local rank's GPU when CUDA is available, else the CPU; ``cuda`` means this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={name!r} asked for CUDA but torch.cuda.is_available() is False"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def init_distributed(device: str = "auto") -> DistContext:
    """The process context; joins the torchrun process group when there is one (and none is joined yet)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    dev = resolve_device(device, local_rank)
    owns = False
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return DistContext(rank, world, local_rank, local_world, dev, owns)


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


def _group_parallel():
    # imported on demand: torch.distributed collectives are only needed for group-parallel runs
    from .. import parallel

    return parallel


def wrap_model(model: nn.Module, mode: str, sync_bn: bool, ctx: DistContext) -> nn.Module:
    """Move ``model`` to ``ctx.device`` and wrap it for ``mode`` (from :func:`resolve_parallel`)."""
    if mode == "groups":
        return _group_parallel().build_group_parallel(model.to(ctx.device))
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
        return _group_parallel().gather_model(model, dst=0)
    return unwrap(model)


def load_full_weights(model: nn.Module, tensors: dict[str, torch.Tensor], mode: str) -> None:
    """Load a single-device state dict into ``model`` (each rank takes its shard in group-parallel mode)."""
    if mode == "groups":
        _group_parallel().load_full_state_dict(model, tensors)
    else:
        unwrap(model).load_state_dict(tensors)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m shufflenet train ARGV`` in ``nproc`` local processes through torchrun; exit status."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", "shufflenet"]
    )
    args.training_script_args = [
        "train",
        *argv,
    ]  # not parsed by torchrun: --nproc would be ambiguous there
    try:
        run(args)
    except ChildFailedError as e:
        codes = {f.exitcode for f in e.failures.values()}
        return max(codes) if codes and max(codes) > 0 else 1
    return 0
