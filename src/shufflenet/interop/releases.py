"""Published checkpoints as one thing: detect which release a state dict comes from and convert it.

``shufflenet convert`` and :func:`shufflenet.factory.resolve_model` (``create_model(name, weights=...)``, the
CLI's model argument, torch.hub) both go through :func:`convert_release`, so a checkpoint converted in memory
is exactly the model that ``convert`` writes to a file.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..data.spec import InputSpec
from .megvii import MEGVII_V1_INPUT_SPEC, convert_megvii_v1, is_megvii_v1_state_dict
from .torchvision_v2 import (
    convert_torchvision_v2,
    is_torchvision_v2_state_dict,
    torchvision_v2_input_spec,
)

__all__ = ["RELEASES", "ConvertedCheckpoint", "convert_release", "detect_release"]

#: the checkpoint layouts that can be converted, with what they are
RELEASES = {
    "megvii": "ShuffleNet v1 of megvii-model/ShuffleNet-Series (ShuffleNetV1), g=3 or g=8, 0.5x-2.0x",
    "torchvision": "torchvision shufflenet_v2_x0_5 / x1_0 / x1_5 / x2_0 state dicts",
}


@dataclasses.dataclass(frozen=True)
class ConvertedCheckpoint:
    """A published checkpoint as our model (eval mode), with the input convention of its weights."""

    model: nn.Module
    source: str  # a key of RELEASES
    input_spec: InputSpec
    extra: dict[str, Any]  # what a model file records about the conversion
    description: str  # one line, e.g. "Megvii ShuffleNet v1 g=3 1.0x"


def detect_release(state: dict[str, torch.Tensor]) -> str | None:
    """The key of :data:`RELEASES` whose layout ``state`` (unwrapped) has, or ``None``."""
    if is_megvii_v1_state_dict(state):
        return "megvii"
    if is_torchvision_v2_state_dict(state):
        return "torchvision"
    return None


def convert_release(
    state: dict[str, torch.Tensor], source: str | None = None, file_name: str | None = None
) -> ConvertedCheckpoint:
    """Convert the unwrapped state dict of a published checkpoint (``source``: a key of :data:`RELEASES`;
    ``None``: detected). ``file_name`` is recorded in ``extra``."""
    if source is None:
        source = detect_release(state)
        if source is None:
            raise ValueError(
                "not a checkpoint of a known release (Megvii ShuffleNet v1 or torchvision ShuffleNet v2); "
                f"first keys: {list(state)[:6]}"
            )
    if source == "megvii":
        model, config = convert_megvii_v1(state)
        extra: dict[str, Any] = {
            "converted_from": "megvii-model/ShuffleNet-Series ShuffleNetV1",
            "groups": config.groups,
            "model_size": config.model_size,
        }
        what = f"Megvii ShuffleNet v1 g={config.groups} {config.model_size or '(custom widths)'}"
        spec = MEGVII_V1_INPUT_SPEC
    elif source == "torchvision":
        model, config = convert_torchvision_v2(state)
        extra = {"converted_from": "torchvision shufflenet_v2"}
        what = f"torchvision ShuffleNet v2 {config.width_mult or '(custom widths)'}x"
        spec = torchvision_v2_input_spec(config.width_mult)
    else:
        raise ValueError(f"source={source!r} must be one of {sorted(RELEASES)}")
    if file_name is not None:
        extra["source_file"] = file_name
    return ConvertedCheckpoint(model, source, spec, extra, what)
