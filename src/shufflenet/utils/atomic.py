"""Atomic file writes: write to a temporary file in the target directory, fsync, then ``os.replace``.

A reader sees either the old file or the complete new one, never a partial write, even if the writer is killed.
Permissions are those an ordinary ``open(path, "w")`` gives: a new file gets ``0o666`` less the process umask
(the temporary file is created with that mode, so the kernel applies the umask), and a file that is replaced
keeps its permission bits. They are set when the write completes, also when the writer itself replaced the
temporary file by one of its own (as safetensors does, with mode 0o600).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_path"]

_NEW_FILE_MODE = 0o666  # less the umask, as for any file created by open()


def _create_temp(target: Path) -> Path:
    """An empty new file ``.<name>.<random>.tmp`` beside ``target``, created with mode 0o666 & ~umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, flags, _NEW_FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {str(target)!r}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temp(target)
    new_mode = stat.S_IMODE(
        tmp_path.stat().st_mode
    )  # 0o666 & ~umask, read without changing the umask
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        try:  # the file replaced keeps its permissions
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            mode = new_mode
        # Set even for a new file: a writer may have replaced the temporary file by its own (0o600) one.
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open()`` replacement whose result appears at ``path`` only when the block completes."""
    if "r" in mode or "a" in mode:
        raise ValueError(f"atomic_write mode={mode!r} must be a write mode ('w', 'wb')")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
