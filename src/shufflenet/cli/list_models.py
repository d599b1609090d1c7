"""``shufflenet list [PATTERN]``: registered model names."""

from __future__ import annotations

import argparse

from ..models import list_models
from .common import command_parser


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("shufflenet list", "List registered models.")
    p.add_argument(
        "pattern", nargs="?", default="*", help="shell-style filter, e.g. 'shufflenet_v1_g3*'"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}")
        return 1
    print("\n".join(names))
    return 0
