"""What every experiment report shares: options and budgets, provenance, Markdown, training one model.

Each experiment has its own configuration, a dataclass derived from :class:`ReproduceOptions` (the options
every report has) that adds the experiment's own fields; ``shufflenet reproduce`` builds its flags from these
fields. Models are trained by :func:`shufflenet.train.fit`, the loop of ``shufflenet train``, with the reports'
recipe (:func:`train_config`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from ...complexity import profile
from ...data.subsets import dataset_split
from ...model_file import save_model
from ...train import TrainConfig, fit
from ...train.run_dir import RunDirLock
from ...utils.atomic import atomic_write

__all__ = [
    "BUDGETS",
    "DEFAULT_LR",
    "ReproduceOptions",
    "TrainingExperiment",
    "TrainingStopped",
    "Markdown",
    "option",
    "provenance",
    "fmt_int",
    "train_config",
    "train_eval",
    "load_splits",
    "JPEG_CIFAR_NOTE",
    "data_line",
    "training_line",
    "maybe_save",
    "train_save_measure",
    "binomial_se_points",
]

# Per budget: training images, test images, epochs, images for the correlation panels, and the linear
# warm-up as a share of the training steps (then cosine decay to 0). ``one-cycle``: the whole training set
# for few epochs, the rate rising over the first 30% of the steps and annealing over the rest (Smith and
# Topin's one-cycle policy; torch's OneCycleLR defaults to the same 30%), where accuracy grows fastest per
# CPU hour.
BUDGETS: dict[str, dict[str, int | float | None]] = {
    "smoke": {"subset": 256, "test_subset": 128, "epochs": 1, "corr_images": 64, "warmup": 0.1},
    "reduced": {
        "subset": 5000, "test_subset": 2000, "epochs": 4, "corr_images": 1000, "warmup": 0.1,
    },
    "one-cycle": {
        "subset": None, "test_subset": None, "epochs": 3, "corr_images": 500, "warmup": 0.3,
    },
    "full": {
        "subset": None, "test_subset": None, "epochs": 100, "corr_images": 10000, "warmup": 0.1,
    },
}  # fmt: skip

DEFAULT_LR = 0.05  # peak learning rate per 64 images

# A data note for CIFAR-10 batches rebuilt from JPEG copies of the images (pass it as --data-note).
JPEG_CIFAR_NOTE = (
    "CIFAR-10 decoded from JPEG copies (quality 75, mean PSNR about 30.5 dB against the originals) loses a "
    "little accuracy (reported: 2-3 points below published CIFAR-10 numbers); compare the variants with each "
    "other, not with the paper's absolute accuracy."
)


def option(default: Any, help: str, *, cli: bool = True) -> Any:
    """A configuration field with its command-line help; ``cli=False`` keeps it off the command line."""
    return dataclasses.field(default=default, metadata={"help": help, "cli": cli})


class TrainingStopped(RuntimeError):
    """Training a report's model did not complete; ``status`` is that of :class:`shufflenet.train.FitResult`
    (``"nonfinite"`` or ``"interrupted"``)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class ReproduceOptions:
    """The options of every report (``None``: from ``budget``). Experiments derive their configuration from
    this class; on its own it serves the experiments that train nothing."""

    out: Path = option(Path("runs/reproduce"), "output directory", cli=False)
    data: str | None = option(None, "dataset directory (e.g. CIFAR-10 python batches) or 'builtin'")
    budget: str = option("reduced", "size of the run: " + ", ".join(BUDGETS))
    epochs: int | None = option(None, "training epochs; None: from --budget")
    subset: int | None = option(None, "training images, class-balanced; None: from --budget")
    test_subset: int | None = option(None, "test images, class-balanced; None: from --budget")
    batch_size: int = option(64, "training batch size")
    lr: float | None = option(None, "peak learning rate per 64 images (scaled with the batch)")
    warmup: float | None = option(
        None,
        "linear warm-up as a share of the training steps, then cosine decay; None: from --budget",
    )
    seed: int = option(0, "seed of the subset, initialisation and augmentation")
    device: str = option("cpu", "torch device")
    threads: int | None = option(None, "torch CPU threads; None: torch's choice")
    progress: bool = option(False, "progress bars", cli=False)
    data_note: str = option("", "a sentence about the data for the report (e.g. its provenance)")
    save_checkpoints: bool = option(
        False, "keep the trained models in OUT/checkpoints/ and their training runs in OUT/runs/"
    )
    resume: bool = option(
        False,
        "continue a report that was stopped: each training run found in OUT/runs/ goes on from its last "
        "checkpoint (a finished one is only evaluated again); implies --save-checkpoints",
    )
    argv: list[str] = dataclasses.field(default_factory=list, metadata={"cli": False})

    default_lr: ClassVar[float] = DEFAULT_LR

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise ValueError(f"budget={self.budget!r} must be one of {sorted(BUDGETS)}")
        self.out = Path(self.out)
        if self.resume:
            self.save_checkpoints = True  # the runs to continue live in OUT/runs/
        preset = BUDGETS[self.budget]
        for f in dataclasses.fields(self):
            if f.name in preset and getattr(self, f.name) is None:
                setattr(self, f.name, preset[f.name])
        for name in ("epochs", "subset", "test_subset", "batch_size", "threads"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} must be positive")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup={self.warmup!r} must be a share of the steps in [0, 1)")

    @property
    def peak_lr(self) -> float:
        """Peak learning rate per 64 images: ``lr``, else the experiment's default."""
        return self.lr if self.lr is not None else self.default_lr

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        return d


