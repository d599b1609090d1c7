"""Datasets, readers of standard formats, and transforms (no downloads: data is local or bundled)."""

from .datasets import ArrayDataset, Subset, builtin_digits, split_indices
from .loader import FORMATS, build_dataset, default_spec, detect_format, make_loader, set_epoch
from .spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from .transforms import build_transform

__all__ = [
    "FORMATS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArrayDataset",
    "InputSpec",
    "Subset",
    "build_dataset",
    "build_transform",
    "builtin_digits",
    "default_spec",
    "detect_format",
    "make_loader",
    "set_epoch",
    "split_indices",
]
