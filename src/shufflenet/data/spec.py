"""How a model expects its input images: size, channel order, pixel scale, normalisation.

A model input is computed from an RGB image with pixel values in [0, 1] as
``(image[order] * scale - mean) / std``, resized to ``image_size`` (after resizing the short side to
``resize_size`` for evaluation). Checkpoints carry this so that evaluation, prediction and export use the
convention the weights were trained with (for example BGR in 0-255 without normalisation for some releases).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

__all__ = ["InputSpec", "IMAGENET_MEAN", "IMAGENET_STD", "random_prepared"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """Input convention of a model.

    Attributes:
        image_size: side of the square model input, pixels.
        resize_size: evaluation resizes the short side to this before centre-cropping ``image_size``;
            ``None`` means resize straight to ``image_size``.
        channel_order: ``"RGB"``, ``"BGR"`` or ``"L"`` (grey, one channel).
        scale: pixel range the model sees before normalisation: 1.0 for [0, 1], 255.0 for [0, 255].
        mean, std: per-channel normalisation in the units of ``scale``, in ``channel_order``.
    """

    image_size: int = 224
    resize_size: int | None = 256
    channel_order: str = "RGB"
    scale: float = 1.0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR", "L"):
            raise ValueError(f"channel_order={self.channel_order!r} must be 'RGB', 'BGR' or 'L'")
        n = 1 if self.channel_order == "L" else 3
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(
                f"mean={self.mean} and std={self.std} must have {n} values for channel_order="
                f"{self.channel_order!r}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std={self.std} must be positive")
        if self.image_size < 1:
            raise ValueError(f"image_size={self.image_size} must be positive")

    @property
    def in_chans(self) -> int:
        return 1 if self.channel_order == "L" else 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown InputSpec fields {sorted(unknown)}; known: {sorted(fields)}")
        kw = dict(d)
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = tuple(float(v) for v in kw[k])
        return cls(**kw)


def random_prepared(
    shape: tuple[int, ...], spec: InputSpec, generator: torch.Generator
) -> torch.Tensor:
    """Random images of ``shape`` (N, C, H, W) prepared as ``spec`` prescribes: pixels uniform over the
    convention's range (``[0, spec.scale)``), then ``(x - mean) / std``: realistic activation ranges for parity
    checks of exported engines."""
    mean = torch.tensor(spec.mean).reshape(-1, 1, 1)
    std = torch.tensor(spec.std).reshape(-1, 1, 1)
    return (torch.rand(*shape, generator=generator) * spec.scale - mean) / std
