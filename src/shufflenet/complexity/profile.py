"""Per-layer parameter and multiply-add accounting by running one forward pass with hooks.

Each module call with a formula in :mod:`.handlers` becomes a row (name, type, output shape, groups,
parameters, multiply-adds). Modules that hold parameters or have no children but no formula are listed in
``unsupported`` (their multiply-adds are unknown), never skipped silently.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import torch
from torch import nn

from .handlers import find_handler

__all__ = ["LayerCost", "ComplexityReport", "profile"]


@dataclasses.dataclass
class LayerCost:
    name: str
    type: str
    output_shape: tuple[int, ...]
    groups: int | None
    params: int
    macs: int | None


@dataclasses.dataclass
class ComplexityReport:
    """Costs of one forward pass at ``input_shape`` (batch 1 unless asked otherwise).

    ``macs`` counts multiply-accumulates of convolutions and fully-connected layers (the papers'
    "FLOPs"); ``flops = 2 * macs``. ``params`` counts every parameter of the model once.
    """

    input_shape: tuple[int, ...]
    layers: list[LayerCost]
    params: int
    unsupported: list[str]

    @property
    def macs(self) -> int:
        return sum(r.macs or 0 for r in self.layers)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def macs_by_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.layers:
            out[r.type] = out.get(r.type, 0) + (r.macs or 0)
        return out

    @property
    def conv_macs(self) -> int:
        """Multiply-adds of convolutions only (ShuffleNet's Table 1 convention excludes the classifier)."""
        return sum(
            r.macs or 0
            for r in self.layers
            if r.type.startswith(("Conv", "GroupConv", "Pointwise", "Depthwise"))
        )

    def to_dict(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "params": self.params,
            "macs": self.macs,
            "flops": self.flops,
            "conv_macs": self.conv_macs,
            "unsupported": self.unsupported,
            "layers": [dataclasses.asdict(r) for r in self.layers],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self, max_rows: int | None = None) -> str:
        """A plain-text table of the layers with totals."""
        head = (
            f"{'layer':<42} {'type':<22} {'output':<20} {'groups':>6} {'params':>12} {'MACs':>14}"
        )
        lines = [head, "-" * len(head)]
        rows = self.layers if max_rows is None else self.layers[:max_rows]
        for r in rows:
            shape = "x".join(str(s) for s in r.output_shape[1:])
            macs = "?" if r.macs is None else f"{r.macs:,}"
            g = "" if r.groups is None else str(r.groups)
            lines.append(
                f"{r.name:<42.42} {r.type:<22.22} {shape:<20} {g:>6} {r.params:>12,} {macs:>14}"
            )
        if max_rows is not None and len(self.layers) > max_rows:
            lines.append(f"... {len(self.layers) - max_rows} more layers")
        lines.append("-" * len(head))
        lines.append(f"input {tuple(self.input_shape)}")
        lines.append(f"parameters          {self.params:>16,}")
        lines.append(f"multiply-adds (MACs){self.macs:>16,}  ({self.macs / 1e6:.1f} M)")
        lines.append(f"  of which conv     {self.conv_macs:>16,}  ({self.conv_macs / 1e6:.1f} M)")
        lines.append(f"FLOPs (2 x MACs)    {self.flops:>16,}")
        if self.unsupported:
            lines.append(f"UNSUPPORTED (not counted): {', '.join(self.unsupported)}")
        return "\n".join(lines)


def _as_input_shape(
    model: nn.Module, input_size: int | Sequence[int], batch_size: int, in_chans: int | None
) -> tuple[int, ...]:
    if isinstance(input_size, int):
        if input_size < 1:
            raise ValueError(f"input_size={input_size} must be positive")
        hw: tuple[int, ...] = (input_size, input_size)
    else:
        hw = tuple(int(s) for s in input_size)
        if len(hw) == 3:  # (C, H, W)
            in_chans, hw = hw[0], hw[1:]
    if in_chans is None:
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        in_chans = first_conv.in_channels if first_conv is not None else 3
    return (batch_size, in_chans, *hw)


@torch.no_grad()
def profile(
    model: nn.Module,
    input_size: int | Sequence[int] = 224,
    batch_size: int = 1,
    in_chans: int | None = None,
) -> ComplexityReport:
    """Count parameters and multiply-adds of ``model`` for one forward pass.

    Args:
        model: any module; it is run once in eval mode on zeros (its mode is restored).
        input_size: ``H`` (square), ``(H, W)`` or ``(C, H, W)``.
        batch_size: MACs scale linearly with it; the default 1 gives per-image costs.
        in_chans: input channels; default: those of the first ``Conv2d``.
    """
    shape = _as_input_shape(model, input_size, batch_size, in_chans)
    names = {m: n for n, m in model.named_modules()}
    rows: list[LayerCost] = []
    unsupported: list[str] = []

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        name = names.get(m, "?") or "(model)"
        own_params = sum(p.numel() for p in m.parameters(recurse=False))
        handler = find_handler(m)
        if handler is None:
            if own_params or not any(True for _ in m.children()):
                if name not in unsupported:
                    unsupported.append(name)
                rows.append(LayerCost(name, type(m).__name__, _shape(out), None, own_params, None))
            return
        macs = int(handler(m, inputs, out))
        rows.append(
            LayerCost(
                name, type(m).__name__, _shape(out), getattr(m, "groups", None), own_params, macs
            )
        )

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        model(torch.zeros(shape, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return ComplexityReport(tuple(shape), rows, params, unsupported)


def _shape(out: object) -> tuple[int, ...]:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return tuple(out[0].shape)
    return ()
