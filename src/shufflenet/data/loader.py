"""Dataset format detection, the default input convention of a dataset, and data loaders.

``build_dataset(path, train)`` recognises ``"builtin"`` (the digits bundled with scikit-learn), MNIST IDX
files, CIFAR-10/100 python batches and image folders. ``make_loader`` wraps a dataset so that

- each sample is transformed with its own generator seeded from ``(seed, epoch, index)``: results do not depend
  on the number of workers, and a run resumed in the middle of an epoch sees the same augmentation;
- training shards are those of ``DistributedSampler`` (a permutation of ``seed + epoch``; one shard per rank,
  a single process is rank 0 of 1), evaluation shards are ``range(rank, n, world)`` with no padding;
- unreadable images are reported in the third element of every batch, ``(images, labels, skipped_paths)``.
  Evaluation drops them from their batch. Training replaces each by another readable image of the dataset,
  chosen from the sample's own ``(seed, epoch, index)``: batches keep their size (a batch is never empty, even
  when all of its files are unreadable, and every data-parallel rank takes the same number of steps).
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from .cifar import find_cifar_root, load_cifar
from .datasets import builtin_digits
from .folder import UnreadableImage, find_folder_layout, load_folder
from .mnist import find_mnist_files, load_mnist
from .spec import InputSpec
from .transforms import SMALL_IMAGE_MAX, Normalize, Transform, sample_generator

__all__ = [
    "FORMATS",
    "detect_format",
    "build_dataset",
    "default_spec",
    "SampleDataset",
    "EpochSampler",
    "make_loader",
    "set_epoch",
    "collate",
]

FORMATS = {
    "builtin": "'builtin': scikit-learn's bundled 8x8 handwritten digits, upsampled (no download)",
    "mnist": "MNIST IDX files: a directory with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]",
    "cifar10": "CIFAR-10 python version: cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)",
    "cifar100": "CIFAR-100 python version: cifar-100-python/ (train, test, meta)",
    "folder": "image folder: ROOT/<class>/*.jpg|png, or ROOT/train/<class>/ with ROOT/val/<class>/",
}


def _accepted() -> str:
    """The accepted formats on one line (error messages are one line; ``FORMATS`` has the details)."""
    return (
        "accepted: 'builtin', a directory of MNIST IDX files, CIFAR-10/100 python batches "
        "(cifar-10-batches-py/, cifar-100-python/) or an image folder (ROOT/<class>/*.jpg|png, or "
        "ROOT/train/<class>/ with ROOT/val/<class>/)"
    )


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of ``path`` (a key of :data:`FORMATS`); a clear ``ValueError`` when there is none."""
    if str(path) == "builtin":
        return "builtin"
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data path {str(p)!r} does not exist; {_accepted()}")
    if not p.is_dir():
        hint = (
            " (extract the archive first)"
            if p.name.endswith((".zip", ".tar", ".gz", ".tgz"))
            else ""
        )
        raise ValueError(
            f"data path {str(p)!r} is a file, not a dataset directory{hint}; {_accepted()}"
        )
    if find_mnist_files(p, True) or find_mnist_files(p, False):
        return "mnist"
    found = find_cifar_root(p)
    if found is not None:
        return found[0]
    if find_folder_layout(p) is not None:
        return "folder"
    raise ValueError(f"unrecognised dataset layout at {str(p)!r}; {_accepted()}")


def build_dataset(
    path: str | os.PathLike[str], train: bool, val_fraction: float = 0.2, image_size: int = 32
) -> Dataset:
    """The training (``train=True``) or evaluation split of the dataset at ``path`` (format detected).

    ``image_size`` is the side the built-in digits are upsampled to; ``val_fraction`` the share held out
    for evaluation by formats without their own test split (built-in digits, a single image folder).
    """
    fmt = detect_format(path)
    if fmt == "builtin":
        return builtin_digits(train, image_size=image_size, val_fraction=val_fraction)
    if fmt == "mnist":
        return load_mnist(path, train)
    if fmt in ("cifar10", "cifar100"):
        return load_cifar(path, train)
    return load_folder(path, train, val_fraction)


def default_spec(
    dataset: Dataset, image_size: int | None = None, in_chans: int | None = None
) -> InputSpec:
    """The input convention to train on ``dataset``: its own size and channels unless overridden."""
    size = image_size or getattr(dataset, "image_size", None) or 224
    native = getattr(dataset, "channels", 3)
    chans = in_chans or native
    if chans not in (1, 3):
        raise ValueError(f"in_chans={chans} must be 1 (grey) or 3 (RGB)")
    mean, std = tuple(dataset.mean), tuple(dataset.std)
    if chans != native:  # statistics of the converted image
        if chans == 3:
            mean, std = mean * 3, std * 3
        else:
            w = Normalize.LUMA
            mean = (sum(a * b for a, b in zip(w, mean)),)
            std = (sum(a * b for a, b in zip(w, std)),)
    resize = None if size <= SMALL_IMAGE_MAX else round(size / 0.875)
    return InputSpec(size, resize, "L" if chans == 1 else "RGB", 1.0, mean, std)


