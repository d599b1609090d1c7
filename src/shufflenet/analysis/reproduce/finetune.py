"""``reproduce finetune``: does starting from pretrained weights beat training from scratch on a small folder?

ShuffleNet 0.5x (g = 3, CIFAR stem) is pretrained on CIFAR-10 classes 0-4 (training split, ``--subset``
images, ``--epochs`` epochs), or read from ``--pretrained``. A small labelled image folder is written from the
training split's classes 5-9 (``--per-class`` images each, as PNG files in ``ROOT/<class name>/``) and read back
by the image-folder reader, as ``shufflenet train --data FOLDER`` reads a user's folder. On it, for each seed,
the same architecture is trained for ``--finetune-epochs`` epochs twice with the same recipe, images, seed and
schedule: once fine-tuned from the pretrained weights (the path of ``shufflenet train --init``: every tensor but
the classifier loaded, a new 5-class classifier, the backbone frozen for ``--freeze-epochs`` epochs, then trained
at ``--backbone-lr-mult`` times the classifier's rate), once from a random initialisation. Both final models
are scored on the CIFAR-10 test images of classes 5-9 (5,000, or ``--test-subset``); the report gives both
accuracies per seed, their means with standard errors over seeds, and the paired difference.

Both runs normalise with the pretraining data's statistics (the fine-tuned model keeps its source's input
convention, and the scratch model is given the same), so the only difference is the starting weights.
During training, a fixed share of the test images (``--monitor`` per class) is scored after every epoch for
the curves in ``results.json``; nothing is selected on it (the final weights are scored).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from torch import nn

from ...data import ArrayDataset, Subset, build_transform, default_spec, make_loader
from ...data.cifar import load_cifar
from ...data.folder import ImageFolder
from ...data.spec import InputSpec
from ...data.subsets import balanced_subset
from ...distributed import DistContext
from ...factory import resolve_model
from ...model_file import save_model
from ...models import create_model
from ...train import FitResult, TrainConfig, evaluate, fit
from ..outputs import write_json
from ..plots import save_figure
from .common import (
    Markdown,
    TrainingExperiment,
    TrainingStopped,
    binomial_se_points,
    option,
    provenance,
    train_config,
    training_line,
)

__all__ = ["FinetuneConfig", "run_finetune", "FINETUNE_EPOCHS", "MODEL"]

MODEL = "shufflenet_v1_g3_x0_5"
SOURCE_CLASSES = range(0, 5)
TARGET_CLASSES = range(5, 10)
# fine-tuning / scratch epochs per budget (a few hundred images: an epoch is a few steps)
FINETUNE_EPOCHS = {"smoke": 1, "reduced": 15, "one-cycle": 15, "full": 30}


@dataclasses.dataclass
class FinetuneConfig(TrainingExperiment):
    """Options of ``reproduce finetune``. ``subset``/``epochs`` are those of the pretraining; the fine-tuning
    folder has ``per_class`` images per class and is trained for ``finetune_epochs``."""

    pretrained: str | None = option(
        None,
        "reuse this pretraining model file (e.g. OUT/checkpoints/pretrained.safetensors of an earlier "
        "run with --save-checkpoints) instead of pretraining",
    )
    per_class: int = option(100, "labelled images per class (5-9) in the fine-tuning folder")
    finetune_epochs: int | None = option(
        None, "epochs of fine-tuning and of training from scratch; None: from --budget"
    )
    freeze_epochs: int = option(2, "fine-tuning: epochs with the backbone frozen (classifier only)")
    backbone_lr_mult: float = option(
        0.1, "fine-tuning: backbone learning rate as a multiple of the classifier's"
    )
    monitor: int = option(
        20, "test images per class scored after every epoch (curves only; nothing is selected)"
    )
    seeds: tuple[int, ...] = option(
        (0, 1, 2), "seeds of the compared runs (new classifier or whole model, order, augmentation)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.finetune_epochs is None:
            self.finetune_epochs = FINETUNE_EPOCHS[self.budget]
        for name in ("per_class", "finetune_epochs", "monitor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if (
            not isinstance(self.freeze_epochs, int)
            or not 0 <= self.freeze_epochs <= self.finetune_epochs
        ):
            raise ValueError(
                f"freeze_epochs={self.freeze_epochs!r} must be a whole number from 0 to "
                f"finetune_epochs={self.finetune_epochs}"
            )
        if not self.backbone_lr_mult >= 0:
            raise ValueError(f"backbone_lr_mult={self.backbone_lr_mult!r} must be >= 0")
        self.seeds = tuple(self.seeds)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={list(self.seeds)} must be distinct, at least one")
        if self.pretrained is not None and not Path(self.pretrained).is_file():
            raise FileNotFoundError(f"pretrained={self.pretrained!r} is not a file")


def class_range(ds: ArrayDataset, keep: range) -> ArrayDataset:
    """The images of classes ``keep`` (consecutive labels), relabelled from 0, with ``ds``'s statistics."""
    labels = np.asarray(ds.targets)
    mask = (labels >= keep.start) & (labels < keep.stop)
    return ArrayDataset(
        ds.images[mask],
        labels[mask] - keep.start,
        ds.classes[keep.start : keep.stop],
        name=f"{ds.name} classes {keep.start}-{keep.stop - 1}",
        mean=ds.mean,
        std=ds.std,
        hflip=ds.hflip,
    )


