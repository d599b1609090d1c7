"""``NativeModule``: run a lowered :class:`~.lower.Program` through the compiled engine.

A program is bound to each input shape (batch, height, width, threads) once: spatial sizes are propagated,
activations get workspace slots (reused when dead; a slot holds values of one spatial size and layout, so the
zero halo around the planes that a stride-1 depthwise conv reads stays zero; other planes are compact; the
1x1 conv that ends a residual unit writes over its residual, which keeps the working set in the caches),
1x1-conv row offsets and depthwise border masks are computed, and the C structs are built.
A forward pass is then one ctypes call that releases the GIL. How many threads a call uses and how it splits
the work is decided here, in :func:`thread_plan`; the C runtime carries that out.

Environment (both read once per process):
    SHUFFLENET_NATIVE_ADAPTIVE=1: see :func:`thread_plan`.
    SHUFFLENET_NATIVE_SPIN_US: the longest, in microseconds, that a thread spins before it sleeps (default
        200): an idle pool thread waiting for the next call, or a thread waiting for another's work (its spin
        adapts: it grows to cover waits shorter than this and halves after longer ones; at most 100000, and 0
        for what is not a number). Read by the C runtime when its pool starts. Lower it on a machine shared
        with other busy processes.
"""

from __future__ import annotations

import ctypes
import os
from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ._abi import (
    ISA_NAMES,
    OP_CONV,
    OP_DW,
    OP_FC,
    OP_GAP,
    OP_NAMES,
    OP_PACK,
    OP_POOL,
    OP_PW,
    OP_QCONV,
    OP_QDW,
    OP_QGAP,
    OP_QPACK,
    OP_QPW,
    SnOp,
    SnPlan,
)
from ._lib import NativeLibrary, get_library
from .lower import Op, Program, lower

__all__ = ["NativeModule", "ThreadPlan", "halo_geometry", "thread_plan"]

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
    return op.kind in (OP_CONV, OP_QPACK) or (op.kind in (OP_DW, OP_POOL) and op.stride == 2)


@dataclass
class _Bound:
    plan: SnPlan
    keep: list  # everything the C side points into
    out_shape: tuple[int, ...]
    batch: int


# ----------------------------------------------------------------------------------------- thread policy

_ADAPTIVE = os.environ.get("SHUFFLENET_NATIVE_ADAPTIVE", "").strip() == "1"


@dataclass(frozen=True)
class ThreadPlan:
    """How a call runs: ``threads`` in total; ``mode`` 0 (all threads on one image at a time, ops cut into
    chunks) or 1 (one image per thread); ``nsets`` workspace sets (one per thread in mode 1); ``adaptive``:
    mode 0 may run on one thread when that measures faster (see :func:`thread_plan`)."""

    threads: int
    mode: int
    nsets: int
    adaptive: bool


def thread_plan(batch: int, requested: int | None) -> ThreadPlan:
    """The engine's thread policy, all of it (the C runtime only carries it out).

    ``requested`` threads (default ``torch.get_num_threads()`` at call time) are used as given. A batch of at
    least that many images runs one image per thread with no synchronisation; a smaller batch runs its images
    one after another with all threads on each. ``SHUFFLENET_NATIVE_ADAPTIVE=1`` (read once per process) lets
    the latter measure, per bound model, its wall time with all threads and with one, and use the faster
    (median of the last 8 runs; every 16th run tries the other, to follow the load): on a machine whose cores
    are busy with other processes, the thread an op waits for is often not running.
    """
    threads = max(1, int(requested or torch.get_num_threads()))
    if threads > 1 and batch >= threads:
        return ThreadPlan(threads, 1, threads, False)
    return ThreadPlan(threads, 0, 1, _ADAPTIVE and threads > 1)


# ----------------------------------------------------------------------------------------------- binding


def _with_input_pack(prog: Program, c: int) -> tuple[list[Op], list[bool], list[int]]:
    """The program's ops, with a copy of the input into halo planes first when an op needs those
    (the caller's input is plain NCHW); and each value's flatness and channels."""
    ops: list[Op] = list(prog.ops)
    flat = [v.flat for v in prog.values]
    chans = [v.channels for v in prog.values]
    if not any(op.src == 0 and not _reads_raw_ok(op) or op.res == 0 for op in ops):
        return ops, flat, chans
    packed = len(flat)
    flat.append(False)
    chans.append(c)

    def moved(op: Op) -> Op:
        return replace(
            op, src=packed if op.src == 0 else op.src, res=packed if op.res == 0 else op.res
        )

    return [Op(OP_PACK, 0, packed, cin=c, cout=c)] + [moved(op) for op in ops], flat, chans


