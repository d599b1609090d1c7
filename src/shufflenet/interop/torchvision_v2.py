"""torchvision's ``shufflenet_v2_x*`` checkpoints.

Our :class:`~shufflenet.models.ShuffleNetV2` has torchvision's module names and parameter shapes, so its state
dicts load without any renaming (``create_model("shufflenet_v2_x1_0", weights="shufflenetv2_x1-5666bf0f80.pth")``).
This module adds what a state dict alone does not say: which width it is, and the input convention of
torchvision's ImageNet weights (RGB in [0, 1], ImageNet mean and std; short side resized to 256 for 0.5x and 1x,
232 for 1.5x and 2x, centre crop 224), so that ``shufflenet convert --from torchvision`` can write a complete
model file.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import nn

from ..data.spec import InputSpec
from ..models import create_model
from ..models.shufflenet_v2 import SHUFFLENET_V2_CHANNELS, STAGE_REPEATS
from .torch_files import load_torch_state_dict

__all__ = [
    "TorchvisionV2Config",
    "convert_torchvision_v2",
    "infer_torchvision_v2_config",
    "is_torchvision_v2_state_dict",
    "load_torchvision_v2",
    "torchvision_v2_input_spec",
]


def torchvision_v2_input_spec(width_mult: float | None) -> InputSpec:
    """The evaluation transform of torchvision's ImageNet weights for ``shufflenet_v2_x{width_mult}``."""
    return InputSpec(image_size=224, resize_size=232 if width_mult in (1.5, 2.0) else 256)


@dataclasses.dataclass(frozen=True)
class TorchvisionV2Config:
    stage_channels: tuple[int, ...]  # conv1, stages..., conv5
    stage_repeats: tuple[int, ...]
    num_classes: int

    @property
    def width_mult(self) -> float | None:
        for w, channels in SHUFFLENET_V2_CHANNELS.items():
            if channels == self.stage_channels and self.stage_repeats == STAGE_REPEATS:
                return w
        return None

    def arch(self) -> tuple[str, dict[str, Any]]:
        w = self.width_mult
        if w is not None:
            return f"shufflenet_v2_x{w:.1f}".replace(".", "_"), {"num_classes": self.num_classes}
        return "shufflenet_v2_x1_0", {
            "num_classes": self.num_classes,
            "stage_channels": list(self.stage_channels),
            "stage_repeats": list(self.stage_repeats),
        }


def is_torchvision_v2_state_dict(state: dict[str, torch.Tensor]) -> bool:
    return (
        "conv1.0.weight" in state
        and "conv5.0.weight" in state
        and "stage2.0.branch1.0.weight" in state
    )


def infer_torchvision_v2_config(state: dict[str, torch.Tensor]) -> TorchvisionV2Config:
    """Widths, depths and classes of a torchvision ShuffleNet v2 state dict, from its shapes."""
    if not is_torchvision_v2_state_dict(state):
        raise ValueError(
            "not a torchvision ShuffleNet v2 state dict (expected keys 'conv1.0.weight', "
            f"'stage2.0.branch1.0.weight', 'conv5.0.weight'); first keys: {list(state)[:6]}"
        )
    channels = [state["conv1.0.weight"].shape[0]]
    repeats = []
    s = 2
    while f"stage{s}.0.branch1.2.weight" in state:
        channels.append(2 * state[f"stage{s}.0.branch1.2.weight"].shape[0])
        n = 0
        while f"stage{s}.{n}.branch2.0.weight" in state:
            n += 1
        repeats.append(n)
        s += 1
    channels.append(state["conv5.0.weight"].shape[0])
    if "fc.weight" not in state:
        raise ValueError("not a torchvision ShuffleNet v2 state dict: 'fc.weight' is missing")
    return TorchvisionV2Config(tuple(channels), tuple(repeats), int(state["fc.weight"].shape[0]))


def convert_torchvision_v2(state: dict[str, torch.Tensor]) -> tuple[nn.Module, TorchvisionV2Config]:
    """Our model (eval mode) with the torchvision state dict ``state`` loaded strictly, keys unchanged."""
    config = infer_torchvision_v2_config(state)
    name, kwargs = config.arch()
    model = create_model(name, **kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"state dict does not fit {name}: {e}") from e
    return model.eval(), config


def load_torchvision_v2(path: str | os.PathLike[str]) -> tuple[nn.Module, TorchvisionV2Config]:
    """Load a torchvision ShuffleNet v2 ``.pth`` file (never executing code from it)."""
    return convert_torchvision_v2(load_torch_state_dict(path))
