"""The 1,000 ImageNet (ILSVRC-2012) classes: WordNet IDs and readable labels, shipped with the package.

Models released for ImageNet (and converted from those releases) have 1,000 outputs in the order of the sorted
WordNet IDs (``n01440764`` "tench" first, ``n15075141`` "toilet tissue" last), the order of the class folders of
the ILSVRC-2012 training and validation sets. The data lives in ``imagenet_classes.json`` beside this module.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

__all__ = ["IMAGENET_NUM_CLASSES", "imagenet_classes", "imagenet_wnids", "imagenet_labels"]

IMAGENET_NUM_CLASSES = 1000


@functools.cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """``((wnid, label), ...)`` for output 0..999 (see the module docstring)."""
    text = resources.files(__package__).joinpath("imagenet_classes.json").read_text("utf-8")
    return tuple((wnid, label) for wnid, label in json.loads(text)["classes"])


def imagenet_wnids() -> list[str]:
    """The 1,000 WordNet IDs (``"n01440764"``, ...) in output order: the names of ImageNet class folders."""
    return [wnid for wnid, _ in imagenet_classes()]


def imagenet_labels() -> list[str]:
    """The 1,000 readable labels (``"tench"``, ...) in output order."""
    return [label for _, label in imagenet_classes()]
