"""``shufflenet bench MODEL``: inference latency of one model on several backends, measured together.

Every backend is built from the same (random or given) weights, checked against eager PyTorch, warmed up and
then timed in interleaved rounds (one forward pass of each backend per round, in a rotating order), so that a
change of machine load hits all backends alike. Prints median latency (and its p10-p90 spread), images/s,
achieved GFLOP/s (2 x multiply-adds / median), the ratio of every pair of backends and the load average; writes
the same as JSON (``--json``) and a bar chart (``--plot``).

Example::

    shufflenet bench shufflenet_v1_g3_x1_0 --batch 1 --threads 2 --json bench.json --plot bench.png
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..deploy.api import BACKENDS
from .common import add_model_argument, resolve_cli_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shufflenet bench",
        description="Median latency, images/s, GFLOP/s and ratios of inference backends, timed in interleaved "
        "rounds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_argument(p)
    p.add_argument("--batch", type=int, default=1, help="images per forward pass")
    p.add_argument("--threads", type=int, default=2, help="threads for every backend")
    p.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated subset of {','.join(BACKENDS)}",
    )
    p.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="input height = width, pixels; unset: the model file's image size, else 224",
    )
    p.add_argument(
        "--rounds", type=int, default=None, help="timed rounds (default: fit --time-budget)"
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=20.0,
        help="seconds of timed rounds when --rounds is unset",
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed forward passes per backend")
    p.add_argument(
        "--gap-ms",
        type=float,
        default=10.0,
        help="sleep before each timed call, so that the previous backend's spinning threads go idle",
    )
    p.add_argument("--json", default=None, metavar="OUT", help="write the full result as JSON")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="write a bar chart")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in backends if b not in BACKENDS]
    if bad or not backends:
        print(
            f"shufflenet bench: unknown backend(s) {bad}; choose from {','.join(BACKENDS)}",
            file=sys.stderr,
        )
        return 2
    for name, v in (
        ("--batch", args.batch),
        ("--threads", args.threads),
        ("--input-size", args.input_size),
    ):
        if v is not None and v < 1:
            print(f"shufflenet bench: {name}={v} must be >= 1", file=sys.stderr)
            return 2
    from ..deploy.benchmark import format_table, plot_result, run_benchmark

    try:
        resolved = resolve_cli_model("shufflenet bench", args.model, args.weights)
    except (ValueError, OSError) as e:
        print(f"shufflenet bench: error: {e}", file=sys.stderr)
        return 2
    model = resolved.model
    input_size = args.input_size or (resolved.input_spec.image_size if resolved.path else 224)
    threads_before = torch.get_num_threads()
    log = None if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    try:
        res = run_benchmark(
            model,
            batch=args.batch,
            threads=args.threads,
            backends=backends,
            input_size=input_size,
            rounds=args.rounds,
            warmup=args.warmup,
            time_budget=args.time_budget,
            gap=args.gap_ms / 1e3,
            log=log,
        )
    finally:
        torch.set_num_threads(threads_before)  # leave the process's thread count as it was
    res.model = resolved.name
    print(format_table(res))
    if args.json:
        from ..utils.atomic import atomic_write

        with atomic_write(args.json) as f:
            f.write(res.to_json())
    if args.plot:
        plot_result(res, args.plot)
    return 0
