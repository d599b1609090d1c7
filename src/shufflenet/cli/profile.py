"""``shufflenet profile MODEL``: per-layer parameters and multiply-adds, with totals."""

from __future__ import annotations

import argparse

from ..complexity import profile
from .common import (
    MAX_INPUT_SIZE,
    add_int_option,
    add_model_argument,
    command_parser,
    resolve_cli_model,
)
from .main import command

PROG = "shufflenet profile"


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        PROG, "Per-layer table of parameters and multiply-adds (MACs; FLOPs = 2 x MACs)."
    )
    add_model_argument(p)
    add_int_option(
        p,
        "--input-size",
        1,
        MAX_INPUT_SIZE,
        help="input height = width, pixels; unset: the model file's image size, else 224",
    )
    add_int_option(
        p,
        "--num-classes",
        1,
        100_000,
        help="classifier outputs; unset: the model's (1000 for a registered name)",
    )
    add_int_option(
        p,
        "--in-chans",
        1,
        3,
        help="input image channels; unset: the model's (3 for a registered name)",
    )
    p.add_argument(
        "--small-input", action="store_true", help="CIFAR-style stem where supported (names only)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_int_option(p, "--max-rows", 0, 1_000_000, help="show at most this many layer rows")
    return p


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    extra = {"small_input": True} if args.small_input else {}
    resolved = resolve_cli_model(
        PROG,
        args.model,
        args.weights,
        num_classes=args.num_classes,
        in_chans=args.in_chans,
        **extra,
    )
    size = args.input_size or (resolved.input_spec.image_size if resolved.path else 224)
    try:
        report = profile(resolved.model, size)
    except RuntimeError as e:  # a convolution or pooling with no output pixels left
        raise ValueError(f"--input-size {size} is too small for {resolved.name}: {e}") from None
    print(report.to_json() if args.json else report.table(args.max_rows))
    return 0
