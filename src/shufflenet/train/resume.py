"""Where training stands (:class:`Progress`), the training state saved beside each checkpoint, and resuming.

A checkpoint's state holds the position (epochs done, steps into the next), the partial epoch's totals, the
metric history, the best validation accuracy, optimiser/scheduler/scaler state, the generator states and the
resolved configuration; :func:`restore` puts all of it back, so that a resumed run continues bit for bit.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from ..distributed import DistContext
from ..model_file import load_weights
from .checkpoint import find_checkpoint, get_rng_state, load_shard_state, set_rng_state
from .config import TrainConfig
from .engine import EpochStats
from .model import RunModel
from .optim import Optimisation
from .parallel_mode import load_full_weights

__all__ = ["RESUME_FIXED", "Progress", "training_state", "restore"]

# Changing these between a checkpoint and its resumption changes what is trained.
RESUME_FIXED = (
    "model",
    "model_kwargs",
    "data",
    "image_size",
    "in_chans",
    "small_input",
    "seed",
    "batch_size",
)


@dataclasses.dataclass
class Progress:
    """Position in training and what has been measured so far."""

    epoch: int = 0  # epochs done
    step: int = 0  # steps into the current epoch
    stats: EpochStats = dataclasses.field(default_factory=EpochStats)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best: dict[str, Any] = dataclasses.field(default_factory=lambda: {"val_acc1": -1.0, "epoch": 0})
    last_checkpoint: Path | None = None


def training_state(
    cfg: TrainConfig, progress: Progress, optim: Optimisation, mode: str, ctx: DistContext
) -> dict[str, Any]:
    """The sidecar of a checkpoint (see :mod:`shufflenet.train.checkpoint`)."""
    return {
        "config": cfg.to_dict(),
        "epoch": progress.epoch,
        "step": progress.step,
        # group-parallel ranks each hold their shard's optimiser state (save_shard_state)
        "optimizer": None if mode == "groups" else optim.optimizer.state_dict(),
        "scheduler": optim.scheduler.state_dict(),
        "scaler": optim.scaler.state_dict() if optim.scaler is not None else None,
        "epoch_stats": dataclasses.asdict(progress.stats),
        "history": progress.history,
        "best": progress.best,
        "rng": get_rng_state(),
        "world": ctx.world,
    }


def restore(
    where: str,
    cfg: TrainConfig,
    run_model: RunModel,
    optim: Optimisation,
    mode: str,
    ctx: DistContext,
) -> tuple[Progress, Path]:
    """Load the checkpoint at ``where`` (a run directory or a checkpoint file) into the model and the
    optimisation; returns the progress it recorded and the run directory. Warns (rank 0) when a setting of
    :data:`RESUME_FIXED` differs from the saved one."""

    def warn(line: str) -> None:
        if ctx.is_main:
            print(f"warning: {line}", file=sys.stderr)

    model_path, _state_path, state = find_checkpoint(where, on_skip=warn)
    saved = state["config"]
    changed = [k for k in RESUME_FIXED if saved.get(k) != getattr(cfg, k)]
    if changed and ctx.is_main:
        diffs = ", ".join(f"{k}={getattr(cfg, k)!r} (was {saved.get(k)!r})" for k in changed)
        print(f"warning: resuming with changed {diffs}", file=sys.stderr)
    if mode == "groups":
        load_full_weights(run_model.model, load_file(model_path), mode)
        state["optimizer"] = load_shard_state(model_path, ctx.rank)
    else:
        load_weights(run_model.plain, model_path)
    optim.load_state(state)
    progress = Progress(
        epoch=state["epoch"],
        step=state["step"],
        stats=EpochStats(**state["epoch_stats"]),
        history=list(state["history"]),
        best=dict(state["best"]),
        last_checkpoint=model_path,
    )
    set_rng_state(state["rng"])
    if ctx.is_main:
        print(
            f"resumed from {model_path} (epoch {progress.epoch}, step {progress.step})",
            file=sys.stderr,
        )
    return progress, model_path.parent.parent
