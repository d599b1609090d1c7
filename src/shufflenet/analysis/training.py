"""A small supervised training loop and top-1 evaluation for the experiment reports.

Deliberately minimal (one process, SGD with Nesterov momentum, linear warm-up then cosine decay, weight decay on
conv/linear weights only), so that a reduced experiment runs in minutes on a CPU. Batches are ``(images,
labels, ...)`` tuples as yielded by :func:`shufflenet.data.make_loader`; a loader with an epoch-aware sampler
is reshuffled every epoch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..train.optim import param_groups

__all__ = ["TrainResult", "train_classifier", "evaluate_top1"]


@dataclasses.dataclass
class TrainResult:
    epochs: int
    steps: int
    seconds: float
    images_seen: int
    loss_per_epoch: list[float]
    train_top1_per_epoch: list[float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _set_epoch(loader: Any, epoch: int) -> None:
    sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    if sampler is not None and hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def train_classifier(
    model: nn.Module,
    loader: Iterable[Any],
    epochs: int,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    warmup_fraction: float = 0.1,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` in place with cross-entropy for ``epochs`` passes over ``loader``.

    Args:
        lr: peak learning rate (for batches of about 64 images).
        warmup_fraction: share of all steps spent warming the learning rate up linearly from 0.
    """
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be >= 1")
    model.to(device).train()
    steps_per_epoch = len(loader)  # type: ignore[arg-type]
    total = max(1, epochs * steps_per_epoch)
    warmup = max(1, int(warmup_fraction * total))
    opt = torch.optim.SGD(
        param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=True
    )

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="step")
    losses, accs, step, seen = [], [], 0, 0
    start = time.perf_counter()
    for epoch in range(epochs):
        _set_epoch(loader, epoch)
        loss_sum, correct, n = 0.0, 0, 0
        for batch in loader:
            x, y = batch[0].to(device), batch[1].to(device)
            if x.shape[0] < 2:  # batch norm needs two samples
                continue
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum += loss.item() * x.shape[0]
            correct += int((logits.argmax(1) == y).sum())
            n += x.shape[0]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / n:.3f}", epoch=epoch + 1)
        seen += n
        losses.append(loss_sum / max(1, n))
        accs.append(correct / max(1, n))
    if bar is not None:
        bar.close()
    model.eval()
    return TrainResult(epochs, step, time.perf_counter() - start, seen, losses, accs)


@torch.no_grad()
def evaluate_top1(
    model: nn.Module, loader: Iterable[Any], device: torch.device | str = "cpu"
) -> tuple[float, int]:
    """Top-1 accuracy of ``model`` (eval mode) over ``loader``; returns ``(accuracy, images)``."""
    model.to(device).eval()
    correct, n = 0, 0
    for batch in loader:
        x, y = batch[0].to(device), batch[1].to(device)
        if x.shape[0] == 0:
            continue
        correct += int((model(x).argmax(1) == y).sum())
        n += x.shape[0]
    if n == 0:
        raise ValueError("no images to evaluate")
    return correct / n, n
