"""The images to evaluate a model on, with labels matched to the model's outputs by class name.

:func:`evaluation_data` decides two things.

Which images (``split``):

- ``"auto"`` (the default): an image folder without a train/val split of its own is evaluated whole; a folder
  with one (``train/`` beside ``val/``, ``valid/``, ``validation/`` or ``test/``) on its evaluation split;
  MNIST and CIFAR on their test files; the built-in digits on their held-out share. A single folder that is the
  model's own training data (``training_data``) is evaluated on the share held out at training time instead,
  since the model was trained on the rest.
- ``"val"`` / ``"train"``: that split (for a single folder: the share held out per class by training, with the
  same seed, or the rest); ``"all"``: every image of a folder (both splits of a split layout).

Which labels: every class of the data is matched by name to the model's class names (those stored with the
model, or :func:`model_class_names`). The data may hold a subset of the model's classes: labels are indices of
the model's outputs, so accuracy is over the data's images and predictions range over all outputs. A class the
model does not know is an error that names it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .datasets import Subset, split_indices
from .folder import IMAGE_EXTENSIONS, ImageFolder, _class_dirs, _image_files, find_folder_layout
from .imagenet import IMAGENET_NUM_CLASSES, imagenet_labels, imagenet_wnids
from .loader import build_dataset, detect_format

__all__ = [
    "SPLITS",
    "EvalData",
    "evaluation_data",
    "model_class_names",
    "readable_class_names",
]

SPLITS = ("auto", "all", "val", "train")


@dataclasses.dataclass
class EvalData:
    """Images to evaluate and how they relate to the model.

    Attributes:
        dataset: yields ``(image, label)``, ``label`` an index of the model's outputs.
        class_names: one name per model output (the names classes were matched against).
        present: the outputs that have images in ``dataset``, ascending.
        split: the split used, ``"all"``, ``"val"`` or ``"train"``.
        description: which images these are, for people (``"the whole folder"``, ...).
        notes: things worth telling the user (assumed class names, a split chosen for them).
    """

    dataset: Dataset
    class_names: list[str]
    present: list[int]
    split: str
    description: str
    notes: list[str]

    def __len__(self) -> int:
        return len(self.dataset)


def model_class_names(
    stored: Sequence[str] | None, num_outputs: int
) -> tuple[list[str], str | None]:
    """The class name of each of a model's ``num_outputs`` outputs, and a note when they were assumed.

    ``stored`` (the names saved with the model) must have one name per output. A model without names gets the
    ImageNet WordNet IDs when it has 1,000 outputs (released and converted ImageNet models), else the output
    numbers ``"0"``, ``"1"``, ...
    """
    if stored is not None:
        names = list(stored)
        if len(names) != num_outputs:
            raise ValueError(
                f"the model stores {len(names)} class names for its {num_outputs} outputs; "
                "they must be one per output"
            )
        return names, None
    if num_outputs == IMAGENET_NUM_CLASSES:
        return imagenet_wnids(), (
            "the model stores no class names: its 1,000 outputs are taken to be the ImageNet classes "
            "(WordNet IDs n01440764 ... n15075141, sorted)"
        )
    return [str(i) for i in range(num_outputs)], (
        f"the model stores no class names: its outputs are named by number, 0..{num_outputs - 1}"
    )


def readable_class_names(stored: Sequence[str] | None, num_outputs: int) -> list[str]:
    """Names to show for each output: ImageNet labels (``"tench"``) in place of WordNet IDs, else the names."""
    names, _ = model_class_names(stored, num_outputs)
    return imagenet_labels() if names == imagenet_wnids() else names


class _Relabelled(Dataset):
    """``dataset`` with label ``y`` replaced by ``mapping[y]``; other attributes pass through."""

    def __init__(self, dataset: Dataset, mapping: np.ndarray) -> None:
        self.dataset, self.mapping = dataset, mapping
        self.targets = mapping[np.asarray(dataset.targets)]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, y = self.dataset[i]
        return img, int(self.mapping[y])

    def __getattr__(self, name: str):
        if name in ("dataset", "mapping", "targets"):  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _unmatched_error(unknown: list[str], where: str, names: list[str]) -> ValueError:
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return ValueError(
        f"class {'folders' if where.startswith('folder') else 'names'} {unknown} of {where} match none "
        f"of the model's {len(names)} class names ({shown}): rename them to the model's names or "
        "evaluate a model trained on these classes"
    )


def _check_folder(path: Path) -> None:
    """A clear error for a directory that is not an image folder of class sub-folders."""
    dirs = _class_dirs(path)
    if dirs and not any(_image_files(d)[:1] for d in dirs):
        raise ValueError(
            f"the class sub-folders of {str(path)!r} ({', '.join(d.name for d in dirs[:5])}"
            f"{', ...' if len(dirs) > 5 else ''}) hold no images ({', '.join(IMAGE_EXTENSIONS)})"
        )
    if not dirs and any(
        p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir() if p.is_file()
    ):
        raise ValueError(
            f"the images of {str(path)!r} are not in class sub-folders: evaluation needs one sub-folder "
            "per class, named as the model's classes (`shufflenet predict` takes loose images)"
        )


def _same_path(a: str | os.PathLike[str], b: str | os.PathLike[str] | None) -> bool:
    if b is None or str(b) == "builtin" or str(a) == "builtin":
        return str(a) == str(b)
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _folder_data(
    path: Path,
    names: list[str],
    split: str,
    val_fraction: float,
    training_data: str | os.PathLike[str] | None,
) -> tuple[Dataset, str, str, list[str]]:
    train_dir, eval_dir = find_folder_layout(path)  # a folder: detect_format said so
    dirs = [train_dir] if eval_dir is None else [train_dir, eval_dir]
    known = set(names)
    for d in dirs:
        unknown = [c.name for c in _class_dirs(d) if c.name not in known]
        if unknown:
            raise _unmatched_error(unknown, f"folder {str(d)!r}", names)
    notes: list[str] = []
    if eval_dir is not None:
        split = "val" if split == "auto" else split
        if split == "all":
            both = ImageFolder(train_dir, classes=names)
            val = ImageFolder(eval_dir, classes=names)
            both.samples += val.samples
            both.targets = np.concatenate([both.targets, val.targets])
            return both, "all", f"its {train_dir.name}/ and {eval_dir.name}/ images", notes
        chosen = eval_dir if split == "val" else train_dir
        return ImageFolder(chosen, classes=names), split, f"its {chosen.name}/ images", notes
    if split == "auto":
        if _same_path(path, training_data):
            split = "val"
            notes.append(
                f"{str(path)!r} is the model's training data: evaluating the {val_fraction:.0%} of it held "
                "out at training time (--split all for every image)"
            )
        else:
            split = "all"
    folder = ImageFolder(
        train_dir, classes=names
    )  # train_dir: the folder itself, or its only split
    if split == "all":
        return folder, "all", "the whole folder", notes
    # The split of training: stratified over the folder's own classes, numbered in sorted name order.
    own = sorted({names[y] for y in folder.targets})
    rank = {c: i for i, c in enumerate(own)}
    own_targets = np.array([rank[names[y]] for y in folder.targets], dtype=np.int64)
    train_idx, val_idx = split_indices(own_targets, val_fraction)
    idx = val_idx if split == "val" else train_idx
    if not len(idx):
        raise ValueError(
            f"the {split!r} split of {str(path)!r} (val_fraction={val_fraction}) is empty"
        )
    share = val_fraction if split == "val" else 1 - val_fraction
    what = "held out" if split == "val" else "trained on"
    return Subset(folder, idx), split, f"the {share:.0%} {what} per class", notes


def _other_data(
    data: str | os.PathLike[str],
    fmt: str,
    names: list[str],
    split: str,
    val_fraction: float,
    image_size: int,
) -> tuple[Dataset, str, str]:
    if split == "all":
        raise ValueError(
            f"--split all is for image folders; {fmt} data has a 'train' and a 'val' split"
        )
    split = "val" if split == "auto" else split
    dataset = build_dataset(data, split == "train", val_fraction, image_size=image_size)
    index = {c: i for i, c in enumerate(names)}
    unknown = [c for c in dataset.classes if c not in index]
    if unknown:
        raise _unmatched_error(unknown, f"the {fmt} data at {str(data)!r}", names)
    if list(dataset.classes) != names:
        dataset = _Relabelled(dataset, np.array([index[c] for c in dataset.classes], np.int64))
    if fmt in ("mnist", "cifar10", "cifar100"):
        what = "its test files" if split == "val" else "its training files"
    else:
        share = val_fraction if split == "val" else 1 - val_fraction
        what = f"the {share:.0%} {'held out' if split == 'val' else 'trained on'}"
    return dataset, split, what


def evaluation_data(
    data: str | os.PathLike[str],
    class_names: Sequence[str] | None,
    num_outputs: int,
    *,
    split: str = "auto",
    val_fraction: float = 0.2,
    image_size: int = 32,
    training_data: str | os.PathLike[str] | None = None,
) -> EvalData:
    """The images of ``data`` to evaluate a model with ``num_outputs`` outputs on (see the module docstring).

    Args:
        data: ``"builtin"`` or a dataset directory (any format of :func:`~shufflenet.data.detect_format`).
        class_names: the names stored with the model, or ``None`` (see :func:`model_class_names`).
        num_outputs: the model's number of outputs (classes).
        split: ``"auto"``, ``"all"``, ``"val"`` or ``"train"``.
        val_fraction: the share held out per class by training (single folders, built-in digits).
        image_size: the side the built-in digits are upsampled to.
        training_data: the data the model was trained on, if known.

    Raises:
        ValueError: an unknown split, a class the model does not know, a folder without images.
        FileNotFoundError: ``data`` does not exist.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}")
    names, note = model_class_names(class_names, num_outputs)
    notes = [note] if note else []
    if str(data) != "builtin" and Path(data).is_dir():
        try:
            fmt = detect_format(data)
        except ValueError:
            _check_folder(Path(data))
            raise
    else:
        fmt = detect_format(data)
    if fmt == "folder":
        dataset, split, what, more = _folder_data(
            Path(data), names, split, val_fraction, training_data
        )
        notes += more
    else:
        dataset, split, what = _other_data(data, fmt, names, split, val_fraction, image_size)
    present = sorted(int(c) for c in np.unique(np.asarray(dataset.targets)))
    return EvalData(dataset, names, present, split, what, notes)
