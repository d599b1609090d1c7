"""``shufflenet conv-cost``: output size, parameters and multiply-adds of one layer built four ways.

Example: ``shufflenet conv-cost --input 7x7x3 --filters 128 --kernel 3`` gives a 5x5x128 output and 3,456
weights for the standard convolution (valid padding).
"""

from __future__ import annotations

import argparse
import json
import re

from ..analysis.conv_cost import ConvGeometry, conv_costs
from .common import command_parser


def _parse_input(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"--input {text!r} must look like HxWxC, e.g. 7x7x3")
    return int(m[1]), int(m[2]), int(m[3])


def _parse_kernel(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)(?:\s*[xX]\s*(\d+))?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"--kernel {text!r} must be K or KHxKW, e.g. 3 or 3x3")
    return int(m[1]), int(m[2] or m[1])


def _parse_padding(text: str) -> int | str:
    if text in ("valid", "same"):
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"--padding {text!r} must be 'valid', 'same' or a pixel count")


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "shufflenet conv-cost",
        "Output size, weights and multiply-adds (MACs; FLOPs = 2 x MACs) of a convolution as "
        "standard, grouped, depthwise-separable and pointwise-group + shuffle (ShuffleNet unit).",
    )
    p.add_argument("--input", type=_parse_input, required=True, help="input H x W x C1, e.g. 7x7x3")
    p.add_argument("--filters", type=int, required=True, help="number of filters C2")
    p.add_argument("--kernel", type=_parse_kernel, default=(3, 3), help="filter side K or KHxKW")
    p.add_argument("--groups", type=int, default=1, help="g of the grouped arrangements")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument(
        "--padding", type=_parse_padding, default="valid", help="'valid', 'same' or pixels"
    )
    p.add_argument(
        "--bottleneck", type=int, default=None, help="ShuffleNet unit width m (default C2/4)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    (h, w, c1), (kh, kw) = args.input, args.kernel
    try:
        geometry = ConvGeometry(h, w, c1, args.filters, kh, kw, args.stride, args.padding)
        rows = conv_costs(geometry, args.groups, args.bottleneck)
    except (TypeError, ValueError) as e:
        build_parser().error(str(e))
    if args.json:
        print(json.dumps([{**vars(r), "flops": r.flops} for r in rows], indent=2))
        return 0
    ho, wo, c2 = rows[0].output_shape
    print(
        f"input {h}x{w}x{c1}, {c2} filters of {kh}x{kw}x{c1}, stride {args.stride}, padding {args.padding}"
    )
    print(f"output {ho}x{wo}x{c2}")
    head = f"{'arrangement':<25} {'weights':>12} {'MACs':>16} {'vs standard':>12}  detail"
    print(head)
    print("-" * len(head))
    std = rows[0].macs
    for r in rows:
        if r.params is None:
            print(f"{r.arrangement:<25} {'n/a':>12} {'n/a':>16} {'':>12}  {r.reason}")
            continue
        print(
            f"{r.arrangement:<25} {r.params:>12,} {r.macs:>16,} {r.macs / std:>11.3f}x  {r.detail}"
        )
    return 0
