"""Class-balanced subsets of a dataset: the budget knob of experiments that train on part of the data."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from .datasets import Subset
from .loader import build_dataset

__all__ = ["balanced_subset", "dataset_split"]


def balanced_subset(
    targets: Sequence[int] | np.ndarray, count: int | None, seed: int = 0
) -> np.ndarray:
    """Sorted indices of ``count`` samples, as equal per class as possible, chosen with ``seed``.

    Classes are visited in turn, each giving its next sample (in a random order of its samples), until
    ``count`` are chosen: a class with fewer samples than its share gives all it has. ``None`` (or a count of
    at least the dataset size) keeps every sample.
    """
    targets = np.asarray(targets)
    if count is None or count >= len(targets):
        return np.arange(len(targets))
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
        raise ValueError(f"subset size count={count!r} must be a positive integer")
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(targets == c)) for c in np.unique(targets)]
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
    """The training or evaluation split at ``path`` (any format :func:`build_dataset` reads), cut to a
    class-balanced ``count`` (:func:`balanced_subset`) when given."""
    ds = build_dataset(path, train)
    if count is None or count >= len(ds):
        return ds
    return Subset(ds, balanced_subset(ds.targets, count, seed))
