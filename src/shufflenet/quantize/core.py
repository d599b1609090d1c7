"""``quantize(model, calibration_images)`` and the PyTorch int8 runtime (:class:`QuantizedModel`)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..deploy.errors import NotSupportedError
from ..deploy.native._abi import ACT_RELU, OP_CONV, OP_DW, OP_FC, OP_GAP, OP_POOL, OP_PW, POOL_MAX
from ..deploy.native.lower import Program, lower
from ..deploy.native.module import NativeModule
from .calibrate import METHODS, Observer, choose_clip, pw_weight, run_float
from .native import lower_int8
from .program import QOp, QProgram, QValue, qrange, requant

__all__ = ["QuantizedModel", "quantize", "run_int8", "input_batches"]


def input_batches(images: Any, batch_size: int = 32) -> list[torch.Tensor]:
    """Calibration images as float32 batches: a ``(N, C, H, W)`` tensor, or an iterable of such tensors or of
    ``(images, labels, ...)`` tuples (a DataLoader). Raises ValueError when there are none or any is NaN."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(
                f"calibration_images must be (N, C, H, W), got shape {tuple(images.shape)}"
            )
        chunks = list(images.split(batch_size)) if images.shape[0] else []
    elif isinstance(images, Iterable):
        chunks = []
        for item in images:
            x = item[0] if isinstance(item, tuple | list) else item
            if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
                raise ValueError(
                    f"calibration batches must be image tensors, got {type(x).__name__}"
                )
            chunks.append(x if x.dim() == 4 else x.unsqueeze(0))
    else:
        raise TypeError(
            f"calibration_images must be a tensor or an iterable of tensors, got {type(images).__name__}"
        )
    chunks = [c.detach().to("cpu", torch.float32) for c in chunks if c.shape[0] > 0]
    if not chunks:
        raise ValueError(
            "no calibration images: quantize needs at least one image to choose activation scales"
        )
    for i, c in enumerate(chunks):
        if not torch.isfinite(c).all():
            raise ValueError(f"calibration batch {i} contains NaN or inf pixels")
    return chunks


def _lower_for_int8(model: nn.Module) -> Program:
    src = copy.deepcopy(model).eval()
    try:
        return lower(src)
    except NotSupportedError as e:
        raise NotSupportedError(
            f"quantize: {e}. Int8 covers ShuffleNet v1 (any groups and width, small_input too), MobileNet v1 "
            "and Sequential stacks of their layers; a layer that runs in float32 only (such as "
            "squeeze-and-excitation) has no int8 form: keep the float32 model for it"
        ) from e


def _unsigned(prog: Program, value: int) -> bool:
    writers = prog.writers(value)
    return value != 0 and bool(writers) and all(op.act == ACT_RELU for op in writers)


