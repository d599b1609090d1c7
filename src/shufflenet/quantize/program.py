"""The int8 program: the lowered float program with integer weights and one scale per activation.

Arithmetic (zero points are 0 everywhere, so no offset terms appear):

- activation value ``v``: ``x ~= q * scale[v]``, ``q`` in [-128, 127] (signed) or [0, 255] (``unsigned``: every op
  writing it ends in ReLU). The model input is quantised on entry (signed).
- 1x1 group conv, 3x3 depthwise conv, dense 3x3 conv: int8 weights ``qw`` with a scale per output channel
  (symmetric, [-127, 127]); ``acc = sum(qw * q)`` exactly in 32-bit integers.
- requantisation (the epilogue of the op, in float32): ``y = acc * m[o] + c[o] (+ q_res * m_res)``, rounded
  half to even, clamped to the output's range (lower bound 0 when the op ends in ReLU). ``m[o] = scale_in *
  w_scale[o] / scale_out``, ``c[o] = bias[o] / scale_out``, ``m_res = scale_res / scale_out``
  (:func:`requant`).
- 3x3/2 average pool: ``acc = sum of the 9 q`` (zero padding counted), ``m = scale_in / (9 scale_out)``.
- 3x3/2 max pool: on ``q`` directly (its output has the input's scale); after the stem conv it is fused.
- global average pool and the classifier run in float32 on ``q * scale``: the logits are float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

from ..deploy.native._abi import ACT_RELU, OP_CONV, OP_DW, OP_FC, OP_GAP, OP_POOL, OP_PW, POOL_MAX
from ..deploy.native.lower import BaseOp, OpGraph, Value

__all__ = ["QOp", "QValue", "QProgram", "requant", "qrange"]


@dataclass
class QValue(Value):
    """An activation of the int8 program: :class:`shufflenet.deploy.native.lower.Value` and its scale."""

    scale: float = 1.0
    unsigned: bool = False


@dataclass
class QOp(BaseOp):
    """One op of the int8 program: the fields of :class:`shufflenet.deploy.native.lower.BaseOp` (kind, values,
    geometry; stored in the program's description, :data:`META`) and the weights.

    ``w``: int8 weights in the lowered layout (PW ``[groups][K][N]``, DW ``[C][9]``, CONV ``[cin][3][3][cout]``;
    FC float32 ``[in][out]``); ``w_scale``: float32 per output channel; ``b``: float32 bias.
    """

    w: torch.Tensor | None = None
    w_scale: torch.Tensor | None = None
    b: torch.Tensor | None = None
    kidx: np.ndarray | None = None

    META = tuple(f.name for f in fields(BaseOp))


@dataclass
class QProgram(OpGraph):
    values: list[QValue] = field(default_factory=list)
    ops: list[QOp] = field(default_factory=list)
    output: int = 0

    def meta(self) -> dict:
        """JSON-able description (the tensors are stored separately, see :meth:`tensors`)."""
        return {
            "values": [[v.channels, v.flat, v.scale, v.unsigned] for v in self.values],
            "ops": [{k: getattr(op, k) for k in QOp.META} for op in self.ops],
            "output": self.output,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, op in enumerate(self.ops):
            for name in ("w", "w_scale", "b"):
                t = getattr(op, name)
                if t is not None:
                    out[f"op{i}.{name}"] = t.contiguous()
            if op.kidx is not None:
                out[f"op{i}.kidx"] = torch.from_numpy(np.ascontiguousarray(op.kidx, dtype=np.int32))
        return out

    @classmethod
    def from_saved(cls, meta: dict, tensors: dict[str, torch.Tensor]) -> QProgram:
        """Inverse of :meth:`meta` + :meth:`tensors`; raises ValueError on anything inconsistent."""
        try:
            values = [QValue(int(c), bool(f), float(s), bool(u)) for c, f, s, u in meta["values"]]
            ops = []
            for i, d in enumerate(meta["ops"]):
                if set(d) != set(QOp.META):
                    raise ValueError(f"op {i} has fields {sorted(d)}, expected {sorted(QOp.META)}")
                op = QOp(**{k: int(d[k]) for k in QOp.META})
                for name in ("w", "w_scale", "b"):
                    setattr(op, name, tensors.get(f"op{i}.{name}"))
                kidx = tensors.get(f"op{i}.kidx")
                op.kidx = kidx.numpy().astype(np.int32) if kidx is not None else None
                ops.append(op)
            prog = cls(values, ops, int(meta["output"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"damaged int8 program description: {e!r}") from e
        prog.check()
        return prog

    def check(self) -> None:
        """Structural checks (value ids, shapes, dtypes), so that a damaged file fails here, clearly."""
        nv = len(self.values)
        if not self.ops or not 0 < self.output < nv:
            raise ValueError("int8 program without ops or with a bad output value")
        for i, op in enumerate(self.ops):
            where = f"int8 program op {i}"
            if op.kind not in (OP_PW, OP_DW, OP_CONV, OP_POOL, OP_GAP, OP_FC):
                raise ValueError(f"{where}: unknown kind {op.kind}")
            for v in (op.src, op.dst) + ((op.res,) if op.res >= 0 else ()):
                if not 0 <= v < nv:
                    raise ValueError(f"{where}: value {v} out of range")
            if not all(s.scale > 0 and np.isfinite(s.scale) for s in self.values):
                raise ValueError("int8 program with a non-positive or non-finite activation scale")
            shapes = {
                OP_PW: (op.groups, op.K, op.N),
                OP_DW: (op.cout, 9),
                OP_CONV: (op.cin, 3, 3, op.cout),
                OP_FC: (op.K, op.N),
            }
            if op.kind in shapes:
                dtype = torch.float32 if op.kind == OP_FC else torch.int8
                if op.w is None or tuple(op.w.shape) != shapes[op.kind] or op.w.dtype != dtype:
                    raise ValueError(
                        f"{where}: weights missing or not {dtype} of shape {shapes[op.kind]}"
                    )
                if op.b is None or op.b.shape != (op.cout,):
                    raise ValueError(f"{where}: bias missing or not of shape ({op.cout},)")
                if op.kind != OP_FC and (op.w_scale is None or op.w_scale.shape != (op.cout,)):
                    raise ValueError(f"{where}: weight scales missing or not of shape ({op.cout},)")
            if op.kind == OP_PW:
                cin = self.values[op.src].channels
                if (
                    op.kidx is None
                    or op.kidx.shape != (op.groups * op.K,)
                    or op.kidx.min() < 0
                    or op.kidx.max() >= cin
                ):
                    raise ValueError(f"{where}: input index list missing or out of range")
            if op.dst_coff < 0 or op.dst_coff + op.cout > self.values[op.dst].channels:
                raise ValueError(f"{where}: writes channels past its value")
            if (
                op.kind == OP_POOL
                and op.pool == POOL_MAX
                and self.values[op.dst].scale != self.values[op.src].scale
            ):
                raise ValueError(f"{where}: a max pool must keep its input's scale")


def qrange(v: QValue, act: int) -> tuple[int, int]:
    """Integer range an op with activation ``act`` writes into value ``v``."""
    lo, hi = (0, 255) if v.unsigned else (-128, 127)
    return (max(lo, 0) if act == ACT_RELU else lo), hi


def requant(prog: QProgram, op: QOp) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(m, c, m_res)`` of an op's epilogue, float32 per output channel (see the module docstring)."""
    s_in, s_out = prog.values[op.src].scale, prog.values[op.dst].scale
    if op.kind == OP_POOL:
        m = torch.full(
            (op.cout,), s_in / (9.0 * s_out) if op.pool != POOL_MAX else 1.0, dtype=torch.float64
        )
        c = torch.zeros(op.cout, dtype=torch.float64)
    else:
        m = s_in * op.w_scale.double() / s_out
        c = op.b.double() / s_out
    m_res = prog.values[op.res].scale / s_out if op.res >= 0 else 0.0
    return m.float(), c.float(), float(np.float32(m_res))
