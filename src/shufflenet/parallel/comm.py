"""The process group a group-parallel model runs on, the collectives it uses, and a byte counter.

Every collective goes through :func:`collective`, which

- counts the bytes this rank puts on the wire (see :class:`CommCounter` for the convention), and
- turns a backend failure (a peer that died, a process-group timeout) into :class:`GroupParallelError`
  naming the rank, the collective and the layer, instead of a bare Gloo/NCCL message.

With one process (``world_size == 1``) nothing is sent and nothing is counted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist

from ..distributed import describe_peer_failure

__all__ = ["ParallelContext", "GroupParallelError", "CommCounter", "count_comm", "collective"]


class GroupParallelError(RuntimeError):
    """A collective of the group-parallel model failed: another rank failed, or the group timed out."""


@dataclasses.dataclass(frozen=True)
class ParallelContext:
    """The process group of a group-parallel model: ``rank`` of ``world_size`` in ``group``."""

    rank: int
    world_size: int
    group: dist.ProcessGroup | None = None

    @classmethod
    def from_group(cls, group: dist.ProcessGroup | None = None) -> ParallelContext:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "torch.distributed is not initialised: run under torchrun or call "
                "shufflenet.distributed.init_distributed() / torch.distributed.init_process_group() first"
            )
        return cls(dist.get_rank(group), dist.get_world_size(group), group)

    @classmethod
    def single(cls) -> ParallelContext:
        """One process, no communication (the group-parallel model equals the ordinary one)."""
        return cls(0, 1, None)


@dataclasses.dataclass
class CommRecord:
    op: str  # all_to_all | all_gather | reduce_scatter | all_reduce | broadcast
    tag: str  # the layer that communicated
    phase: str  # forward | backward
    nbytes: int  # bytes this rank sent to other ranks
    seconds: float = 0.0  # wall time in the call, waiting for the other ranks included


class CommCounter:
    """Bytes this rank sends, per collective call.

    Convention (the payload of the usual ring/pairwise algorithms): all-to-all: the rows addressed to other
    ranks; all-gather: this rank's chunk once per other rank, ``(P-1) * chunk``; reduce-scatter: the chunks
    of the other ranks, ``(P-1) * chunk``; all-reduce: ``2 (P-1) / P * tensor``. For ``P = 2`` each is the
    exact number of bytes that cross between the two processes.
    """

    def __init__(self) -> None:
        self.records: list[CommRecord] = []

    @property
    def total_bytes(self) -> int:
        return sum(r.nbytes for r in self.records)

    @property
    def total_seconds(self) -> float:
        """Time spent inside the collectives, waiting for slower ranks included."""
        return sum(r.seconds for r in self.records)

    def by(self, key: str = "tag") -> dict[str, int]:
        """Bytes summed by ``"tag"``, ``"op"`` or ``"phase"``."""
        out: dict[str, int] = defaultdict(int)
        for r in self.records:
            out[getattr(r, key)] += r.nbytes
        return dict(out)

    def reset(self) -> None:
        self.records.clear()


_ACTIVE: list[CommCounter] = []


@contextlib.contextmanager
def count_comm() -> Iterator[CommCounter]:
    """Count the bytes sent by the group-parallel collectives run inside the ``with`` block."""
    counter = CommCounter()
    _ACTIVE.append(counter)
    try:
        yield counter
    finally:
        _ACTIVE.remove(counter)


def _phase() -> str:
    """``"backward"`` inside an autograd backward pass (the engine runs a graph task), else ``"forward"``."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return "backward" if task_id is not None and task_id() != -1 else "forward"


def collective(
    ctx: ParallelContext, op: str, tag: str, nbytes: int, fn: Callable[[], object]
) -> None:
    """Run ``fn`` (one torch.distributed call), count ``nbytes`` and translate failures."""
    start = time.perf_counter()
    try:
        fn()
    except RuntimeError as e:  # DistBackendError, gloo/NCCL timeouts and closed connections
        raise GroupParallelError(
            f"rank {ctx.rank}/{ctx.world_size}: {op} in {tag or 'a group-parallel layer'} failed; "
            f"{describe_peer_failure()}: {e}"
        ) from e
    if _ACTIVE:
        rec = CommRecord(op, tag, _phase(), int(nbytes), time.perf_counter() - start)
        for counter in _ACTIVE:
            counter.records.append(rec)
