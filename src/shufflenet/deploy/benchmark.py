"""Latency of one model on several backends, each timed in its own process (``shufflenet bench`` and
``benchmarks/inference.py``).

Method, the way users run an engine: every backend is built and timed in a fresh worker process
(``python -m shufflenet.deploy.benchmark --worker``, a JSON spec in, a JSON result out), so no other backend's
thread pool (ONNX Runtime's spinning workers, OpenMP, XNNPACK's pool) is alive while it runs. The worker sets
its thread count the way each engine documents it (``OMP_NUM_THREADS`` and ``torch.set_num_threads`` for
PyTorch, ``intra_op_num_threads`` for ONNX Runtime, the native engine's pool size, ExecuTorch's thread pool
for XNNPACK, ``opt.num_threads`` for ncnn), builds the backend from the same weights, checks it against eager
PyTorch (max relative error), warms up and times ``runs`` forward passes back to back. Reported per backend:
median, 10th and 90th percentile and minimum latency, images per second and achieved GFLOP/s
(2 x multiply-adds of :func:`shufflenet.complexity.profile` per image / median latency).

Machine load: before each worker starts, the parent samples ``/proc/stat`` over ``load_window`` seconds while
it sleeps; during the timed loop the worker samples it again and subtracts its own CPU time (all of its
threads). Both give the CPU time, in cores, that *other* processes used (with several rounds: the worst round
before a worker, and the timed loops of all rounds taken together, since the kernel counts CPU time in 10 ms
ticks and the loop of a fast model lasts only a few). When either exceeds :data:`BUSY_CORES` the result is
marked busy and no figure of it should be read as a result: targets are not judged (:meth:`BenchResult.busy`).

Backends: :data:`BENCH_BACKENDS` = those of :func:`shufflenet.deploy.optimize` plus ``"executorch"``
(:mod:`.executorch`, a program at the benchmark's batch and size; ops XNNPACK does not take run on
ExecuTorch's portable kernels and the engine column says how many) and ``"ncnn"`` (:mod:`.ncnn`, float32, one
image after another as ncnn runs them).

:func:`time_interleaved` / :func:`interleaved_latency` time several eager models within one process in
rotating rounds (for comparisons of architectures in the analysis code, not of engines).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..models import in_channels
from ..utils import torch_threads
from .api import BACKENDS, optimize
from .errors import NotSupportedError

__all__ = [
    "BENCH_BACKENDS",
    "BUSY_CORES",
    "BackendResult",
    "BenchResult",
    "cpu_busy_other",
    "format_table",
    "interleaved_latency",
    "plot_result",
    "run_benchmark",
    "system_info",
    "time_interleaved",
]

BENCH_BACKENDS = (*BACKENDS, "executorch", "ncnn")
# CPU time of other processes, in cores, above which a measurement is not a result
BUSY_CORES = 0.2
_CL_BACKENDS = ("eager", "optimized", "compile")


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
    # other processes' CPU use before the worker starts, in cores
    other_cores_before: float | None = None
    # ... during the timed loop (the worker's own threads excluded); over several rounds, all of their loops
    # together: other_seconds_during / seconds_during (CPU seconds of other processes / wall seconds)
    other_cores_during: float | None = None
    other_seconds_during: float | None = None
    seconds_during: float | None = None
    pid: int | None = None  # the worker process that built and timed it
    note: str | None = None


@dataclass
class BenchResult:
    model: str
    batch: int
    threads: int
    input_size: int
    macs_per_image: int
    runs: int
    backends: dict[str, BackendResult]
    ratios: dict[str, dict[str, float]]  # ratios[a][b] = median_a / median_b
    system: dict

    def fastest(self) -> str | None:
        ok = {
            k: v for k, v in self.backends.items() if v.status == "ok" and v.median_ms is not None
        }
        return min(ok, key=lambda k: ok[k].median_ms) if ok else None

    def max_other_cores(self) -> float | None:
        """The most CPU (cores) other processes used before or during any backend's measurement."""
        vals = [
            v
            for r in self.backends.values()
            for v in (r.other_cores_before, r.other_cores_during)
            if v is not None
        ]
        return max(vals) if vals else None

    def busy(self, threshold: float = BUSY_CORES) -> bool:
        """True when other processes used more than ``threshold`` cores around some measurement (or the load
        could not be read): then no figure of this result is a result."""
        m = self.max_other_cores()
        return m is None or m > threshold

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fastest"] = self.fastest()
        d["busy"] = self.busy()
        d["max_other_cores"] = self.max_other_cores()
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


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001 - not installed
        return None


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
    for pkg in ("onnxruntime", "executorch", "ncnn"):
        info[pkg] = _version(pkg)
    from .native import NativeUnavailable, get_library

    try:
        lib = get_library()
        info["native_isa"] = lib.isa_name
        info["native_compiler"] = lib.info.compiler
    except NativeUnavailable as e:
        info["native_isa"] = None
        info["native_unavailable"] = str(e)
    return info


