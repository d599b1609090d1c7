"""``shufflenet filters CHECKPOINT --layer conv1``: first-layer filters by group, with a colour measure.

Writes ``filters.png`` (one grid per group), ``filters.json`` (mean colour fraction per group) and
``filters.csv`` (per filter). ``conv1`` means the first convolution when no layer has that name.
"""

from __future__ import annotations

import argparse

from ..analysis.commands import filters_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shufflenet filters",
        description="A layer's filters as an image grid split by group, with the colour fraction of each "
        "filter (0 = grey, 1 = purely chromatic) and its mean per group.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "checkpoint", help="model file (.safetensors), or a registered model name (untrained)"
    )
    p.add_argument("--layer", default="conv1", help="layer name, or convK for the K-th convolution")
    p.add_argument(
        "--groups",
        type=int,
        default=None,
        help="groups to split by (default: those of the next conv)",
    )
    p.add_argument("--out", default="runs/filters", help="output directory")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.checkpoint.endswith(".safetensors"):
        from ..model_file import load_model

        model, info = load_model(args.checkpoint)
        arch, order = info.arch, info.input_spec.channel_order
    else:
        from ..models import create_model

        model, arch, order = create_model(args.checkpoint), args.checkpoint, "RGB"
    config = {
        "checkpoint": args.checkpoint,
        "arch": arch,
        "layer": args.layer,
        "groups": args.groups,
    }
    try:
        fg, paths = filters_report(model, args.layer, args.out, args.groups, order, config)
    except (TypeError, ValueError) as e:
        build_parser().error(str(e))
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