def _quantize_weights(w: torch.Tensor, red: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per output channel; ``red``: the dims reduced over (the others index
    output channels, in output-channel order). Returns ``(q int8, scale float32 (channels,))``."""
    amax = w.double().abs().amax(dim=red, keepdim=True)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).float()
    q = torch.round(w.double() / scale.double()).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.reshape(-1).contiguous()


# dims of the lowered weights that one output channel reduces over: PW [g][K][N], DW [C][9], CONV [cin][3][3][cout]
_REDUCE = {OP_PW: (1,), OP_DW: (1,), OP_CONV: (0, 1, 2)}


@torch.no_grad()
def quantize(
    model: nn.Module,
    calibration_images: Any,
    *,
    method: str = "mse",
    percentile: float = 99.99,
    batch_size: int = 32,
) -> QuantizedModel:
    """Post-training int8 quantisation of ``model`` (not modified).

    Batch norm is folded first; weights get a symmetric int8 scale per output channel; every activation a
    per-tensor scale chosen from ``calibration_images`` by ``method`` (``"mse"``, ``"minmax"`` or
    ``"percentile"``; see :mod:`shufflenet.quantize.calibrate` for each and why ``"mse"`` is the default). ReLU
    and the residual add are fused into the op before them, the channel shuffle stays the input order of
    the next 1x1 group conv, and the classifier runs in float32 (logits float32). Integer arithmetic:
    :mod:`shufflenet.quantize.program`.

    Args:
        model: ShuffleNet v1 (any groups, width, ``small_input``), MobileNet v1, or a Sequential of their
            layers; anything else (squeeze-and-excitation, AlexNet, ...) raises NotSupportedError (a ValueError).
        calibration_images: ``(N, C, H, W)`` float tensor, normalised as the model expects, or an iterable of
            such batches (a DataLoader of ``(images, labels)`` works). None, empty or non-finite: ValueError.
        percentile: for ``method="percentile"``, in (0, 100].

    Returns:
        A :class:`QuantizedModel` (inference only; float32 input, float32 output).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize expects an nn.Module, got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method={method!r} must be one of {METHODS}")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile={percentile} must be in (0, 100]")
    if calibration_images is None:
        raise ValueError(
            "no calibration images: quantize needs at least one image to choose activation scales"
        )
    batches = input_batches(calibration_images, batch_size)
    prog = _lower_for_int8(model)
    want = prog.values[0].channels
    if any(x.shape[1] != want for x in batches):
        got = next(x.shape[1] for x in batches if x.shape[1] != want)
        raise ValueError(f"calibration images have {got} channels; the model takes {want}")
    obs = Observer(prog)
    for x in batches:
        run_float(prog, x, obs)
    if method != "minmax":
        obs.pass_ = "hist"
        for x in batches:
            run_float(prog, x, obs)
    qprog = QProgram(output=prog.output)
    for v, val in enumerate(prog.values):
        unsigned = _unsigned(prog, v)
        clip = choose_clip(
            obs.hist.get(v), obs.amax.get(v, 0.0), 255 if unsigned else 127, method, percentile
        )
        qprog.values.append(
            QValue(val.channels, val.flat, clip / (255 if unsigned else 127), unsigned)
        )
    for (
        op
    ) in prog.ops:  # a max pool keeps its input's scale (then it runs on the integers as they are)
        if op.kind == OP_POOL and op.pool == POOL_MAX:
            qprog.values[op.dst].scale = qprog.values[op.src].scale
            qprog.values[op.dst].unsigned = qprog.values[op.src].unsigned
    for op in prog.ops:
        q = QOp(**{k: getattr(op, k) for k in QOp.META})
        q.kidx = op.kidx
        if op.kind in (OP_PW, OP_DW, OP_CONV):
            q.w, q.w_scale = _quantize_weights(op.w, _REDUCE[op.kind])
            q.b = op.b.clone()
        elif op.kind == OP_FC:
            q.w, q.b = op.w.clone(), op.b.clone()
        qprog.ops.append(q)
    qprog.check()
    cfg = getattr(model, "model_cfg", None)
    return QuantizedModel(qprog, method=method, arch_cfg=dict(cfg) if cfg else None)


def _acc_pw(op: QOp, a: torch.Tensor) -> torch.Tensor:
    kidx = torch.as_tensor(op.kidx, dtype=torch.long)
    return F.conv2d(a[:, kidx], pw_weight(op, op.w.double()), groups=op.groups)


def _epilogue(prog: QProgram, op: QOp, acc: torch.Tensor, env: dict) -> torch.Tensor:
    m, c, m_res = requant(prog, op)
    y = acc.float() * m.view(1, -1, 1, 1)
    y = y + c.view(1, -1, 1, 1)
    if op.res >= 0:
        y = y + env[op.res].float() * m_res
    lo, hi = qrange(prog.values[op.dst], op.act)
    return torch.round(y).clamp(lo, hi).double()


def gap_multiplier(prog: QProgram, op: QOp, h: int, w: int) -> float:
    """float32 factor turning a plane's integer sum into its float mean."""
    return float(np.float32(prog.values[op.src].scale / (h * w)))


