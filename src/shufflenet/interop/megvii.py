"""Checkpoints of Megvii's ShuffleNet v1 release (``megvii-model/ShuffleNet-Series``, folder ``ShuffleNetV1``).

What those checkpoints are (from the release's model definition and training script):

- File: a ``torch.save`` pickle of ``{"state_dict": model.state_dict()}`` of an ``nn.DataParallel`` model, so
  every key starts with ``module.`` (a bare state dict, with or without the prefix, is accepted too).
- Keys: ``first_conv.0`` (3x3/2 conv, no bias), ``first_conv.1`` (BN); ``features.{k}`` for the 16 units in
  order (4, 8, 4 per stage, the first of each stage with stride 2), each with ``branch_main_1.0`` (1x1 group
  conv; dense in unit 0), ``branch_main_1.1`` (BN), ``branch_main_1.3`` (3x3 depthwise conv),
  ``branch_main_1.4`` (BN), ``branch_main_2.0`` (1x1 group conv), ``branch_main_2.1`` (BN);
  ``classifier.0.weight`` (fully connected, no bias).
- Widths (stem, stage 2, 3, 4), the same as :func:`shufflenet.models.shufflenet_v1.shufflenet_v1_channels`:
  g=3: 0.5x 12/120/240/480, 1.0x 24/240/480/960, 1.5x 24/360/720/1440, 2.0x 48/480/960/1920;
  g=8: 0.5x 16/192/384/768, 1.0x 24/384/768/1536, 1.5x 24/576/1152/2304, 2.0x 48/768/1536/3072.
- Shuffle: after the depthwise conv and its BN, channels viewed as ``(C/g, g)`` and transposed, which is
  :func:`~shufflenet.ops.channel_unshuffle` (the inverse of the paper's shuffle); no shuffle when g=1.
- Unit output: stride 1 ``relu(x + branch)``; stride 2 ``cat(avgpool3x3/2(x), relu(branch))``. Our unit applies
  the ReLU to the whole concatenation, which is the same function here: every unit's input is the output of
  a ReLU (or of a max pool of one), so the average-pooled shortcut is already non-negative and the ReLU leaves
  it unchanged (exactly, not approximately).
- Head: ``AvgPool2d(7)`` then the linear layer; our adaptive global pool equals it at 224x224 input and also
  runs at any other size.
- Input: BGR channel order, pixel values 0-255, no mean subtraction or scaling (short side resized to 256,
  centre crop 224): :data:`MEGVII_V1_INPUT_SPEC`.

A converted model is our :class:`~shufflenet.models.ShuffleNetV1` built with ``shuffle="unshuffle"``,
``shuffle_position="after_dw"`` and ``classifier_bias=False``; no weight is permuted.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import torch
from torch import nn

from ..data.spec import InputSpec
from ..models import create_model, is_model
from ..models.shufflenet_v1 import STAGE_REPEATS, shufflenet_v1_channels
from .torch_files import load_torch_state_dict

__all__ = [
    "MEGVII_V1_INPUT_SPEC",
    "MEGVII_V1_SIZES",
    "MegviiV1Config",
    "convert_megvii_v1",
    "create_megvii_v1",
    "infer_megvii_v1_config",
    "is_megvii_v1_state_dict",
    "load_megvii_v1",
    "megvii_v1_key_map",
]

MEGVII_V1_INPUT_SPEC = InputSpec(
    image_size=224,
    resize_size=256,
    channel_order="BGR",
    scale=255.0,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
)

# model size of the release -> our width multiplier
MEGVII_V1_SIZES = {"0.5x": 0.5, "1.0x": 1.0, "1.5x": 1.5, "2.0x": 2.0}
_WIDTH_TAGS = {0.25: "x0_25", 0.5: "x0_5", 1.0: "x1_0", 1.5: "x1_5", 2.0: "x2_0"}

# Megvii's sub-module of a unit -> ours
_UNIT_MAP = {
    "branch_main_1.0": "compress.conv",
    "branch_main_1.1": "compress.bn",
    "branch_main_1.3": "depthwise.conv",
    "branch_main_1.4": "depthwise.bn",
    "branch_main_2.0": "expand.conv",
    "branch_main_2.1": "expand.bn",
}
_CONV_PARAMS = ("weight",)
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_UNIT_KEY = re.compile(r"^features\.(\d+)\.")


@dataclasses.dataclass(frozen=True)
class MegviiV1Config:
    """The architecture a Megvii ShuffleNet v1 state dict describes."""

    groups: int
    stem_channels: int
    stage_channels: tuple[int, ...]
    stage_repeats: tuple[int, ...]
    num_classes: int
    classifier_bias: bool = False

    @property
    def model_size(self) -> str | None:
        """The release's size name (``"1.0x"``...) when the widths are those of a released model."""
        for name, w in MEGVII_V1_SIZES.items():
            if self._matches_width(w):
                return name
        return None

    def _matches_width(self, width: float) -> bool:
        try:
            stem, stages = shufflenet_v1_channels(self.groups, width)
        except ValueError:
            return False
        return (
            stem == self.stem_channels
            and stages == self.stage_channels
            and self.stage_repeats == STAGE_REPEATS
        )

    def arch(self) -> tuple[str, dict[str, Any]]:
        """Registry name and constructor kwargs of the equivalent model (JSON-serialisable)."""
        kwargs: dict[str, Any] = {"num_classes": self.num_classes}
        name = None
        for width, tag in _WIDTH_TAGS.items():
            if self._matches_width(width) and is_model(f"shufflenet_v1_g{self.groups}_{tag}"):
                name = f"shufflenet_v1_g{self.groups}_{tag}"
                break
        if name is None:  # non-standard widths: spell them out
            name = f"shufflenet_v1_g{self.groups}_x1_0"
            if not is_model(name):
                raise ValueError(
                    f"groups={self.groups} has no registered ShuffleNet v1 (registered: g in 1, 2, 3, 4, 8)"
                )
            kwargs.update(
                stem_channels=self.stem_channels,
                stage_channels=list(self.stage_channels),
                stage_repeats=list(self.stage_repeats),
            )
        kwargs.update(
            shuffle="unshuffle", shuffle_position="after_dw", classifier_bias=self.classifier_bias
        )
        return name, kwargs


