"""``shufflenet correlate MODEL --data PATH [--pairs A:B ...]``: Deep Roots inter-layer correlation.

Every layer pair is measured on the trained model and, on the same images, on untrained models of the same
architecture (``--init-seeds``): the learned excess is the trained in-block share minus the untrained one.
Writes ``correlation.png`` (heat maps of the whitened cross-covariance, trained beside untrained, group
boundaries in red), ``shares.png`` (in-block share: trained, untrained, chance), ``correlation.json`` (the
numbers and the configuration) and ``correlation_A-B.csv`` (each trained matrix).
"""

from __future__ import annotations

import argparse
import sys

from ..analysis.commands import correlate_checkpoint
from ..analysis.correlation_control import NIN_PAIRS
from ..utils import torch_threads
from .common import MODEL_HELP, add_int_option, check_output_dir, command_parser
from .main import command

PROG = "shufflenet correlate"


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        PROG,
        "Correlation between the filter responses of two layers (Deep Roots, Ioannou et al. "
        "2017): every position of every image is a sample; each layer is centred and ZCA-whitened; the "
        "covariance of the two is shown with the group blocks marked and scored.",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--data", required=True, help="dataset directory or 'builtin'")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--layers",
        nargs=2,
        default=None,
        metavar=("A", "B"),
        help="one layer pair, e.g. conv2c conv3a",
    )
    which.add_argument(
        "--pairs",
        nargs="+",
        type=_pair,
        default=None,
        metavar="A:B",
        help="layer pairs; default for NIN: " + " ".join(f"{a}:{b}" for a, b in NIN_PAIRS),
    )
    p.add_argument("--split", choices=("train", "test"), default="test")
    add_int_option(
        p,
        "--max-images",
        1,
        10_000_000,
        default=2000,
        help="images streamed (class-balanced subset)",
    )
    add_int_option(p, "--batch-size", 1, 65536, default=100)
    add_int_option(
        p,
        "--groups",
        1,
        4096,
        help="blocks to score every pair with (default: the groups of the pair's grouped layer)",
    )
    p.add_argument(
        "--init-seeds",
        type=int,
        nargs="*",
        default=[0, 1, 2],
        help="init seeds of the untrained control models (none: no control)",
    )
    add_int_option(
        p,
        "--bootstrap",
        0,
        100_000,
        default=100,
        help="resamples of the paired bootstrap of the learned excess over image chunks (0: none)",
    )
    add_int_option(p, "--chunks", 2, 100_000, default=10, help="image chunks for the bootstrap")
    p.add_argument(
        "--eps", type=float, default=1e-3, help="ZCA regulariser, relative to the mean variance"
    )
    p.add_argument("--out", default="runs/correlate", help="output directory")
    p.add_argument("--device", default="cpu")
    add_int_option(p, "--threads", 1, 1024, help="torch CPU threads; None: torch's choice")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _pair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or not a or not b or ":" in b:
        raise argparse.ArgumentTypeError(f"layer pair {text!r} must be A:B, e.g. conv2c:conv3a")
    return a, b


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.eps > 0:
        raise ValueError(f"--eps {args.eps} must be a positive number")
    check_output_dir(args.out, "--out")
    pairs = [tuple(args.layers)] if args.layers else args.pairs
    bootstrap = args.bootstrap if args.init_seeds else 0
    with torch_threads(args.threads or None):  # the process's thread count is restored after
        results, paths = correlate_checkpoint(
            args.model,
            args.data,
            pairs,
            args.out,
            split=args.split,
            max_images=args.max_images,
            batch_size=args.batch_size,
            groups=args.groups,
            eps=args.eps,
            seeds=args.init_seeds,
            bootstrap=bootstrap,
            chunks=args.chunks,
            device=args.device,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
    for r in results:
        t = r.trained
        print(
            f"{t.layer_a} {t.shape_a} vs {t.layer_b} {t.shape_b}: {t.images} images, {t.samples} samples"
        )
        if t.block is None:
            continue
        line = f"  in-block share with {r.groups} groups: trained {t.block.share:.3f}"
        if r.untrained:
            line += (
                f", untrained {r.untrained_share:.3f} (sd {_fmt(r.seed_sd)} over {len(r.seeds)} init seeds)"
                f", chance {r.chance:.3f}: learned excess {r.excess:+.3f}"
            )
            if r.bootstrap is not None:
                b = r.bootstrap
                line += f" (bootstrap 95% {b['low']:+.3f} to {b['high']:+.3f})"
        else:
            line += f", chance {r.chance:.3f}: score {t.block.score:.3f}"
        print(line)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