# ----------------------------------------------------------------------------------------- machine load


def _proc_stat_busy() -> float | None:
    """Seconds of CPU time (all cores) spent not idle since boot, from ``/proc/stat``; None if unreadable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal (guest time is already counted in user)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    busy = sum(fields[:8]) - idle
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    """CPU seconds of this process (all threads) and its waited-for children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class _LoadMeter:
    """CPU use of other processes between :meth:`start` and :meth:`stop`, in cores (this process excluded)."""

    def start(self) -> None:
        self.busy0, self.own0, self.t0 = _proc_stat_busy(), _own_cpu(), time.monotonic()

    def stop(self) -> float | None:
        other, seconds = self.stop_seconds()
        return None if other is None else max(0.0, other) / seconds

    def stop_seconds(self) -> tuple[float | None, float]:
        """(CPU seconds other processes used, wall seconds) since :meth:`start`; (None, s) off Linux. The CPU
        time comes in clock ticks (10 ms), so a window of a few ticks reads it coarsely: pool windows."""
        busy1, own1, t1 = _proc_stat_busy(), _own_cpu(), time.monotonic()
        if self.busy0 is None or busy1 is None or t1 <= self.t0:
            return None, t1 - self.t0
        return (busy1 - self.busy0) - (own1 - self.own0), t1 - self.t0


def cpu_busy_other(window: float = 1.0) -> float | None:
    """CPU time other processes used over ``window`` seconds (this one sleeps), in cores; None off Linux."""
    meter = _LoadMeter()
    meter.start()
    time.sleep(window)
    return meter.stop()


# ---------------------------------------------------------------------------------------------- worker


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
    with torch_threads(threads):
        x = torch.zeros(input_shape)
        for m in models.values():
            m.eval()
            for _ in range(warmup):
                m(x)
        times = time_interleaved({k: (lambda m=m: m(x)) for k, m in models.items()}, rounds)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        out[name] = {"median_ms": statistics.median(ts), "min_ms": min(ts), "iqr_ms": q[2] - q[0]}
    return out


def _load_model(spec: dict) -> nn.Module:
    if spec.get("checkpoint"):
        from ..model_file import load_model

        return load_model(spec["checkpoint"])[0].eval()
    from ..factory import create_model

    return create_model(spec["model"], weights=spec.get("weights")).eval()


def _build_backend(model: nn.Module, name: str, spec: dict, tmp: str):
    """A callable running ``name`` and the engine label."""
    threads, size, batch = spec["threads"], spec["input_size"], spec["batch"]
    if name == "executorch":
        from .executorch import ExecuTorchRunner, export_executorch

        # a model with layers XNNPACK does not take (AlexNet's LRN) still runs, partly on portable kernels
        res = export_executorch(model, None, input_size=size, batch=batch, allow_outside=True)
        runner = ExecuTorchRunner(res.data, threads=threads)
        return runner, f"executorch/xnnpack ({res.outside_count} ops outside)"
    if name == "ncnn":
        from .ncnn import NcnnRunner, export_ncnn

        files = export_ncnn(model, tmp, input_size=size)
        return NcnnRunner(files.param, files.bin, threads=threads), "ncnn (float32)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = optimize(model, name, input_size=size, threads=threads, strict=(name == "native"))
    inner = getattr(mod, "inner", mod)
    return mod, (f"native/{inner.isa_name}" if name == "native" else name)


