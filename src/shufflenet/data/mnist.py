"""MNIST (and Fashion-MNIST, KMNIST: same layout) from the standard IDX files, gzipped or not.

A directory holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte``, each optionally with ``.gz`` (the dotted spelling ``train-images.idx3-ubyte`` is
accepted too, as is a ``raw/`` sub-directory). IDX: big-endian magic ``0x0000 TT NN`` (TT = 0x08 for uint8,
NN = number of dims), then NN big-endian uint32 sizes, then the data.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from .datasets import ArrayDataset

__all__ = ["read_idx", "find_mnist_files", "load_mnist", "MNIST_MEAN", "MNIST_STD"]

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
NUM_CLASSES = 10  # MNIST, Fashion-MNIST and KMNIST alike
_SPLITS = {True: "train", False: "t10k"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (``.gz`` or raw) into an array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # includes gzip.BadGzipFile
        raise ValueError(f"cannot read IDX file {str(path)!r}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(
            f"{str(path)!r} is not an IDX file of unsigned bytes (magic {data[:4].hex()})"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = math.prod(shape) if shape else 0  # exact: no int64 overflow on absurd sizes
    if len(data) != header + count:
        raise ValueError(
            f"IDX file {str(path)!r} declares shape {shape} ({count} bytes) but holds "
            f"{len(data) - header} bytes of data (truncated?)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, split: str, kind: str, ndim: int) -> Path | None:
    for d in (root, root / "raw"):
        for stem in (f"{split}-{kind}-idx{ndim}-ubyte", f"{split}-{kind}.idx{ndim}-ubyte"):
            for name in (stem, stem + ".gz"):
                if (d / name).is_file():
                    return d / name
    return None


def find_mnist_files(root: str | Path, train: bool) -> tuple[Path, Path] | None:
    """``(images, labels)`` paths of the split under ``root``, or ``None`` when either is missing."""
    root = Path(root)
    split = _SPLITS[train]
    images, labels = _find(root, split, "images", 3), _find(root, split, "labels", 1)
    return (images, labels) if images and labels else None


def load_mnist(root: str | Path, train: bool = True) -> ArrayDataset:
    """The training (60k) or test (10k) split under ``root``: (28, 28) grey images, classes "0".."9".

    A label outside 0..9 is a ``ValueError`` naming the file, the first such label and its index.
    """
    files = find_mnist_files(root, train)
    if files is None:
        raise FileNotFoundError(
            f"no MNIST IDX files for the {_SPLITS[train]!r} split under {str(root)!r} (expected "
            f"{_SPLITS[train]}-images-idx3-ubyte[.gz] and {_SPLITS[train]}-labels-idx1-ubyte[.gz])"
        )
    images, labels = read_idx(files[0]), read_idx(files[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"MNIST files {str(files[0])!r} and {str(files[1])!r} disagree: images {images.shape}, "
            f"labels {labels.shape}"
        )
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if len(bad):
        raise ValueError(
            f"MNIST labels file {str(files[1])!r} holds label {int(labels[bad[0]])} at index "
            f"{int(bad[0])} ({len(bad)} labels in all outside 0..{NUM_CLASSES - 1})"
        )
    return ArrayDataset(
        images[..., None],  # (N, 28, 28, 1)
        labels,
        classes=[str(c) for c in range(NUM_CLASSES)],
        name="mnist",
        mean=MNIST_MEAN,
        std=MNIST_STD,
        hflip=False,
    )
