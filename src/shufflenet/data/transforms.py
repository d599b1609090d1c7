"""Image transforms on torch tensors, deterministic under an explicit ``torch.Generator``.

Every transform is called as ``t(img, g)``: ``img`` is a (C, H, W) tensor with pixel values in 0..255 (uint8, or
float after a resize), ``g`` the generator of this sample. Datasets seed ``g`` from ``(seed, epoch, index)``
(:func:`sample_generator`), so augmentation does not depend on the number of loader workers or on the order in
which samples are drawn. :class:`Normalize` ends every pipeline: it maps pixels to the model input described
by an :class:`~shufflenet.data.spec.InputSpec`.

Pipelines (:func:`build_transform`):

- small images (side <= 64, CIFAR/MNIST-sized), training: resize to the model size if needed, random crop with
  ``size // 8`` zero padding, horizontal flip;
- larger images, training: random-resized crop (scale 0.08-1, aspect 3/4-4/3, as for ImageNet), flip;
- evaluation: resize the short side (to ``resize_size``, else ``image_size``), centre crop ``image_size``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .spec import InputSpec

__all__ = [
    "Transform",
    "Compose",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "CenterCrop",
    "Normalize",
    "build_transform",
    "sample_generator",
    "resize",
    "SMALL_IMAGE_MAX",
]

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
SMALL_IMAGE_MAX = 64  # images up to this side use the CIFAR-style pipeline


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator for one sample, a well-mixed function of ``(seed, epoch, index)``."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(2, np.uint32)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, high: int) -> int:
    """Uniform integer in [0, high]."""
    return int(torch.randint(0, high + 1, (), generator=g))


def resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of (C, H, W) to ``size = (h, w)``; returns float."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    out = F.interpolate(
        img[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True
    )
    return out[0].clamp_(0, 255)


class Compose:
    """Apply transforms in order, passing each the same generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for t in self.transforms:
            img = t(img, g)
        return img

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class RandomCrop:
    """Pad each side with ``padding`` zeros, then crop a random ``size x size`` window."""

    def __init__(self, size: int, padding: int = 0) -> None:
        self.size, self.padding = size, padding

    def __call__(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        p = self.padding
        if p:
            img = F.pad(img, (p, p, p, p))  # (C, H + 2p, W + 2p)
        h, w = img.shape[-2:]
        if h < self.size or w < self.size:
            raise ValueError(f"RandomCrop size={self.size} is larger than the padded image {h}x{w}")
        top, left = _randint(g, h - self.size), _randint(g, w - self.size)
        return img[:, top : top + self.size, left : left + self.size]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        flip = float(torch.rand((), generator=g)) < self.p  # always draw: keeps the stream aligned
        return img.flip(-1) if flip else img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomResizedCrop:
    """Crop a random area fraction in ``scale`` and aspect ratio in ``ratio``, resize to ``size x size``.

    Sampling follows the Inception / torchvision recipe: up to 10 tries, then a centre crop of the
    clamped aspect ratio.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        self.size, self.scale, self.ratio = size, scale, ratio

    def _window(self, h: int, w: int, g: torch.Generator) -> tuple[int, int, int, int]:
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(g, *self.scale)
            aspect = math.exp(_uniform(g, *log_ratio))
            cw = round(math.sqrt(target * aspect))
            ch = round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                return _randint(g, h - ch), _randint(g, w - cw), ch, cw
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, round(w / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            ch, cw = h, round(h * self.ratio[1])
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        top, left, ch, cw = self._window(img.shape[-2], img.shape[-1], g)
        return resize(img[:, top : top + ch, left : left + cw], (self.size, self.size))

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class Resize:
    """Resize so that the short side is ``size``, keeping the aspect ratio."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        h, w = img.shape[-2:]
        if min(h, w) == self.size:
            return img
        if h <= w:
            new = (self.size, max(1, round(w * self.size / h)))
        else:
            new = (max(1, round(h * self.size / w)), self.size)
        return resize(img, new)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class CenterCrop:
    """Crop the central ``size x size`` window (zero-padding an image smaller than that)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        h, w = img.shape[-2:]
        ph, pw = max(0, self.size - h), max(0, self.size - w)
        if ph or pw:
            img = F.pad(img, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
            h, w = img.shape[-2:]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return img[:, top : top + self.size, left : left + self.size]

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class Normalize:
    """Pixels 0..255 of an RGB (3-channel) or grey (1-channel) image -> the model input of ``spec``.

    Converts channels to ``spec.channel_order`` (grey is replicated to RGB/BGR; RGB becomes grey by the
    ITU-R 601 luma weights), scales to ``spec.scale`` and applies ``(x - mean) / std``. Returns float32.
    """

    LUMA = (0.299, 0.587, 0.114)

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        n = spec.in_chans
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(n, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32).view(n, 1, 1)

    def to_channels(self, img: torch.Tensor) -> torch.Tensor:
        c = img.shape[0]
        if c not in (1, 3):
            raise ValueError(f"expected a grey (1) or RGB (3) channel image, got {c} channels")
        order = self.spec.channel_order
        if order == "L":
            if c == 1:
                return img
            luma = torch.tensor(self.LUMA, dtype=img.dtype).view(3, 1, 1)
            return (img * luma).sum(0, keepdim=True)
        if c == 1:
            img = img.expand(3, -1, -1)
        return img.flip(0) if order == "BGR" else img

    def __call__(self, img: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        x = self.to_channels(img.float()) * (self.spec.scale / 255.0)
        return ((x - self.mean) / self.std).contiguous()

    def __repr__(self) -> str:
        return f"Normalize({self.spec})"


def build_transform(spec: InputSpec, train: bool, hflip: float = 0.5) -> Compose:
    """The training or evaluation pipeline for ``spec`` (see the module docstring)."""
    size = spec.image_size
    if train and size <= SMALL_IMAGE_MAX:
        steps: list[Transform] = [
            Resize(size),
            CenterCrop(size),
            RandomCrop(size, padding=size // 8),
        ]
    elif train:
        steps = [RandomResizedCrop(size)]
    else:
        steps = [Resize(spec.resize_size or size), CenterCrop(size)]
    if train and hflip > 0:
        steps.append(RandomHorizontalFlip(hflip))
    steps.append(Normalize(spec))
    return Compose(steps)
