"""A report page for a model trained by ``shufflenet train``: accuracy, curves, confusion matrix, provenance.

    python -m shufflenet.analysis.run_report RUN_DIR --out docs/reproduce/cifar10-model

reads ``RUN_DIR`` (``config.json``, ``metrics.csv``, ``summary.json``, ``model.safetensors``), evaluates the
final model again on the whole evaluation split (the test files of CIFAR/MNIST; the check that the model file
reproduces the run's own final numbers), and writes into ``--out``: ``report.md``, ``results.json`` (numbers,
per-class accuracy and the confusion matrix), ``curves.png``, ``confusion_matrix.png`` and a copy of
``metrics.csv`` (and of the model file with ``--copy-model``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import build_dataset, build_transform, make_loader
from ..distributed import DistContext, resolve_device
from ..model_file import load_model
from ..train.engine import evaluate
from ..train.metrics import plot_confusion, plot_curves
from ..utils import torch_threads
from ..utils.atomic import atomic_path
from .outputs import write_json
from .reproduce.common import Markdown, binomial_se_points, fmt_int

__all__ = ["RUN_FILES", "read_run", "train_command", "model_report", "build_parser", "main"]

RUN_FILES = ("config.json", "summary.json", "metrics.csv", "model.safetensors")

# The options that, with their resolved values, repeat a run (the rest keep their defaults).
_COMMAND_OPTIONS = (
    "model",
    "model_kwargs",
    "data",
    "epochs",
    "batch_size",
    "image_size",
    "optimizer",
    "lr",
    "weight_decay",
    "schedule",
    "warmup_epochs",
    "label_smoothing",
    "threads",
    "seed",
)


def read_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``config`` (dict), ``summary`` (dict) and ``history`` (list of per-epoch dicts) of a run directory.

    Raises:
        FileNotFoundError: when one of :data:`RUN_FILES` is missing (an unfinished run has no summary).
    """
    run = Path(run_dir)
    missing = [f for f in RUN_FILES if not (run / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run} is not a finished `shufflenet train` run directory: missing {', '.join(missing)}"
        )
    with open(run / "metrics.csv", newline="") as f:
        history = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return {
        "config": json.loads((run / "config.json").read_text()),
        "summary": json.loads((run / "summary.json").read_text()),
        "history": history,
    }


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def train_command(config: dict[str, Any]) -> str:
    """A ``shufflenet train`` command line that repeats the run: the resolved values of the options that
    shape it (model, data, schedule, seed, threads, ...)."""
    args = ["shufflenet", "train"]
    for key in _COMMAND_OPTIONS:
        value = config.get(key)
        if value is None or value == {}:
            continue
        flag = "--" + key.replace("_", "-")
        args += [flag, json.dumps(value) if isinstance(value, dict) else str(value)]
    return " ".join(shlex.quote(a) for a in args)


def _run_span_minutes(run_dir: Path) -> float:
    """Minutes from the run's ``config.json`` (written at the start) to its ``summary.json`` (at the end)."""
    start = (run_dir / "config.json").stat().st_mtime
    end = (run_dir / "summary.json").stat().st_mtime
    return (end - start) / 60