@torch.no_grad()
def run_int8(prog: QProgram, x: torch.Tensor) -> torch.Tensor:
    """The int8 program on float32 ``x`` (N, C, H, W): integers held exactly in float64 tensors, epilogues in
    float32 as the native kernels do them. An image with a NaN pixel gives NaN outputs."""
    nan = torch.isnan(x).flatten(1).any(1)
    s0 = prog.values[0].scale
    q0 = torch.round(x.float() / np.float32(s0)).clamp(-128, 127)
    env: dict[int, torch.Tensor] = {0: torch.nan_to_num(q0, nan=0.0).double()}
    for op in prog.ops:
        a = env[op.src]
        if op.kind == OP_PW:
            y = _epilogue(prog, op, _acc_pw(op, a), env)
        elif op.kind == OP_DW:
            acc = F.conv2d(
                a, op.w.double().reshape(op.cout, 1, 3, 3), None, op.stride, 1, groups=op.cout
            )
            y = _epilogue(prog, op, acc, env)
        elif op.kind == OP_CONV:
            acc = F.conv2d(a, op.w.double().permute(3, 0, 1, 2), None, op.stride, 1)
            y = _epilogue(prog, op, acc, env)
            if op.pool:
                y = F.max_pool2d(y, 3, 2, 1)
        elif op.kind == OP_POOL and op.pool == POOL_MAX:
            y = F.max_pool2d(a, 3, 2, 1)
            if op.act == ACT_RELU:
                y = y.clamp_min(0)
        elif op.kind == OP_POOL:
            ones = torch.ones(op.cout, 1, 3, 3, dtype=torch.float64)
            y = _epilogue(prog, op, F.conv2d(a, ones, None, 2, 1, groups=op.cout), env)
        elif op.kind == OP_GAP:
            y = a.sum((2, 3)).float() * gap_multiplier(prog, op, a.shape[2], a.shape[3])
        elif op.kind == OP_FC:
            y = a @ op.w + op.b
            if op.act == ACT_RELU:
                y = torch.relu(y)
        else:
            raise ValueError(f"internal error: op kind {op.kind}")
        c = prog.values[op.dst].channels
        if op.dst_coff == 0 and y.shape[1] == c:
            env[op.dst] = y
        else:
            if op.dst not in env:
                env[op.dst] = y.new_zeros((y.shape[0], c, *y.shape[2:]))
            env[op.dst][:, op.dst_coff : op.dst_coff + y.shape[1]] = y
    out = env[prog.output]
    out = (
        out.float()
        if prog.values[prog.output].flat
        else out.float() * np.float32(prog.values[prog.output].scale)
    )
    if nan.any():
        out[nan] = float("nan")
    return out


class QuantizedModel(nn.Module):
    """An int8 model (from :func:`quantize` or :func:`~shufflenet.quantize.load_quantized`), run by PyTorch
    with integer arithmetic (the reference for the native int8 engine, ``optimize(..., precision="int8")``).

    Input ``(N, C, H, W)`` float32, normalised as for the float model; output float32 (logits).
    Attributes: ``program`` (:class:`~shufflenet.quantize.program.QProgram`), ``method``, ``arch_cfg``.
    """

    precision = "int8"

    def __init__(
        self, program: QProgram, method: str = "mse", arch_cfg: dict | None = None
    ) -> None:
        super().__init__()
        self.program = program
        self.method = method
        self.arch_cfg = arch_cfg
        self.in_channels = program.values[0].channels
        # the attributes every model has, so that commands treat an int8 model like any other
        self.in_chans = self.in_channels
        self.num_classes = program.values[program.output].channels
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"expected a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]}")
        return run_int8(self.program, x.detach().cpu())

    def native(self, isa: str | None = None, num_threads: int | None = None) -> NativeModule:
        """The same int8 model on the native engine (the integers of :func:`run_int8` exactly). Raises
        NativeUnavailable (no compiler) or NotSupportedError (a layout its kernels do not run)."""
        return NativeModule(
            program=lower_int8(self.program), isa=isa, num_threads=num_threads, int8=True
        )

    def train(self, mode: bool = True) -> QuantizedModel:
        if mode:
            raise RuntimeError(
                "an int8 model is inference-only; train the float32 model and quantize again"
            )
        return super().train(False)

    def extra_repr(self) -> str:
        return f"int8, ops={len(self.program.ops)}, method={self.method!r}"