def is_megvii_v1_state_dict(state: dict[str, torch.Tensor]) -> bool:
    """True when ``state`` (unwrapped, see :func:`~shufflenet.interop.torch_files.unwrap_state_dict`) has
    Megvii's ShuffleNet v1 layout."""
    return "first_conv.0.weight" in state and any(
        k.startswith("features.") and ".branch_main_" in k for k in state
    )


def _get(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    try:
        return state[key]
    except KeyError:
        raise ValueError(f"not a Megvii ShuffleNet v1 state dict: key {key!r} is missing") from None


def infer_megvii_v1_config(state: dict[str, torch.Tensor]) -> MegviiV1Config:
    """Read groups, widths, depths and classes off the tensor shapes of a Megvii state dict.

    Raises:
        ValueError: the state dict does not have the layout of the release.
    """
    if not is_megvii_v1_state_dict(state):
        raise ValueError(
            "not a Megvii ShuffleNet v1 state dict (expected keys 'first_conv.0.weight' and "
            f"'features.<i>.branch_main_1.0.weight'...); first keys: {list(state)[:6]}"
        )
    stem_w = _get(state, "first_conv.0.weight")  # (stem, 3, 3, 3)
    if stem_w.dim() != 4 or stem_w.shape[1] != 3 or tuple(stem_w.shape[2:]) != (3, 3):
        raise ValueError(
            f"first_conv.0.weight has shape {tuple(stem_w.shape)}; expected (C, 3, 3, 3) (a 3x3 conv on "
            "3-channel BGR images)"
        )
    stem = stem_w.shape[0]
    unit_ids = sorted({int(m.group(1)) for k in state if (m := _UNIT_KEY.match(k))})
    if unit_ids != list(range(len(unit_ids))):
        raise ValueError(f"units features.<i> must be numbered 0..n-1, got {unit_ids}")

    in_ch = stem
    groups = None
    stage_channels: list[int] = []
    stage_repeats: list[int] = []
    for k in unit_ids:
        w1 = _get(state, f"features.{k}.branch_main_1.0.weight")  # (mid, in / g1, 1, 1)
        w3 = _get(state, f"features.{k}.branch_main_2.0.weight")  # (branch, mid / g, 1, 1)
        mid, branch = w1.shape[0], w3.shape[0]
        if w3.shape[1] == 0 or mid % w3.shape[1]:
            raise ValueError(
                f"features.{k}.branch_main_2.0.weight {tuple(w3.shape)} fits no grouping"
            )
        g = mid // w3.shape[1]
        if groups is None:
            groups = g
        elif g != groups:
            raise ValueError(f"unit {k} has {g} groups, earlier units {groups}")
        if in_ch == branch and mid == branch // 4:
            stride, out_ch = 1, in_ch
        elif mid == (in_ch + branch) // 4:
            stride, out_ch = 2, in_ch + branch
        else:
            raise ValueError(
                f"unit {k}: input {in_ch}, bottleneck {mid}, branch output {branch} channels fit neither "
                "a stride-1 unit (out = in, bottleneck = out / 4) nor a stride-2 one (out = in + branch)"
            )
        expected_in = in_ch if k == 0 else in_ch // g
        if w1.shape[1] != expected_in:
            raise ValueError(
                f"features.{k}.branch_main_1.0.weight has shape {tuple(w1.shape)}; expected "
                f"{expected_in} input channels per group (the first 1x1 conv is dense in unit 0 only)"
            )
        if stride == 2:
            stage_channels.append(out_ch)
            stage_repeats.append(1)
        elif not stage_repeats:
            raise ValueError("the first unit must have stride 2")
        else:
            stage_repeats[-1] += 1
        in_ch = out_ch

    fc = _get(state, "classifier.0.weight")  # (classes, features)
    if fc.dim() != 2 or fc.shape[1] != in_ch:
        raise ValueError(
            f"classifier.0.weight has shape {tuple(fc.shape)}; expected (classes, {in_ch})"
        )
    return MegviiV1Config(
        groups=int(groups),
        stem_channels=int(stem),
        stage_channels=tuple(stage_channels),
        stage_repeats=tuple(stage_repeats),
        num_classes=int(fc.shape[0]),
        classifier_bias="classifier.0.bias" in state,
    )


def megvii_v1_key_map(config: MegviiV1Config) -> dict[str, str]:
    """Megvii state-dict key -> our state-dict key, for every tensor of the model."""
    mapping: dict[str, str] = {}
    for p in _CONV_PARAMS:
        mapping[f"first_conv.0.{p}"] = f"stem.conv.{p}"
    for p in _BN_PARAMS:
        mapping[f"first_conv.1.{p}"] = f"stem.bn.{p}"
    k = 0
    for s, repeats in enumerate(config.stage_repeats):
        for i in range(repeats):
            for theirs, ours in _UNIT_MAP.items():
                params = _BN_PARAMS if ours.endswith(".bn") else _CONV_PARAMS
                for p in params:
                    mapping[f"features.{k}.{theirs}.{p}"] = f"stages.{s}.{i}.{ours}.{p}"
            k += 1
    mapping["classifier.0.weight"] = "fc.weight"
    if config.classifier_bias:
        mapping["classifier.0.bias"] = "fc.bias"
    return mapping


def create_megvii_v1(
    groups: int = 3, model_size: str = "1.0x", num_classes: int = 1000
) -> nn.Module:
    """An untrained model with the architecture and conventions of Megvii's ``ShuffleNetV1(group, model_size)``."""
    if model_size not in MEGVII_V1_SIZES:
        raise ValueError(f"model_size={model_size!r} must be one of {list(MEGVII_V1_SIZES)}")
    stem, stages = shufflenet_v1_channels(groups, MEGVII_V1_SIZES[model_size])
    config = MegviiV1Config(groups, stem, stages, STAGE_REPEATS, num_classes)
    name, kwargs = config.arch()
    return create_model(name, **kwargs)


def convert_megvii_v1(state: dict[str, torch.Tensor]) -> tuple[nn.Module, MegviiV1Config]:
    """Our model (eval mode) holding the weights of the Megvii state dict ``state`` (unwrapped).

    Every tensor is copied unchanged to the key given by :func:`megvii_v1_key_map`; a missing
    ``num_batches_tracked`` (checkpoints of old PyTorch) is left at zero. Anything else missing or left over,
    or any shape mismatch, is an error.
    """
    config = infer_megvii_v1_config(state)
    name, kwargs = config.arch()
    model = create_model(name, **kwargs)
    mapping = megvii_v1_key_map(config)
    unexpected = sorted(set(state) - set(mapping))
    if unexpected:
        raise ValueError(f"keys the Megvii layout does not have: {unexpected[:8]}")
    ours = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for theirs_key, ours_key in mapping.items():
        if theirs_key not in state:
            if theirs_key.endswith("num_batches_tracked"):
                continue
            raise ValueError(
                f"not a complete Megvii ShuffleNet v1 state dict: {theirs_key!r} is missing"
            )
        t = state[theirs_key]
        if t.shape != ours[ours_key].shape:
            raise ValueError(
                f"{theirs_key} has shape {tuple(t.shape)}, but {ours_key} needs {tuple(ours[ours_key].shape)}"
            )
        converted[ours_key] = t.to(ours[ours_key].dtype)
    result = model.load_state_dict(converted, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:  # a bug in the mapping, not in the file
        raise RuntimeError(
            f"mapping incomplete: missing {missing}, unexpected {result.unexpected_keys}"
        )
    return model.eval(), config


def load_megvii_v1(path: str | os.PathLike[str]) -> tuple[nn.Module, MegviiV1Config]:
    """Load a Megvii ShuffleNet v1 checkpoint file (never executing code from it); see
    :func:`convert_megvii_v1`."""
    return convert_megvii_v1(load_torch_state_dict(path))
