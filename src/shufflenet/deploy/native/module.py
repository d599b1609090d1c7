"""``NativeModule``: run a lowered :class:`~.lower.Program` through the compiled engine.

A program is bound to each input shape (batch, height, width, threads) once: spatial sizes are propagated,
activations get workspace slots (reused when dead; a slot holds values of one spatial size and layout, so the
zero halo around the planes that a stride-1 depthwise conv reads stays zero; other planes are compact),
1x1-conv row offsets and depthwise border masks are computed, and the C structs are built.
A forward pass is then one ctypes call that releases the GIL.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._abi import (
    OP_CONV,
    OP_DW,
    OP_FC,
    OP_GAP,
    OP_PACK,
    OP_POOL,
    OP_PW,
    SnOp,
    SnPlan,
)
from ._lib import NativeLibrary, get_library
from .lower import Op, Program, lower

__all__ = ["NativeModule", "halo_geometry"]

_MAX_BOUND = 8  # input shapes kept bound per module


def _roundup(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def halo_geometry(h: int, w: int) -> tuple[int, int]:
    """``(before, plane_stride)`` in floats of a halo plane of ``h x w`` pixels (see ``sn_native.h``)."""
    before = _roundup(2 * w + 32, 16)
    after = 2 * w + 64
    return before, _roundup(before + h * w + after, 16)


def _reads_raw_ok(op: Op) -> bool:
    """Ops that mask every load, so they may read the caller's plain NCHW planes directly."""
    return op.kind == OP_CONV or (op.kind in (OP_DW, OP_POOL) and op.stride == 2)


@dataclass
class _Bound:
    plan: SnPlan
    keep: list  # everything the C side points into
    out_shape: tuple[int, ...]
    batch: int


