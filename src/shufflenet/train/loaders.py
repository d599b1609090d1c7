"""The data of a run: datasets (read from ``config.data`` or given ready), input convention, loaders.

:func:`prepare_data` also resolves the configuration fields that depend on the data and the device
(``image_size``, ``in_chans``, ``hflip``, ``workers``, ``amp``, ``channels_last``), so that ``config.json``
records what was used.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from torch.utils.data import DataLoader, Dataset

from ..data import build_dataset, build_transform, default_spec, make_loader, set_epoch
from ..data.spec import InputSpec
from ..distributed import DistContext
from .config import TrainConfig

__all__ = ["RunData", "prepare_data"]


@dataclasses.dataclass
class RunData:
    """Datasets, input convention and this rank's loaders of one run."""

    train_set: Dataset
    val_set: Dataset
    classes: list[str]
    spec: InputSpec
    per_rank_batch: int
    train_loader: DataLoader
    val_loader: DataLoader
    steps_per_epoch: int
    loader_args: dict[str, Any]

    def recalibration_loader(self, epoch: int) -> DataLoader:
        """Training images with the evaluation transform, shuffled as at ``epoch`` (batch-norm statistics)."""
        loader = make_loader(
            self.train_set,
            build_transform(self.spec, False),
            self.per_rank_batch,
            True,
            **self.loader_args,
        )
        set_epoch(loader, epoch)
        return loader

    def info(self) -> dict[str, Any]:
        return {
            "name": getattr(self.train_set, "name", "data"),
            "train": len(self.train_set),
            "val": len(self.val_set),
            "classes": self.classes,
        }


def prepare_data(
    cfg: TrainConfig,
    ctx: DistContext,
    train_set: Dataset | None = None,
    val_set: Dataset | None = None,
) -> tuple[TrainConfig, RunData]:
    """Read (or take) the datasets, resolve the data and device fields of ``cfg``, build the loaders.

    ``train_set``/``val_set`` given ready (both or neither) are used instead of reading ``cfg.data``; they
    follow the dataset protocol of :mod:`shufflenet.data` (``classes``, ``mean``/``std``, optionally
    ``image_size``, ``channels``, ``hflip``, ``name``).
    """
    if (train_set is None) != (val_set is None):
        raise ValueError("give both train_set and val_set, or neither (then config.data is read)")
    if cfg.batch_size % ctx.data_world:
        raise ValueError(
            f"batch_size={cfg.batch_size} is not divisible by the {ctx.world} processes"
        )
    per_rank_batch = cfg.batch_size // ctx.data_world
    if train_set is None:
        size_hint = cfg.image_size or 32
        train_set = build_dataset(cfg.data, True, cfg.val_fraction, size_hint)
        val_set = build_dataset(cfg.data, False, cfg.val_fraction, size_hint)
    classes = list(train_set.classes)
    spec = default_spec(train_set, cfg.image_size, cfg.in_chans)
    in_memory = getattr(train_set, "image_size", None) is not None
    cfg = cfg.replace(
        image_size=spec.image_size,
        in_chans=spec.in_chans,
        hflip=cfg.hflip
        if cfg.hflip is not None
        else (0.5 if getattr(train_set, "hflip", True) else 0.0),
        workers=cfg.workers
        if cfg.workers is not None
        else (0 if in_memory else min(4, os.cpu_count() or 1)),
        amp=bool(cfg.amp) if cfg.amp is not None else ctx.device.type == "cuda",
        channels_last=cfg.channels_last if cfg.channels_last is not None else True,
    )
    loader_args = dict(
        seed=cfg.seed,
        rank=ctx.data_rank,
        world=ctx.data_world,
        workers=cfg.workers,
        pin_memory=ctx.device.type == "cuda",
    )
    train_loader = make_loader(
        train_set, build_transform(spec, True, cfg.hflip), per_rank_batch, True, **loader_args
    )
    val_loader = make_loader(
        val_set, build_transform(spec, False), per_rank_batch, False, **loader_args
    )
    steps_per_epoch = min(len(train_loader), cfg.max_steps or len(train_loader))
    if steps_per_epoch == 0:
        raise ValueError(
            f"no full batch: {len(train_set)} training images, batch_size={cfg.batch_size}"
        )
    data = RunData(
        train_set,
        val_set,
        classes,
        spec,
        per_rank_batch,
        train_loader,
        val_loader,
        steps_per_epoch,
        loader_args,
    )
    return cfg, data
