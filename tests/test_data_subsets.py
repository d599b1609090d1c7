"""Class-balanced subsets (``shufflenet.data.subsets``) against counts worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from shufflenet.data import builtin_digits
from shufflenet.data.subsets import balanced_subset, dataset_split


def test_balanced_subset_takes_equal_shares_and_all_of_a_small_class() -> None:
    # class 0: 10 samples, class 1: 10, class 2: 2
    targets = np.array([0] * 10 + [1] * 10 + [2] * 2)
    idx = balanced_subset(targets, 12, seed=3)
    assert len(idx) == 12 and len(set(idx.tolist())) == 12 and np.all(np.diff(idx) > 0)
    counts = np.bincount(targets[idx], minlength=3).tolist()
    # round-robin: 2 rounds give 2+2+2, class 2 is then empty, 3 more rounds give 3+3
    assert counts == [5, 5, 2]
    assert np.array_equal(idx, balanced_subset(targets, 12, seed=3))  # the seed decides
    assert not np.array_equal(idx, balanced_subset(targets, 12, seed=4))
    assert np.bincount(targets[balanced_subset(targets, 7)], minlength=3).tolist() == [3, 2, 2]


def test_balanced_subset_keeps_everything_when_asked_for_as_many() -> None:
    targets = np.array([1, 0, 1])
    assert balanced_subset(targets, None).tolist() == [0, 1, 2]
    assert balanced_subset(targets, 3).tolist() == [0, 1, 2]
    assert balanced_subset(targets, 99).tolist() == [0, 1, 2]


@pytest.mark.parametrize("count", [0, -1, 2.5, True])
def test_balanced_subset_rejects_bad_counts(count) -> None:
    with pytest.raises(ValueError, match="count="):
        balanced_subset(np.array([0, 1, 0, 1]), count)


def test_dataset_split_cuts_a_split_per_class() -> None:
    full = builtin_digits(False)
    ds = dataset_split("builtin", False, 30, seed=1)
    assert len(ds) == 30 and ds.classes == full.classes and ds.name == full.name
    assert np.bincount(ds.targets, minlength=10).tolist() == [3] * 10
    img, label = ds[0]
    assert img.shape == (1, 32, 32) and label == int(ds.targets[0])
    assert len(dataset_split("builtin", False)) == len(full)
