"""The one process-group set-up (:mod:`shufflenet.distributed`): the timeout, device resolution, and that the
training and group-parallel code join the group through it."""

from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.distributed as dist

import shufflenet.distributed as sd
from shufflenet.models import create_model
from shufflenet.parallel import build_group_parallel
from shufflenet.train import TrainConfig, fit


class _Joined(Exception):
    """Raised by the stand-in for init_process_group, carrying what it was called with."""


@pytest.fixture
def torchrun_env(monkeypatch):
    """Rank 0 of 2 as torchrun would describe it, with init_process_group replaced by a recorder."""
    for k, v in {
        "WORLD_SIZE": "2",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "2",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)

    def record(backend, timeout=None, **kwargs):
        raise _Joined(backend, timeout)

    monkeypatch.setattr(dist, "init_process_group", record)
    return monkeypatch


def test_timeout_default_env_and_argument(monkeypatch):
    monkeypatch.delenv("SHUFFLENET_DIST_TIMEOUT", raising=False)
    assert sd.dist_timeout() == datetime.timedelta(seconds=300)
    monkeypatch.setenv("SHUFFLENET_DIST_TIMEOUT", "12.5")
    assert sd.dist_timeout() == datetime.timedelta(seconds=12.5)
    assert sd.dist_timeout(3) == datetime.timedelta(seconds=3)  # an explicit value wins
    for bad in ("abc", "0", "-5", "inf", "nan"):
        monkeypatch.setenv("SHUFFLENET_DIST_TIMEOUT", bad)
        with pytest.raises(ValueError, match=f"SHUFFLENET_DIST_TIMEOUT='{bad}'"):
            sd.dist_timeout()
    with pytest.raises(ValueError, match="timeout_s=0"):
        sd.dist_timeout(0)


def test_init_applies_the_timeout(torchrun_env):
    torchrun_env.setenv("SHUFFLENET_DIST_TIMEOUT", "7")
    with pytest.raises(_Joined) as info:
        sd.init_distributed("cpu")
    assert info.value.args == ("gloo", datetime.timedelta(seconds=7))


def test_single_process_joins_nothing(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    ctx = sd.init_distributed("cpu")
    assert (ctx.rank, ctx.world, ctx.owns_group, ctx.is_main) == (0, 1, False, True)
    t = torch.ones(3)
    assert ctx.sum_(t) is t and t.tolist() == [1, 1, 1]
    assert sd.broadcast_object({"a": 1}) == {"a": 1}


def test_train_parallel_groups_joins_through_init_distributed(torchrun_env, tmp_path):
    """``shufflenet train --parallel groups`` creates the process group with SHUFFLENET_DIST_TIMEOUT."""
    torchrun_env.setenv("SHUFFLENET_DIST_TIMEOUT", "9")
    cfg = TrainConfig(
        model="shufflenet_v1_g2_x0_25", parallel="groups", output=str(tmp_path), device="cpu"
    )
    with pytest.raises(_Joined) as info:
        fit(cfg)
    assert info.value.args == ("gloo", datetime.timedelta(seconds=9))


def test_group_parallel_build_joins_through_init_distributed(torchrun_env):
    torchrun_env.setenv("SHUFFLENET_DIST_TIMEOUT", "11")
    with pytest.raises(_Joined) as info:
        build_group_parallel(create_model("alexnet_g2", num_classes=10))
    assert info.value.args[1] == datetime.timedelta(seconds=11)


def test_resolve_device():
    assert sd.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device='gpu0'"):
        sd.resolve_device("gpu0")
    with pytest.raises(TypeError, match="device must be a str"):
        sd.resolve_device(0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch.cuda.is_available"):
            sd.resolve_device("cuda")


def test_dead_rank_is_named(monkeypatch):
    """A recorded peer whose process has exited is named; a live one is not."""
    pid = os.fork()
    if pid == 0:  # the child exits at once and stays a zombie until waited for
        os._exit(0)
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # has exited; not reaped yet
        host = sd.socket.gethostname()
        monkeypatch.setattr(
            sd, "_PEERS", {0: (host, os.getpid()), 1: (host, pid), 2: ("elsewhere", pid)}
        )
        assert sd.dead_ranks() == [1]
        assert sd.describe_peer_failure(wait_s=0) == f"rank 1 (pid {pid}) exited"
    finally:
        os.waitpid(pid, 0)
    assert sd.dead_ranks() == [1]  # reaped: no such process any more
    monkeypatch.setattr(sd, "_PEERS", {0: (host, os.getpid())})
    assert "process-group timeout" in sd.describe_peer_failure(wait_s=0)


def test_launcher_names_the_failed_rank():
    assert sd._exit_description(-9) == "killed by SIGKILL"
    assert sd._exit_description(3) == "exit status 3"
