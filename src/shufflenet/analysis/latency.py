"""CPU inference latency of several models, measured interleaved so that they share the machine's noise."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

__all__ = ["interleaved_latency"]


@torch.inference_mode()
def interleaved_latency(
    models: dict[str, nn.Module],
    input_shape: tuple[int, ...],
    rounds: int = 20,
    warmup: int = 3,
    threads: int | None = None,
) -> dict[str, dict[str, float]]:
    """Milliseconds per forward pass of each model on a zero input of ``input_shape`` (N, C, H, W).

    The models run in turn, ``rounds`` times each, after ``warmup`` untimed passes: a burst of load from other
    processes hits all of them rather than one. Returns per model the median, the minimum and the
    inter-quartile range in milliseconds.
    """
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
        times: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(rounds):
            for name, m in models.items():
                t = time.perf_counter()
                m(x)
                times[name].append(1000 * (time.perf_counter() - t))
    finally:
        torch.set_num_threads(old_threads)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        out[name] = {"median_ms": statistics.median(ts), "min_ms": min(ts), "iqr_ms": q[2] - q[0]}
    return out
