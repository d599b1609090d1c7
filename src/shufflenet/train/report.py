"""What a run reports: its result (:class:`FitResult`), log lines, final plots and ``summary.json``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..utils.atomic import atomic_write
from .config import TrainConfig
from .engine import EvalResult
from .metrics import plot_confusion, plot_curves

__all__ = [
    "FitResult",
    "announce_line",
    "epoch_line",
    "mean_speed",
    "write_plots",
    "write_summary",
]


@dataclasses.dataclass
class FitResult:
    """What :func:`~shufflenet.train.fit` did.

    ``history`` has one row per epoch (training loss and accuracy, validation loss/top-1/top-5, learning
    rate, speed); ``final`` the validation metrics of the final model (empty unless completed). ``model`` is
    the trained model itself, on the training device (``None`` in a group-parallel run: load ``model_path``).
    """

    status: str  # "completed", "stopped", "interrupted" or "nonfinite"
    run_dir: Path
    config: TrainConfig
    epochs_done: int
    history: list[dict[str, Any]]
    final: dict[str, Any]
    params: int
    macs: int
    images_per_s: float
    model_path: Path | None = None
    checkpoint: Path | None = None
    plots: list[Path] = dataclasses.field(default_factory=list)
    # name, train/val sizes, classes
    dataset: dict[str, Any] = dataclasses.field(default_factory=dict)
    model: nn.Module | None = dataclasses.field(default=None, repr=False)


def mean_speed(history: list[dict[str, Any]]) -> float:
    """Mean training images/s over the epochs that measured it."""
    speeds = [r["images_per_s"] for r in history if r.get("images_per_s")]
    return float(np.mean(speeds)) if speeds else 0.0


def announce_line(
    cfg: TrainConfig,
    data: dict[str, Any],
    spec_size: int,
    steps: int,
    params: int,
    macs: int,
    where: str,
) -> str:
    """What is about to be trained, on what, how."""
    return (
        f"training {cfg.model}{' (small_input)' if cfg.small_input else ''} on {data['name']}: "
        f"{data['train']:,} training / {data['val']:,} validation images, "
        f"{cfg.in_chans}x{spec_size}x{spec_size}, {len(data['classes'])} classes\n"
        f"{params:,} parameters, {macs / 1e6:.1f} M multiply-adds per image; "
        f"{cfg.epochs} epochs of {steps} steps, batch {cfg.batch_size}{where}, {cfg.optimizer} lr "
        f"{cfg.lr:g}, {cfg.schedule} schedule"
    )


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """One epoch's row of the history as a log line."""
    return (
        f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}"
        f" | val loss {row['val_loss']:.4f} top-1 {row['val_acc1']:.3f} top-5 {row['val_acc5']:.3f}"
        f" | lr {row['lr']:.3g} | {row['images_per_s']:.0f} img/s"
        + (f" | {row['skipped']} unreadable images skipped" if row["skipped"] else "")
    )


def write_plots(
    run_dir: Path,
    history: list[dict[str, Any]],
    result: EvalResult,
    classes: list[str],
    title: str,
) -> list[Path]:
    """``curves.png`` (per-epoch metrics) and ``confusion_matrix.png`` (final validation) in ``run_dir``."""
    return [
        plot_curves(history, run_dir / "curves.png", title),
        plot_confusion(
            result.confusion,
            classes,
            run_dir / "confusion_matrix.png",
            f"{title}: validation top-1 {result.acc1:.1%}",
        ),
    ]


def write_summary(result: FitResult) -> Path:
    """``summary.json`` in the run directory: the result without configuration, history and model."""
    summary = {
        f.name: str(v) if isinstance(v, Path) else v
        for f in dataclasses.fields(result)
        if f.name not in ("config", "history", "plots", "model")
        for v in [getattr(result, f.name)]
    }
    summary["plots"] = [str(p) for p in result.plots]
    path = result.run_dir / "summary.json"
    with atomic_write(path) as f:
        json.dump(summary, f, indent=2, default=str)
    return path
