"""The int8 runtimes against a slow reference written here: integer arithmetic in numpy int64 with explicit
loops over groups, channels and the 3x3 taps, the requantisation written out in float32, same scales.

Expected: every integer bit-exact, hence feature-map outputs equal and logits equal up to the float32
classifier's summation order. Over g = 1, 2, 3, 4, 8, several widths, odd spatial sizes, batch 1 and > 1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import seeded_model
from torch import nn

from shufflenet import ShuffleUnit, create_model
from shufflenet.quantize import QProgram, quantize

KIND_CONV, KIND_PW, KIND_DW, KIND_POOL, KIND_GAP, KIND_FC = 2, 3, 4, 5, 6, 7
RELU = 1
F32 = np.float32


@torch.no_grad()
def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    return seeded_model(model, seed)


def _pad(a: np.ndarray, fill: int) -> np.ndarray:
    """(C, H, W) -> (C, H + 2, W + 2) with a border of ``fill``."""
    return np.pad(a, ((0, 0), (1, 1), (1, 1)), constant_values=fill)


def _taps(a: np.ndarray, stride: int, fill: int):
    """Yield (dy, dx, the (C, OH, OW) input samples of tap (dy, dx)) of a 3x3 window, padding 1."""
    c, h, w = a.shape
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    p = _pad(a, fill)
    for dy in range(3):
        for dx in range(3):
            yield (
                dy,
                dx,
                p[
                    :,
                    dy : dy + stride * (oh - 1) + 1 : stride,
                    dx : dx + stride * (ow - 1) + 1 : stride,
                ],
            )


def _requant(acc, m, c, lo, hi, res=None, m_res=0.0):
    y = acc.astype(F32) * m.reshape(-1, 1, 1).astype(F32)
    y = y + c.reshape(-1, 1, 1).astype(F32)
    if res is not None:
        y = y + res.astype(F32) * F32(m_res)
    return np.clip(np.round(y), lo, hi).astype(np.int64)


def reference(prog: QProgram, image: np.ndarray) -> np.ndarray:
    """One image (C, H, W) float32 through ``prog``; integers in int64."""
    vals = prog.values

    def rng(v, act):
        lo, hi = (0, 255) if vals[v].unsigned else (-128, 127)
        return (0 if act == RELU else lo), hi

    env = {0: np.clip(np.round(image / F32(vals[0].scale)), -128, 127).astype(np.int64)}
    for op in prog.ops:
        a = env[op.src]
        s_in, s_out = vals[op.src].scale, vals[op.dst].scale
        lo, hi = rng(op.dst, op.act)
        if op.kind in (KIND_PW, KIND_DW, KIND_CONV):
            w = op.w.numpy().astype(np.int64)
            m = (s_in * op.w_scale.numpy().astype(np.float64) / s_out).astype(F32)
            c = (op.b.numpy().astype(np.float64) / s_out).astype(F32)
        if op.kind == KIND_PW:
            _, h, wd = a.shape
            acc = np.zeros((op.groups * op.N, h, wd), np.int64)
            for g in range(op.groups):
                for n in range(op.N):
                    for k in range(op.K):
                        acc[g * op.N + n] += w[g, k, n] * a[op.kidx[g * op.K + k]]
            res = env[op.res] if op.res >= 0 else None
            m_res = vals[op.res].scale / s_out if op.res >= 0 else 0.0
            y = _requant(acc, m, c, lo, hi, res, m_res)
        elif op.kind == KIND_DW:
            acc = 0
            for dy, dx, t in _taps(a, op.stride, 0):
                acc = acc + w[:, dy * 3 + dx].reshape(-1, 1, 1) * t
            y = _requant(acc, m, c, lo, hi)
        elif op.kind == KIND_CONV:
            acc = 0
            for ci in range(op.cin):
                for dy, dx, t in _taps(a[ci : ci + 1], op.stride, 0):
                    acc = acc + w[ci, dy, dx].reshape(-1, 1, 1) * t
            y = _requant(acc, m, c, lo, hi)
            if op.pool:
                y = np.max([t for _, _, t in _taps(y, 2, -(2**40))], axis=0)
        elif op.kind == KIND_POOL and op.pool == 0:
            y = np.max([t for _, _, t in _taps(a, 2, -(2**40))], axis=0)
            y = np.maximum(y, 0) if op.act == RELU else y
        elif op.kind == KIND_POOL:
            acc = sum(t for _, _, t in _taps(a, 2, 0))
            m = np.full(op.cout, s_in / (9.0 * s_out)).astype(F32)
            y = _requant(acc, m, np.zeros(op.cout, F32), lo, hi)
        elif op.kind == KIND_GAP:
            y = a.sum((1, 2)).astype(F32) * F32(vals[op.src].scale / (a.shape[1] * a.shape[2]))
        elif op.kind == KIND_FC:
            y = a.astype(np.float64) @ op.w.numpy().astype(np.float64) + op.b.numpy()
            y = np.maximum(y, 0) if op.act == RELU else y
        if op.dst_coff == 0 and y.shape[0] == vals[op.dst].channels:
            env[op.dst] = y
        else:
            if op.dst not in env:
                env[op.dst] = np.zeros((vals[op.dst].channels, *y.shape[1:]), y.dtype)
            env[op.dst][op.dst_coff : op.dst_coff + y.shape[0]] = y
    out = env[prog.output]
    return out if vals[prog.output].flat else out.astype(F32) * F32(vals[prog.output].scale)


def check_against_reference(run, prog: QProgram, x: torch.Tensor) -> None:
    """``run(x)`` (an int8 runtime) equals the reference: feature maps exactly (the same integers times
    the same scale), logits up to float32 summation order."""
    out = run(x).numpy()
    for i in range(x.shape[0]):
        ref = reference(prog, x[i].numpy())
        if prog.values[prog.output].flat:
            np.testing.assert_allclose(out[i], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
        else:
            q_out = np.round(out[i] / F32(prog.values[prog.output].scale))
            q_ref = np.round(ref / F32(prog.values[prog.output].scale))
            assert np.abs(q_out - q_ref).max() == 0, (
                f"image {i}: int8 outputs differ from the reference"
            )


def unit(g: int, stride: int, width: int = 8, first_grouped: bool = True) -> ShuffleUnit:
    cin = width * g if stride == 1 else (4 * g if first_grouped else 6)
    cout = cin if stride == 1 else cin + width * g
    u = ShuffleUnit(cin, cout, stride, g, bottleneck_channels=2 * g, first_grouped=first_grouped)
    return _randomize(u, seed=g * 10 + stride)


@pytest.mark.parametrize("g", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw,batch", [((7, 9), 1), ((13, 5), 3)])
def test_units_bit_exact(g, stride, hw, batch):
    u = unit(g, stride)
    x = torch.randn(batch, u.in_channels, *hw)
    q = quantize(u, x)
    check_against_reference(q, q.program, x)


@pytest.mark.parametrize("width", [4, 12])
def test_unit_widths_and_dense_first_conv(width):
    u = unit(3, 2, width=width, first_grouped=False)
    x = torch.randn(2, u.in_channels, 11, 15)
    q = quantize(u, x)
    check_against_reference(q, q.program, x)
    u1 = unit(4, 1, width=width)
    x1 = torch.randn(2, u1.in_channels, 9, 7)
    q1 = quantize(u1, x1)
    check_against_reference(q1, q1.program, x1)


@pytest.mark.parametrize(
    "name,kw,hw,batch",
    [
        ("shufflenet_v1_g1_x0_25", {}, (33, 35), 1),
        ("shufflenet_v1_g2_x0_5", {"small_input": True, "num_classes": 10}, (17, 15), 2),
        ("shufflenet_v1_g3_x0_25", {}, (35, 33), 2),
        ("shufflenet_v1_g4_x0_25", {}, (32, 32), 1),
        ("shufflenet_v1_g8_x0_25", {}, (33, 31), 2),
        ("mobilenet_v1_x0_25", {}, (35, 33), 2),
    ],
)
def test_models_against_reference(name, kw, hw, batch):
    m = _randomize(create_model(name, **kw))
    calib = torch.randn(4, 3, *hw)
    q = quantize(m, calib)
    check_against_reference(q, q.program, torch.randn(batch, 3, *hw))


def test_reference_detects_a_wrong_scale():
    # the comparison can fail: one activation scale off by 1% changes the integers
    u = unit(3, 1)
    x = torch.randn(2, u.in_channels, 9, 9)
    q = quantize(u, x)
    out = q(x)
    q.program.values[q.program.ops[1].dst].scale *= 1.01
    with pytest.raises(AssertionError):
        check_against_reference(lambda _: out, q.program, x)