@dataclasses.dataclass
class TrainingExperiment(ReproduceOptions):
    """Options of an experiment that trains models: data is required."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.data is None:
            raise ValueError(
                "this experiment trains models: give --data (a dataset directory or 'builtin')"
            )


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
        with atomic_write(path) as f:
            f.write("\n".join(self.lines).rstrip() + "\n")
        return Path(path)


def fmt_int(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def provenance(opts: ReproduceOptions, seconds: float, extra: Sequence[str] = ()) -> list[str]:
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
        f"peak learning rate {opts.peak_lr} per 64 images, seed {opts.seed}",
        f"wall time: {seconds / 60:.1f} min"
        + (
            " (this command, which continued the runs under OUT/runs from their checkpoints)"
            if opts.resume
            else ""
        ),
        _load_line(),
    ]
    return items + list(extra)


def _load_line() -> str:
    """The machine's load averages when the report is written (other jobs slow a run down)."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:  # not available on this platform
        return "load average: not available"
    return (
        f"load average at the end (1 / 5 / 15 min): {one:.1f} / {five:.1f} / {fifteen:.1f} on "
        f"{os.cpu_count()} cores"
    )


def load_splits(opts: ReproduceOptions) -> tuple[Dataset, Dataset]:
    """The class-balanced training and test subsets of ``opts.data``."""
    if opts.data is None:
        raise ValueError(
            "this experiment trains models: give --data (a dataset directory or 'builtin')"
        )
    train = dataset_split(opts.data, True, opts.subset, opts.seed)
    test = dataset_split(opts.data, False, opts.test_subset, opts.seed)
    return train, test


def train_config(
    opts: ReproduceOptions, run_name: str, image_size: int | None = None
) -> TrainConfig:
    """The reports' recipe as a training configuration for the run ``run_name`` (the model is given ready
    to :func:`shufflenet.train.fit`, which records its name): SGD with Nesterov momentum 0.9, peak learning rate
    ``opts.peak_lr`` per 64 images (scaled linearly with the batch), weight decay 5e-4 on convolution and
    linear weights, linear warm-up over the first ``opts.warmup`` of the steps (10%; 30% in the ``one-cycle``
    budget) then cosine decay to 0; no label smoothing,
    no batch-norm recalibration, contiguous memory format (the models are measured afterwards)."""
    return TrainConfig(
        data=str(opts.data),
        epochs=opts.epochs,
        batch_size=opts.batch_size,
        image_size=image_size,
        optimizer="sgd",
        lr=opts.peak_lr * opts.batch_size / 64,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_epochs=opts.warmup * opts.epochs,
        label_smoothing=0.0,
        bn_recalibrate=False,
        device=opts.device,
        channels_last=False,
        threads=opts.threads,
        seed=opts.seed,
        output=str(opts.out / "runs"),
        name=run_name,
        keep_checkpoints=1,
        progress=opts.progress,
        plots=True,
        tensorboard=False,
    )


