"""``shufflenet reproduce EXPERIMENT``: run a paper experiment and write a Markdown report beside its figures.

Experiments: ``complexity`` (no data), ``groups``, ``shuffle``, ``alexnet-groups``, ``finetune``. ``--budget`` sets the
training images, test images and epochs (``smoke``: seconds; ``reduced``: minutes on two CPU cores;
``full``: the whole dataset, for a GPU); ``--subset``, ``--test-subset`` and ``--epochs`` override it. Each
experiment's flags are the fields of its configuration class (``shufflenet reproduce EXPERIMENT --help``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing

import torch

from ..analysis.reproduce import BUDGETS, EXPERIMENTS, TrainingStopped, run_experiment
from ..utils import torch_threads
from .common import check_output_dir

_EXIT = {"nonfinite": 3, "interrupted": 130}


def _flag_type(annotation: typing.Any) -> tuple[type, bool]:
    """The element type of a field's annotation and whether it takes several values:
    ``int | None`` -> ``(int, False)``, ``tuple[float, ...] | None`` -> ``(float, True)``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) in (tuple, list):
        return typing.get_args(annotation)[0], True
    return annotation, False


def _add_fields(p: argparse.ArgumentParser, config: type) -> None:
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        if not f.metadata.get("cli", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = {"device": "cuda if available, else cpu", "lr": config.default_lr}.get(
            f.name, f.default
        )
        if isinstance(default, tuple):
            default = " ".join(str(v) for v in default)
        help_text = f"{f.metadata['help']} (default: {default})"
        kind, several = _flag_type(hints[f.name])
        if kind is bool:
            p.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)
            continue
        p.add_argument(
            flag,
            type=kind,
            nargs="+" if several else None,
            choices=sorted(BUDGETS) if f.name == "budget" else None,
            default=argparse.SUPPRESS,
            help=help_text,
            metavar=f.name.upper(),
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shufflenet reproduce",
        description="Run a paper experiment; writes report.md, figures, results.json and config.json.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name, experiment in EXPERIMENTS.items():
        sp = sub.add_parser(
            name,
            help=experiment.description,
            description=experiment.description,
            formatter_class=lambda prog: argparse.HelpFormatter(prog, width=110),
        )
        _add_fields(sp, experiment.config)
        sp.add_argument(
            "--out",
            default=argparse.SUPPRESS,
            help=f"output directory (default: runs/reproduce/{name})",
        )
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    name = args.pop("experiment")
    no_progress = args.pop("no_progress")
    args.setdefault("out", f"runs/reproduce/{name}")
    args.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
    try:
        check_output_dir(args["out"], "--out")
        config = EXPERIMENTS[name].config(
            **args, progress=not no_progress and sys.stderr.isatty(), argv=argv
        )
        # the caller's thread count is restored after
        with torch_threads(args.get("threads") or None):
            run_experiment(name, config)
    except TrainingStopped as e:
        print(f"shufflenet reproduce: {e}", file=sys.stderr)
        return _EXIT.get(e.status, 1)
    except (TypeError, ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    print(f"report: {config.out / 'report.md'}")
    return 0
