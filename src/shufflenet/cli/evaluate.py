"""``shufflenet evaluate CHECKPOINT``: top-1/top-5 accuracy, loss and a confusion-matrix PNG.

The data defaults to what the checkpoint was trained on (its evaluation split: the test files of MNIST/CIFAR,
the held-out share of the built-in digits or of a single image folder), preprocessed by the checkpoint's own
input convention.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data import build_dataset, build_transform, make_loader
from ..distributed import DistContext, resolve_device
from ..model_file import load_model
from ..train.engine import evaluate
from ..train.metrics import plot_confusion


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shufflenet evaluate",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="model file (.safetensors) written by `shufflenet train`")
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
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--confusion", default=None, help="confusion-matrix PNG; default: CHECKPOINT-confusion.png"
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = resolve_device(args.device)
        model, info = load_model(args.checkpoint, map_location=device)
        data = args.data or info.extra.get("data") or "builtin"
        val_fraction = args.val_fraction or info.extra.get("val_fraction", 0.2)
        dataset = build_dataset(data, False, val_fraction, image_size=info.input_spec.image_size)
    except (ValueError, FileNotFoundError) as e:
        print(f"shufflenet evaluate: error: {e}", file=sys.stderr)
        return 2
    classes = info.class_names or list(dataset.classes)
    if list(dataset.classes) != list(classes):
        print(
            f"shufflenet evaluate: error: the data's classes {list(dataset.classes)[:10]} differ from the "
            f"checkpoint's {classes[:10]}",
            file=sys.stderr,
        )
        return 2
    loader = make_loader(
        dataset,
        build_transform(info.input_spec, False),
        args.batch_size,
        False,
        workers=args.workers,
        pin_memory=device.type == "cuda",
    )
    result = evaluate(model, loader, len(classes), DistContext(device=device))
    ckpt = Path(args.checkpoint)
    png = Path(args.confusion) if args.confusion else ckpt.with_name(f"{ckpt.stem}-confusion.png")
    plot_confusion(
        result.confusion, classes, png, f"{info.arch} on {data}: top-1 {result.acc1:.1%}"
    )
    metrics = {
        **result.to_dict(),
        "skipped": result.skipped,
        "data": data,
        "confusion_png": str(png),
    }
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(
            f"{info.arch} on {data} ({result.count:,} images, {len(classes)} classes)\n"
            f"top-1 {result.acc1:.2%}   top-5 {result.acc5:.2%}   loss {result.loss:.4f}\n"
            f"confusion matrix: {png}"
            + (f"\n{result.skipped} unreadable images skipped" if result.skipped else "")
        )
    return 0
