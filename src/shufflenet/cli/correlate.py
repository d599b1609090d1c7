"""``shufflenet correlate MODEL --data PATH --layers A B``: Deep Roots inter-layer correlation.

Writes ``correlation.png`` (heat map of the whitened cross-covariance, group boundaries in red),
``correlation.json`` (block-diagonality score and configuration) and ``correlation.csv`` (the matrix).
"""

from __future__ import annotations

import argparse
import sys

from ..analysis.commands import correlate_checkpoint
from .common import MODEL_HELP, bounded_int, check_output_dir
from .main import command

PROG = "shufflenet correlate"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Correlation between the filter responses of two layers (Deep Roots, Ioannou et al. "
        "2017): every position of every image is a sample; each layer is centred and ZCA-whitened; the "
        "covariance of the two is shown with the group blocks marked and scored.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--data", required=True, help="dataset directory or 'builtin'")
    p.add_argument(
        "--layers",
        nargs=2,
        required=True,
        metavar=("A", "B"),
        help="layer names, e.g. conv2c conv3a",
    )
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument(
        "--max-images",
        type=bounded_int("--max-images", 1, 10_000_000),
        default=2000,
        help="images streamed (class-balanced subset)",
    )
    p.add_argument("--batch-size", type=bounded_int("--batch-size", 1, 65536), default=100)
    p.add_argument(
        "--groups",
        type=bounded_int("--groups", 1, 4096),
        default=None,
        help="blocks to score (default: groups of layer B)",
    )
    p.add_argument(
        "--eps", type=float, default=1e-3, help="ZCA regulariser, relative to the mean variance"
    )
    p.add_argument("--out", default="runs/correlate", help="output directory")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.eps > 0:
        raise ValueError(f"--eps {args.eps} must be a positive number")
    check_output_dir(args.out, "--out")
    result, paths = correlate_checkpoint(
        args.model,
        args.data,
        args.layers,
        args.out,
        split=args.split,
        max_images=args.max_images,
        batch_size=args.batch_size,
        groups=args.groups,
        eps=args.eps,
        device=args.device,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    print(
        f"{result.layer_a} {result.shape_a} vs {result.layer_b} {result.shape_b}: "
        f"{result.images} images, {result.samples} samples"
    )
    if result.block is not None:
        b = result.block
        print(
            f"in-block share {b.share:.3f} vs chance {b.chance:.3f} with {b.groups} groups: score {b.score:.3f}"
        )
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