def model_report(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    data: str | None = None,
    command: str | None = None,
    notes: Sequence[str] = (),
    copy_model: bool = False,
    batch_size: int = 256,
    device: str = "cpu",
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluate the run's final model on its evaluation split and write the report page into ``out_dir``.

    Args:
        data: dataset to evaluate on; default: the run's (``config.json``).
        command: the training command as typed; default: :func:`train_command` of the run's configuration.
        notes: extra provenance lines (e.g. the machine and its load during training).
        copy_model: also copy ``model.safetensors`` into ``out_dir``.
        argv: this report's own command-line arguments, for the report's provenance.

    Returns the numbers written to ``results.json``.
    """
    run = Path(run_dir)
    out = Path(out_dir)
    rec = read_run(run)
    cfg, summary, history = rec["config"], rec["summary"], rec["history"]
    dev = resolve_device(device)
    model, info = load_model(run / "model.safetensors", map_location=dev)
    data = data or cfg.get("data") or info.extra.get("data")
    dataset = build_dataset(
        data, False, cfg.get("val_fraction", 0.2), image_size=info.input_spec.image_size
    )
    classes = list(info.class_names or dataset.classes)
    if list(dataset.classes) != classes:
        raise ValueError(
            f"the data's classes {list(dataset.classes)[:10]} differ from the model's {classes[:10]}"
        )
    loader = make_loader(dataset, build_transform(info.input_spec, False), batch_size, False)
    result = evaluate(model, loader, len(classes), DistContext(device=dev))
    confusion = result.confusion.to(torch.float64)
    per_class = (confusion.diag() / confusion.sum(1).clamp_min(1)).tolist()
    last = history[-1] if history else {}
    final = summary.get("final", {})
    out.mkdir(parents=True, exist_ok=True)
    title = f"{cfg['model']} on {summary.get('dataset', {}).get('name', data)}"
    figs = {
        "curves": plot_curves(history, out / "curves.png", title),
        "confusion": plot_confusion(
            result.confusion,
            classes,
            out / "confusion_matrix.png",
            f"{title}: test top-1 {result.acc1:.1%}",
        ),
    }
    shutil.copyfile(run / "metrics.csv", out / "metrics.csv")
    model_bytes = (run / "model.safetensors").stat().st_size
    if copy_model:
        with atomic_path(out / "model.safetensors") as tmp:
            shutil.copyfile(run / "model.safetensors", tmp)
    train_seconds = float(sum(r.get("epoch_seconds", 0.0) for r in history))
    results = {
        "arch": info.arch,
        "arch_kwargs": info.arch_kwargs,
        "data": str(data),
        "test_images": result.count,
        "test_top1": result.acc1,
        "test_top5": result.acc5,
        "test_loss": result.loss,
        "run_final_top1": final.get("val_acc1"),
        "train_top1_last_epoch": last.get("train_acc"),
        "train_loss_last_epoch": last.get("train_loss"),
        "params": summary.get("params"),
        "macs": summary.get("macs"),
        "model_file_bytes": model_bytes,
        "epochs": summary.get("epochs_done"),
        "train_seconds": train_seconds,
        "run_span_minutes": _run_span_minutes(run),
        "images_per_s": summary.get("images_per_s"),
        "classes": classes,
        "per_class_top1": per_class,
        "confusion": result.confusion.tolist(),
        "train_command": command or train_command(cfg),
        "config": cfg,
    }
    write_json(out / "results.json", results)
    _write_markdown(out, title, results, figs, notes, argv)
    return results


def _write_markdown(
    out: Path,
    title: str,
    r: dict[str, Any],
    figs: dict[str, Path],
    notes: Sequence[str],
    argv: Sequence[str] | None,
) -> Path:
    md = Markdown(f"A trained {title}")
    md.p(
        f"`{r['arch']}` trained by `shufflenet train` and evaluated again here on all {r['test_images']:,} "
        f"evaluation images of `{r['data']}`."
    )
    gap = None
    if r["train_top1_last_epoch"] is not None:
        gap = 100 * (r["train_top1_last_epoch"] - r["test_top1"])
    md.table(
        ["quantity", "value"],
        [
            ["test top-1 %", f"{100 * r['test_top1']:.2f}"],
            ["test top-5 %", f"{100 * r['test_top5']:.2f}"],
            ["test loss", f"{r['test_loss']:.4f}"],
            [
                "standard error of top-1 (binomial), points",
                f"{binomial_se_points(r['test_top1'], r['test_images']):.2f}",
            ],
            [
                "training top-1 %, last epoch (augmented images, running mean)",
                "-" if gap is None else f"{100 * r['train_top1_last_epoch']:.2f}",
            ],
            ["training minus test top-1, points", "-" if gap is None else f"{gap:+.2f}"],
            ["parameters", fmt_int(r["params"])],
            [
                "multiply-adds per image",
                "-" if r["macs"] is None else f"{r['macs'] / 1e6:.2f} M",
            ],
            ["model file", f"{r['model_file_bytes'] / 2**20:.2f} MiB"],
            ["epochs", r["epochs"]],
        ],
    )
    run_top1 = r["run_final_top1"]
    if run_top1 is not None:
        same = abs(run_top1 - r["test_top1"]) < 1e-9
        md.p(
            f"Check: the run's own final evaluation gave top-1 {100 * run_top1:.2f}%; "
            + (
                "this evaluation of the saved model file gives the same."
                if same
                else f"this evaluation gives {100 * r['test_top1']:.2f}% (different data or preprocessing?)."
            )
        )
    md.h2("Training curves")
    md.figure(figs["curves"].name, "loss, top-1 accuracy and learning rate per epoch")
    md.h2("Confusion matrix")
    md.figure(figs["confusion"].name, "rows: true class, columns: predicted class (test images)")
    md.table(
        ["class", "test top-1 %"],
        [[c, f"{100 * a:.1f}"] for c, a in zip(r["classes"], r["per_class_top1"])],
    )
    md.h2("How this was made")
    cfg = r["config"]
    report_cmd = (
        "python -m shufflenet.analysis.run_report " + " ".join(shlex.quote(a) for a in argv)
        if argv is not None
        else "(library call: shufflenet.analysis.run_report.model_report)"
    )
    md.bullets(
        [
            f"training command: `{r['train_command']}`",
            f"training: {r['epochs']} epochs, {r['train_seconds'] / 60:.1f} min in the training epochs "
            f"({r['images_per_s']:.0f} images/s on average), {r['run_span_minutes']:.1f} min from the run's "
            f"config.json to its summary.json; device {cfg.get('device')}, {cfg.get('threads')} thread(s); "
            f"{cfg.get('optimizer')} with peak learning rate {cfg.get('lr')}, {cfg.get('schedule')} schedule, "
            f"batch {cfg.get('batch_size')}, seed {cfg.get('seed')}",
            *notes,
            f"this page: `{report_cmd}` on "
            f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, torch "
            f"{torch.__version__}",
        ]
    )
    return md.write(out / "report.md")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m shufflenet.analysis.run_report",
        description="Report page (accuracy, curves, confusion matrix, provenance) for a `shufflenet train` "
        "run directory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", help="run directory written by `shufflenet train`")
    p.add_argument("--out", required=True, help="output directory of the page")
    p.add_argument("--data", default=None, help="evaluation data; default: the run's")
    p.add_argument(
        "--command",
        default=None,
        help="the training command as typed; default: rebuilt from the run's config.json",
    )
    p.add_argument(
        "--note",
        action="append",
        default=[],
        help="a provenance line, e.g. the machine and its load average during training (repeatable)",
    )
    p.add_argument("--copy-model", action="store_true", help="copy model.safetensors into --out")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads; None: torch's choice"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        with torch_threads(args.threads or None):  # the caller's thread count is restored after
            res = model_report(
                args.run_dir,
                args.out,
                data=args.data,
                command=args.command,
                notes=args.note,
                copy_model=args.copy_model,
                batch_size=args.batch_size,
                device=args.device,
                argv=argv,
            )
    except (TypeError, ValueError, FileNotFoundError) as e:
        print(f"run_report: error: {e}", file=sys.stderr)
        return 2
    print(
        f"{res['arch']}: test top-1 {res['test_top1']:.2%} on {res['test_images']:,} images; "
        f"report: {Path(args.out) / 'report.md'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