def _spatial_sizes(ops: list[Op], h: int, w: int) -> dict[int, tuple[int, int]]:
    """(H, W) of every value for an ``h x w`` input."""
    hw: dict[int, tuple[int, int]] = {0: (h, w)}
    for op in ops:
        sh, sw = hw[op.src]
        if op.stride == 2 and (sh < 1 or sw < 1):
            raise ValueError(f"input {h}x{w} is too small for this model")
        out = op.out_hw(sh, sw)
        if op.dst in hw and hw[op.dst] != out:
            raise ValueError(f"inconsistent spatial sizes {hw[op.dst]} vs {out} (input {h}x{w})")
        hw[op.dst] = out
    return hw


@dataclass
class _Slots:
    """Slot of every value: 0 = input, 1 = output, 2.. = workspace buffers, reused once their value is
    dead. ``key[s]``: ("flat",) or (layout, H, W), one per slot; ``cap[s]``: channels it must hold."""

    of: dict[int, int]
    key: list[tuple]
    cap: list[int]


def _assign_slots(
    ops: list[Op], flat: list[bool], chans: list[int], hw: dict, out_v: int
) -> _Slots:
    last_use: dict[int, int] = {}
    writers: dict[int, int] = {}
    for i, op in enumerate(ops):
        for v in (op.src, op.res):
            if v >= 0:
                last_use[v] = i
        writers[op.dst] = writers.get(op.dst, 0) + 1
    # only the input of a stride-1 depthwise conv needs the zero halo; the rest are compact planes
    halo = {op.src for op in ops if op.kind == OP_DW and op.stride == 1}
    slots = _Slots({0: 0, out_v: 1}, [(), ()], [0, 0])
    free: list[int] = []
    live: list[int] = []
    for i, op in enumerate(ops):
        # a value read last by op i - 1 stays until op i + 1: with several threads op i may start while op
        # i - 1 still reads (see csrc/sn_runtime.c), so op i must not write over it
        for v in [v for v in live if last_use.get(v, -1) < i - 1]:
            live.remove(v)
            free.append(slots.of[v])
        v = op.dst
        if v in slots.of:
            continue
        key = ("flat",) if flat[v] else ("halo" if v in halo else "compact", *hw[v])
        r = op.res
        if (
            op.kind in (OP_PW, OP_QPW)
            and r in live  # a workspace value (not the caller's input)
            and last_use[r] == i
            and (i == 0 or r not in (ops[i - 1].src, ops[i - 1].res))
            and writers[v] == 1  # all of v (not one part of a concatenation)
            and slots.key[slots.of[r]] == key
        ):
            # the 1x1 conv reads each residual value (int8: word of 4 channels) once, just before it writes the
            # output value at the same place: it can write over its residual, the last reader of it, when the op
            # in flight beside it (op i - 1) does not read it; the output then needs no new buffer and no cache
            # lines of its own
            live.remove(r)
            slots.of[v] = slots.of[r]
            slots.cap[slots.of[v]] = max(slots.cap[slots.of[v]], chans[v])
            live.append(v)
            continue
        pick = next((s for s in free if slots.key[s] == key), None)
        if pick is None:
            pick = len(slots.key)
            slots.key.append(key)
            slots.cap.append(0)
        else:
            free.remove(pick)
        slots.of[v] = pick
        slots.cap[pick] = max(slots.cap[pick], chans[v])
        live.append(v)
    return slots


@dataclass
class _Workspace:
    cs: list[int]  # plane stride of each slot (floats)
    img: list[int]  # image stride of slots 0 and 1 (floats)
    ws: ctypes.Array  # [nsets][nslots] channel-0 pointers of the workspace slots
    buffer: torch.Tensor
    out_shape: tuple[int, ...]


