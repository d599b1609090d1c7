"""In-memory image datasets, the deterministic train/validation split, and the built-in digits.

Every dataset here yields ``(image, label)`` with ``image`` a (C, H, W) uint8 tensor (C = 1 for grey, 3 for RGB)
and carries ``classes`` (names), ``name``, ``mean``/``std`` (of its pixels in [0, 1], for normalisation) and
``hflip`` (whether mirror images are valid augmentation: not for digits).

The built-in set is scikit-learn's copy of the UCI handwritten digits (1,797 images of 8x8 pixels, 10 classes,
values 0..16), which ships inside the scikit-learn package: no download. It is upsampled (bilinear) to
``image_size`` (32 by default) and split 80/20 per class with a fixed seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ArrayDataset", "Subset", "split_indices", "builtin_digits"]

SPLIT_SEED = 0  # the train/validation split does not move with the training seed


class ArrayDataset(torch.utils.data.Dataset):
    """Images held in memory as one uint8 array.

    Args:
        images: (N, H, W, C) uint8.
        labels: (N,) integer class indices.
        classes: class names, ``len(classes) > max(labels)``.
        name: short dataset name for logs and checkpoints.
        mean, std: per-channel pixel statistics in [0, 1] (C values).
        hflip: mirror images are valid samples of the classes.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        classes: Sequence[str],
        name: str,
        mean: Sequence[float],
        std: Sequence[float],
        hflip: bool = True,
    ) -> None:
        images = np.ascontiguousarray(images)
        if not images.flags.writeable:  # e.g. np.frombuffer: torch wants writable memory
            images = images.copy()
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(
                f"images must be a uint8 array of shape (N, H, W, 1 or 3), got {images.dtype} "
                f"{images.shape}"
            )
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(images),):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(
                f"labels must lie in [0, {len(classes)}), got {labels.min()}..{labels.max()}"
            )
        self.images = images
        self.targets = labels
        self.classes = list(classes)
        self.name = name
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[i]).permute(2, 0, 1), int(self.targets[i])  # (C, H, W)

    @property
    def channels(self) -> int:
        return self.images.shape[-1]

    @property
    def image_size(self) -> int:
        return max(self.images.shape[1:3])


class Subset(torch.utils.data.Dataset):
    """The samples ``indices`` of ``dataset``, keeping its attributes (classes, name, mean, ...)."""

    def __init__(self, dataset: torch.utils.data.Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = np.asarray(dataset.targets)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[int(self.indices[i])]

    def __getattr__(self, name: str):
        if name in ("dataset", "indices", "targets"):  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def split_indices(
    targets: Sequence[int] | np.ndarray, val_fraction: float, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: ``round(val_fraction * n_c)`` of every class to validation; sorted index arrays."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must lie strictly between 0 and 1")
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        k = int(round(val_fraction * len(idx)))
        val.append(rng.permutation(idx)[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train_idx = np.setdiff1d(np.arange(len(targets)), val_idx)
    return train_idx, val_idx


def builtin_digits(train: bool = True, image_size: int = 32, val_fraction: float = 0.2) -> Subset:
    """scikit-learn's bundled 8x8 handwritten digits, upsampled to ``image_size``; grey, 10 classes.

    ``train=True`` gives 80% of every class (1,438 images with the default split), ``False`` the rest (359).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0))[:, None]  # (N, 1, 8, 8)
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, S, S, 1)
    full = ArrayDataset(
        images,
        digits.target,
        classes=[str(d) for d in range(10)],
        name="builtin-digits",
        mean=(round(float(images.mean()) / 255, 4),),
        std=(round(float(images.std()) / 255, 4),),
        hflip=False,
    )
    train_idx, val_idx = split_indices(full.targets, val_fraction)
    return Subset(full, train_idx if train else val_idx)