class _Skipped(NamedTuple):
    """An unreadable sample dropped from its batch."""

    path: str
    reason: str


class _Replaced(NamedTuple):
    """A readable sample standing in for the unreadable file ``path``."""

    image: torch.Tensor
    label: int
    path: str


RANDOM_PROBES = 32  # random picks for a replacement before scanning the dataset in order


class SampleDataset(Dataset):
    """``dataset`` with ``transform`` applied under a per-sample generator; keys are ``(epoch, index)``.

    An unreadable sample becomes a ``_Skipped`` marker, or with ``replace_unreadable`` a ``_Replaced`` one
    holding another readable sample: up to :data:`RANDOM_PROBES` indices drawn from ``(seed, epoch, index)``,
    then the following indices in order. A dataset without any readable image is a ``ValueError``.
    """

    def __init__(
        self,
        dataset: Dataset,
        transform: Transform,
        seed: int = 0,
        replace_unreadable: bool = False,
    ) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self.replace_unreadable = replace_unreadable

    def __len__(self) -> int:
        return len(self.dataset)

    def _candidates(self, epoch: int, index: int) -> Iterator[int]:
        n = len(self.dataset)
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, index, 1])
        yield from (int(j) for j in rng.integers(0, n, RANDOM_PROBES) if j != index)
        yield from ((index + k) % n for k in range(1, n))

    def __getitem__(self, key: tuple[int, int] | int):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        g = sample_generator(self.seed, epoch, index)
        try:
            img, label = self.dataset[index]
        except UnreadableImage as e:
            if not self.replace_unreadable:
                return _Skipped(e.path, e.reason)
            for j in self._candidates(epoch, index):
                try:
                    img, label = self.dataset[j]
                except UnreadableImage:
                    continue
                return _Replaced(self.transform(img, g), label, e.path)
            raise ValueError(
                f"none of the {len(self.dataset)} images of the dataset is readable "
                f"(e.g. {e.path!r}: {e.reason})"
            ) from None
        return self.transform(img, g), label


def collate(samples: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack the readable samples; returns ``(images (N, C, H, W), labels (N,), skipped paths)``.

    Skipped paths are those of dropped samples and of the files that replaced samples stand in for.
    """
    good = [s for s in samples if not isinstance(s, _Skipped)]
    skipped = [s.path for s in samples if isinstance(s, _Skipped | _Replaced)]
    if not good:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long), skipped
    images = torch.stack([s[0] for s in good])
    labels = torch.tensor([s[1] for s in good], dtype=torch.long)
    return images, labels, skipped


class EpochSampler(Sampler):
    """Keys ``(epoch, index)`` of one rank's shard, leaving out the first ``skip`` of them (resume).

    Training (``shuffle=True``): the shard of :class:`~torch.utils.data.DistributedSampler`, reshuffled from
    ``seed + epoch``. Evaluation: ``range(rank, n, world)``, in order, without padding.
    """

    def __init__(
        self,
        n: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        epoch: int = 0,
        skip: int = 0,
    ) -> None:
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.epoch, self.skip = epoch, skip

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.rank, self.n, self.world))
        inner = DistributedSampler(
            range(self.n), num_replicas=self.world, rank=self.rank, shuffle=True, seed=self.seed
        )
        inner.set_epoch(self.epoch)
        return iter(inner)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in itertools.islice(self._indices(), self.skip, None):
            yield self.epoch, i

    def __len__(self) -> int:
        shard = (
            -(-self.n // self.world) if self.shuffle else len(range(self.rank, self.n, self.world))
        )
        return max(0, shard - self.skip)


def make_loader(
    dataset: Dataset,
    transform: Transform,
    batch_size: int,
    train: bool,
    *,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader over this rank's shard; ``batch_size`` is per rank. Call :func:`set_epoch` before each epoch.

    Training drops the last incomplete batch (a batch of one breaks batch norm) and replaces unreadable
    images (see the module docstring); evaluation drops them. Workers persist across epochs: the epoch travels
    with each key, so they hold no per-epoch state.
    """
    sampler = EpochSampler(len(dataset), train, seed, rank, world)
    return DataLoader(
        SampleDataset(dataset, transform, seed, replace_unreadable=train),
        batch_sampler=BatchSampler(sampler, batch_size, drop_last=train),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=_ignore_sigint,
        generator=torch.Generator().manual_seed(
            seed
        ),  # leaves the global generator alone (exact resume)
    )


def _ignore_sigint(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the training process decides when to stop, not the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def set_epoch(loader: DataLoader, epoch: int, skip_batches: int = 0) -> None:
    """Make ``loader`` yield ``epoch``, starting after ``skip_batches`` batches (resume mid-epoch)."""
    batches: BatchSampler = loader.batch_sampler
    batches.sampler.set_epoch(epoch, skip_batches * batches.batch_size)
