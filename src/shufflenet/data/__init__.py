"""Datasets, readers of standard formats, and transforms (no downloads: data is local or bundled)."""

from .datasets import ArrayDataset, Subset, builtin_digits, split_indices
from .evaluation import (
    SPLITS,
    EvalData,
    evaluation_data,
    model_class_names,
    readable_class_names,
)
from .imagenet import IMAGENET_NUM_CLASSES, imagenet_classes, imagenet_labels, imagenet_wnids
from .loader import FORMATS, build_dataset, default_spec, detect_format, make_loader, set_epoch
from .spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from .transforms import build_transform

__all__ = [
    "FORMATS",
    "IMAGENET_MEAN",
    "IMAGENET_NUM_CLASSES",
    "IMAGENET_STD",
    "SPLITS",
    "ArrayDataset",
    "EvalData",
    "InputSpec",
    "Subset",
    "build_dataset",
    "build_transform",
    "builtin_digits",
    "default_spec",
    "detect_format",
    "evaluation_data",
    "imagenet_classes",
    "imagenet_labels",
    "imagenet_wnids",
    "make_loader",
    "model_class_names",
    "readable_class_names",
    "set_epoch",
    "split_indices",
]
