"""Per-epoch metrics files (CSV, JSON lines, optional TensorBoard) and PNG plots.

The metric history lives in the training state, so the files are rewritten whole (atomically) after every
epoch: a resumed run's files hold each epoch exactly once.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..utils.atomic import atomic_write

__all__ = ["MetricsWriter", "plot_curves", "plot_confusion"]


class MetricsWriter:
    """Writes ``metrics.csv`` and ``metrics.jsonl`` in ``run_dir``; TensorBoard events when it is installed."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.csv_path = self.run_dir / "metrics.csv"
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def write(self, history: Sequence[dict[str, Any]]) -> None:
        """Rewrite both files from the whole history; send the last row to TensorBoard."""
        fields: list[str] = []
        for row in history:
            fields += [k for k in row if k not in fields]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        with atomic_write(self.csv_path) as f:
            f.write(buf.getvalue())
        with atomic_write(self.jsonl_path) as f:
            f.writelines(json.dumps(row) + "\n" for row in history)
        if self._tb is not None and history:
            row = history[-1]
            for k, v in row.items():
                if k != "epoch" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, row["epoch"])
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Loss, accuracy and learning rate per epoch, training and validation, in one PNG."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (
        ("loss", [("train_loss", "train"), ("val_loss", "validation")]),
        (
            "accuracy",
            [
                ("train_acc", "train"),
                ("val_acc1", "validation top-1"),
                ("val_acc5", "validation top-5"),
            ],
        ),
        ("learning rate", [("lr", "end of epoch")]),
    )
    for ax, (name, series) in zip(axes, panels):
        for key, label in series:
            if any(key in r for r in history):
                ax.plot(
                    epochs,
                    [r.get(key, float("nan")) for r in history],
                    marker="o",
                    ms=3,
                    label=label,
                )
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if name != "learning rate":
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.13, top=0.83 if title else 0.9, wspace=0.25)
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path


def plot_confusion(
    confusion: torch.Tensor, class_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted) with counts, as a PNG."""
    plt = _pyplot()
    counts = confusion.to(torch.float64)
    rates = counts / counts.sum(1, keepdim=True).clamp(min=1)
    n = len(class_names)
    side = min(16.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=90 if n > 10 else 0)
        ax.set_yticks(range(n), class_names)
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    color = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        f"{int(counts[i, j])}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=color,
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path
