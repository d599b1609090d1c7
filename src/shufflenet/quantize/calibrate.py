"""Calibration: run a lowered float program, observe every activation, pick its int8 scale.

The program is the native engine's (:func:`shufflenet.deploy.native.lower.lower`): batch norm folded, ReLU
and the residual add fused into the op that produces a value, the channel shuffle as the input order
(``kidx``) of the next 1x1 group conv, the stride-2 unit's concatenation as two ops writing one value. An
activation is therefore one *value* of that program, and gets one scale.

Scale choice per value, from the absolute values seen over all calibration images (``qmax`` = 127 for a
signed value, 255 for one that only ReLU outputs write):

- ``"minmax"``: clip at the largest value seen;
- ``"percentile"``: clip at the ``percentile`` (default 99.99) of the values seen;
- ``"mse"`` (default): clip where the expected squared error of quantising the observed distribution is
  smallest: values below the clip cost the rounding noise ``step**2 / 12``, values above cost their
  distance to the clip. It is the default because it optimises the error itself, per tensor, with no knob:
  min/max spends the 8 bits on the largest value seen however rare (a coarse step for everything else),
  a percentile cuts a fixed share whether the tail matters or not (post-training quantisation studies, e.g.
  Nagel et al. 2021, "A White Paper on Neural Network Quantization", sec. 3.1, recommend MSE-based ranges
  for activations).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..deploy.native._abi import ACT_RELU, OP_CONV, OP_DW, OP_FC, OP_GAP, OP_POOL, OP_PW, POOL_MAX
from ..deploy.native.lower import Op, Program

__all__ = ["METHODS", "Observer", "choose_clip", "run_float"]

METHODS = ("minmax", "percentile", "mse")
_BINS = 2048


def _write(env: dict, prog: Program, op: Op, y: torch.Tensor) -> None:
    """Store op's result in its value, at its channel offset (two ops fill a concatenated value)."""
    c = prog.values[op.dst].channels
    if op.dst_coff == 0 and y.shape[1] == c:
        env[op.dst] = y
        return
    if op.dst not in env:
        env[op.dst] = y.new_zeros((y.shape[0], c, *y.shape[2:]))
    env[op.dst][:, op.dst_coff : op.dst_coff + y.shape[1]] = y


def pw_weight(op: Op, w: torch.Tensor) -> torch.Tensor:
    """``[groups][K][N]`` -> conv2d weight ``(groups * N, K, 1, 1)``."""
    return w.permute(0, 2, 1).reshape(op.groups * op.N, op.K, 1, 1)


def run_float(
    prog: Program, x: torch.Tensor, observe: Callable[[int, torch.Tensor], None] | None = None
) -> torch.Tensor:
    """The program's function on ``x`` (N, C, H, W) in float32; ``observe(value, tensor)`` sees every value
    once it is complete (the input first, then each value after its last writer)."""
    last = {op.dst: i for i, op in enumerate(prog.ops)}
    env: dict[int, torch.Tensor] = {0: x}
    if observe is not None:
        observe(0, x)  # the input is quantised too
    for i, op in enumerate(prog.ops):
        a = env[op.src]
        relu = op.act == ACT_RELU
        if op.kind == OP_PW:
            y = F.conv2d(
                a[:, torch.as_tensor(op.kidx, dtype=torch.long)],
                pw_weight(op, op.w),
                op.b,
                groups=op.groups,
            )
            if op.res >= 0:
                y = y + env[op.res]
        elif op.kind == OP_DW:
            y = F.conv2d(a, op.w.reshape(op.cout, 1, 3, 3), op.b, op.stride, 1, groups=op.cout)
        elif op.kind == OP_CONV:
            y = F.conv2d(a, op.w.permute(3, 0, 1, 2), op.b, op.stride, 1)
        elif op.kind == OP_POOL:
            if op.pool == POOL_MAX:
                y = F.max_pool2d(a, 3, 2, 1)
            else:
                y = F.avg_pool2d(a, 3, 2, 1, count_include_pad=True)
        elif op.kind == OP_GAP:
            y = a.mean((2, 3))
        elif op.kind == OP_FC:
            y = a @ op.w + op.b
        else:
            raise ValueError(f"internal error: op kind {op.kind}")
        if relu:
            y = torch.relu(y)
        if op.kind == OP_CONV and op.pool:
            y = F.max_pool2d(y, 3, 2, 1)
        _write(env, prog, op, y)
        if observe is not None and last[op.dst] == i:
            observe(op.dst, env[op.dst])
    return env[prog.output]


class Observer:
    """Statistics of every planar value over calibration batches: first the largest absolute value
    (``pass_ = "max"``), then a histogram of absolute values over ``[0, max]`` (``pass_ = "hist"``)."""

    def __init__(self, prog: Program) -> None:
        self.prog = prog
        self.pass_ = "max"
        self.amax: dict[int, float] = {}
        self.hist: dict[int, np.ndarray] = {}

    def __call__(self, value: int, t: torch.Tensor) -> None:
        if self.prog.values[value].flat:
            return
        a = t.detach().abs()
        if torch.isnan(a).any():
            raise ValueError(
                "a calibration image gives NaN activations (NaN or inf in the images?)"
            )
        if self.pass_ == "max":
            self.amax[value] = max(self.amax.get(value, 0.0), float(a.max()))
            return
        top = self.amax[value]
        if top <= 0:
            return
        h = (
            torch.histc(a.float().flatten(), bins=_BINS, min=0.0, max=top)
            .numpy()
            .astype(np.float64)
        )
        self.hist[value] = self.hist.get(value, 0) + h


def choose_clip(
    hist: np.ndarray | None, amax: float, qmax: int, method: str, percentile: float
) -> float:
    """The clipping threshold (the scale is ``clip / qmax``) of one value."""
    if amax <= 0 or not np.isfinite(amax):
        return 1.0 if amax <= 0 else float(amax)
    if method == "minmax" or hist is None or hist.sum() == 0:
        return amax
    width = amax / len(hist)
    edges = width * np.arange(1, len(hist) + 1)  # upper edge of every bin
    if method == "percentile":
        cum = np.cumsum(hist) / hist.sum()
        return float(edges[min(int(np.searchsorted(cum, percentile / 100.0)), len(hist) - 1)])
    centres = edges - width / 2
    counts = hist.copy()
    counts[0] = 0  # (mostly exact zeros after ReLU: no error at any clip)
    cand = edges[len(hist) // 64 - 1 :: 4]  # clips from 1/64 of the maximum up
    step = cand / qmax
    over = np.clip(centres[None, :] - cand[:, None], 0, None)
    err = (counts[None, :] * np.where(over > 0, over**2, step[:, None] ** 2 / 12)).sum(1)
    return float(cand[int(np.argmin(err))])
