"""The run directory: ``OUTPUT/NAME`` chosen and created on rank 0, ``config.json`` written there.

A new run never reuses a directory: ``NAME`` taken gives ``NAME-1``, ``NAME-2``, ... A resumed run uses the
directory of its checkpoint (:mod:`shufflenet.train.resume`).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ..utils.atomic import atomic_write
from .config import TrainConfig
from .distributed import DistContext, broadcast_object

__all__ = ["default_run_name", "create_run_dir"]


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
