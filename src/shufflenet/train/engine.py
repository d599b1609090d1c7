"""One training epoch, evaluation (top-1/top-5, confusion matrix), batch-norm recalibration.

Batches are ``(images, labels, skipped_paths)`` from :func:`shufflenet.data.make_loader`. Counts are summed over
ranks, so every metric is that of the global batch / whole evaluation set.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..distributed import DistContext

__all__ = ["EpochStats", "EvalResult", "train_one_epoch", "evaluate", "recalibrate_bn"]


@dataclasses.dataclass
class EpochStats:
    """Running totals of this rank's part of a training epoch (checkpointed, so a resumed epoch continues)."""

    steps: int = 0
    count: int = 0
    correct: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0
    # unreadable images, and the first few of their paths
    skipped: int = 0
    skipped_examples: list[str] = dataclasses.field(default_factory=list)

    def summary(self, ctx: DistContext) -> dict[str, float]:
        """Loss, accuracy and images/s of the epoch over all ranks."""
        t = torch.tensor(
            [self.loss_sum, self.correct, self.count, self.skipped],
            dtype=torch.float64,
            device=ctx.device,
        )
        loss_sum, correct, count, skipped = ctx.sum_(t).tolist()
        return {
            "train_loss": loss_sum / max(count, 1),
            "train_acc": correct / max(count, 1),
            "images_per_s": count / self.seconds if self.seconds else 0.0,
            "skipped": int(skipped),
        }


class _EvalTotals(NamedTuple):
    """Sums over the evaluation set; one float64 tensor row of this layout is reduced over ranks."""

    loss: float
    top1: float
    top5: float
    count: float
    skipped: float


_SKIPPED = _EvalTotals._fields.index("skipped")


@dataclasses.dataclass
class EvalResult:
    """Metrics over the images present. ``confusion`` is (outputs, outputs), the model's output classes;
    rows: true class, columns: predicted."""

    loss: float
    acc1: float
    acc5: float
    count: int
    skipped: int
    confusion: torch.Tensor

    def to_dict(self) -> dict[str, float]:
        return {
            "val_loss": self.loss,
            "val_acc1": self.acc1,
            "val_acc5": self.acc5,
            "val_count": self.count,
            "val_skipped": self.skipped,
        }


def _to_device(
    images: torch.Tensor, labels: torch.Tensor, device: torch.device, channels_last: bool
):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: nn.Module,
    ctx: DistContext,
    stats: EpochStats,
    *,
    stop_requested: Callable[[], bool] = lambda: False,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
    max_steps: int | None = None,
    bar: tqdm | None = None,
) -> str | None:
    """Train until the loader is exhausted (or ``max_steps`` steps in ``stats``); updates ``stats``.

    Returns ``None`` when the epoch is complete, ``"stop"`` after the step during which
    :func:`stop_requested` became true on some rank, ``"nonfinite"`` when the loss became NaN or infinite on
    some rank (that step is not applied). Either way the model and optimiser are those after ``stats.steps``
    steps, and every rank stops at the same step.
    """
    model.train()
    start = time.perf_counter()
    try:
        for images, labels, skipped in loader:
            if max_steps is not None and stats.steps >= max_steps:
                break
            stats.skipped += len(skipped)
            stats.skipped_examples += skipped[: max(0, 5 - len(stats.skipped_examples))]
            images, labels = _to_device(images, labels, ctx.device, channels_last)
            with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(images)
                loss = criterion(logits, labels)
            value = loss.item()
            flags = torch.tensor([not math.isfinite(value), stop_requested()], device=ctx.device)
            if ctx.distributed:
                torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            if flags[0]:
                return "nonfinite"
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            n = len(labels)
            stats.steps += 1
            stats.count += n
            stats.correct += int((logits.argmax(1) == labels).sum())
            stats.loss_sum += value * n
            if bar is not None:
                elapsed = stats.seconds + time.perf_counter() - start
                bar.update(1)
                bar.set_postfix(
                    loss=f"{stats.loss_sum / stats.count:.4f}",
                    acc=f"{stats.correct / stats.count:.3f}",
                    lr=f"{optimizer.param_groups[0]['lr']:.3g}",
                    img_s=f"{stats.count * ctx.data_world / elapsed:.0f}",
                    refresh=False,
                )
            if flags[1]:  # checked with the loss (one collective); honoured once the step is done
                return "stop"
        return None
    finally:
        stats.seconds += time.perf_counter() - start


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    num_classes: int,
    ctx: DistContext,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> EvalResult:
    """Loss (cross-entropy, no smoothing), top-1/top-5 accuracy and confusion matrix over all ranks' shards.

    Labels are indices of the model's outputs; they may cover only some of them (a dataset of a few of the
    classes a model knows). Accuracy is over the images present; the confusion matrix has one row and column
    per model output (``num_classes`` sizes it only when the loader yields no image). A label outside the
    model's outputs is a ``ValueError``.
    """
    model.eval()
    totals = torch.zeros(len(_EvalTotals._fields), dtype=torch.float64, device=ctx.device)
    outputs = num_classes
    confusion: torch.Tensor | None = None
    for images, labels, skipped in loader:
        totals[_SKIPPED] += len(skipped)
        if not len(labels):
            continue
        images, labels = _to_device(images, labels, ctx.device, channels_last)
        with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        logits = logits.float()  # (N, outputs)
        if confusion is None:
            outputs = logits.shape[1]
            confusion = torch.zeros(outputs * outputs, dtype=torch.long, device=ctx.device)
        bad = (labels < 0) | (labels >= outputs)
        if bad.any():
            raise ValueError(
                f"label {int(labels[bad][0])} is not one of the model's {outputs} output classes "
                f"(labels must lie in [0, {outputs}))"
            )
        hits = logits.topk(min(5, outputs), dim=1).indices == labels[:, None]  # (N, k)
        totals += torch.stack(
            [
                F.cross_entropy(logits, labels, reduction="sum").double(),
                hits[:, 0].sum().double(),
                hits.any(1).sum().double(),
                totals.new_tensor(len(labels)),
                totals.new_tensor(0.0),  # skipped: counted above
            ]
        )
        confusion += torch.bincount(labels * outputs + logits.argmax(1), minlength=outputs**2)
    if confusion is None:
        confusion = torch.zeros(outputs * outputs, dtype=torch.long, device=ctx.device)
    ctx.sum_(totals)
    ctx.sum_(confusion)
    t = _EvalTotals(*totals.tolist())
    n = max(t.count, 1)
    return EvalResult(
        t.loss / n,
        t.top1 / n,
        t.top5 / n,
        int(t.count),
        int(t.skipped),
        confusion.view(outputs, outputs).cpu(),
    )


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, max_batches: int, ctx: DistContext) -> int:
    """Recompute batch-norm running statistics as the plain average over up to ``max_batches`` batches.

    The weights are unchanged; returns the number of batches used. Data-parallel ranks average their
    statistics.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    used = 0
    try:
        for images, _labels, _skipped in batches:
            if used >= max_batches:
                break
            model(images.to(ctx.device, non_blocking=True))
            used += 1
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.eval()
    if ctx.data_world > 1:
        # each rank saw other images: average (group-parallel ranks hold other channels)
        for m in bns:
            ctx.sum_(m.running_mean).div_(ctx.world)
            ctx.sum_(m.running_var).div_(ctx.world)
    return used