def _worker(spec: dict) -> dict:
    """Build one backend in this process and time it; returns a :class:`BackendResult` as a dict."""
    name = spec["backend"]
    res = BackendResult(name, pid=os.getpid())
    torch.set_num_threads(spec["threads"])
    model = _load_model(spec)
    gen = torch.Generator().manual_seed(spec.get("seed", 0))
    size, batch = spec["input_size"], spec["batch"]
    x = torch.randn(batch, in_channels(model), size, size, generator=gen)
    with torch.inference_mode():
        ref = model(x)
    if name in _CL_BACKENDS:
        x = x.contiguous(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory(prefix="shufflenet-bench-") as tmp:
        t0 = time.perf_counter()
        try:
            fn, res.engine = _build_backend(model, name, spec, tmp)
        except ImportError as e:
            res.status, res.reason = "skipped", str(e)
            return asdict(res)
        except NotSupportedError as e:
            res.status, res.reason = "skipped", str(e).splitlines()[0][:300]
            return asdict(res)
        except Exception as e:  # noqa: BLE001 - a backend that cannot run this model is reported
            res.status, res.reason = "failed", f"{type(e).__name__}: {e}".splitlines()[0][:300]
            return asdict(res)
        res.build_seconds = time.perf_counter() - t0
        out = fn(x)
        res.max_rel_error = float(
            (out.float() - ref.float()).abs().max() / ref.abs().max().clamp_min(1e-12)
        )
        for _ in range(spec["warmup"]):
            fn(x)
        meter = _LoadMeter()
        meter.start()
        for _ in range(spec["runs"]):
            t = time.perf_counter()
            fn(x)
            res.times_ms.append((time.perf_counter() - t) * 1e3)
        res.other_seconds_during, res.seconds_during = meter.stop_seconds()
        if res.other_seconds_during is not None:
            res.other_cores_during = max(0.0, res.other_seconds_during) / res.seconds_during
    return asdict(res)


def _run_worker(spec: dict, timeout: float) -> BackendResult:
    env = dict(os.environ)
    # OpenMP reads its thread count once, at start: set it before torch is imported (PyTorch's advice)
    env["OMP_NUM_THREADS"] = str(spec["threads"])
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "shufflenet.deploy.benchmark", "--worker"]
    try:
        run = subprocess.run(
            cmd, input=json.dumps(spec), capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        return BackendResult(spec["backend"], "failed", f"worker took more than {timeout:.0f} s")
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("{")]
    if run.returncode != 0 or not lines:
        tail = " | ".join((run.stderr or "").strip().splitlines()[-3:])
        return BackendResult(
            spec["backend"], "failed", f"worker exited {run.returncode}: {tail[:300]}"
        )
    return BackendResult(**json.loads(lines[-1]))


