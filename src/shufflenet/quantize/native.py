"""The int8 program on the native engine: lowering to its int8 ops (``csrc/sn_int8.h``) and the weight layout.

Per op of :class:`~.program.QProgram`:

- the input is quantised by a ``QPACK`` op (float NCHW -> int8 quad planes);
- a 1x1 conv becomes ``QPW`` over tiles of 8 (or 4) output channels, each reducing over the input planes its
  channels' groups read (weights 0 outside a channel's group, so tiles may straddle groups of any width);
- the channel shuffle: a 1x1 conv that reads its input in a permuted order (``kidx``) gets that order from the
  depthwise conv that produces its input, which then writes output position ``j`` from input channel
  ``kidx[j]`` (its weights picked accordingly), so the 1x1 conv reads planes in order and nothing is copied;
- 3x3 depthwise conv and the 3x3/2 average pool (weights 1) become ``QDW``; max pools ``QMAX`` (the stem's
  fused pool is split off); global pooling ``QGAP`` (float out) and the classifier the float ``FC`` op;
- a program that ends in a feature map gets a ``QOUT`` (int8 -> float).

The requantisation constants are those of :func:`~.program.requant`, so the engine gives the integers of
:func:`~.core.run_int8` exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from ..deploy.errors import NotSupportedError
from ..deploy.native._abi import (
    OP_CONV,
    OP_DW,
    OP_FC,
    OP_GAP,
    OP_POOL,
    OP_PW,
    OP_QCONV,
    OP_QDW,
    OP_QGAP,
    OP_QMAX,
    OP_QOUT,
    OP_QPACK,
    OP_QPW,
    POOL_MAX,
)
from ..deploy.native.lower import Op, Program
from .program import QOp, QProgram, qrange, requant

__all__ = ["lower_int8"]

_TILE = 8


def _words(b: np.ndarray) -> torch.Tensor:
    """int8 array (..., 4) -> int32 words (little-endian: byte b of a word is element b)."""
    return torch.from_numpy(np.ascontiguousarray(b.astype(np.int8)).view("<i4")[..., 0].copy())


def _padded(t: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    out = torch.zeros(n, dtype=dtype)
    out[: t.numel()] = t.to(dtype)
    return out


def _dense_pw(op: QOp, cin: int) -> np.ndarray:
    """The group conv's weights as a dense [cin rounded to 4][cout rounded to 8] matrix, 0 across groups."""
    w = op.w.numpy().astype(np.int64)  # [g][K][N]
    dense = np.zeros((-(-cin // 4) * 4, -(-op.cout // _TILE) * _TILE), np.int64)
    for g in range(op.groups):
        dense[g * op.K : (g + 1) * op.K, g * op.N : (g + 1) * op.N] = w[g]
    return dense


def _pw_tiles(op: QOp, cin: int) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """Tile table {o0, mr, q0, q1, woff}, packed words, and the dense matrix (for the compensation)."""
    dense = _dense_pw(op, cin)
    cq = -(-op.cout // 4) * 4
    table, words, woff = [], [], 0
    for o0 in range(0, cq, _TILE):
        mr = min(_TILE, cq - o0)
        g0, g1 = o0 // op.N, (min(o0 + mr, op.cout) - 1) // op.N
        q0, q1 = g0 * op.K // 4, -(-((g1 + 1) * op.K) // 4)
        blk = dense[4 * q0 : 4 * q1, o0 : o0 + mr].reshape(q1 - q0, 4, mr).transpose(0, 2, 1)
        words.append(_words(blk).reshape(-1))
        table.append([o0, mr, q0, q1, woff])
        woff += (q1 - q0) * mr
    return np.asarray(table, np.int32).reshape(-1), torch.cat(words), dense


def _shuffle_maps(qprog: QProgram) -> dict[int, np.ndarray]:
    """value -> the input order a 1x1 conv reads it in, for values a depthwise conv writes (it writes them in
    that order). Any other permuted read is not supported."""
    maps: dict[int, np.ndarray] = {}
    for op in qprog.ops:
        if op.kind != OP_PW or np.array_equal(op.kidx, np.arange(len(op.kidx))):
            continue
        writers, readers = qprog.writers(op.src), qprog.readers(op.src)
        if len(writers) != 1 or writers[0].kind != OP_DW or len(readers) != 1 or op.src in maps:
            raise NotSupportedError("a channel permutation that does not follow a depthwise conv")
        maps[op.src] = np.asarray(op.kidx, np.int64)
    return maps


def _signed_flags(qprog: QProgram, op: QOp) -> int:
    flags = 0 if qprog.values[op.src].unsigned else 1
    if op.res >= 0 and not qprog.values[op.res].unsigned:
        flags |= 2
    return flags


def _quant_common(qprog: QProgram, op: QOp, n: int) -> dict:
    m, c, m_res = requant(qprog, op)
    lo, hi = qrange(qprog.values[op.dst], op.act)
    return {
        "m": _padded(m, n, torch.float32),
        "b": _padded(c, n, torch.float32),
        "m_res": m_res,
        "lo": lo,
        "hi": hi,
        "qflags": _signed_flags(qprog, op),
    }


def _dw_words(w9: np.ndarray, src: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The depthwise weights in two layouts (see ``qdw_run`` in csrc/sn_int8.h), one after the other;
    -128 * (sum of each output channel's weights); whether the second layout is there.

    1. Per output channel o and tap, a word with o's weight in the byte of its input channel ``src[o]``.
    2. Where ``src`` is a permutation: per input channel c and kernel row, the word (w0, w1, w2, 0) of the
       output channel o that reads c; then o per input channel (int32, -1 past the channels); then the input
       quads in the order of their first output channel, so that threads given consecutive quads of this
       list write separate parts of the output planes.
    """
    cout = len(src)
    n = -(-cout // 4) * 4
    b = np.zeros((n, 9, 4), np.int64)
    b[np.arange(cout), :, src % 4] = w9
    comp = _padded(torch.from_numpy(-128 * w9.sum(1)), n + _TILE, torch.int32)
    parts = [_words(b).reshape(-1)]
    if np.array_equal(np.sort(src), np.arange(cout)):
        inv = np.full(n, -1, np.int64)
        inv[src] = np.arange(cout)
        rows = np.zeros((n, 3, 4), np.int64)
        rows[src, :, :3] = w9.reshape(cout, 3, 3)
        first = np.where(inv >= 0, inv, n).reshape(-1, 4).min(1)
        quads = np.argsort(first, kind="stable").astype(np.int32)
        parts += [
            _words(rows).reshape(-1),
            torch.from_numpy(inv.astype(np.int32)),
            torch.from_numpy(quads),
        ]
    return torch.cat(parts), comp, len(parts) > 1


def lower_int8(qprog: QProgram) -> Program:
    """The native program of ``qprog`` (see the module docstring). Raises NotSupportedError."""
    prog = Program()
    vmap: dict[int, int] = {}

    def val(v: int) -> int:
        if v not in vmap:
            qv = qprog.values[v]
            vmap[v] = prog.new_value(qv.channels if qv.flat else -(-qv.channels // 4), qv.flat)
        return vmap[v]

    c0 = qprog.values[0].channels
    x = prog.new_value(c0)
    q0 = val(0)
    prog.ops.append(
        Op(OP_QPACK, x, q0, cin=c0, cout=c0, m_res=float(np.float32(qprog.values[0].scale)))
    )
    maps = _shuffle_maps(qprog)
    for op in qprog.ops:
        if op.dst_coff % 4:
            raise NotSupportedError(
                f"int8 engine: a concatenation at channel {op.dst_coff}, not a multiple of 4"
            )
        src, dst = val(op.src), val(op.dst)
        npad = -(-op.cout // _TILE) * _TILE + _TILE
        geo = {
            "cin": op.cin,
            "cout": op.cout,
            "stride": op.stride,
            "dst_coff": op.dst_coff,
            "act": op.act,
        }
        if op.kind == OP_PW:
            cin = qprog.values[op.src].channels
            table, words, dense = _pw_tiles(op, cin)
            comp = _padded(torch.from_numpy(-128 * dense.sum(0)), npad, torch.int32)
            prog.ops.append(
                Op(OP_QPW, src, dst, res=val(op.res) if op.res >= 0 else -1, groups=len(table) // 5, K=op.K,
                   N=_TILE, wp=words, table=table, comp=comp, **geo, **_quant_common(qprog, op, npad))
            )  # fmt: skip
        elif op.kind == OP_DW or (op.kind == OP_POOL and op.pool != POOL_MAX):
            order = maps.get(op.dst, np.arange(op.cout))
            if op.kind == OP_DW:
                w9 = op.w.numpy().astype(np.int64)[order]
                common = _quant_common(qprog, op, npad)
                for k in ("m", "b"):
                    common[k] = _padded(
                        common[k][: op.cout][torch.from_numpy(order)], npad, torch.float32
                    )
            else:
                w9 = np.ones((op.cout, 9), np.int64)
                common = _quant_common(qprog, op, npad)
            words, comp, has_rows = _dw_words(w9, order)
            prog.ops.append(
                Op(
                    OP_QDW,
                    src,
                    dst,
                    K=3 if has_rows else 0,
                    wp=words,
                    table=order.astype(np.int32),
                    comp=comp,
                    **geo,
                    **common,
                )
            )
        elif op.kind == OP_CONV:
            if op.cin > 16:
                raise NotSupportedError(
                    f"int8 engine: a dense 3x3 conv with {op.cin} > 16 input channels"
                )
            nq = -(-op.cin // 4)
            w = op.w.numpy().astype(np.int64)  # [cin][3][3][cout]
            b = np.zeros((op.cout, nq * 4, 9), np.int64)
            b[:, : op.cin] = w.reshape(op.cin, 9, op.cout).transpose(2, 0, 1)
            words = _words(b.reshape(op.cout, nq, 4, 9).transpose(0, 1, 3, 2)).reshape(-1)
            comp = _padded(
                torch.from_numpy(-128 * w.reshape(-1, op.cout).sum(0)), npad, torch.int32
            )
            out = dst
            if op.pool:
                out = prog.new_value(-(-op.cout // 4))
            prog.ops.append(
                Op(
                    OP_QCONV,
                    src,
                    out,
                    wp=words,
                    comp=comp,
                    **{**geo, "dst_coff": 0},
                    **_quant_common(qprog, op, npad),
                )
            )
            if op.pool:
                unsigned = qprog.values[op.dst].unsigned
                prog.ops.append(
                    Op(
                        OP_QMAX,
                        out,
                        dst,
                        cin=op.cout,
                        cout=op.cout,
                        stride=2,
                        qflags=0 if unsigned else 1,
                    )
                )
        elif op.kind == OP_POOL:
            prog.ops.append(Op(OP_QMAX, src, dst, qflags=_signed_flags(qprog, op), **geo))
        elif op.kind == OP_GAP:
            prog.ops.append(Op(OP_QGAP, src, dst, cin=op.cin, cout=op.cout, m_res=qprog.values[op.src].scale,
                               qflags=_signed_flags(qprog, op)))  # fmt: skip
        elif op.kind == OP_FC:
            prog.ops.append(Op(OP_FC, src, dst, act=op.act, cin=op.cin, cout=op.cout, K=op.K, N=op.N,
                               w=op.w.contiguous(), b=op.b.contiguous()))  # fmt: skip
        else:
            raise NotSupportedError(f"int8 engine: op kind {op.kind}")
    out = val(qprog.output)
    if not qprog.values[qprog.output].flat:
        qv = qprog.values[qprog.output]
        y = prog.new_value(qv.channels)
        prog.ops.append(Op(OP_QOUT, out, y, cin=qv.channels, cout=qv.channels, m_res=float(np.float32(qv.scale)),
                           qflags=0 if qv.unsigned else 1))  # fmt: skip
        out = y
    prog.output = out
    return prog
