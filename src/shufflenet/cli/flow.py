"""``shufflenet flow MODEL``: which input channel groups reach which output channels.

``MODEL`` is ``gconv-stack`` (stacked 1x1 group convolutions with and without channel shuffle, structural and
measured after every layer), a registered model name, or a model file; for the last two ``--module`` picks
the part to measure (e.g. ``stages.1`` of a ShuffleNet).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..analysis.commands import flow_report


def _kwarg(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--model-kwarg {text!r} must be KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shufflenet flow",
        description="Heat map of output channels vs input channel groups they depend on: structural (from "
        "the group structure) and measured (gradient of each output channel's sum w.r.t. each input group).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "model", help="'gconv-stack', a registered model name, or a .safetensors model file"
    )
    p.add_argument("--module", default=None, help="submodule to measure in a model, e.g. stages.1")
    p.add_argument(
        "--model-kwarg",
        type=_kwarg,
        action="append",
        default=[],
        help="KEY=VALUE for the model, e.g. shuffle=none",
    )
    p.add_argument(
        "--input-groups",
        type=int,
        default=None,
        help="input channel groups (default: the module's conv groups)",
    )
    p.add_argument(
        "--input-size", type=int, default=8, help="spatial side of the random probe input"
    )
    p.add_argument("--channels", type=int, default=24, help="gconv-stack: channels")
    p.add_argument("--groups", type=int, default=3, help="gconv-stack: groups")
    p.add_argument("--depth", type=int, default=3, help="gconv-stack: layers")
    p.add_argument("--out", default="runs/flow", help="output directory")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model, label = None, ""
    if args.model != "gconv-stack":
        if Path(args.model).suffix == ".safetensors":
            from ..model_file import load_model

            model, info = load_model(args.model)
            label = info.arch
        else:
            from ..models import create_model

            model, label = create_model(args.model, **dict(args.model_kwarg)), args.model
    try:
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
    except (TypeError, ValueError) as e:
        build_parser().error(str(e))
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
