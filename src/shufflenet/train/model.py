"""The model of a run: built from the configuration (or given ready), counted, wrapped for the devices.

:func:`build_model` is where a run's starting weights come from: a fresh registered model today; a run that
starts from another model file (fine-tuning) loads those weights here, before :func:`prepare_model` wraps
the model, so that resume, checkpoints and the final model file work unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import torch
from torch import nn

from ..complexity import profile
from ..data.spec import InputSpec
from ..distributed import DistContext
from ..models import create_model
from .config import MAX_IMAGE_SIZE, TrainConfig
from .parallel_mode import unwrap, wrap_model

__all__ = [
    "RunModel",
    "build_model",
    "check_outputs",
    "describe_model",
    "min_input_size",
    "prepare_model",
]

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


def _kwargs_error(name: str, user_kwargs: dict[str, Any], error: TypeError) -> ValueError:
    """A ``TypeError`` of a model constructor as a ``ValueError`` naming the ``model_kwargs`` given."""
    fixed = re.search(r"multiple values for keyword argument '(\w+)'", str(error))
    hint = (
        f" ({fixed.group(1)} is fixed by the model name: choose another registered model, "
        "`shufflenet list`)"
        if fixed
        else ""
    )
    return ValueError(
        f"model_kwargs={json.dumps(user_kwargs)} do not fit model {name!r}: {error}{hint}"
    )


def build_model(
    cfg: TrainConfig, num_classes: int, in_chans: int, small: bool
) -> tuple[nn.Module, bool]:
    """The registered model ``cfg.model`` for ``num_classes`` classes and ``in_chans`` channels, and whether
    it got ``small_input=True`` (asked, or automatic for small images where the model has the option).

    ``cfg.model_kwargs`` may repeat ``num_classes`` only with the data's value: the data decides it."""
    given = cfg.model_kwargs.get("num_classes", num_classes)
    if given != num_classes:
        raise ValueError(
            f"model_kwargs num_classes={given!r} does not match the data's {num_classes} classes "
            f"(labels 0..{num_classes - 1}); leave it out: the data sets it"
        )
    kwargs = {**cfg.model_kwargs, "num_classes": num_classes, "in_chans": in_chans}
    want_small = small if cfg.small_input is None else cfg.small_input
    if want_small and "small_input" not in kwargs:
        try:
            return create_model(cfg.model, **kwargs, small_input=True), True
        except TypeError as e:  # this model has no CIFAR-style stem
            if "small_input" not in str(e) or cfg.small_input:
                raise _kwargs_error(cfg.model, cfg.model_kwargs, e) from None
    try:
        model = create_model(cfg.model, **kwargs)
    except TypeError as e:
        raise _kwargs_error(cfg.model, cfg.model_kwargs, e) from None
    return model, bool(kwargs.get("small_input", False))


def check_outputs(model: nn.Module, num_classes: int) -> None:
    """A ready model must have one output per class of the data."""
    outputs = getattr(model, "num_classes", None)
    if outputs is not None and outputs != num_classes:
        raise ValueError(
            f"the model has {outputs} outputs but the data has {num_classes} classes; build it with "
            f"num_classes={num_classes}"
        )


def min_input_size(model: nn.Module, in_chans: int, limit: int = MAX_IMAGE_SIZE) -> int | None:
    """The smallest square input side ``model`` accepts (``None``: none up to ``limit``), found by forward
    passes on the meta device (shapes only: no memory, no arithmetic). Assumes a larger input always fits
    once a smaller one does, as with strided convolutions and pooling."""
    meta = {k: torch.empty_like(v, device="meta") for k, v in model.state_dict().items()}

    def fits(side: int) -> bool:
        x = torch.empty(2, in_chans, side, side, device="meta")
        try:
            torch.func.functional_call(model, meta, (x,))
        except RuntimeError:
            return False
        return True

    training = model.training
    model.eval()
    try:
        hi = 1
        while not fits(hi):  # doubling: hi is the first power of two that fits
            if hi >= limit:
                return None
            hi = min(2 * hi, limit)
        lo = hi // 2  # does not fit (or 0)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(mid) else (mid, hi)
        return hi
    finally:
        model.train(training)


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
    """Count ``model`` at the input of ``spec``, set its memory format, wrap it for ``mode``. An input too
    small for the model is a ``ValueError`` that says the smallest it takes."""
    side = spec.image_size
    try:
        report = profile(model, (spec.in_chans, side, side))
    except RuntimeError:
        smallest = min_input_size(model, spec.in_chans)
        if smallest is None or smallest <= side:
            raise
        name = getattr(model, "model_cfg", {}).get("arch", type(model).__name__)
        raise ValueError(
            f"image_size={side} is too small for {name}: it needs at least {smallest}x{smallest} "
            f"pixels (--image-size {smallest})"
        ) from None
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    wrapped = wrap_model(model, mode, cfg.sync_bn, ctx)
    plain = unwrap(wrapped)
    # DDP's forward synchronises; evaluate its module. A group-parallel model is evaluated as it is.
    is_ddp = isinstance(wrapped, nn.parallel.DistributedDataParallel)
    return RunModel(wrapped, plain, plain if is_ddp else wrapped, report.params, report.macs)
