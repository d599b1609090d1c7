"""Image folders: one sub-folder per class, images decoded by Pillow (JPEG, PNG, BMP, GIF, WebP, TIFF).

Two layouts are recognised:

- ``root/train/<class>/*`` with ``root/val/<class>/*`` (or ``test/``): the given splits;
- ``root/<class>/*``: one pool, split into training and validation per class with a fixed seed.

Images are decoded when a sample is read, as 8-bit RGB (:func:`read_image` says how each Pillow mode is
mapped; 16-bit images are scaled, not clipped). An image that cannot be decoded raises
:class:`UnreadableImage`; the loader (:mod:`.loader`) catches it and counts it, and drops the sample from its
batch (evaluation) or puts another readable image in its place (training), so a damaged file never stops an
epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .datasets import Subset, split_indices
from .spec import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGE_EXTENSIONS",
    "UnreadableImage",
    "ImageFolder",
    "find_folder_layout",
    "load_folder",
    "read_image",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_EVAL_DIRS = ("val", "valid", "validation", "test")


class UnreadableImage(ValueError):
    """An image file that Pillow cannot decode; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot read image {str(path)!r}: {reason}")
        self.path, self.reason = str(path), reason


# Single-channel modes whose values are not 0..255: 16-bit grey ("I" is how Pillow before 11 opens a 16-bit
# PNG; wider 32-bit values clip at 65535) and 32-bit float, which Pillow itself treats as 0..255.
_WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 255}


def _grey_to_8bit(im: Image.Image) -> np.ndarray:
    """(H, W) uint8 of a 16-bit or float grey image, scaled from its mode's range to 0..255 and rounded."""
    values = np.asarray(im, dtype=np.float32)  # exact for 16-bit integers
    if not np.isfinite(values).all():
        raise ValueError(f"mode {im.mode} image holds non-finite pixel values")
    top = _WIDE_MODES[im.mode]
    return np.rint(np.clip(values, 0, top) * (255 / top)).astype(np.uint8)


def read_image(path: str | Path) -> torch.Tensor:
    """Decode ``path`` to a (3, H, W) uint8 RGB tensor; raises :class:`UnreadableImage`.

    Colour modes go through Pillow's conversion to RGB: palette colours are looked up, CMYK becomes
    ``255 * (1 - C/255) * (1 - K/255)`` (and likewise for M, Y), alpha is dropped (RGBA, LA, PA), grey is
    repeated in the three channels. 16-bit grey (``I;16``, ``I``) is scaled by ``255/65535``, float grey
    (``F``) is read as 0..255 (Pillow's convention); both are rounded and clipped to 0..255. An image of more
    pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow warns above it) is refused before it is decoded.
    """
    try:
        with Image.open(path) as im:
            limit = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb threshold (None: no limit)
            if limit is not None and im.width * im.height > limit:
                raise ValueError(
                    f"{im.width}x{im.height} pixels exceed Pillow's limit of {limit:,} (PIL.Image."
                    "MAX_IMAGE_PIXELS): a damaged header or a decompression bomb"
                )
            if im.mode in _WIDE_MODES:
                rgb = np.repeat(_grey_to_8bit(im)[..., None], 3, axis=2)  # (H, W, 3)
            else:
                rgb = np.asarray(im.convert("RGB"))  # (H, W, 3)
    # Pillow's decoders raise many types on damaged files (OSError, TypeError, struct.error, ...).
    except Exception as e:
        raise UnreadableImage(path, f"{type(e).__name__}: {e}") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def _image_files(d: Path) -> list[Path]:
    return sorted(
        p
        for p in d.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def _class_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


class ImageFolder(torch.utils.data.Dataset):
    """All images under ``root/<class>/``; ``classes`` are the sorted sub-folder names.

    Pass ``classes`` to index against another split's class list (a folder not in it is an error).
    """

    name = "folder"
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    hflip = True
    channels = 3
    image_size = None  # varies per image

    def __init__(self, root: str | Path, classes: list[str] | None = None) -> None:
        self.root = Path(root)
        dirs = _class_dirs(self.root)
        found = [d.name for d in dirs]
        self.classes = list(classes) if classes is not None else found
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise ValueError(
                f"class folders {unknown} under {str(self.root)!r} are not among {self.classes}"
            )
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(p, index[d.name]) for d in dirs for p in _image_files(d)]
        if not self.samples:
            raise ValueError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders of {str(self.root)!r}"
            )
        self.targets = np.array([y for _, y in self.samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return read_image(path), label


def find_folder_layout(path: str | Path) -> tuple[Path, Path | None] | None:
    """``(train_dir, eval_dir)`` for the split layout, ``(root, None)`` for one pool, ``None`` otherwise."""
    path = Path(path)
    if _class_dirs(path / "train"):
        for name in _EVAL_DIRS:
            if _class_dirs(path / name):
                return path / "train", path / name
        return path / "train", None
    dirs = _class_dirs(path)
    if dirs and any(_image_files(d)[:1] for d in dirs):
        return path, None
    return None


def load_folder(path: str | Path, train: bool = True, val_fraction: float = 0.2):
    """The training or evaluation images of an image-folder tree (see the module docstring)."""
    layout = find_folder_layout(path)
    if layout is None:
        raise FileNotFoundError(f"{str(path)!r} has no class sub-folders with images")
    train_dir, eval_dir = layout
    pool = ImageFolder(train_dir)
    if eval_dir is not None:
        return pool if train else ImageFolder(eval_dir, classes=pool.classes)
    train_idx, val_idx = split_indices(pool.targets, val_fraction)
    return Subset(pool, train_idx if train else val_idx)
