"""Latency of one model on several backends, measured together (used by ``shufflenet bench`` and
``benchmarks/inference.py``).

Method: every backend is built from the same weights and checked against eager PyTorch (max relative error),
warmed up, then timed in interleaved rounds: each round times one forward pass of every backend, in an order
that rotates from round to round, so that load from other processes, frequency changes and cache state hit all
backends alike. Before each timed call the benchmark sleeps ``gap`` seconds (default 10 ms): the thread pools
of PyTorch (OpenMP), ONNX Runtime and the native engine keep spinning for a while after a call, and without the
gap those spinners would take the cores from whichever backend is timed next. Reported per backend: median, 10th and 90th percentile and minimum latency, images per second
and achieved GFLOP/s (2 x multiply-adds of :func:`shufflenet.complexity.profile` per image / median latency),
and the ratio of every pair of medians. The system load average before and after is recorded: on a busy machine
medians are noisy, and the spread (p10-p90) says how much.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..models import in_channels
from .api import BACKENDS, optimize

__all__ = [
    "BackendResult",
    "BenchResult",
    "run_benchmark",
    "system_info",
    "format_table",
    "interleaved_latency",
    "plot_result",
    "time_interleaved",
]


@dataclass
class BackendResult:
    name: str
    status: str = "ok"  # "ok" | "skipped" | "failed"
    reason: str | None = None
    engine: str | None = None  # what actually ran (e.g. native ISA)
    build_seconds: float = 0.0
    max_rel_error: float | None = None
    times_ms: list[float] = field(default_factory=list)
    median_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    min_ms: float | None = None
    images_per_s: float | None = None
    gflops: float | None = None
    note: str | None = None


@dataclass
class BenchResult:
    model: str
    batch: int
    threads: int
    input_size: int
    macs_per_image: int
    rounds: int
    backends: dict[str, BackendResult]
    ratios: dict[str, dict[str, float]]  # ratios[a][b] = median_a / median_b
    system: dict

    def fastest(self) -> str | None:
        ok = {
            k: v for k, v in self.backends.items() if v.status == "ok" and v.median_ms is not None
        }
        return min(ok, key=lambda k: ok[k].median_ms) if ok else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fastest"] = self.fastest()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def system_info() -> dict:
    """CPU, cores, load average, library versions and the native engine's instruction set."""
    info: dict = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    from .native import NativeUnavailable, get_library

    try:
        lib = get_library()
        info["native_isa"] = lib.isa_name
        info["native_compiler"] = lib.info.compiler
    except NativeUnavailable as e:
        info["native_isa"] = None
        info["native_unavailable"] = str(e)
    return info


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def time_interleaved(
    calls: dict[str, Callable[[], object]], rounds: int, gap: float = 0.0
) -> dict[str, list[float]]:
    """Milliseconds of each call of ``calls``, ``rounds`` times each, in interleaved rounds.

    Round ``r`` runs every call once, starting at the ``r``-th (rotating order), so that a burst of load from
    other processes hits all of them rather than one, and no call always follows the same other one.
    ``gap`` seconds of sleep before each timed call let the previous one's spinning threads go idle."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % max(1, len(names))
        for n in names[k:] + names[:k]:
            if gap > 0:
                time.sleep(gap)
            t0 = time.perf_counter()
            calls[n]()
            times[n].append((time.perf_counter() - t0) * 1e3)
    return times


@torch.inference_mode()
def interleaved_latency(
    models: dict[str, nn.Module],
    input_shape: tuple[int, ...],
    rounds: int = 20,
    warmup: int = 3,
    threads: int | None = None,
) -> dict[str, dict[str, float]]:
    """Milliseconds per forward pass (eager, eval mode) of each model on a zero input of ``input_shape``
    (N, C, H, W), timed by :func:`time_interleaved` after ``warmup`` untimed passes; the process's thread
    count is set to ``threads`` meanwhile and restored. Returns per model the median, the minimum and the
    inter-quartile range in milliseconds."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        x = torch.zeros(input_shape)
        for m in models.values():
            m.eval()
            for _ in range(warmup):
                m(x)
        times = time_interleaved({k: (lambda m=m: m(x)) for k, m in models.items()}, rounds)
    finally:
        torch.set_num_threads(old_threads)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        out[name] = {"median_ms": statistics.median(ts), "min_ms": min(ts), "iqr_ms": q[2] - q[0]}
    return out


