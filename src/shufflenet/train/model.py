"""The model of a run: built from the configuration (or given ready), counted, wrapped for the devices.

:func:`build_model` is where a run's starting weights come from: a fresh registered model today; a run that
starts from another model file (fine-tuning) loads those weights here, before :func:`prepare_model` wraps
the model, so that resume, checkpoints and the final model file work unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..complexity import profile
from ..data.spec import InputSpec
from ..models import create_model
from .config import TrainConfig
from .distributed import DistContext, unwrap, wrap_model

__all__ = ["RunModel", "build_model", "describe_model", "prepare_model"]

# constructor arguments that the data decides, not the configuration's model_kwargs
_FROM_DATA = ("num_classes", "in_chans")


@dataclasses.dataclass
class RunModel:
    """The model as trained (``model``, maybe wrapped), the plain module whose parameters this rank
    optimises (``plain``), the module evaluated (``eval_model``) and its size at the run's input."""

    model: nn.Module
    plain: nn.Module
    eval_model: nn.Module
    params: int
    macs: int


def build_model(
    cfg: TrainConfig, num_classes: int, in_chans: int, small: bool
) -> tuple[nn.Module, bool]:
    """The registered model ``cfg.model`` for ``num_classes`` classes and ``in_chans`` channels, and whether
    it got ``small_input=True`` (asked, or automatic for small images where the model has the option)."""
    kwargs = {"num_classes": num_classes, "in_chans": in_chans, **cfg.model_kwargs}
    want_small = small if cfg.small_input is None else cfg.small_input
    if want_small and "small_input" not in kwargs:
        try:
            return create_model(cfg.model, **kwargs, small_input=True), True
        except TypeError as e:  # this model has no CIFAR-style stem
            if "small_input" not in str(e) or cfg.small_input:
                raise
    return create_model(cfg.model, **kwargs), bool(kwargs.get("small_input", False))


def describe_model(cfg: TrainConfig, model: nn.Module) -> TrainConfig:
    """``cfg`` with ``model``, ``model_kwargs`` and ``small_input`` taken from a ready model built by
    :func:`shufflenet.create_model` (its ``model_cfg``), so that ``config.json`` says what was trained."""
    made: dict[str, Any] = getattr(model, "model_cfg", None) or {}
    if "arch" not in made:
        return cfg.replace(small_input=bool(cfg.small_input))
    kwargs = {k: v for k, v in made.get("kwargs", {}).items() if k not in _FROM_DATA}
    small = bool(kwargs.pop("small_input", False))
    return cfg.replace(model=made["arch"], model_kwargs=kwargs, small_input=small)


def prepare_model(
    cfg: TrainConfig, model: nn.Module, spec: InputSpec, mode: str, ctx: DistContext
) -> RunModel:
    """Count ``model`` at the input of ``spec``, set its memory format, wrap it for ``mode``."""
    report = profile(model, (spec.in_chans, spec.image_size, spec.image_size))
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    wrapped = wrap_model(model, mode, cfg.sync_bn, ctx)
    plain = unwrap(wrapped)
    # DDP's forward synchronises; evaluate its module. A group-parallel model is evaluated as it is.
    is_ddp = isinstance(wrapped, nn.parallel.DistributedDataParallel)
    return RunModel(wrapped, plain, plain if is_ddp else wrapped, report.params, report.macs)
