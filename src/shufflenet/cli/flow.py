"""``shufflenet flow MODEL``: which input channel groups reach which output channels.

``MODEL`` is ``gconv-stack`` (stacked 1x1 group convolutions with and without channel shuffle, structural and
measured after every layer) or any model (a registered name, a model file, a published checkpoint); for a
model ``--module`` picks the part to measure (e.g. ``stages.1`` of a ShuffleNet).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..analysis.commands import flow_report
from .common import MODEL_HELP, add_int_option, check_output_dir, command_parser, resolve_cli_model
from .main import command

PROG = "shufflenet flow"


def _kwarg(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--model-kwarg {text!r} must be KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        PROG,
        "Heat map of output channels vs input channel groups they depend on: structural (from "
        "the group structure) and measured (gradient of each output channel's sum w.r.t. each input group).",
    )
    p.add_argument("model", help="'gconv-stack', or " + MODEL_HELP)
    p.add_argument(
        "--weights", default=None, metavar="FILE", help="a plain state dict for the model NAME"
    )
    p.add_argument("--module", default=None, help="submodule to measure in a model, e.g. stages.1")
    p.add_argument(
        "--model-kwarg",
        type=_kwarg,
        action="append",
        default=[],
        help="KEY=VALUE for a model given by name, e.g. shuffle=none",
    )
    add_int_option(
        p,
        "--input-groups",
        1,
        4096,
        help="input channel groups (default: the module's conv groups)",
    )
    add_int_option(
        p, "--input-size", 1, 1024, default=8, help="spatial side of the random probe input"
    )
    add_int_option(p, "--channels", 1, 4096, default=24, help="gconv-stack: channels")
    add_int_option(p, "--groups", 1, 4096, default=3, help="gconv-stack: groups")
    add_int_option(p, "--depth", 1, 64, default=3, help="gconv-stack: layers")
    p.add_argument("--out", default="runs/flow", help="output directory")
    return p


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_output_dir(args.out, "--out")
    model, label = None, ""
    if args.model != "gconv-stack":
        resolved = resolve_cli_model(PROG, args.model, args.weights, **dict(args.model_kwarg))
        model, label = resolved.model, resolved.name
    elif args.model_kwarg or args.weights:
        raise ValueError("--model-kwarg and --weights are for a model, not for gconv-stack")
    paths = flow_report(
        args.out,
        model,
        args.module,
        args.input_groups,
        args.channels,
        args.groups,
        args.depth,
        args.input_size,
        label,
    )
    data = json.loads(Path(paths["json"]).read_text())
    for key, rec in data["flow"].items():
        line = f"{key}: {rec['outputs_seeing_all_groups']}/{rec['outputs']} outputs see every input group"
        if "measured_support_equals_structural" in rec:
            line += (
                f"; measured support equals structural: {rec['measured_support_equals_structural']}"
            )
        print(line)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