def _workspace(
    slots: _Slots,
    n: int,
    c: int,
    h: int,
    w: int,
    out_c: int,
    out_hw: tuple[int, int] | None,
    nsets: int,
) -> _Workspace:
    """Plane strides, the output's shape (``out_hw`` None: flat) and ``nsets`` zeroed workspace sets."""
    nslots = len(slots.key)
    cs, img = [0] * nslots, [0] * nslots
    cs[0], img[0] = h * w, c * h * w
    if out_hw is None:
        cs[1], img[1] = 1, out_c
        out_shape: tuple[int, ...] = (n, out_c)
    else:
        cs[1], img[1] = out_hw[0] * out_hw[1], out_c * out_hw[0] * out_hw[1]
        out_shape = (n, out_c, *out_hw)
    before, sizes = [0] * nslots, [0] * nslots
    for s in range(2, nslots):
        if slots.key[s] == ("flat",):
            cs[s] = 1
            sizes[s] = _roundup(slots.cap[s] + 64, 16)
            continue
        kind, sh, sw = slots.key[s]
        if kind == "halo":
            before[s], cs[s] = halo_geometry(sh, sw)
        else:
            cs[s] = _roundup(sh * sw, 16)
        sizes[s] = _roundup(slots.cap[s] * cs[s] + 64, 16)
    offsets = np.cumsum([0] + sizes[2:]).tolist()
    per_set = offsets[-1]
    buffer = torch.zeros(max(1, nsets * per_set), dtype=torch.float32)
    base = buffer.data_ptr()
    ws = (ctypes.c_void_p * (nsets * nslots))()
    for st in range(nsets):
        for s in range(2, nslots):
            ws[st * nslots + s] = base + 4 * (st * per_set + offsets[s - 2] + before[s])
    return _Workspace(cs, img, ws, buffer, out_shape)


def _plane_offsets(kidx: np.ndarray, plane_stride: int) -> np.ndarray:
    """Element offset of each 1x1-conv reduction row's input plane (int32, as the kernels index)."""
    koff = kidx.astype(np.int64) * plane_stride
    if koff.max(initial=0) >= 2**31:
        raise ValueError("activation too large for the native engine's 32-bit offsets")
    return np.ascontiguousarray(koff, dtype=np.int32)


