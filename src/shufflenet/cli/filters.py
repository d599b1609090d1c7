"""``shufflenet filters MODEL --layer conv1``: first-layer filters by group, with a colour measure.

Writes ``filters.png`` (one grid per group), ``filters.json`` (mean colour fraction per group) and
``filters.csv`` (per filter). ``conv1`` means the first convolution when no layer has that name.
"""

from __future__ import annotations

import argparse

from ..analysis.commands import filters_report
from .common import (
    add_int_option,
    add_model_argument,
    check_output_dir,
    command_parser,
    resolve_cli_model,
)
from .main import command

PROG = "shufflenet filters"


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        PROG,
        "A layer's filters as an image grid split by group, with the colour fraction of each "
        "filter (0 = grey, 1 = purely chromatic) and its mean per group.",
    )
    add_model_argument(p, " (a name gives an untrained model)")
    p.add_argument("--layer", default="conv1", help="layer name, or convK for the K-th convolution")
    add_int_option(
        p, "--groups", 1, 4096, help="groups to split by (default: those of the next conv)"
    )
    p.add_argument("--out", default="runs/filters", help="output directory")
    return p


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_output_dir(args.out, "--out")
    resolved = resolve_cli_model(PROG, args.model, args.weights)
    config = {
        "model": args.model,
        "arch": resolved.name,
        "source": resolved.source,
        "layer": args.layer,
        "groups": args.groups,
    }
    order = resolved.input_spec.channel_order
    fg, paths = filters_report(resolved.model, args.layer, args.out, args.groups, order, config)
    s = fg.summary()
    print(
        f"{s['layer']}: {s['filters']} filters of {'x'.join(map(str, s['filter_shape']))}, {s['groups']} groups"
    )
    for g in s.get("per_group", []):
        print(
            f"  group {g['group']} (filters {g['filters']}): mean colour fraction "
            f"{g['mean_colour_fraction']:.3f}, median {g['median_colour_fraction']:.3f}"
        )
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
