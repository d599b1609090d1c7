"""Atomic file writes: write to a temporary file in the target directory, fsync, then ``os.replace``.

A reader sees either the old file or the complete new one, never a partial write, even if the writer is killed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_path"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
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
