"""Datasets, readers of standard formats, and transforms."""

from .spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "InputSpec"]
