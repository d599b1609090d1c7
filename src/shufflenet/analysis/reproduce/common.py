"""What every experiment report shares: options and budgets, provenance, Markdown, training one model."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "BUDGETS",
    "ReproduceOptions",
    "Markdown",
    "provenance",
    "fmt_int",
    "train_eval",
    "load_splits",
    "JPEG_CIFAR_NOTE",
    "data_line",
    "maybe_save",
    "binomial_se_points",
]

# Per budget: training images, test images, epochs, images for the correlation panels.
BUDGETS: dict[str, dict[str, int | None]] = {
    "smoke": {"subset": 256, "test_subset": 128, "epochs": 1, "corr_images": 64},
    "reduced": {"subset": 5000, "test_subset": 2000, "epochs": 4, "corr_images": 1000},
    "full": {"subset": None, "test_subset": None, "epochs": 100, "corr_images": 10000},
}

# A data note for CIFAR-10 batches rebuilt from JPEG copies of the images (pass it as --data-note).
DEFAULT_LR = 0.05  # peak learning rate per 64 images

JPEG_CIFAR_NOTE = (
    "CIFAR-10 decoded from JPEG copies (quality 75, mean PSNR about 30.5 dB against the originals) loses a "
    "little accuracy (reported: 2-3 points below published CIFAR-10 numbers); compare the variants with each "
    "other, not with the paper's absolute accuracy."
)


@dataclasses.dataclass
class ReproduceOptions:
    """Options of ``shufflenet reproduce``; ``None`` fields take the value of ``budget``."""

    out: Path
    data: str | None = None
    budget: str = "reduced"
    epochs: int | None = None
    subset: int | None = None
    test_subset: int | None = None
    corr_images: int | None = None
    batch_size: int = 64
    lr: float | None = None  # None: the experiment's default (DEFAULT_LR unless it says otherwise)
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    progress: bool = False
    data_note: str = ""
    save_checkpoints: bool = False
    argv: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise ValueError(f"budget={self.budget!r} must be one of {sorted(BUDGETS)}")
        self.out = Path(self.out)
        preset = BUDGETS[self.budget]
        for key in ("subset", "test_subset", "epochs", "corr_images"):
            if getattr(self, key) is None:
                setattr(self, key, preset[key])

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        return d


class Markdown:
    """A Markdown document built line by line."""

    def __init__(self, title: str) -> None:
        self.lines: list[str] = [f"# {title}", ""]

    def h2(self, text: str) -> None:
        self.lines += [f"## {text}", ""]

    def p(self, text: str) -> None:
        self.lines += [text, ""]

    def bullets(self, items: Sequence[str]) -> None:
        self.lines += [f"- {i}" for i in items] + [""]

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.lines.append("| " + " | ".join(headers) + " |")
        self.lines.append(
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"
        )
        for r in rows:
            self.lines.append("| " + " | ".join(str(c) for c in r) + " |")
        self.lines.append("")

    def figure(self, path: str, caption: str) -> None:
        self.lines += [f"![{caption}]({path})", "", f"*{caption}*", ""]

    def write(self, path: str | os.PathLike[str]) -> Path:
        from ...utils.atomic import atomic_write

        with atomic_write(path) as f:
            f.write("\n".join(self.lines).rstrip() + "\n")
        return Path(path)


def fmt_int(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def provenance(
    opts: ReproduceOptions,
    seconds: float,
    extra: Sequence[str] = (),
    default_lr: float = DEFAULT_LR,
) -> list[str]:
    """Bullet points saying how a report was made."""
    cmd = (
        "shufflenet reproduce " + " ".join(shlex.quote(a) for a in opts.argv)
        if opts.argv
        else "(library call)"
    )
    items = [
        f"command: `{cmd}`",
        f"date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores visible, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads, device {opts.device}; Python {sys.version.split()[0]}",
        f"budget: `{opts.budget}`: {opts.subset or 'all'} training images (class-balanced), "
        f"{opts.test_subset or 'all'} test images, {opts.epochs} epoch(s), batch {opts.batch_size}, "
        f"peak learning rate {opts.lr or default_lr} per 64 images, seed {opts.seed}",
        f"wall time: {seconds / 60:.1f} min",
    ]
    return items + list(extra)


def load_splits(opts: ReproduceOptions) -> tuple[Any, Any]:
    """The class-balanced training and test subsets of ``opts.data``."""
    from ..data import dataset_split

    if opts.data is None:
        raise ValueError(
            "this experiment trains models: give --data (a dataset directory or 'builtin')"
        )
    train = dataset_split(opts.data, True, opts.subset, opts.seed)
    test = dataset_split(opts.data, False, opts.test_subset, opts.seed)
    return train, test


def train_eval(
    model: nn.Module,
    train_ds: Any,
    test_ds: Any,
    spec: Any,
    opts: ReproduceOptions,
    desc: str,
    default_lr: float | None = None,
) -> dict:
    """Train ``model`` on ``train_ds`` and measure top-1 on ``test_ds``; returns numbers and timings.

    The peak learning rate is ``opts.lr`` (else ``default_lr``, else :data:`DEFAULT_LR`) per 64 images.
    """
    from ..data import loader_for
    from ..training import evaluate_top1, train_classifier

    peak = opts.lr or default_lr or DEFAULT_LR
    train_loader = loader_for(train_ds, spec, True, opts.batch_size, seed=opts.seed)
    test_loader = loader_for(test_ds, spec, False, 2 * opts.batch_size)
    start = time.perf_counter()
    tr = train_classifier(
        model, train_loader, opts.epochs, lr=peak * opts.batch_size / 64, device=opts.device,
        progress=opts.progress, desc=desc,
    )  # fmt: skip
    acc, n = evaluate_top1(model, test_loader, opts.device)
    return {
        "peak_lr_per_64": peak,
        "test_top1": acc,
        "test_images": n,
        "train": tr.to_dict(),
        "seconds": time.perf_counter() - start,
    }


def data_line(opts: ReproduceOptions, train_ds: Any, test_ds: Any, extra: str = "") -> str:
    """The provenance bullet about the data, with the user's ``data_note``."""
    name = getattr(train_ds, "name", "?")
    line = (
        f"data: `{opts.data}` ({name}: {len(train_ds)} training, {len(test_ds)} test images){extra}"
    )
    return line + (f"; {opts.data_note}" if opts.data_note else "")


def maybe_save(
    model: nn.Module, opts: ReproduceOptions, name: str, spec: Any, classes: Sequence[str]
) -> None:
    """With ``opts.save_checkpoints``, write ``model`` to ``out/checkpoints/<name>.safetensors`` (a model file
    that ``shufflenet correlate``, ``filters`` and ``evaluate`` read)."""
    if not opts.save_checkpoints:
        return
    from ...model_file import save_model

    save_model(
        opts.out / "checkpoints" / f"{name}.safetensors",
        model,
        input_spec=spec,
        class_names=list(classes),
        extra={"reproduce": opts.to_dict()},
    )


def binomial_se_points(accuracy: float, n: int) -> float:
    """Standard error, in percentage points, of an accuracy measured on ``n`` independent test images:
    ``100 * sqrt(p (1 - p) / n)``. One seed's run-to-run spread is of the same order or larger."""
    return 100.0 * (accuracy * (1.0 - accuracy) / max(1, n)) ** 0.5
