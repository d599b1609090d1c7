"""Run a function on P local processes joined by a Gloo (or NCCL) process group: for tests, benchmarks and
experiments on one machine. Training runs use ``torchrun`` instead.

The group is initialised through a file store in a fresh temporary folder, so no port has to be chosen.
When a rank fails, the others fail fast (a closed connection is noticed at once, a stuck rank after
``pg_timeout_s``), and :func:`run_local` raises with every rank's traceback.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import pickle
import queue
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from ..distributed import register_peers

__all__ = ["run_local"]


def _entry(fn, rank, world_size, init_file, backend, pg_timeout_s, threads, results, args) -> None:
    if threads:
        torch.set_num_threads(threads)
    try:
        dist.init_process_group(
            backend,
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=pg_timeout_s),
        )
        register_peers()
        # plain pickle: tensors by value (torch's queue reductions would share file descriptors that vanish
        # with this process)
        results.put((rank, True, pickle.dumps(fn(rank, world_size, *args))))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_local(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str = "gloo",
    timeout_s: float = 300.0,
    pg_timeout_s: float = 60.0,
    threads: int | None = 1,
) -> list[Any]:
    """``[fn(rank, world_size, *args) for rank in range(world_size)]``, each in its own process.

    ``fn`` must be importable (a module-level function); its results are pickled back. Raises
    ``RuntimeError`` with the failing ranks' tracebacks if any rank fails, or if the ranks have not all
    finished within ``timeout_s``.
    """
    ctx = mp.get_context("spawn")
    tmp = tempfile.mkdtemp(prefix="shufflenet-pg-")
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_entry,
            args=(
                fn,
                r,
                world_size,
                os.path.join(tmp, "store"),
                backend,
                pg_timeout_s,
                threads,
                results,
                args,
            ),
            daemon=True,
        )
        for r in range(world_size)
    ]
    out: dict[int, tuple[bool, Any]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        for p in procs:
            p.start()
        while len(out) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                rank, ok, value = results.get(timeout=min(remaining, 1.0))
                out[rank] = (ok, pickle.loads(value) if ok else value)
                if not ok:  # the others should fail fast too; do not wait longer than their timeout
                    deadline = min(deadline, time.monotonic() + pg_timeout_s + 5)
            except queue.Empty:
                dead = [
                    r for r, p in enumerate(procs) if r not in out and p.exitcode not in (None, 0)
                ]
                if dead:  # crashed without reporting (killed, os._exit): give the others a moment
                    deadline = min(deadline, time.monotonic() + pg_timeout_s + 5)
                    for r in dead:
                        out.setdefault(r, (False, f"rank {r} exited with code {procs[r].exitcode}"))
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)
    failed = {r: v for r, (ok, v) in out.items() if not ok}
    missing = [r for r in range(world_size) if r not in out]
    if failed or missing:
        lines = [f"--- rank {r} failed:\n{v}" for r, v in sorted(failed.items())]
        lines += [f"--- rank {r} did not finish within {timeout_s:.0f} s" for r in missing]
        raise RuntimeError(
            f"{len(failed) + len(missing)} of {world_size} ranks failed\n" + "\n".join(lines)
        )
    return [out[r][1] for r in range(world_size)]
