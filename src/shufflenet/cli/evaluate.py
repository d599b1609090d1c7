"""``shufflenet evaluate MODEL``: top-1/top-5 accuracy, loss and a confusion-matrix PNG.

The data defaults to what a model file was trained on (its evaluation split: the test files of MNIST/CIFAR,
the held-out share of the built-in digits or of a single image folder), preprocessed by the model's own
input convention. Another image folder without a train/val split is evaluated whole (--split chooses
otherwise). Class folders are matched by name to the model's classes (ImageNet WordNet IDs such as n01440764
for a 1000-class model without stored names) and may be a subset of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data import SPLITS, build_transform, evaluation_data, make_loader, readable_class_names
from ..distributed import DistContext, resolve_device
from ..train.engine import evaluate
from ..train.metrics import plot_confusion
from .common import (
    add_int_option,
    add_model_argument,
    check_output_file,
    command_parser,
    resolve_cli_model,
)
from .main import command

PROG = "shufflenet evaluate"


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(PROG, __doc__.split("\n\n", 1)[1])
    add_model_argument(p)
    p.add_argument(
        "--data",
        default=None,
        help="dataset ('builtin' or a directory); default: the training data",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="held-out share; default: the training run's",
    )
    p.add_argument(
        "--split",
        choices=SPLITS,
        default="auto",
        help="which images: auto = a folder without train/val split whole (the share held out at "
        "training time if it is the model's training folder), else the evaluation split; all; val; train",
    )
    add_int_option(p, "--batch-size", 1, 65536, default=128)
    add_int_option(p, "--workers", 0, 256, default=0, help="data-loading worker processes")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--confusion",
        default=None,
        help="confusion-matrix PNG; default: MODEL-confusion.png beside a model file (else here)",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    return p


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise ValueError(f"--val-fraction {args.val_fraction} must be between 0 and 1")
    stem = Path(args.model).stem if Path(args.model).exists() else args.model
    png = (
        Path(args.confusion)
        if args.confusion
        else Path(args.model).with_name(f"{stem}-confusion.png")
    )
    check_output_file(png, "--confusion")  # before the work, not after the metrics
    device = resolve_device(args.device)
    resolved = resolve_cli_model(PROG, args.model, args.weights)
    model, spec = resolved.model.to(device), resolved.input_spec
    data = args.data or resolved.extra.get("data") or "builtin"
    val_fraction = args.val_fraction or resolved.extra.get("val_fraction", 0.2)
    ev = evaluation_data(data, resolved.class_names, model.num_classes, split=args.split,
                         val_fraction=val_fraction, image_size=spec.image_size,
                         training_data=resolved.extra.get("data"))  # fmt: skip
    for note in ev.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    loader = make_loader(
        ev.dataset,
        build_transform(spec, False),
        args.batch_size,
        False,
        workers=args.workers,
        pin_memory=device.type == "cuda",
    )
    result = evaluate(model, loader, len(ev.class_names), DistContext(device=device))
    shown = readable_class_names(ev.class_names, len(ev.class_names))
    plot_confusion(  # the classes the data holds (all outputs remain possible predictions)
        result.confusion[ev.present][:, ev.present],
        [shown[i] for i in ev.present],
        png,
        f"{resolved.name} on {data}: top-1 {result.acc1:.1%}",
    )
    metrics = {
        **result.to_dict(),
        "skipped": result.skipped,
        "data": data,
        "split": ev.split,
        "images": result.count,
        "classes": len(ev.present),
        "model_classes": len(ev.class_names),
        "confusion_png": str(png),
    }
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        of = (
            f" of the model's {len(ev.class_names):,}"
            if len(ev.present) < len(ev.class_names)
            else ""
        )
        print(
            f"{resolved.name} on {data}, {ev.description}: {result.count:,} images evaluated, "
            f"{len(ev.present)} classes{of}\n"
            f"top-1 {result.acc1:.2%}   top-5 {result.acc5:.2%}   loss {result.loss:.4f}\n"
            f"confusion matrix: {png}"
            + (f"\n{result.skipped} unreadable images skipped" if result.skipped else "")
        )
    return 0
