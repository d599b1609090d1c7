"""Optimiser with weight decay on convolution/linear weights only, per-step learning-rate schedules, and the
whole optimisation set-up of a run (optimiser, schedule, loss, mixed precision)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn

from .config import TrainConfig

__all__ = [
    "Optimisation",
    "param_groups",
    "build_optimizer",
    "lr_factor",
    "build_scheduler",
    "build_optimisation",
]

_DECAYED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: the ``weight`` of convolution and linear layers (decayed), everything else (not decayed:
    batch-norm scales and shifts, biases)."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if name == "weight" and isinstance(module, _DECAYED) else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    cfg: TrainConfig, model: nn.Module, groups: list[dict] | None = None
) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over ``groups`` (default :func:`param_groups` of ``model``);
    ``cfg`` must be resolved. A group may set its own ``lr`` (e.g. a backbone trained at a fraction of the
    head's rate): the schedule scales every group's own peak rate."""
    if groups is None:
        groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=bool(cfg.nesterov)
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"optimizer={cfg.optimizer!r} must be 'sgd' or 'adamw'")


def lr_factor(schedule: str, total_steps: int, warmup_steps: int = 0) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at step ``s`` (0-based, ``total_steps`` in all).

    Linear warm-up over ``warmup_steps``, then ``linear`` (to 0 at ``total_steps``), ``cosine`` (half a
    cosine to 0) or ``constant``.
    """
    if schedule not in ("linear", "cosine", "constant"):
        raise ValueError(f"schedule={schedule!r} must be 'linear', 'cosine' or 'constant'")
    warmup_steps = min(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return 1.0 - t
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0

    return factor


def build_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step :class:`~torch.optim.lr_scheduler.LambdaLR` for ``cfg.epochs`` epochs."""
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.schedule, total, warmup))


@dataclasses.dataclass
class Optimisation:
    """What one training step needs besides the model and the batch."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    amp_dtype: torch.dtype | None = None  # autocast dtype; None: full precision
    scaler: torch.amp.GradScaler | None = None  # float16 autocast only

    def load_state(self, state: dict) -> None:
        """Restore optimiser and scheduler state, keeping this configuration's hyper-parameters: a resumed
        run with a new ``--lr`` or ``--epochs`` follows the new schedule from the saved step on (and an
        unchanged one continues bit for bit: the same expression gives the same learning rate)."""
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.base_lrs = [h["initial_lr"] for h in hyper]
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group, h in zip(self.optimizer.param_groups, hyper):
            group.update(h, lr=h["initial_lr"] * factor)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def build_optimisation(
    cfg: TrainConfig,
    model: nn.Module,
    steps_per_epoch: int,
    device: torch.device,
    groups: list[dict] | None = None,
) -> Optimisation:
    """Optimiser over ``model``'s parameters (or ``groups``, see :func:`build_optimizer`), per-step
    schedule, loss with ``cfg.label_smoothing``, and mixed precision on CUDA when ``cfg.amp`` (bfloat16
    where supported, else float16 with a scaler)."""
    optimizer = build_optimizer(cfg, model, groups)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    amp_dtype, scaler = None, None
    if cfg.amp and device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            amp_dtype = torch.bfloat16
        else:
            amp_dtype, scaler = torch.float16, torch.amp.GradScaler("cuda")
    return Optimisation(optimizer, scheduler, criterion, amp_dtype, scaler)
