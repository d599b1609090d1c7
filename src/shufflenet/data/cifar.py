"""CIFAR-10 and CIFAR-100, the "python version" batches.

CIFAR-10: ``cifar-10-batches-py/`` with ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and
``batches.meta`` (``label_names``). CIFAR-100: ``cifar-100-python/`` with ``train``, ``test`` and ``meta``
(``fine_label_names``; the fine labels are used). Each batch is a pickled dict with ``data`` (uint8, N x 3072:
the R, G and B planes of a 32x32 image, row-major) and ``labels`` / ``fine_labels``.

The batches are pickles. They are read with :class:`SafeUnpickler`, which resolves only the globals NumPy
needs to rebuild an array (``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``) and ``_codecs.encode``
(used by protocol-2 pickles for bytes): a file asking for anything else is refused before it can run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import ArrayDataset

__all__ = ["SafeUnpickler", "safe_load_pickle", "find_cifar_root", "load_cifar"]

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

# variant -> (directory name, train files, test files, meta file, label key, names key, mean, std)
_LAYOUTS: dict[str, tuple] = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        b"labels",
        b"label_names",
        CIFAR10_MEAN,
        CIFAR10_STD,
    ),
    "cifar100": (
        "cifar-100-python",
        ["train"],
        ["test"],
        "meta",
        b"fine_labels",
        b"fine_label_names",
        CIFAR100_MEAN,
        CIFAR100_STD,
    ),
}

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain containers and NumPy arrays only (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: CIFAR batches hold only dicts, lists, bytes and "
            "NumPy arrays"
        )


def safe_load_pickle(path: str | Path) -> Any:
    """Load a CIFAR batch (bytes keys, as written by Python 2 or 3) with :class:`SafeUnpickler`."""
    data = Path(path).read_bytes()
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise ValueError(f"{str(path)!r} is not a CIFAR python batch: {e}") from e
    except (
        Exception
    ) as e:  # damaged pickles raise many types (EOFError, LookupError, MemoryError, ...)
        raise ValueError(
            f"{str(path)!r} is not a readable CIFAR python batch (truncated?): {type(e).__name__}: {e}"
        ) from e


def find_cifar_root(path: str | Path) -> tuple[str, Path] | None:
    """``(variant, directory)`` when ``path`` is (or directly contains) a CIFAR-10/100 batch directory."""
    path = Path(path)
    for variant, (dirname, train, test, meta, *_) in _LAYOUTS.items():
        for d in (path, path / dirname):
            if all((d / f).is_file() for f in [*train, *test, meta]):
                return variant, d
    return None


def _field(d: Any, key: bytes, path: Path) -> Any:
    # Python 2 pickles (and ours) load with bytes keys, Python 3 ones written with str keys as str.
    if isinstance(d, dict):
        for k in (key, key.decode()):
            if k in d:
                return d[k]
    raise ValueError(f"{str(path)!r} is not a CIFAR python batch: no {key.decode()!r} field")


def _read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, list[int]]:
    batch = safe_load_pickle(path)
    try:
        data = np.asarray(_field(batch, b"data", path), dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = [int(y) for y in _field(batch, label_key, path)]
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{str(path)!r} is not a CIFAR python batch of N x 3072 bytes: {e}") from e
    if len(data) != len(labels):
        raise ValueError(f"{str(path)!r} holds {len(data)} images but {len(labels)} labels")
    return data, labels


def load_cifar(path: str | Path, train: bool = True) -> ArrayDataset:
    """CIFAR-10 or CIFAR-100 (detected) training (50k) or test (10k) images: (32, 32) RGB."""
    found = find_cifar_root(path)
    if found is None:
        raise FileNotFoundError(
            f"no CIFAR-10/100 python batches under {str(path)!r} (expected cifar-10-batches-py/ with "
            "data_batch_1..5, test_batch, batches.meta, or cifar-100-python/ with train, test, meta)"
        )
    variant, root = found
    _, train_files, test_files, meta_file, label_key, names_key, mean, std = _LAYOUTS[variant]
    meta = safe_load_pickle(root / meta_file)
    raw_names = _field(meta, names_key, root / meta_file)
    if not isinstance(raw_names, list | tuple):
        raise ValueError(
            f"{str(root / meta_file)!r} is not a CIFAR meta file: {names_key.decode()!r} is a "
            f"{type(raw_names).__name__}, not a list of names"
        )
    try:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw_names]
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{str(root / meta_file)!r} holds a class name that is not UTF-8: {e}"
        ) from e
    parts = [_read_batch(root / f, label_key) for f in (train_files if train else test_files)]
    images = np.concatenate([d for d, _ in parts]).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
    labels = [y for _, ys in parts for y in ys]
    return ArrayDataset(images, labels, names, name=variant, mean=mean, std=std, hflip=True)