def _bind(
    prog: Program, lib: NativeLibrary, isa: int, n: int, c: int, h: int, w: int, threads: int
) -> _Bound:
    ops: list[Op] = list(prog.ops)
    nvals = len(prog.values)
    flat = [v.flat for v in prog.values]
    chans = [v.channels for v in prog.values]
    # the input is read by an op that needs halo planes: pack it first
    remap = {}
    if any(op.src == 0 and not _reads_raw_ok(op) or op.res == 0 for op in ops):
        packed = nvals
        nvals += 1
        flat.append(False)
        chans.append(c)
        remap[0] = packed
        ops = [Op(OP_PACK, 0, packed, cin=c, cout=c)] + [
            Op(
                **{
                    **op.__dict__,
                    "src": remap.get(op.src, op.src),
                    "res": remap.get(op.res, op.res),
                }
            )
            for op in ops
        ]
    # spatial sizes
    hw: dict[int, tuple[int, int]] = {0: (h, w)}
    for op in ops:
        sh, sw = hw[op.src]
        if op.kind in (OP_CONV, OP_DW, OP_POOL) and op.stride == 2 and (sh < 1 or sw < 1):
            raise ValueError(f"input {h}x{w} is too small for this model")
        out = op.out_hw(sh, sw)
        if op.dst in hw and hw[op.dst] != out:
            raise ValueError(f"inconsistent spatial sizes {hw[op.dst]} vs {out} (input {h}x{w})")
        hw[op.dst] = out
    out_v = prog.output
    # liveness and slots: 0 = input, 1 = output, 2.. = workspace, one spatial size per slot
    first_def: dict[int, int] = {}
    last_use: dict[int, int] = {}
    for i, op in enumerate(ops):
        first_def.setdefault(op.dst, i)
        for v in (op.src, op.res):
            if v >= 0:
                last_use[v] = i
    # only the input of a stride-1 depthwise conv needs the zero halo; the rest are compact planes
    halo = {op.src for op in ops if op.kind == OP_DW and op.stride == 1}
    slot_of: dict[int, int] = {0: 0, out_v: 1}
    slot_key: list[tuple] = [(), ()]
    slot_cap: list[int] = [0, 0]
    free: list[int] = []
    live: list[int] = []
    for i, op in enumerate(ops):
        for v in [v for v in live if last_use.get(v, -1) < i]:
            live.remove(v)
            free.append(slot_of[v])
        v = op.dst
        if v in slot_of:
            continue
        key = ("flat",) if flat[v] else ("halo" if v in halo else "compact", *hw[v])
        pick = next((s for s in free if slot_key[s] == key), None)
        if pick is None:
            pick = len(slot_key)
            slot_key.append(key)
            slot_cap.append(0)
        else:
            free.remove(pick)
        slot_of[v] = pick
        slot_cap[pick] = max(slot_cap[pick], chans[v])
        live.append(v)
    nslots = len(slot_key)
    # plane strides
    slot_cs = [0] * nslots
    slot_img = [0] * nslots
    slot_cs[0], slot_img[0] = h * w, c * h * w
    oh, ow = hw[out_v]
    out_c = chans[out_v]
    if flat[out_v]:
        slot_cs[1], slot_img[1] = 1, out_c
        out_shape: tuple[int, ...] = (n, out_c)
    else:
        slot_cs[1], slot_img[1] = oh * ow, out_c * oh * ow
        out_shape = (n, out_c, oh, ow)
    before = [0] * nslots
    sizes = [0] * nslots
    for s in range(2, nslots):
        if slot_key[s] == ("flat",):
            slot_cs[s], before[s] = 1, 0
            sizes[s] = _roundup(slot_cap[s] + 64, 16)
        else:
            kind, sh, sw = slot_key[s]
            if kind == "halo":
                before[s], slot_cs[s] = halo_geometry(sh, sw)
            else:
                before[s], slot_cs[s] = 0, _roundup(sh * sw, 16)
            sizes[s] = _roundup(slot_cap[s] * slot_cs[s] + 64, 16)
    mode = 1 if threads > 1 and n >= threads else 0
    nsets = min(threads, n) if mode == 1 else 1
    offsets = np.cumsum([0] + sizes[2:]).tolist()
    per_set = offsets[-1]
    workspace = torch.zeros(max(1, nsets * per_set), dtype=torch.float32)
    base = workspace.data_ptr()
    ws = (ctypes.c_void_p * (nsets * nslots))()
    for st in range(nsets):
        for s in range(2, nslots):
            ws[st * nslots + s] = base + 4 * (st * per_set + offsets[s - 2] + before[s])
    # ops
    vw = lib.vector_width(isa)
    keep: list = [workspace, ws]
    arr = (SnOp * len(ops))()
    for i, op in enumerate(ops):
        o = arr[i]
        sh, sw = hw[op.src]
        dh, dw_ = hw[op.dst]
        o.kind, o.act = op.kind, op.act
        o.src, o.dst = slot_of[op.src], slot_of[op.dst]
        o.res = slot_of[op.res] if op.res >= 0 else -1
        o.src_coff, o.dst_coff, o.res_coff = 0, op.dst_coff, 0
        o.cin, o.cout = op.cin, op.cout
        o.H, o.W, o.OH, o.OW = sh, sw, dh, dw_
        o.groups, o.K, o.N = op.groups, op.K, op.N
        o.stride, o.pool = op.stride, op.pool
        if op.w is not None:
            o.w = op.w.data_ptr()
        if op.wp is not None:
            o.wp = op.wp.data_ptr()
        if op.b is not None:
            o.b = op.b.data_ptr()
        if op.kind == OP_PW:
            koff = op.kidx.astype(np.int64) * slot_cs[o.src]
            if koff.max(initial=0) >= 2**31:
                raise ValueError("activation too large for the native engine's 32-bit offsets")
            koff = np.ascontiguousarray(koff, dtype=np.int32)
            keep.append(koff)
            o.koff = koff.ctypes.data
        if op.kind == OP_DW and op.stride == 1:
            p = sh * sw
            nvec = -(-p // vw)
            x = np.arange(nvec * vw) % sw
            bits = (1 << np.arange(vw, dtype=np.uint64)).astype(np.uint64)
            left = ((x != 0).reshape(nvec, vw) * bits).sum(1)
            right = ((x != sw - 1).reshape(nvec, vw) * bits).sum(1)
            masks = np.ascontiguousarray(np.stack([left, right], 1).reshape(-1), dtype=np.uint32)
            keep.append(masks)
            o.masks = masks.ctypes.data
        if op.kind in (OP_GAP, OP_FC) and (op.kind == OP_FC) != flat[op.src]:
            raise ValueError("internal error: flat/planar mismatch")
    cs_arr = (ctypes.c_int64 * nslots)(*slot_cs)
    img_arr = (ctypes.c_int64 * nslots)(*slot_img)
    keep += [arr, cs_arr, img_arr, ops]
    plan = SnPlan(len(ops), nslots, n, mode, nsets, 0, arr, cs_arr, img_arr, ws)
    return _Bound(plan, keep, out_shape, n)


class NativeModule(nn.Module):
    """Inference-only module that runs ``model`` through the native engine (CPU, float32).

    Args:
        model: a module the engine can lower (see :mod:`.lower`); it is read, never modified.
        isa: ``"avx512"``, ``"avx2"`` or ``"generic"`` to force an instruction set (default: the best this CPU
            runs, or ``$SHUFFLENET_NATIVE_ISA``).
        num_threads: threads per call (default: ``torch.get_num_threads()`` at call time); see the package
            docstring for the fallback to one thread under contention.

    Input ``(N, C, H, W)`` float32 on the CPU in any memory format; output as the model's (logits ``(N, K)``
    or an NCHW feature map).
    """

    def __init__(
        self, model: nn.Module, isa: str | None = None, num_threads: int | None = None
    ) -> None:
        super().__init__()
        was_training = model.training
        model.eval()
        try:
            self.program = lower(model)
        finally:
            model.train(was_training)
        self.lib = get_library()
        self.isa = self.lib.resolve_isa(isa)
        self.num_threads = num_threads
        self.in_channels = self.program.values[0].channels
        self._bound: OrderedDict[tuple, _Bound] = OrderedDict()
        for op in self.program.ops:
            if op.kind in (OP_PW, OP_FC, OP_CONV):
                so = SnOp(kind=op.kind, groups=op.groups, K=op.K, N=op.N, cin=op.cin, cout=op.cout)
                so.w = op.w.data_ptr()
                size = int(self.lib.cdll.sn_pack_size(self.isa, ctypes.byref(so)))
                op.wp = torch.empty(max(size, 1), dtype=torch.float32)
                self.lib.cdll.sn_pack(self.isa, ctypes.byref(so), op.wp.data_ptr())
                op.w = None  # the kernels read only the packed copy

    @property
    def isa_name(self) -> str:
        from ._abi import ISA_NAMES

        return ISA_NAMES[self.isa]

    def _get_bound(self, n: int, h: int, w: int, threads: int) -> _Bound:
        key = (n, h, w, threads)
        b = self._bound.get(key)
        if b is None:
            b = _bind(self.program, self.lib, self.isa, n, self.in_channels, h, w, threads)
            self._bound[key] = b
            while len(self._bound) > _MAX_BOUND:
                self._bound.popitem(last=False)
        else:
            self._bound.move_to_end(key)
        return b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"expected a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
        if x.device.type != "cpu" or x.dtype != torch.float32:
            raise ValueError(
                f"the native engine runs float32 on the CPU; got {x.dtype} on {x.device}"
            )
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {c}")
        if n == 0:
            raise ValueError("empty batch")
        threads = max(1, int(self.num_threads or torch.get_num_threads()))
        b = self._get_bound(n, h, w, threads)
        x = x.detach().contiguous()
        y = torch.empty(b.out_shape, dtype=torch.float32)
        rc = self.lib.cdll.sn_run(
            ctypes.byref(b.plan), self.isa, threads, x.data_ptr(), y.data_ptr()
        )
        if rc != 0:
            raise RuntimeError(f"native engine failed with code {rc}")
        return y

    def profile(self, x: torch.Tensor, repeats: int = 10) -> list[dict]:
        """Per-op CPU time of single-threaded runs on ``x`` (the minimum over ``repeats``), with multiply-adds.

        CPU time of the calling thread is not inflated when other processes take the CPU, and the minimum
        drops runs disturbed by them, so this is the tool to see where the time goes on a busy machine.
        """
        n, c, h, w = x.shape
        b = self._get_bound(n, h, w, 1)
        x = x.detach().contiguous()
        y = torch.empty(b.out_shape, dtype=torch.float32)
        nops = b.plan.nops
        best = [float("inf")] * nops
        for _ in range(max(1, repeats)):
            secs = (ctypes.c_double * nops)()
            rc = self.lib.cdll.sn_profile(
                ctypes.byref(b.plan), self.isa, x.data_ptr(), y.data_ptr(), secs
            )
            if rc != 0:
                raise RuntimeError(f"native engine failed with code {rc}")
            best = [min(a, s) for a, s in zip(best, secs)]
        rows = []
        names = {
            OP_PACK: "pack",
            OP_CONV: "conv3x3",
            OP_PW: "pw",
            OP_DW: "dw",
            OP_POOL: "pool",
            OP_GAP: "gap",
            OP_FC: "fc",
        }
        for i in range(nops):
            o = b.plan.ops[i]
            if o.kind == OP_PW:
                macs = o.H * o.W * o.groups * o.K * o.N
            elif o.kind == OP_CONV:
                macs = o.OH * o.OW * o.cout * o.cin * 9
            elif o.kind == OP_DW:
                macs = o.OH * o.OW * o.cout * 9
            elif o.kind == OP_FC:
                macs = o.K * o.N
            else:
                macs = 0
            name = names.get(o.kind, "?")
            if o.kind == OP_POOL:
                name = "maxpool" if o.pool == 0 else "avgpool"
            rows.append(
                {
                    "op": i,
                    "kind": name,
                    "in": (o.cin, o.H, o.W),
                    "out": (o.cout, o.OH, o.OW),
                    "groups": o.groups,
                    "stride": o.stride,
                    "macs": macs * n,
                    "seconds": best[i],
                }
            )
        return rows

    def extra_repr(self) -> str:
        return f"isa={self.isa_name}, ops={len(self.program.ops)}, num_threads={self.num_threads}"
