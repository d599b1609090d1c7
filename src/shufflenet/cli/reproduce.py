"""``shufflenet reproduce EXPERIMENT``: run a paper experiment and write a Markdown report beside its figures.

Experiments: ``complexity`` (no data), ``groups``, ``shuffle``, ``alexnet-groups``. ``--budget`` sets the
training images, test images and epochs (``smoke``: seconds; ``reduced``: minutes on two CPU cores;
``full``: the whole dataset, for a GPU); ``--subset``, ``--test-subset`` and ``--epochs`` override it.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..analysis.reproduce import BUDGETS, EXPERIMENTS, ReproduceOptions, run_experiment


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shufflenet reproduce",
        description="Run a paper experiment; writes report.md, figures, results.json and config.json.",
        epilog="experiments:\n" + "\n".join(f"  {k:<15} {d}" for k, (_, d) in EXPERIMENTS.items()),
        formatter_class=lambda prog: argparse.ArgumentDefaultsHelpFormatter(prog, width=110),
    )
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    p.add_argument(
        "--data", default=None, help="dataset directory (e.g. CIFAR-10 python batches) or 'builtin'"
    )
    p.add_argument("--budget", choices=sorted(BUDGETS), default="reduced", help="size of the run")
    p.add_argument("--epochs", type=int, default=None, help="training epochs; None: from --budget")
    p.add_argument(
        "--subset",
        type=int,
        default=None,
        help="training images, class-balanced; None: from --budget",
    )
    p.add_argument("--test-subset", type=int, default=None, help="test images; None: from --budget")
    p.add_argument(
        "--corr-images",
        type=int,
        default=None,
        help="groups: test images for the correlation panels; None: from --budget",
    )
    p.add_argument(
        "--roots",
        type=int,
        nargs="+",
        default=None,
        help="groups: NIN roots; None: 1 2 4 8 16 (the paper's 16-group panel is root 32)",
    )
    p.add_argument(
        "--widths",
        type=float,
        nargs="+",
        default=None,
        help="shuffle: ShuffleNet widths; None: 0.25",
    )
    p.add_argument(
        "--groups",
        type=int,
        nargs="+",
        default=None,
        help="shuffle: ShuffleNet groups; None: 3 8 (complexity: filter)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="alexnet-groups: input side in pixels; None: 64",
    )
    p.add_argument("--batch-size", type=int, default=64, help="training batch size")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate per 64 images; None: 0.05 (alexnet-groups 0.01)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the subset, initialisation and augmentation"
    )
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads; None: torch's choice"
    )
    p.add_argument("--out", default=None, help="output directory; None: runs/reproduce/EXPERIMENT")
    p.add_argument(
        "--data-note",
        default="",
        help="a sentence about the data for the report (e.g. its provenance)",
    )
    p.add_argument(
        "--save-checkpoints",
        action="store_true",
        help="keep the trained models in OUT/checkpoints/",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    extra = {
        "roots": args.roots,
        "widths": args.widths,
        "groups": args.groups,
        "image_size": args.image_size,
    }
    try:
        opts = ReproduceOptions(
            out=args.out or f"runs/reproduce/{args.experiment}",
            data=args.data,
            budget=args.budget,
            epochs=args.epochs,
            subset=args.subset,
            test_subset=args.test_subset,
            corr_images=args.corr_images,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            threads=args.threads,
            progress=not args.no_progress and sys.stderr.isatty(),
            data_note=args.data_note,
            save_checkpoints=args.save_checkpoints,
            argv=argv,
            extra={k: v for k, v in extra.items() if v is not None},
        )
        run_experiment(args.experiment, opts)
    except (TypeError, ValueError, FileNotFoundError) as e:
        build_parser().error(str(e))
    print(f"report: {opts.out / 'report.md'}")
    return 0