def _balanced(ds: ArrayDataset, count: int | None, seed: int) -> ArrayDataset | Subset:
    if count is None or count >= len(ds):
        return ds
    return Subset(ds, balanced_subset(ds.targets, count, seed))


def write_folder(ds: ArrayDataset, per_class: int, seed: int, root: Path) -> Path:
    """``per_class`` images of each class of ``ds`` (chosen with ``seed``; all of a class that has fewer) as
    ``root/<class>/<index>.png``, lossless."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(ds.targets)
    chosen = [
        i
        for c in range(len(ds.classes))
        for i in rng.permutation(np.flatnonzero(targets == c))[:per_class]
    ]
    for i in chosen:
        d = root / ds.classes[int(ds.targets[i])]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds.images[i]).save(d / f"{int(i):05d}.png")
    return root


def _checked(result: FitResult, what: str) -> FitResult:
    if result.status == "nonfinite":
        raise TrainingStopped("nonfinite", f"{what} stopped: the loss became NaN or infinite")
    if result.status != "completed":
        raise TrainingStopped(result.status, f"{what} was {result.status}")
    return result


def _score(model: nn.Module, spec: InputSpec, test: ArrayDataset, opts: FinetuneConfig) -> dict:
    loader = make_loader(test, build_transform(spec, False), opts.batch_size, False)
    ctx = DistContext(device=torch.device(opts.device))
    r = evaluate(model.to(ctx.device).eval(), loader, len(test.classes), ctx)
    return {"test_top1": r.acc1, "test_images": r.count}


def _mean_se(values: list[float]) -> tuple[float, float | None]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None)


def _pretrain(
    opts: FinetuneConfig, tmp: Path, train: ArrayDataset, test: ArrayDataset
) -> tuple[Path, dict]:
    """Train ``MODEL`` on the source classes; returns its model file and its scores."""
    torch.manual_seed(opts.seed)
    model = create_model(MODEL, num_classes=len(train.classes), small_input=True)
    monitor = _balanced(test, opts.monitor * len(test.classes), opts.seed)
    cfg = train_config(opts, "pretrain").replace(output=str(tmp), plots=False)
    result = _checked(fit(cfg, train_set=train, val_set=monitor, model=model), "pretraining")
    spec = default_spec(train)
    scores = _score(model, spec, test, opts)
    if opts.save_checkpoints:
        save_model(
            opts.out / "checkpoints" / "pretrained.safetensors",
            model,
            input_spec=spec,
            class_names=list(train.classes),
            extra={"reproduce": opts.to_dict()},
        )
    scores.update(
        train_images=len(train),
        epochs=opts.epochs,
        curve=[r["val_acc1"] for r in result.history],
    )
    return result.model_path, scores


def _run_pair(
    opts: FinetuneConfig,
    seed: int,
    pretrained: Path,
    folder: ImageFolder,
    monitor: Subset | ArrayDataset,
    test: ArrayDataset,
    tmp: Path,
) -> dict[str, dict]:
    """Fine-tuning and training from scratch with ``seed``; their scores on ``test``."""
    run_opts = dataclasses.replace(opts, seed=seed, epochs=opts.finetune_epochs)
    base: TrainConfig = train_config(run_opts, f"seed{seed}").replace(output=str(tmp), plots=False)
    out: dict[str, dict] = {}
    source = resolve_model(pretrained)
    # fine-tuning: the path of `shufflenet train --init`
    cfg = base.replace(
        name=f"finetune-seed{seed}",
        init=str(pretrained),
        freeze_epochs=opts.freeze_epochs,
        backbone_lr_mult=opts.backbone_lr_mult,
    )
    tuned = _checked(fit(cfg, train_set=folder, val_set=monitor), f"fine-tuning (seed {seed})")
    out["finetune"] = _score(tuned.model, source.input_spec, test, opts)
    out["finetune"]["curve"] = [r["val_acc1"] for r in tuned.history]
    # from scratch: the same architecture, images, normalisation, recipe and seed
    torch.manual_seed(seed)
    kwargs = {**source.arch_kwargs, "num_classes": len(folder.classes)}
    model = create_model(source.name, **kwargs)
    cfg = base.replace(name=f"scratch-seed{seed}", image_size=source.input_spec.image_size)
    scratch = _checked(
        fit(cfg, train_set=folder, val_set=monitor, model=model), f"scratch (seed {seed})"
    )
    out["scratch"] = _score(scratch.model, source.input_spec, test, opts)
    out["scratch"]["curve"] = [r["val_acc1"] for r in scratch.history]
    return out


def run_finetune(opts: FinetuneConfig) -> dict:
    start = time.perf_counter()
    opts.out.mkdir(parents=True, exist_ok=True)
    cifar_train, cifar_test = load_cifar(opts.data, True), load_cifar(opts.data, False)
    if len(cifar_train.classes) != 10:
        raise ValueError(
            f"data={opts.data!r} has {len(cifar_train.classes)} classes; this experiment needs "
            "CIFAR-10 (classes 0-4 to pretrain, 5-9 to fine-tune)"
        )
    target_train = class_range(cifar_train, TARGET_CLASSES)
    target_test = _balanced(class_range(cifar_test, TARGET_CLASSES), opts.test_subset, opts.seed)
    with tempfile.TemporaryDirectory(prefix="shufflenet-finetune-") as tmp_name:
        tmp = Path(tmp_name)
        if opts.pretrained is None:
            source_train = _balanced(
                class_range(cifar_train, SOURCE_CLASSES), opts.subset, opts.seed
            )
            source_test = _balanced(
                class_range(cifar_test, SOURCE_CLASSES), opts.test_subset, opts.seed
            )
            pretrained, pre_scores = _pretrain(opts, tmp / "pretrain", source_train, source_test)
        else:
            pretrained, pre_scores = Path(opts.pretrained), {"reused": opts.pretrained}
        root = write_folder(target_train, opts.per_class, opts.seed, tmp / "folder")
        folder = ImageFolder(root)  # read back through the image-folder reader
        if folder.classes != list(target_train.classes):
            raise RuntimeError(f"folder classes {folder.classes} != {target_train.classes}")
        # the pretraining data's statistics for both runs (the fine-tuned model keeps them anyway)
        folder.mean, folder.std = cifar_train.mean, cifar_train.std
        monitor = _balanced(target_test, opts.monitor * len(folder.classes), opts.seed)
        results = {
            f"seed{seed}": _run_pair(opts, seed, pretrained, folder, monitor, target_test, tmp)
            for seed in opts.seeds
        }
    summary = _summarise(results)
    seconds = time.perf_counter() - start
    _write_report(opts, results, summary, pre_scores, len(folder), len(target_test), seconds)
    out = {
        "options": opts.to_dict(),
        "pretraining": pre_scores,
        "results": results,
        "summary": summary,
    }
    write_json(opts.out / "results.json", out)
    return out


def _summarise(results: dict[str, dict[str, dict]]) -> dict:
    tuned = [100 * r["finetune"]["test_top1"] for r in results.values()]
    scratch = [100 * r["scratch"]["test_top1"] for r in results.values()]
    diffs = [a - b for a, b in zip(tuned, scratch)]
    return {
        "finetune_top1": _mean_se(tuned),
        "scratch_top1": _mean_se(scratch),
        "difference": _mean_se(diffs),
        "differences": diffs,
        "finetune_better_in": sum(d > 0 for d in diffs),
        "seeds": len(diffs),
    }


def plot_curves(results: dict[str, dict[str, dict]], freeze_epochs: int, path: Path) -> Path:
    """Monitored test top-1 (%) after each epoch: fine-tuned (solid) and from scratch (dashed), one line per
    seed; a dotted line where the fine-tuned backbone thaws."""
    fig = Figure(figsize=(5.0, 3.4), constrained_layout=True)
    ax = fig.subplots()
    for i, (key, r) in enumerate(results.items()):
        for kind, style in (("finetune", "-"), ("scratch", "--")):
            curve = [100 * a for a in r[kind]["curve"]]
            label = f"{'fine-tuned' if kind == 'finetune' else 'scratch'}, {key}"
            ax.plot(range(1, len(curve) + 1), curve, style, color=f"C{i}", marker=".", label=label)
    if freeze_epochs:
        ax.axvline(freeze_epochs + 0.5, color="black", lw=0.8, ls=":")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_ylabel("monitored test top-1 (%)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, path)


def _fmt(ms: tuple[float, float | None], sign: str = "") -> str:
    m, se = ms
    return f"{m:{sign}.2f}" + ("" if se is None else f" ± {se:.2f}")


def _write_report(
    opts: FinetuneConfig,
    results: dict,
    summary: dict,
    pre: dict,
    folder_images: int,
    test_images: int,
    seconds: float,
) -> None:
    md = Markdown(
        "Fine-tuning pretrained weights against training from scratch on a small image folder"
    )
    md.p(
        "Claim: on a small labelled folder, starting from weights pretrained on related images beats "
        "training the same network from a random initialisation, for the same epochs and seeds. "
        f"Here: ShuffleNet 0.5x (g = 3, CIFAR stem) pretrained on CIFAR-10 classes 0-4, then trained on "
        f"{opts.per_class} images per class of classes 5-9 ({folder_images} PNG files read from an image "
        f"folder), scored on {test_images:,} CIFAR-10 test images of classes 5-9."
    )
    md.h2("Result")
    diff = summary["difference"]
    md.table(
        ["", "test top-1 % (mean ± SE over seeds)"],
        [
            ["fine-tuned", _fmt(summary["finetune_top1"])],
            ["from scratch", _fmt(summary["scratch_top1"])],
            ["difference (paired per seed)", _fmt(diff, "+")],
        ],
    )
    rows = []
    for key, r in results.items():
        a, b = r["finetune"]["test_top1"], r["scratch"]["test_top1"]
        rows.append([key, f"{100 * a:.2f}", f"{100 * b:.2f}", f"{100 * (a - b):+.2f}"])
    md.table(["seed", "fine-tuned %", "scratch %", "difference"], rows)
    first = next(iter(results.values()))["finetune"]
    se = binomial_se_points(first["test_top1"], first["test_images"])
    verdict = (
        f"Fine-tuning was better in {summary['finetune_better_in']} of {summary['seeds']} seeds, by "
        f"{diff[0]:+.2f} points on average"
        + (f" (standard error {diff[1]:.2f})" if diff[1] is not None else "")
        + f". For scale, one accuracy on {first['test_images']:,} test images has a binomial standard error "
        f"of about {se:.1f} points."
    )
    md.p(verdict)
    fig = plot_curves(results, opts.freeze_epochs, opts.out / "curves.png")
    md.figure(
        fig.name,
        f"test top-1 on the {opts.monitor} monitored test images per class after each epoch; solid: "
        "fine-tuned, dashed: from scratch, one colour per seed"
        + (
            f"; dotted: the backbone thaws after epoch {opts.freeze_epochs}"
            if opts.freeze_epochs
            else ""
        ),
    )
    if "reused" in pre:
        md.p(f"Pretrained weights reused from `{pre['reused']}`.")
    else:
        md.p(
            f"Pretraining: {pre['train_images']:,} training images of classes 0-4, {pre['epochs']} epochs; "
            f"test top-1 on {pre['test_images']:,} test images of classes 0-4: {100 * pre['test_top1']:.2f}%."
        )
    md.h2("How this was made")
    md.bullets(
        provenance(
            opts,
            seconds,
            [
                f"data: `{opts.data}` (CIFAR-10 python batches)"
                + (f"; {opts.data_note}" if opts.data_note else ""),
                f"fine-tuning and scratch: {opts.finetune_epochs} epochs each, seeds "
                f"{', '.join(map(str, opts.seeds))}; fine-tuning keeps every pretrained tensor but the "
                f"classifier, freezes the backbone (batch norm in eval mode) for {opts.freeze_epochs} "
                f"epoch(s) and trains it at {opts.backbone_lr_mult:g} x the classifier's learning rate",
                training_line(opts, "; the final weights are scored"),
            ],
        )
    )
    md.write(opts.out / "report.md")