def _border_masks(h: int, w: int, vw: int) -> np.ndarray:
    """Per pixel vector of an ``h x w`` plane, lane bits {has a left neighbour, has a right neighbour}."""
    nvec = -(-(h * w) // vw)
    x = np.arange(nvec * vw) % w
    bits = (1 << np.arange(vw, dtype=np.uint64)).astype(np.uint64)
    left = ((x != 0).reshape(nvec, vw) * bits).sum(1)
    right = ((x != w - 1).reshape(nvec, vw) * bits).sum(1)
    return np.ascontiguousarray(np.stack([left, right], 1).reshape(-1), dtype=np.uint32)


def _c_ops(
    ops: list[Op], slots: _Slots, hw: dict, flat: list[bool], cs: list[int], vw: int
) -> tuple[ctypes.Array, list]:
    """The ``sn_op`` array, and the arrays it points into (to keep alive)."""
    keep: list = []
    arr = (SnOp * len(ops))()
    for o, op in zip(arr, ops):
        sh, sw = hw[op.src]
        o.kind, o.act = op.kind, op.act
        o.src, o.dst = slots.of[op.src], slots.of[op.dst]
        o.res = slots.of[op.res] if op.res >= 0 else -1
        o.src_coff, o.dst_coff, o.res_coff = 0, op.dst_coff, 0
        o.cin, o.cout = op.cin, op.cout
        o.H, o.W = sh, sw
        o.OH, o.OW = hw[op.dst]
        o.groups, o.K, o.N = op.groups, op.K, op.N
        o.stride, o.pool = op.stride, op.pool
        for name in ("w", "wp", "b"):
            t = getattr(op, name)
            if t is not None:
                setattr(o, name, t.data_ptr())
        if op.kind == OP_PW:
            koff = _plane_offsets(op.kidx, cs[o.src])
            keep.append(koff)
            o.koff = koff.ctypes.data
        if op.table is not None:
            table = np.ascontiguousarray(op.table, dtype=np.int32)
            keep.append(table)
            o.koff = table.ctypes.data
        o.qflags, o.lo, o.hi, o.m_res = op.qflags, op.lo, op.hi, op.m_res
        if op.kind == OP_QGAP:  # the mean's 1 / pixels, as the PyTorch int8 runtime rounds it
            o.m_res = float(np.float32(op.m_res / (sh * sw)))
        for name in ("m", "comp"):
            t = getattr(op, name)
            if t is not None:
                setattr(o, name, t.data_ptr())
        if op.kind in (OP_DW, OP_QDW) and op.stride == 1:
            masks = _border_masks(sh, sw, vw)
            keep.append(masks)
            o.masks = masks.ctypes.data
        if op.kind in (OP_GAP, OP_QGAP, OP_FC) and (op.kind == OP_FC) != flat[op.src]:
            raise ValueError("internal error: flat/planar mismatch")
    return arr, keep


def _bind(
    prog: Program, lib: NativeLibrary, isa: int, n: int, c: int, h: int, w: int, tp: ThreadPlan
) -> _Bound:
    """The C plan of ``prog`` for an ``(n, c, h, w)`` input run as ``tp`` says."""
    ops, flat, chans = _with_input_pack(prog, c)
    hw = _spatial_sizes(ops, h, w)
    out_v = prog.output
    slots = _assign_slots(ops, flat, chans, hw, out_v)
    space = _workspace(
        slots, n, c, h, w, chans[out_v], None if flat[out_v] else hw[out_v], tp.nsets
    )
    arr, keep = _c_ops(ops, slots, hw, flat, space.cs, lib.vector_width(isa))
    nslots = len(slots.key)
    cs_arr = (ctypes.c_int64 * nslots)(*space.cs)
    img_arr = (ctypes.c_int64 * nslots)(*space.img)
    keep += [space.buffer, space.ws, arr, cs_arr, img_arr, ops]
    plan = SnPlan(
        len(ops), nslots, n, tp.mode, tp.nsets, int(tp.adaptive), arr, cs_arr, img_arr, space.ws
    )
    if tp.mode == 0 and tp.threads > 1:
        # which chunks of the op before each chunk waits for, for this split
        deps = np.zeros(64 * len(ops), dtype=np.uint64)
        if lib.cdll.sn_plan_deps(ctypes.byref(plan), isa, tp.threads, deps.ctypes.data) != 0:
            raise RuntimeError("native engine: sn_plan_deps failed")
        keep.append(deps)
        plan.deps, plan.deps_T, plan.deps_isa = deps.ctypes.data, tp.threads, isa
    return _Bound(plan, keep, space.out_shape, n)


class NativeModule(nn.Module):
    """Inference-only module that runs ``model`` through the native engine (CPU).

    Args:
        model: a module the engine can lower (see :mod:`.lower`); it is read, never modified.
        isa: ``"avx512"``, ``"avx2"`` or ``"generic"`` to force an instruction set (default: the best this CPU
            runs, or ``$SHUFFLENET_NATIVE_ISA``).
        num_threads: threads per call (default: ``torch.get_num_threads()`` at call time); see
            :func:`thread_plan`.
        program: an already lowered program instead of ``model`` (the int8 one of
            :meth:`shufflenet.quantize.QuantizedModel.native`).
        int8: ``program`` runs int8 kernels: the AVX-512 ones need VNNI (without it the AVX2 ones run), and
            an image with a NaN pixel gets NaN outputs (int8 has no NaN).

    Input ``(N, C, H, W)`` float32 on the CPU in any memory format; output float32 as the model's (logits
    ``(N, K)`` or an NCHW feature map).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        isa: str | None = None,
        num_threads: int | None = None,
        *,
        program: Program | None = None,
        int8: bool = False,
    ) -> None:
        super().__init__()
        if program is None:
            if model is None:
                raise TypeError("NativeModule needs a model or a program")
            was_training = model.training
            model.eval()
            try:
                program = lower(model)
            finally:
                model.train(was_training)
        self.program = program
        self.int8 = int8
        self.lib = get_library()
        self.isa = self.lib.resolve_isa(isa)
        if int8 and ISA_NAMES[self.isa] == "avx512" and not self.lib.cdll.sn_cpu_vnni():
            self.isa = ISA_NAMES.index("avx2")
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
        return ISA_NAMES[self.isa]

    def _get_bound(self, n: int, h: int, w: int, tp: ThreadPlan) -> _Bound:
        key = (n, h, w, tp)
        b = self._bound.get(key)
        if b is None:
            b = _bind(self.program, self.lib, self.isa, n, self.in_channels, h, w, tp)
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
        tp = thread_plan(n, self.num_threads)
        b = self._get_bound(n, h, w, tp)
        x = x.detach()
        if not x.is_contiguous():
            # e.g. channels_last: numpy copies on this thread; torch's copy would leave its intra-op threads
            # spinning, and they would take the cores from the engine's threads (1.9 -> 3.5-3.9 ms at batch 1)
            x = torch.from_numpy(np.ascontiguousarray(x.numpy()))
        y = torch.empty(b.out_shape, dtype=torch.float32)
        rc = self.lib.cdll.sn_run(
            ctypes.byref(b.plan), self.isa, tp.threads, x.data_ptr(), y.data_ptr()
        )
        if rc != 0:
            raise RuntimeError(f"native engine failed with code {rc}")
        if self.int8:
            # a NaN pixel makes its image's sum NaN; a NaN sum can also come from infinities, so only those
            # images are checked pixel by pixel. numpy, one thread: torch's intra-op threads would stay
            # spinning after the sum and take the cores from the engine's own threads at the next call
            a = x.numpy().reshape(n, -1)
            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, overflow: checked below
                sums = a.sum(axis=1)
            for i in np.flatnonzero(np.isnan(sums)).tolist():
                if np.isnan(a[i]).any():
                    y[i] = float("nan")
        return y

    def profile(self, x: torch.Tensor, repeats: int = 10, threads: int = 1) -> list[dict]:
        """Per-op CPU time of runs on the calling thread on ``x`` (the minimum over ``repeats``), with
        multiply-adds, and how the op splits for ``threads`` threads.

        CPU time of the calling thread is not inflated when other processes take the CPU, and the minimum
        drops runs disturbed by them, so this is the tool to see where the time goes on a busy machine. With
        ``threads`` > 1 every op is cut into the chunks it gets with that many threads (one image at a time,
        as :func:`thread_plan` runs a batch smaller than ``threads``), all run here in order: ``chunks`` is
        their number and ``share_seconds`` the time of the largest thread's share, i.e. the op's time on
        ``threads`` threads that never wait for each other (``seconds`` minus ``share_seconds`` is what the
        other threads take off it; synchronisation is not counted).
        """
        n, c, h, w = x.shape
        threads = max(1, int(threads))
        b = self._get_bound(n, h, w, ThreadPlan(threads, 0, 1, False))
        x = x.detach().contiguous()
        y = torch.empty(b.out_shape, dtype=torch.float32)
        nops = b.plan.nops
        best = [float("inf")] * nops
        best_share = [float("inf")] * nops
        chunks = (ctypes.c_int32 * nops)()
        for _ in range(max(1, repeats)):
            secs = (ctypes.c_double * nops)()
            share = (ctypes.c_double * nops)()
            rc = self.lib.cdll.sn_profile(
                ctypes.byref(b.plan),
                self.isa,
                threads,
                x.data_ptr(),
                y.data_ptr(),
                secs,
                share,
                chunks,
            )
            if rc != 0:
                raise RuntimeError(f"native engine failed with code {rc}")
            best = [min(a, s) for a, s in zip(best, secs)]
            best_share = [min(a, s) for a, s in zip(best_share, share)]
        rows = []
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
            elif o.kind == OP_QPW:
                macs = o.H * o.W * o.K * o.cout
            elif o.kind == OP_QCONV:
                macs = o.OH * o.OW * o.cout * o.cin * 9
            elif o.kind == OP_QDW:
                macs = o.OH * o.OW * o.cout * 9
            else:
                macs = 0
            name = OP_NAMES.get(o.kind, "?")
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
                    "chunks": int(chunks[i]),
                    "share_seconds": best_share[i],
                }
            )
        return rows

    def extra_repr(self) -> str:
        prec = ", int8" if self.int8 else ""
        return f"isa={self.isa_name}{prec}, ops={len(self.program.ops)}, num_threads={self.num_threads}"