def train_eval(
    model: nn.Module,
    train_ds: Dataset,
    test_ds: Dataset,
    opts: ReproduceOptions,
    name: str,
    image_size: int | None = None,
) -> dict:
    """Train ``model`` in place on ``train_ds`` with :func:`shufflenet.train.fit` (:func:`train_config`),
    validating on ``test_ds`` after every epoch; returns the final test top-1, the per-epoch history and
    timings. The run directory is ``OUT/runs/NAME`` with ``save_checkpoints``, else a temporary one. With
    ``resume``, a run directory ``OUT/runs/NAME`` that has a checkpoint is continued from it (a finished run is
    evaluated again, nothing more), and ``seconds`` counts the epoch times recorded before, including the part
    of an epoch run before a stop inside it.

    Raises :class:`TrainingStopped` when the loss became non-finite or the run was interrupted.
    """
    cfg = train_config(opts, name.replace("/", "_"), image_size)
    start, before = time.perf_counter(), 0.0
    with tempfile.TemporaryDirectory(prefix="shufflenet-reproduce-") as tmp:
        if not opts.save_checkpoints:
            cfg = cfg.replace(output=tmp, plots=False)
        elif opts.resume:
            run_dir = Path(cfg.output) / cfg.name
            if _has_checkpoint(run_dir):
                cfg, before = cfg.replace(resume=str(run_dir)), _epoch_seconds(run_dir)
            elif run_dir.is_dir():
                _discard_unstarted(run_dir)
        result = fit(cfg, train_set=train_ds, val_set=test_ds, model=model)
    seconds = before + time.perf_counter() - start
    if cfg.resume:
        # an epoch continued from a checkpoint inside it records its time before the stop as well
        seconds = max(seconds, _epoch_seconds(run_dir))
    if result.status == "nonfinite":
        raise TrainingStopped(
            "nonfinite",
            f"training {name} stopped: the loss became NaN or infinite; lower --lr "
            f"(peak {opts.peak_lr} per 64 images)",
        )
    if result.status != "completed":
        raise TrainingStopped(result.status, f"training {name} was {result.status}")
    return {
        "peak_lr_per_64": opts.peak_lr,
        "test_top1": result.final["val_acc1"],
        "test_images": result.final["val_count"],
        "history": result.history,
        "seconds": seconds,
    }


def _has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("*.state.pt"))


def _epoch_seconds(run_dir: Path) -> float:
    """Training seconds of the epochs a run directory records (its ``metrics.jsonl``)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0.0
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return float(sum(r.get("epoch_seconds", 0.0) for r in rows))


def _discard_unstarted(run_dir: Path) -> None:
    """Remove a run directory left without a checkpoint (stopped in its first epoch), so that the run
    starts again under its own name; refused while a process trains into it."""
    if (run_dir / "summary.json").exists() or not (run_dir / "config.json").is_file():
        raise ValueError(
            f"resume: {str(run_dir)!r} has no checkpoint to continue from and is not an unstarted run; "
            "move it away or choose another --out"
        )
    with RunDirLock(run_dir):
        pass
    shutil.rmtree(run_dir)


def data_line(opts: ReproduceOptions, train_ds: Dataset, test_ds: Dataset, extra: str = "") -> str:
    """The provenance bullet about the data, with the user's ``data_note``."""
    name = getattr(train_ds, "name", "?")
    line = (
        f"data: `{opts.data}` ({name}: {len(train_ds)} training, {len(test_ds)} test images){extra}"
    )
    return line + (f"; {opts.data_note}" if opts.data_note else "")


def training_line(opts: ReproduceOptions, extra: str = "") -> str:
    """The provenance bullet about the recipe of :func:`train_config` with the CIFAR training augmentation;
    ``extra`` ends it."""
    return (
        "training: SGD, Nesterov momentum 0.9, weight decay 5e-4 on conv/linear weights, "
        f"{opts.warmup:.0%} linear warm-up then cosine decay, random crop (4 px padding) and horizontal "
        f"flip (shufflenet.train.fit){extra}"
    )


def maybe_save(
    model: nn.Module, opts: ReproduceOptions, name: str, spec: Any, classes: Sequence[str]
) -> None:
    """With ``opts.save_checkpoints``, write ``model`` to ``out/checkpoints/<name>.safetensors`` (a model file
    that ``shufflenet correlate``, ``filters`` and ``evaluate`` read)."""
    if not opts.save_checkpoints:
        return
    save_model(
        opts.out / "checkpoints" / f"{name}.safetensors",
        model,
        input_spec=spec,
        class_names=list(classes),
        extra={"reproduce": opts.to_dict()},
    )


def train_save_measure(
    model: nn.Module,
    train_ds: Dataset,
    test_ds: Dataset,
    opts: ReproduceOptions,
    name: str,
    spec: Any,
    *,
    train_opts: ReproduceOptions | None = None,
    image_size: int | None = None,
) -> dict:
    """One experiment step: :func:`train_eval` with ``train_opts`` (default ``opts``), :func:`maybe_save`
    under ``name`` ("/" written as "_") recording ``opts``, and the model's parameters and multiply-adds at
    ``spec``'s input size added to the result."""
    res = train_eval(model, train_ds, test_ds, train_opts or opts, name, image_size=image_size)
    maybe_save(model, opts, name.replace("/", "_"), spec, train_ds.classes)
    rep = profile(model, (spec.in_chans, spec.image_size, spec.image_size))
    res.update(params=rep.params, macs=rep.macs)
    return res


def binomial_se_points(accuracy: float, n: int) -> float:
    """Standard error, in percentage points, of an accuracy measured on ``n`` independent test images:
    ``100 * sqrt(p (1 - p) / n)``. One seed's run-to-run spread is of the same order or larger."""
    return 100.0 * (accuracy * (1.0 - accuracy) / max(1, n)) ** 0.5
