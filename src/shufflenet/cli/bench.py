"""``shufflenet bench MODEL``: inference latency of one model on several backends, each in its own process.

Every backend is built from the same (random or given) weights in a fresh worker process (so that no other
backend's threads are alive), checked against eager PyTorch, warmed up and timed over ``--runs`` forward passes
(:mod:`shufflenet.deploy.benchmark`). Prints median latency (and its p10-p90 spread), images/s, achieved GFLOP/s
(2 x multiply-adds / median), the ratio of every pair of backends and the CPU time other processes used around
each measurement: when that is above 0.2 cores the machine is reported busy and the figures are not results.
Writes the same as JSON (``--json``) and a bar chart (``--plot``).

Example::

    shufflenet bench shufflenet_v1_g3_x1_0 --batch 1 --threads 2 --json bench.json --plot bench.png
"""

from __future__ import annotations

import argparse
import sys

from ..deploy.benchmark import BENCH_BACKENDS as BACKENDS
from ..utils import torch_threads
from .common import add_model_argument, command_parser, resolve_cli_model


def add_timing_options(p: argparse.ArgumentParser) -> None:
    """``--runs``, ``--rounds``, ``--warmup`` and ``--load-window``: how every backend is timed
    (:func:`shufflenet.deploy.benchmark.run_benchmark`)."""
    p.add_argument("--runs", type=int, default=200, help="timed forward passes per backend")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="worker processes per backend, interleaved with the other backends' (the runs are shared "
        "among them): a drift of the machine's speed then weighs on every backend alike",
    )
    p.add_argument("--warmup", type=int, default=10, help="untimed forward passes per backend")
    p.add_argument(
        "--load-window",
        type=float,
        default=1.0,
        help="seconds over which other processes' CPU use is sampled before each backend",
    )


def timing_kwargs(args: argparse.Namespace) -> dict:
    """The :func:`~shufflenet.deploy.benchmark.run_benchmark` arguments of :func:`add_timing_options`."""
    return {
        "runs": args.runs,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "load_window": args.load_window,
    }


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "shufflenet bench",
        "Median latency, images/s, GFLOP/s and ratios of inference backends, each timed in its own process.",
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
    add_timing_options(p)
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
        ("--runs", args.runs),
        ("--rounds", args.rounds),
    ):
        if v is not None and v < 1:
            print(f"shufflenet bench: {name}={v} must be >= 1", file=sys.stderr)
            return 2
    if args.warmup < 0 or args.load_window < 0:
        print(
            f"shufflenet bench: --warmup {args.warmup} and --load-window {args.load_window} must be >= 0",
            file=sys.stderr,
        )
        return 2
    from ..deploy.benchmark import format_table, plot_result, run_benchmark

    try:
        resolved = resolve_cli_model("shufflenet bench", args.model, args.weights)
    except (ValueError, OSError) as e:
        print(f"shufflenet bench: error: {e}", file=sys.stderr)
        return 2
    model = resolved.model
    input_size = args.input_size or (resolved.input_spec.image_size if resolved.path else 224)
    log = None if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    with torch_threads(None):  # leave the process's thread count as it was
        res = run_benchmark(
            model,
            batch=args.batch,
            threads=args.threads,
            backends=backends,
            input_size=input_size,
            log=log,
            arch=resolved.name,
            arch_kwargs=resolved.arch_kwargs,
            **timing_kwargs(args),
        )
    res.model = resolved.name
    print(format_table(res))
    if args.json:
        from ..utils.atomic import atomic_write

        with atomic_write(args.json) as f:
            f.write(res.to_json())
    if args.plot:
        plot_result(res, args.plot)
    return 0
