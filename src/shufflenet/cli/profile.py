"""``shufflenet profile MODEL``: per-layer parameters and multiply-adds, with totals."""

from __future__ import annotations

import argparse

from ..complexity import profile
from ..models import create_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shufflenet profile",
        description="Per-layer table of parameters and multiply-adds (MACs; FLOPs = 2 x MACs).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", help="registered model name (see `shufflenet list`)")
    p.add_argument("--input-size", type=int, default=224, help="input height = width, pixels")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs")
    p.add_argument("--in-chans", type=int, default=3, help="input image channels")
    p.add_argument("--small-input", action="store_true", help="CIFAR-style stem where supported")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--max-rows", type=int, default=None, help="show at most this many layer rows")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kwargs = {"num_classes": args.num_classes, "in_chans": args.in_chans}
    if args.small_input:
        kwargs["small_input"] = True
    model = create_model(args.model, **kwargs)
    report = profile(model, args.input_size)
    print(report.to_json() if args.json else report.table(args.max_rows))
    return 0
