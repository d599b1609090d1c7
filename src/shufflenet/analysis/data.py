"""Loaders for the analyses: a dataset path (or ``"builtin"``) in, batches of normalised images out.

Thin wrappers over :mod:`shufflenet.data` that add a class-balanced subset (the experiments' budget knob).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset

from ..data.spec import InputSpec

__all__ = ["balanced_subset", "dataset_split", "loader_for"]


def balanced_subset(
    targets: Sequence[int] | np.ndarray, count: int | None, seed: int = 0
) -> np.ndarray:
    """Sorted indices of ``count`` samples, as equal per class as possible, chosen with ``seed``.

    ``None`` (or a count of at least the dataset size) keeps every sample.
    """
    targets = np.asarray(targets)
    if count is None or count >= len(targets):
        return np.arange(len(targets))
    if count < 1:
        raise ValueError(f"subset size {count} must be >= 1")
    rng = np.random.default_rng(seed)
    classes = np.unique(targets)
    per_class = [rng.permutation(np.flatnonzero(targets == c)) for c in classes]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < count:  # round-robin over the classes
        for idx in per_class:
            if depth < len(idx) and len(chosen) < count:
                chosen.append(int(idx[depth]))
        depth += 1
    return np.sort(np.asarray(chosen, dtype=np.int64))


def dataset_split(
    path: str | os.PathLike[str], train: bool, count: int | None = None, seed: int = 0
) -> Dataset:
    """The training or evaluation split at ``path`` (any format :func:`shufflenet.data.build_dataset` reads),
    cut to a class-balanced ``count`` when given."""
    from ..data import Subset, build_dataset

    ds = build_dataset(path, train)
    if count is None or count >= len(ds):
        return ds
    return Subset(ds, balanced_subset(ds.targets, count, seed))


def loader_for(
    dataset: Dataset, spec: InputSpec, train: bool, batch_size: int, seed: int = 0, workers: int = 0
) -> DataLoader:
    """Batches ``(images, labels, skipped)`` of ``dataset`` prepared for a model with input convention
    ``spec`` (training: random crop and flip; evaluation: resize and centre crop)."""
    from ..data import build_transform, make_loader

    hflip = 0.5 if getattr(dataset, "hflip", True) else 0.0
    transform = build_transform(spec, train, hflip=hflip)
    return make_loader(dataset, transform, batch_size, train, seed=seed, workers=workers)