def _max_or_none(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _pool_rounds(before: BackendResult | None, new: BackendResult) -> BackendResult:
    """One backend's result over the rounds so far: times pooled; the load before a round as the worst seen,
    during the timed loops as other processes' CPU time over all of them (a loop of a fast model lasts a few
    clock ticks, too few to read a load from on its own); a failure kept."""
    if before is None or new.status != "ok":
        return new
    before.times_ms.extend(new.times_ms)
    before.other_cores_before = _max_or_none(before.other_cores_before, new.other_cores_before)
    if before.other_seconds_during is None or new.other_seconds_during is None:
        before.other_seconds_during = before.other_cores_during = None
    else:
        before.other_seconds_during += new.other_seconds_during
        before.seconds_during += new.seconds_during
        before.other_cores_during = max(0.0, before.other_seconds_during) / before.seconds_during
    before.max_rel_error = _max_or_none(before.max_rel_error, new.max_rel_error)
    return before


def run_benchmark(
    model: nn.Module | str,
    batch: int = 1,
    threads: int = 2,
    backends: tuple[str, ...] | list[str] = BENCH_BACKENDS,
    input_size: int = 224,
    runs: int = 200,
    warmup: int = 10,
    load_window: float = 1.0,
    weights: str | None = None,
    timeout: float = 1800.0,
    log=None,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    rounds: int = 1,
) -> BenchResult:
    """Time ``model`` on each backend in its own worker process, one backend after the other.

    With ``rounds`` > 1 every backend gets that many worker processes, each timing its share of ``runs``,
    in rounds that visit the backends in turn (the order rotated by one each round): a slow drift of the
    machine's speed, or one unlucky process (memory placement, a noisy neighbour), then weighs on every
    backend alike instead of on whichever ran at the time. The statistics pool the runs of all rounds.

    Args:
        model: a registered name (with optional ``weights``), or a module built by
            :func:`shufflenet.create_model` (or described by ``arch``/``arch_kwargs``), saved to a temporary
            model file for the workers.
        batch, threads, input_size: the workload; every engine gets ``threads`` threads.
        runs: timed forward passes per backend (median and percentiles over them), over all rounds.
        rounds: worker processes per backend, interleaved with the other backends' (see above).
        warmup: untimed passes first.
        load_window: seconds over which other processes' CPU use is sampled before each worker starts.
        timeout: seconds allowed to one worker (building included).
        log: ``print``-like callable for progress, or None.
    """
    from ..complexity import profile
    from ..factory import create_model

    say = log or (lambda *a, **k: None)
    for b in backends:
        if b not in BENCH_BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {BENCH_BACKENDS}")
    for k, v in (
        ("batch", batch),
        ("threads", threads),
        ("input_size", input_size),
        ("runs", runs),
        ("rounds", rounds),
    ):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{k}={v!r} must be a positive int")
    with tempfile.TemporaryDirectory(prefix="shufflenet-bench-") as tmp:
        spec: dict = {
            "batch": batch,
            "threads": threads,
            "input_size": input_size,
            "runs": runs,
            "warmup": warmup,
        }
        if isinstance(model, str):
            name = model
            module = create_model(model, weights=weights).eval()
            spec.update(model=model, weights=weights)
        else:
            from ..model_file import save_model

            module = model.eval()
            name = (
                arch
                or (getattr(model, "model_cfg", None) or {}).get("arch")
                or type(model).__name__
            )
            ckpt = Path(tmp) / "model.safetensors"
            save_model(ckpt, model, arch=arch, arch_kwargs=arch_kwargs)
            spec["checkpoint"] = str(ckpt)
        macs = profile(module, input_size).macs
        system = system_info()
        results: dict[str, BackendResult] = {}
        order = list(backends)
        for r in range(rounds):
            share = runs // rounds + (r < runs % rounds)
            for b in order[r % len(order) :] + order[: r % len(order)]:
                if share == 0 or (b in results and results[b].status != "ok"):
                    continue
                before = cpu_busy_other(load_window) if load_window > 0 else None
                say(
                    f"  {b}: worker process ({threads} threads, batch {batch}, {share} runs"
                    + (f", round {r + 1}/{rounds}" if rounds > 1 else "")
                    + ") ..."
                )
                res = _run_worker({**spec, "backend": b, "runs": share}, timeout)
                res.other_cores_before = before
                results[b] = _pool_rounds(results.get(b), res)
        for b in backends:
            res = results[b]
            if res.status == "ok" and res.times_ms:
                ts = res.times_ms
                res.median_ms = statistics.median(ts)
                res.p10_ms = _quantile(ts, 0.1)
                res.p90_ms = _quantile(ts, 0.9)
                res.min_ms = min(ts)
                res.images_per_s = batch / (res.median_ms / 1e3)
                res.gflops = 2.0 * macs * batch / (res.median_ms / 1e3) / 1e9
                say(f"  {b}: median {res.median_ms:.3f} ms (p10 {res.p10_ms:.3f})")
            else:
                say(f"  {b}: {res.status} ({res.reason})")
            results[b] = res
    names = [b for b, r in results.items() if r.median_ms is not None]
    ratios = {a: {b: results[a].median_ms / results[b].median_ms for b in names} for a in names}
    system["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return BenchResult(name, batch, threads, input_size, macs, runs, results, ratios, system)


def busy_message(res: BenchResult) -> str | None:
    """None on a quiet machine, else the sentence that says why the figures are not results."""
    if not res.busy():
        return None
    m = res.max_other_cores()
    if m is None:
        return (
            "the machine's load could not be read: figures are not results, targets are not judged"
        )
    return (
        f"BUSY machine: other processes used up to {m:.2f} cores around the measurements (threshold "
        f"{BUSY_CORES}): figures are not results, targets are not judged"
    )


def format_table(res: BenchResult) -> str:
    """A plain-text report: one row per backend, then the ratio matrix and the load."""
    lines = [
        f"{res.model}  batch {res.batch}  threads {res.threads}  input {res.input_size}x{res.input_size}  "
        f"{res.macs_per_image / 1e6:.1f}M multiply-adds/image  {res.runs} runs per backend, "
        "each backend in its own process",
        f"{'backend':<12} {'median ms':>10} {'p10-p90 ms':>16} {'min ms':>8} {'images/s':>10} {'GFLOP/s':>8} "
        f"{'max rel err':>11} {'other cores':>11}  engine",
    ]
    for b, r in res.backends.items():
        if r.status != "ok" or r.median_ms is None:
            lines.append(f"{b:<12} {r.status}: {r.reason}")
            continue
        load = max(
            (v for v in (r.other_cores_before, r.other_cores_during) if v is not None), default=None
        )
        lines.append(
            f"{b:<12} {r.median_ms:>10.3f} {r.p10_ms:>7.3f}-{r.p90_ms:<8.3f} {r.min_ms:>8.3f} "
            f"{r.images_per_s:>10.1f} {r.gflops:>8.1f} {r.max_rel_error:>11.1e} "
            f"{'-' if load is None else f'{load:.2f}':>11}  {r.engine}"
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
    msg = busy_message(res)
    lines.append(
        msg
        or f"quiet machine: other processes used at most {res.max_other_cores():.2f} cores around the "
        "measurements"
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
    m = res.max_other_cores()
    ax.set_title(
        f"{res.model}, batch {res.batch}, {res.threads} threads, {res.input_size}px"
        + (
            f"\nother processes: up to {m:.2f} cores" + (" (BUSY)" if res.busy() else "")
            if m is not None
            else ""
        ),
        fontsize=9,
    )
    ax.margins(y=0.25)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _main() -> int:
    if sys.argv[1:] != ["--worker"]:
        print(
            "usage: python -m shufflenet.deploy.benchmark --worker  (JSON spec on stdin)",
            file=sys.stderr,
        )
        return 2
    spec = json.loads(sys.stdin.read())
    result = _worker(spec)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
