"""The run directory: ``OUTPUT/NAME`` chosen and created on rank 0, ``config.json`` written there, and the
lock that keeps two processes from training into one directory.

A new run never reuses a directory: ``NAME`` taken gives ``NAME-1``, ``NAME-2``, ... A resumed run uses the
directory of its checkpoint (:func:`resume_run_dir`).

Lock: ``RUN/run.lock`` holds an exclusive ``flock`` while a run trains, and the process id and host of its
holder. A second process on the directory gets :class:`RunDirBusy` naming that process. The kernel drops the
lock when its holder dies however it dies, so a lock left by a killed run is simply taken over (with a note
naming the process that left it).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import IO

from ..distributed import DistContext, broadcast_object
from ..utils.atomic import atomic_write
from .config import TrainConfig

try:  # POSIX; elsewhere the lock only records its holder
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None

__all__ = [
    "LOCK_NAME",
    "RunDirBusy",
    "RunDirLock",
    "check_output",
    "create_run_dir",
    "default_run_name",
    "resume_run_dir",
]

LOCK_NAME = "run.lock"


def default_run_name(cfg: TrainConfig) -> str:
    """``MODEL-DATA-YYYYmmdd-HHMMSS`` (``DATA`` is the dataset directory's name)."""
    data = "builtin" if cfg.data == "builtin" else Path(cfg.data).name
    return f"{cfg.model}-{data}-{datetime.now():%Y%m%d-%H%M%S}"


def create_run_dir(cfg: TrainConfig, ctx: DistContext) -> Path:
    """Create a fresh run directory under ``cfg.output`` and write the resolved ``cfg`` as ``config.json``
    (rank 0); every rank gets its path."""
    run_dir = None
    if ctx.is_main:
        name = cfg.name or default_run_name(cfg)
        run_dir = Path(cfg.output) / name
        n = 1
        while run_dir.exists():
            run_dir = Path(cfg.output) / f"{name}-{n}"
            n += 1
        run_dir.mkdir(parents=True)
        with atomic_write(run_dir / "config.json") as f:
            f.write(cfg.to_json() + "\n")
    return Path(broadcast_object(str(run_dir)))


def check_output(output: str | os.PathLike[str]) -> None:
    """``output`` is, or can be created as, a writable directory (checked before any work)."""
    path = Path(output)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is" if existing == path else f"lies under {str(existing)!r}, which is"
        raise ValueError(f"output={str(output)!r} {where} a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"output={str(output)!r}: directory {str(existing)!r} is not writable")


def resume_run_dir(where: str | os.PathLike[str]) -> Path:
    """The run directory that resuming from ``where`` continues (see
    :func:`shufflenet.train.checkpoint.find_checkpoint`): ``where`` itself when it has ``checkpoints/``, the
    directory above a directory of checkpoints, two above a checkpoint file."""
    path = Path(where)
    if path.is_dir():
        return path if (path / "checkpoints").is_dir() else path.parent
    return path.parent.parent


class RunDirBusy(ValueError):
    """Another process is training into the run directory."""


class RunDirLock:
    """The exclusive lock of a run directory (see the module docstring); :meth:`release` or ``with``."""

    def __init__(self, run_dir: str | os.PathLike[str], *, note: IO[str] | None = None) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._file = open(self.path, "a+")  # noqa: SIM115 (held open until release)
        try:
            self._take(note if note is not None else sys.stderr)
        except BaseException:
            self._file.close()
            raise

    def _holder(self) -> dict:
        self._file.seek(0)
        try:
            holder = json.loads(self._file.read() or "{}")
        except json.JSONDecodeError:
            return {}
        return holder if isinstance(holder, dict) else {}

    def _take(self, note: IO[str]) -> None:
        if fcntl is not None:
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = self._holder()
                who = (
                    f"process {holder['pid']} on {holder.get('host', '?')}"
                    if "pid" in holder
                    else "another process"
                )
                raise RunDirBusy(
                    f"run directory {str(self.path.parent)!r} is in use by {who} (lock "
                    f"{str(self.path)!r}); wait for it to finish or stop it first"
                ) from None
        stale = self._holder()
        if "pid" in stale:
            print(
                f"note: taking over the lock of {str(self.path.parent)!r} left by process "
                f"{stale['pid']} on {stale.get('host', '?')}, which is no longer running",
                file=note,
            )
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
        self._file.flush()

    def release(self) -> None:
        """Clear the holder and drop the lock (the file stays: removing it would race a new holder)."""
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.truncate()
        self._file.flush()
        self._file.close()  # closing drops the flock

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
