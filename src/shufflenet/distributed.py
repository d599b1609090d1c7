"""Processes and devices: the one place that joins a torch.distributed process group.

:func:`init_distributed` reads torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ...) and, in a
world of more than one process, joins the default process group (Gloo on the CPU, NCCL on CUDA with one GPU
per local rank) with the timeout :func:`dist_timeout` (``SHUFFLENET_DIST_TIMEOUT`` seconds, default
:data:`DEFAULT_TIMEOUT_S`): a rank stuck that long in a collective makes the others raise. It returns a
:class:`DistContext`, which training, evaluation, prediction and the group-parallel models all use. A single
process is rank 0 of a world of 1, and every helper here is then a no-op.

When a collective fails, :func:`describe_peer_failure` names the rank that died where that can be told: each
rank records its host and process id when the group is joined (:func:`register_peers`), and a survivor on the
same host sees which of those processes have exited. :func:`launch` runs ``shufflenet train`` on several local
processes through torchrun and reports the rank whose process failed.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import signal
import socket
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistContext",
    "broadcast_object",
    "dead_ranks",
    "describe_peer_failure",
    "dist_timeout",
    "init_distributed",
    "launch",
    "register_peers",
    "resolve_device",
]

#: process-group timeout in seconds (environment override: ``SHUFFLENET_DIST_TIMEOUT``). A rank that dies is
#: usually noticed at once (its connections close); a rank that hangs, after this long.
DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "SHUFFLENET_DIST_TIMEOUT"

# rank -> (host name, process id) of the ranks of the default group, recorded by register_peers
_PEERS: dict[int, tuple[str, int]] = {}


@dataclasses.dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world`` processes, its local rank on this host, its device.

    ``shard_data``: each rank reads its own shard of every batch (data parallel); ``False`` when every rank
    reads the same batch (group-parallel models). ``owns_group``: :func:`init_distributed` joined the process
    group, and :meth:`close` leaves it.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False
    shard_data: bool = True

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
    if not isinstance(name, str):
        raise TypeError(f"device must be a str such as 'cpu' or 'cuda:0', got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device={name!r} is not a device name such as 'cpu' or 'cuda:0'") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={name!r} asked for CUDA but torch.cuda.is_available() is False"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def dist_timeout(timeout_s: float | None = None) -> datetime.timedelta:
    """The process-group timeout: ``timeout_s``, else ``$SHUFFLENET_DIST_TIMEOUT``, else 300 s."""
    if timeout_s is None:
        raw = os.environ.get(TIMEOUT_ENV)
        if raw is None:
            timeout_s = DEFAULT_TIMEOUT_S
        else:
            try:
                timeout_s = float(raw)
            except ValueError:
                raise ValueError(
                    f"{TIMEOUT_ENV}={raw!r} must be a number of seconds (e.g. 300)"
                ) from None
            if not timeout_s > 0 or timeout_s == float("inf"):
                raise ValueError(
                    f"{TIMEOUT_ENV}={raw!r} must be a positive, finite number of seconds"
                )
    elif not timeout_s > 0:
        raise ValueError(f"timeout_s={timeout_s!r} must be a positive number of seconds")
    return datetime.timedelta(seconds=timeout_s)


def _env_int(key: str, default: int) -> int:
    raw = os.environ.get(key)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {key}={raw!r} must be an integer") from None


def init_distributed(
    device: str = "auto", *, backend: str | None = None, timeout_s: float | None = None
) -> DistContext:
    """The process context; joins the torchrun process group when ``WORLD_SIZE`` > 1 and none is joined yet.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` (this local rank's GPU) or ``"cuda:N"``.
        backend: default NCCL for a CUDA device, Gloo otherwise.
        timeout_s: process-group timeout; default :func:`dist_timeout` (``SHUFFLENET_DIST_TIMEOUT``, 300 s).

    A group joined by the caller beforehand is used as it is (``owns_group`` is then ``False``).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    dev = resolve_device(device, local_rank)
    timeout = dist_timeout(timeout_s)
    owns = False
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend, timeout=timeout)
        owns = True
        register_peers()
    return DistContext(rank, world, local_rank, local_world, dev, owns)


def register_peers() -> dict[int, tuple[str, int]]:
    """Record every rank's host and process id (a collective on the default group: every rank calls it).

    :func:`describe_peer_failure` uses them to name a rank that died."""
    if not (dist.is_available() and dist.is_initialized()):
        return {}
    mine = (socket.gethostname(), os.getpid())
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    _PEERS.clear()
    _PEERS.update({r: tuple(v) for r, v in enumerate(everyone)})
    return dict(_PEERS)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # an exited child that nobody has waited for yet is a zombie: gone as well
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def dead_ranks() -> list[int]:
    """Ranks on this host, recorded by :func:`register_peers`, whose process has exited."""
    host = socket.gethostname()
    return sorted(r for r, (h, pid) in _PEERS.items() if h == host and _process_gone(pid))


def describe_peer_failure(wait_s: float = 2.0) -> str:
    """Why a collective probably failed, naming the rank that died when this host can tell.

    A peer's connection can close a moment before its process has exited: look for up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    dead = dead_ranks()
    while not dead and _PEERS and time.monotonic() < deadline:
        time.sleep(0.1)
        dead = dead_ranks()
    if dead:
        who = ", ".join(f"rank {r} (pid {_PEERS[r][1]})" for r in dead)
        return f"{who} exited"
    try:
        timeout = f"{dist_timeout().total_seconds():g} s, {TIMEOUT_ENV}"
    except ValueError:  # explaining one error must not raise another
        timeout = TIMEOUT_ENV
    return (
        "another rank has probably failed or stopped responding within the process-group timeout "
        f"({timeout}); check the other ranks' logs"
    )


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m shufflenet train ARGV`` in ``nproc`` local processes through torchrun; exit status.

    A failed rank is named on stderr (its rank, and its exit status or the signal that killed it)."""
    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", "shufflenet"]
    )
    # not parsed by torchrun: --nproc would be ambiguous there
    args.training_script_args = ["train", *argv]
    try:
        run(args)
    except ChildFailedError as e:
        for rank, failure in sorted(e.failures.items()):
            print(
                f"shufflenet train: rank {rank} failed ({_exit_description(failure.exitcode)})",
                file=sys.stderr,
            )
        codes = {f.exitcode for f in e.failures.values()}
        return max(codes) if codes and max(codes) > 0 else 1
    return 0
