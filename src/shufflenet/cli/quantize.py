"""``shufflenet quantize MODEL --data DIR OUT.safetensors``: post-training int8 quantisation.

Calibration images come from the training split of ``--data`` (the first ``--calib-images`` of a fixed
shuffle), preprocessed by the model's input convention. The float32 and the int8 model are then run on the
same ``--val-images`` of the evaluation split and their top-1 and top-1 agreement printed. The int8 file
keeps the model file's input convention and class names.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..data import build_dataset, build_transform, make_loader
from ..data.loader import default_spec
from ..factory import resolve_model
from ..quantize import METHODS, QuantizedModel, quantize, save_quantized
from .common import command_parser


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("shufflenet quantize", __doc__.split("\n\n", 1)[1])
    p.add_argument(
        "model",
        help="a registered model name, a model file or a published checkpoint (see resolve_model)",
    )
    p.add_argument("output", type=Path, help="int8 model file to write (.safetensors)")
    p.add_argument("--data", required=True, help="dataset ('builtin' or a directory)")
    p.add_argument("--calib-images", type=int, default=512, help="calibration images")
    p.add_argument(
        "--val-images", type=int, default=1000, help="validation images for the report (0: none)"
    )
    p.add_argument("--method", choices=METHODS, default="mse", help="activation scale choice")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="held-out share (formats without a test split)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def _batches(dataset, spec, n: int, batch_size: int):
    """Up to ``n`` preprocessed images of ``dataset`` (a fixed shuffle), as (images, labels) batches."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(dataset), generator=g)[:n].tolist()
    sub = torch.utils.data.Subset(dataset, idx)
    for x, y, _ in make_loader(sub, build_transform(spec, False), batch_size, False):
        yield x, y


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    err = None
    if args.calib_images < 1:
        err = f"--calib-images={args.calib_images} must be at least 1"
    elif args.val_images < 0:
        err = f"--val-images={args.val_images} must be 0 or more"
    elif args.output.suffix.lower() != ".safetensors":
        err = f"output {str(args.output)!r} must end in .safetensors"
    if err:
        print(f"shufflenet quantize: error: {err}", file=sys.stderr)
        return 2
    try:
        resolved = resolve_model(args.model)
        model = resolved.model
        if isinstance(model, QuantizedModel):
            raise ValueError(f"{args.model!r} is already an int8 model; quantize its float32 model")
        from_file = resolved.source != "registry"
        size = resolved.input_spec.image_size if from_file else 32
        train_set = build_dataset(args.data, True, args.val_fraction, image_size=size)
        spec = (
            resolved.input_spec
            if from_file
            else default_spec(train_set, in_chans=resolved.input_spec.in_chans)
        )
        calib = list(_batches(train_set, spec, args.calib_images, args.batch_size))
        qmodel = quantize(model, [x for x, _ in calib], method=args.method)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"shufflenet quantize: error: {msg}", file=sys.stderr)
        return 2
    report = {
        "model": args.model,
        "method": args.method,
        "calibration_images": sum(len(x) for x, _ in calib),
    }
    if args.val_images:
        val_set = build_dataset(args.data, False, args.val_fraction, image_size=size)
        n = correct_f = correct_q = agree = 0
        with torch.no_grad():
            for x, y in _batches(val_set, spec, args.val_images, args.batch_size):
                pf, pq = model(x).argmax(1), qmodel(x).argmax(1)
                n += len(y)
                correct_f += int((pf == y).sum())
                correct_q += int((pq == y).sum())
                agree += int((pf == pq).sum())
        report.update(
            validation_images=n,
            top1_float32=correct_f / max(n, 1),
            top1_int8=correct_q / max(n, 1),
            top1_agreement=agree / max(n, 1),
        )
    extra = {"quantized_from": args.model, **{k: v for k, v in report.items() if k != "model"}}
    save_quantized(
        args.output,
        qmodel,
        input_spec=spec,
        class_names=resolved.class_names or list(getattr(train_set, "classes", [])) or None,
        extra=extra,
    )
    if args.json:
        print(json.dumps({**report, "output": str(args.output)}, indent=2))
    else:
        print(
            f"int8 model written to {args.output} ({report['calibration_images']} calibration images, {args.method})"
        )
        if args.val_images:
            print(
                f"on {report['validation_images']} validation images: top-1 float32 {report['top1_float32']:.2%}  "
                f"int8 {report['top1_int8']:.2%}  agreement {report['top1_agreement']:.2%}"
            )
    return 0
