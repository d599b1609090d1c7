"""Inference speed of ShuffleNet, AlexNet and MobileNet on every backend, and the targets of the deploy work.

    python benchmarks/inference.py --quick     # 0.5x/1x g=3 ShuffleNet and AlexNet, batch 1 and 32, 2 threads
    python benchmarks/inference.py             # all six models, batch 1 and 32, 1 and 2 threads, every backend
    python benchmarks/inference.py --quick --runs 5 --out results.md --json results.json   # a smoke run

Models (224x224): ShuffleNet v1 0.5x/1x/2x g=3 and 1x g=8, AlexNet (two groups, ``alexnet_g2``), MobileNet v1 1x.
Every (model, batch, threads, backend) is measured the way users run an engine, by
:func:`shufflenet.deploy.benchmark.run_benchmark`: a fresh worker process per backend (no other backend's thread
pool alive), the engine's threads set as its documentation says, the same random weights, a check against eager
PyTorch, then ``--runs`` timed forward passes (default 200): median latency with its p10-p90 spread. Backends:
eager, optimized, compile, ONNX Runtime, the native engine, ExecuTorch with XNNPACK (all ops delegated) and
ncnn (float32). Then:

- a latency table (median ms per backend, p10 in brackets; images/s and GFLOP/s of the fastest);
- the realised speed-up of each ShuffleNet over AlexNet, each on its fastest backend, next to the ratio of
  their multiply-adds and the paper's figures (Table 8: 12x measured for 18x fewer multiply-adds, 0.5x g=3
  against AlexNet on one ARM core);
- the channels-last shuffle against ``clone()`` (bandwidth, bytes read + written);
- the performance targets, each with the measured value and its spread, met or not.

Machine load: the CPU time that other processes used (``/proc/stat``, this benchmark's own threads excluded) is
recorded before and during every measurement. If it exceeds 0.2 cores anywhere the report says the machine was
busy and judges no target: a figure from a loaded machine is not a result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from shufflenet.cli.bench import add_timing_options, timing_kwargs
from shufflenet.complexity import profile
from shufflenet.deploy.benchmark import (
    BENCH_BACKENDS,
    BUSY_CORES,
    BenchResult,
    cpu_busy_other,
    run_benchmark,
    system_info,
)
from shufflenet.deploy.shuffle import measure_shuffle_bandwidth
from shufflenet.factory import create_model

BACKENDS = BENCH_BACKENDS

MODELS = (
    "shufflenet_v1_g3_x0_5",
    "shufflenet_v1_g3_x1_0",
    "shufflenet_v1_g3_x2_0",
    "shufflenet_v1_g8_x1_0",
    "alexnet_g2",
    "mobilenet_v1_x1_0",
)
QUICK_MODELS = ("shufflenet_v1_g3_x0_5", "shufflenet_v1_g3_x1_0", "alexnet_g2")
QUICK_BACKENDS = ("eager", "onnxruntime", "native", "executorch", "ncnn")
REFERENCE = "alexnet_g2"
# ShuffleNet paper, Table 8: 0.5x g=3 against AlexNet on one ARM core (Qualcomm Snapdragon 820)
PAPER_SPEEDUP, PAPER_MAC_RATIO = 12.0, 18.0


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="smaller sweep (see above), no torch.compile"
    )
    p.add_argument("--models", default=None, help="comma-separated model names")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,32)")
    p.add_argument(
        "--threads", default=None, help="comma-separated thread counts (default 1,2; quick: 2)"
    )
    p.add_argument(
        "--backends", default=None, help=f"comma-separated subset of {','.join(BACKENDS)}"
    )
    p.add_argument("--input-size", type=int, default=224)
    add_timing_options(p)
    p.add_argument(
        "--no-shuffle", action="store_true", help="skip the shuffle bandwidth measurement"
    )
    p.add_argument("--out", default=None, help="Markdown report (default: print only)")
    p.add_argument("--json", default=None, help="all measurements as JSON")
    return p.parse_args(argv)


def _csv(s: str | None, default, cast=str):
    return tuple(cast(x.strip()) for x in s.split(",") if x.strip()) if s else tuple(default)


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _best(res: BenchResult) -> tuple[str | None, float | None]:
    b = res.fastest()
    return (b, res.backends[b].median_ms) if b else (None, None)


def _latency_table(results: list[BenchResult], backends: tuple[str, ...]) -> list[str]:
    head = "| model | MMACs | batch | threads | " + " | ".join(f"{b} ms" for b in backends)
    head += " | fastest | images/s | GFLOP/s | fastest / ORT |"
    lines = [head, "|" + "---|" * (8 + len(backends))]
    for r in results:
        cells = []
        for b in backends:
            br = r.backends.get(b)
            if br is None or br.status != "ok" or br.median_ms is None:
                cells.append("n/a" if br is None or br.status == "skipped" else "failed")
            else:
                cells.append(f"{_fmt_ms(br.median_ms)} ({_fmt_ms(br.p10_ms)})")
        fb, _ = _best(r)
        ort = r.backends.get("onnxruntime")
        ratio = (
            f"{r.backends[fb].median_ms / ort.median_ms:.2f}"
            if fb and ort is not None and ort.median_ms
            else "-"
        )
        ips = f"{r.backends[fb].images_per_s:.1f}" if fb else "-"
        gf = f"{r.backends[fb].gflops:.0f}" if fb else "-"
        lines.append(
            f"| {r.model} | {r.macs_per_image / 1e6:.0f} | {r.batch} | {r.threads} | "
            + " | ".join(cells)
            + f" | {fb or '-'} | {ips} | {gf} | {ratio} |"
        )
    return lines


def _speedup_table(results: list[BenchResult]) -> tuple[list[str], dict]:
    by = {(r.model, r.batch, r.threads): r for r in results}
    lines = [
        "| ShuffleNet | batch | threads | its fastest ms | AlexNet fastest ms | realised speed-up | "
        "MAC ratio | speed-up / MAC ratio | paper (0.5x g=3, one ARM core) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    out = {}
    for (model, batch, threads), r in by.items():
        if not model.startswith("shufflenet") or (REFERENCE, batch, threads) not in by:
            continue
        a = by[(REFERENCE, batch, threads)]
        (fb, ms), (fa, ams) = _best(r), _best(a)
        if ms is None or ams is None:
            continue
        sp, mr = ams / ms, a.macs_per_image / r.macs_per_image
        out[(model, batch, threads)] = sp
        lines.append(
            f"| {model} ({fb}) | {batch} | {threads} | {_fmt_ms(ms)} | {_fmt_ms(ams)} ({fa}) | "
            f"{sp:.1f}x | {mr:.1f}x | {sp / mr:.2f} | "
            + (
                f"{PAPER_SPEEDUP:.0f}x for {PAPER_MAC_RATIO:.0f}x ({PAPER_SPEEDUP / PAPER_MAC_RATIO:.2f})"
                if model == "shufflenet_v1_g3_x0_5"
                else "-"
            )
            + " |"
        )
    return lines, out


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    models = _csv(args.models, QUICK_MODELS if args.quick else MODELS)
    batches = _csv(args.batches, (1, 32), int)
    threads_list = _csv(args.threads, (2,) if args.quick else (1, 2), int)
    backends = _csv(args.backends, QUICK_BACKENDS if args.quick else BACKENDS)
    t_start = time.time()
    sys0 = system_info()
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    log(
        f"# {sys0['cpu']}, {sys0['cores']} cores, load average {sys0['loadavg']}, native {sys0.get('native_isa')}"
    )
    results: list[BenchResult] = []
    for model_name in models:
        macs = profile(create_model(model_name).eval(), args.input_size).macs
        for threads in threads_list:
            for batch in batches:
                log(f"{model_name}  batch {batch}  threads {threads}  ({macs / 1e6:.0f}M MACs)")
                r = run_benchmark(
                    model_name,
                    batch=batch,
                    threads=threads,
                    backends=backends,
                    input_size=args.input_size,
                    log=log,
                    **timing_kwargs(args),
                )
                results.append(r)
                line = "  ".join(
                    f"{b} {_fmt_ms(x.median_ms)}"
                    for b, x in r.backends.items()
                    if x.median_ms is not None
                )
                log(f"  -> {line}   fastest {r.fastest()}")
    shuffle = []
    if not args.no_shuffle:
        for threads in threads_list:
            log(f"channel shuffle bandwidth, {threads} threads")
            other = cpu_busy_other(args.load_window) if args.load_window > 0 else None
            s = measure_shuffle_bandwidth((32, 240, 28, 28), 3, rounds=30, threads=threads)
            s["other_cores_before"] = other
            shuffle.append(s)
    sys1 = system_info()
    md = _report(args, results, shuffle, backends, sys0, sys1, time.time() - t_start)
    print(md)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(md + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "system_before": sys0,
                    "system_after": sys1,
                    "results": [r.to_dict() for r in results],
                    "shuffle": shuffle,
                },
                f,
                indent=2,
            )
    return 0


def _report(args, results, shuffle, backends, sys0, sys1, seconds) -> str:
    la0, la1 = sys0.get("loadavg") or [0, 0, 0], sys1.get("loadavg") or [0, 0, 0]
    cores = sys0.get("cores") or 1
    cmd = "python benchmarks/inference.py " + " ".join(sys.argv[1:])
    lines = [
        "# Inference benchmark",
        "",
        f"`{cmd.strip()}` on {sys0['cpu']} ({cores} cores), {sys0['time']}, {seconds / 60:.1f} min. "
        f"torch {sys0['torch']}, onnxruntime {sys0.get('onnxruntime')}, native engine: "
        f"{sys0.get('native_isa') or 'unavailable'}. Input {args.input_size}x{args.input_size}, float32.",
        "",
        _load_line(results, shuffle, la0[0], la1[0], cores),
        "",
        "## Latency",
        "",
        f"Median ms per forward pass of the whole batch (10th percentile in brackets) over {args.runs} runs, "
        + (
            f"in {args.rounds} rounds of one process per backend (the backends in turn)."
            if args.rounds > 1
            else "each backend in its own process."
        ),
        "",
    ]
    lines += _latency_table(results, backends)
    sp_lines, speedups = _speedup_table(results)
    if len(sp_lines) > 2:
        lines += ["", "## ShuffleNet against AlexNet (each on its fastest backend)", ""] + sp_lines
    if shuffle:
        lines += [
            "",
            "## Channel shuffle, channels-last 32x240x28x28 float32, g=3",
            "",
            "Bandwidth = bytes read + written per second, median round (fastest round in brackets). "
            "`clone()`, the native and PyTorch's shuffle allocate their result; `copy_` and "
            "`native into buffer` write into a preallocated one.",
            "",
            "| threads | clone() GB/s | native shuffle GB/s | torch shuffle GB/s | native / clone | "
            "copy_ into buffer GB/s | native into buffer GB/s | native / copy_ |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in shuffle:
            g, gb = s["gbps"], s["gbps_best"]

            def f(k: str, g=g, gb=gb) -> str:
                return f"{g[k]:.1f} ({gb[k]:.1f})" if k in g else "-"

            def q(a: str, b: str, g=g, gb=gb) -> str:
                if a not in g or b not in g:
                    return "-"
                return f"{g[a] / g[b]:.2f} ({gb[a] / gb[b]:.2f})"

            lines.append(
                f"| {s['threads']} | {f('clone')} | {f('native')} | {f('torch')} | {q('native', 'clone')} | "
                f"{f('copy_')} | {f('native_out')} | {q('native_out', 'copy_')} |"
            )
    lines += ["", "## Targets", ""] + _targets(results, speedups, shuffle)
    return "\n".join(lines)


def _busy(results: list[BenchResult], shuffle: list[dict]) -> float | None:
    """The most CPU (cores) other processes used around any measurement, None if unknown."""
    vals = [r.max_other_cores() for r in results]
    vals += [s.get("other_cores_before") for s in shuffle]
    if not vals or any(v is None for v in vals):
        return None
    return max(vals)


def _load_line(results, shuffle, la0: float, la1: float, cores: int) -> str:
    m = _busy(results, shuffle)
    text = f"Load average (1 min) {la0:.2f} before, {la1:.2f} after, on {cores} cores. "
    if m is None:
        return text + "**The load of other processes could not be read: no target is judged.**"
    if m > BUSY_CORES:
        return text + (
            f"**The machine was busy: other processes used up to {m:.2f} cores around the measurements "
            f"(threshold {BUSY_CORES}). These figures are not results and no target is judged.**"
        )
    return text + f"Other processes used at most {m:.2f} cores around the measurements (quiet)."


def _spread(r) -> str:
    return f"{_fmt_ms(r.median_ms)} ms (p10-p90 {_fmt_ms(r.p10_ms)}-{_fmt_ms(r.p90_ms)})"


def _targets(results: list[BenchResult], speedups: dict, shuffle: list[dict]) -> list[str]:
    by = {(r.model, r.batch, r.threads): r for r in results}
    other = _busy(results, shuffle)
    judged = other is not None and other <= BUSY_CORES
    out = []
    if not judged:
        out.append(
            "**Not judged: the machine was busy (or its load unknown) during the run; the values below are "
            "shown for the record only.**"
        )
        out.append("")

    def verdict(ok: bool | None) -> str:
        if ok is None:
            return "not measured"
        if not judged:
            return "not judged (busy machine)"
        return "**met**" if ok else "**not met**"

    def ok_backend(r, name):
        b = r.backends.get(name) if r else None
        return b if b is not None and b.status == "ok" and b.median_ms else None

    r = by.get(("shufflenet_v1_g3_x1_0", 1, 2))
    nat, ort = ok_backend(r, "native"), ok_backend(r, "onnxruntime")
    if nat and ort:
        q = nat.median_ms / ort.median_ms
        out.append(
            f"- 1x g=3, batch 1, 2 threads: native {_spread(nat)} / ONNX Runtime {_spread(ort)} = {q:.2f} "
            f"(p10 ratio {nat.p10_ms / ort.p10_ms:.2f}; target <= 0.70): {verdict(q <= 0.70)}"
        )
    else:
        out.append("- 1x g=3, batch 1, 2 threads, native vs ONNX Runtime: not measured")
    mobile = [b for b in (ok_backend(r, "ncnn"), ok_backend(r, "executorch")) if b]
    if nat and mobile:
        best = min(mobile, key=lambda b: b.median_ms)
        q = nat.median_ms / best.median_ms
        out.append(
            f"- 1x g=3, batch 1, 2 threads: native {_spread(nat)} / the faster of ncnn and ExecuTorch "
            f"({best.name}, {_spread(best)}) = {q:.2f} (target < 0.60): {verdict(q < 0.60)}"
        )
    else:
        out.append("- 1x g=3, batch 1, 2 threads, native vs ncnn / ExecuTorch: not measured")
    r32 = by.get(("shufflenet_v1_g3_x1_0", 32, 2))
    nat32, ort32 = ok_backend(r32, "native"), ok_backend(r32, "onnxruntime")
    if nat32 and ort32:
        out.append(
            f"- 1x g=3, batch 32, 2 threads: native throughput / ONNX Runtime = "
            f"{ort32.median_ms / nat32.median_ms:.2f} (native {_spread(nat32)}, ONNX Runtime {_spread(ort32)}; "
            "reported, no target)"
        )
    sp = {k: v for k, v in speedups.items() if k[0] == "shufflenet_v1_g3_x0_5"}
    if sp:
        parts = ", ".join(f"batch {b} / {t} thr: {v:.1f}x" for (_, b, t), v in sorted(sp.items()))
        key = next(iter(sp))
        mac_ratio = by[(REFERENCE, key[1], key[2])].macs_per_image / by[key].macs_per_image
        out.append(
            f"- 0.5x g=3 against AlexNet, each on its fastest backend: {parts}, for a multiply-add ratio of "
            f"{mac_ratio:.1f}x (the paper: {PAPER_SPEEDUP:.0f}x for {PAPER_MAC_RATIO:.0f}x on one ARM core; "
            "reported, no target)"
        )
    else:
        out.append("- 0.5x g=3 against AlexNet: not measured")
    if shuffle:
        parts = []
        ok = []
        for s in shuffle:
            a, b = s["native_vs_clone"], s["native_out_vs_copy"]
            if a is None:
                continue
            gb = s["gbps_best"]
            a2, b2 = gb["native"] / gb["clone"], gb["native_out"] / gb["copy_"]
            parts.append(
                f"{s['threads']} thr: {a:.2f} of clone(), {b:.2f} of copy_() into a buffer "
                f"(fastest rounds: {a2:.2f}, {b2:.2f})"
            )
            ok.append(min(a, b, a2, b2) >= 0.8)
        out.append(
            f"- channel shuffle >= 80% of clone() bandwidth: {'; '.join(parts) or 'no native kernel'}: "
            f"{verdict(all(ok) if ok else None)}"
        )
    return out


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    sys.exit(main())