def _build(
    model: nn.Module, name: str, threads: int, input_size: int
) -> tuple[nn.Module | None, BackendResult]:
    res = BackendResult(name)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = optimize(
                model, name, input_size=input_size, threads=threads, strict=(name == "native")
            )
    except ImportError as e:
        res.status, res.reason = "skipped", str(e)
        return None, res
    except Exception as e:  # noqa: BLE001 - a backend that cannot run this model is reported, not fatal
        res.status = "skipped" if name == "native" else "failed"
        res.reason = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        return None, res
    res.build_seconds = time.perf_counter() - t0
    inner = getattr(mod, "inner", mod)
    res.engine = name
    if name == "native":
        res.engine = f"native/{inner.isa_name}"
    return mod, res


def run_benchmark(
    model: nn.Module | str,
    batch: int = 1,
    threads: int = 2,
    backends: tuple[str, ...] | list[str] = BACKENDS,
    input_size: int = 224,
    rounds: int | None = None,
    warmup: int = 3,
    time_budget: float = 20.0,
    min_rounds: int = 10,
    max_rounds: int = 300,
    gap: float = 0.01,
    built: dict[str, tuple[nn.Module | None, BackendResult]] | None = None,
    log=None,
) -> BenchResult:
    """Measure ``model`` (a module or a registered name) on ``backends`` in interleaved rounds.

    Args:
        batch, threads, input_size: the workload (``torch.set_num_threads(threads)`` is applied; ONNX Runtime
            and the native engine get the same thread count).
        rounds: timed rounds; default: as many as fit ``time_budget`` seconds (at least ``min_rounds``).
        warmup: untimed calls per backend before timing.
        gap: seconds to sleep before each timed call (lets other backends' spinning threads go idle).
        built: backends already built for this model and thread count (reused across batch sizes).
        log: ``print``-like callable for progress, or None.
    """
    from ..complexity import profile
    from ..models import create_model

    say = log or (lambda *a, **k: None)
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        model = create_model(model)
    model = model.eval()
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {BACKENDS}")
    torch.set_num_threads(threads)
    system = system_info()
    macs = profile(model, input_size).macs
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_channels(model), input_size, input_size, generator=g)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = model(x)
    mods: dict[str, nn.Module] = {}
    results: dict[str, BackendResult] = {}
    for b in backends:
        if built is not None and b in built:
            mod, res = built[b]
            res = BackendResult(res.name, res.status, res.reason, res.engine, res.build_seconds)
        else:
            say(f"  building {b} ...")
            mod, res = _build(model, b, threads, input_size)
            if built is not None:
                built[b] = (mod, res)
        results[b] = res
        if mod is None:
            say(f"  {b}: {res.status} ({res.reason})")
            continue
        inp = x_cl if b in ("eager", "optimized", "compile") else x
        try:
            out = mod(inp)
            res.max_rel_error = float(
                (out.float() - ref.float()).abs().max() / ref.abs().max().clamp_min(1e-12)
            )
            for _ in range(warmup):
                mod(inp)
        except Exception as e:  # noqa: BLE001
            res.status, res.reason = "failed", f"{type(e).__name__}: {e}".splitlines()[0][:300]
            say(f"  {b}: failed ({res.reason})")
            continue
        mods[b] = mod
    names = list(mods)
    if rounds is None:
        per_round = 0.0
        for b in names:  # one more call each to estimate the cost of a round
            inp = x_cl if b in ("eager", "optimized", "compile") else x
            t0 = time.perf_counter()
            mods[b](inp)
            per_round += time.perf_counter() - t0
        per_round += gap * len(names)
        rounds = int(max(min_rounds, min(max_rounds, time_budget / max(per_round, 1e-6))))
    say(f"  timing {len(names)} backends x {rounds} interleaved rounds")
    native_stats = _native_stats() if "native" in names else None
    calls = {
        b: (lambda m=mods[b], i=(x_cl if b in ("eager", "optimized", "compile") else x): m(i))
        for b in names
    }
    for b, ts in time_interleaved(calls, rounds, gap).items():
        results[b].times_ms.extend(ts)
    if native_stats is not None:
        after = _native_stats()
        runs = after["parallel_runs"] - native_stats["parallel_runs"]
        serial = after["serial_fallbacks"] - native_stats["serial_fallbacks"]
        if runs > 0 and serial > 0:
            results["native"].note = (
                f"{serial} of {runs} timed calls ran on one thread, measured faster for this model on this "
                "machine now (SHUFFLENET_NATIVE_ADAPTIVE=1: probes, or a busy machine; see "
                "shufflenet.deploy.native)"
            )
    for b in names:
        res = results[b]
        ts = res.times_ms
        res.median_ms = statistics.median(ts)
        res.p10_ms = _quantile(ts, 0.1)
        res.p90_ms = _quantile(ts, 0.9)
        res.min_ms = min(ts)
        res.images_per_s = batch / (res.median_ms / 1e3)
        res.gflops = 2.0 * macs * batch / (res.median_ms / 1e3) / 1e9
    ratios = {a: {b: results[a].median_ms / results[b].median_ms for b in names} for a in names}
    system["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return BenchResult(name, batch, threads, input_size, macs, rounds, results, ratios, system)


def _native_stats() -> dict[str, int]:
    from .native import get_library

    return get_library().stats()


def format_table(res: BenchResult) -> str:
    """A plain-text report: one row per backend, then the ratio matrix and the conditions."""
    lines = [
        f"{res.model}  batch {res.batch}  threads {res.threads}  input {res.input_size}x{res.input_size}  "
        f"{res.macs_per_image / 1e6:.1f}M multiply-adds/image  {res.rounds} interleaved rounds",
        f"{'backend':<12} {'median ms':>10} {'p10-p90 ms':>16} {'min ms':>8} {'images/s':>10} {'GFLOP/s':>8} "
        f"{'max rel err':>11}  engine",
    ]
    for b, r in res.backends.items():
        if r.status != "ok" or r.median_ms is None:
            lines.append(f"{b:<12} {r.status}: {r.reason}")
            continue
        lines.append(
            f"{b:<12} {r.median_ms:>10.3f} {r.p10_ms:>7.3f}-{r.p90_ms:<8.3f} {r.min_ms:>8.3f} "
            f"{r.images_per_s:>10.1f} {r.gflops:>8.1f} {r.max_rel_error:>11.1e}  {r.engine}"
        )
    names = list(res.ratios)
    if len(names) > 1:
        lines.append("")
        lines.append("latency ratio (row / column, medians):")
        lines.append(" " * 12 + "".join(f"{n:>12}" for n in names))
        for a in names:
            lines.append(f"{a:<12}" + "".join(f"{res.ratios[a][b]:>12.2f}" for b in names))
    for b, r in res.backends.items():
        if r.note:
            lines.append(f"note ({b}): {r.note}")
    fast = res.fastest()
    if fast:
        lines.append(f"fastest: {fast}")
    la, lb = res.system.get("loadavg"), res.system.get("loadavg_after")
    if la:
        cores = res.system.get("cores") or 1
        busy = max(la[0], (lb or la)[0]) > 0.5 * cores
        note = "  (BUSY machine: medians are noisy, compare the p10 column too)" if busy else ""
        lines.append(
            f"load average before {la[0]:.2f}, after {(lb or la)[0]:.2f} on {cores} cores{note}"
        )
    return "\n".join(lines)


def plot_result(res: BenchResult, path: str) -> None:
    """Bar chart of median latency per backend (whiskers: p10-p90), labelled with GFLOP/s, to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils.atomic import atomic_path

    ok = [(b, r) for b, r in res.backends.items() if r.status == "ok" and r.median_ms is not None]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * max(1, len(ok)), 4.2))
    if ok:
        names = [b for b, _ in ok]
        med = [r.median_ms for _, r in ok]
        lo = [r.median_ms - r.p10_ms for _, r in ok]
        hi = [r.p90_ms - r.median_ms for _, r in ok]
        bars = ax.bar(names, med, yerr=[lo, hi], capsize=4, color="#4C72B0")
        for rect, (_, r) in zip(bars, ok):
            ax.annotate(
                f"{r.median_ms:.2f} ms\n{r.gflops:.0f} GFLOP/s",
                (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                ha="center", va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points",
            )  # fmt: skip
    ax.set_ylabel("median latency per batch (ms)")
    la = res.system.get("loadavg")
    ax.set_title(
        f"{res.model}, batch {res.batch}, {res.threads} threads, {res.input_size}px"
        + (f"\nload avg {la[0]:.1f} on {res.system.get('cores')} cores" if la else ""),
        fontsize=9,
    )
    ax.margins(y=0.25)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
