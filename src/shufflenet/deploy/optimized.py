"""The ``"optimized"`` backend: the model rewritten with PyTorch operations only, for inference.

- Batch norm is folded into the convolution before it (:mod:`.fold`).
- ReLU is fused: on the CPU through oneDNN's fused convolution (``torch.ops.mkldnn._convolution_pointwise``,
  conv + ReLU and, for the residual unit, conv + add + ReLU in one primitive) when this PyTorch has it,
  otherwise as an in-place ``relu_`` after the convolution.
- Activations are ``channels_last`` (NHWC), where a grouped 1x1 convolution runs as fast as a dense one of equal
  multiply-adds.
- The channel shuffle of a ShuffleNet unit. A shuffle is a fixed permutation that commutes with the per-channel
  depthwise convolution and its batch norm. It cannot be absorbed into a *grouped* 1x1 convolution: the output
  groups of the first 1x1 conv and the input groups of the second would both have to be contiguous channel
  ranges of the same tensor, and the shuffle exists precisely to make every input group of the second draw from
  every output group of the first (for g >= 2 no ordering of the channels makes both sets contiguous). A dense
  convolution could absorb it, at g times the multiply-adds. So the shuffle is kept, moved after the depthwise
  convolution (whose weights are permuted instead), where a stride-2 unit's tensor is 4x smaller, and run by
  :func:`.shuffle.channel_shuffle_nhwc` at memory-copy speed. (The native backend absorbs it for free: its 1x1
  kernels read input planes through an index list.)

Everything is device-agnostic: on CUDA the folding and layout apply and the oneDNN/native pieces are skipped.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.conv_bn_act import ConvBnAct
from ..layers.shuffle_unit import ShuffleUnit
from ..ops.channel_shuffle import ChannelShuffle, ChannelUnshuffle
from .errors import NotSupportedError
from .fold import (
    fold_conv_bn,
    invert_permutation,
    relu_like,
    shuffle_permutation,
)
from .shuffle import FastChannelShuffle

__all__ = ["FusedConv2d", "OptimizedShuffleUnit", "optimize_torch", "mkldnn_fusion_available"]

_MKLDNN_OK: bool | None = None


def mkldnn_fusion_available() -> bool:
    """Whether ``torch.ops.mkldnn._convolution_pointwise`` works here (checked once on a tiny input)."""
    global _MKLDNN_OK
    if _MKLDNN_OK is None:
        try:
            x = torch.randn(1, 4, 3, 3).contiguous(memory_format=torch.channels_last)
            w = torch.randn(4, 2, 1, 1)
            b = torch.randn(4)
            y = torch.ops.mkldnn._convolution_pointwise(
                x, w, b, [0, 0], [1, 1], [1, 1], 2, "relu", [], ""
            )
            y2 = torch.ops.mkldnn._convolution_pointwise.binary(
                x, x, w, b, [0, 0], [1, 1], [1, 1], 2, "add", None, "relu", [], ""
            )
            ref = F.relu(F.conv2d(x, w, b, groups=2))
            ref2 = F.relu(F.conv2d(x, w, b, groups=2) + x)
            _MKLDNN_OK = bool(
                torch.allclose(y, ref, atol=1e-5) and torch.allclose(y2, ref2, atol=1e-5)
            )
        except Exception:  # noqa: BLE001 - any failure means: do not use it
            _MKLDNN_OK = False
    return _MKLDNN_OK


class FusedConv2d(nn.Module):
    """Convolution with batch norm folded in, optionally followed by ReLU and/or a residual add.

    ``forward(x, residual=None)`` computes ``act(conv(x) + b [+ residual])``. Shapes as ``nn.Conv2d``.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
        relu: bool,
        use_mkldnn: bool = True,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.stride = list(stride)
        self.padding = list(padding)
        self.dilation = list(dilation)
        self.groups = groups
        self.relu = relu
        self.use_mkldnn = use_mkldnn and mkldnn_fusion_available()

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, bn: nn.Module | None, relu: bool, use_mkldnn: bool = True
    ) -> FusedConv2d:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise NotSupportedError(f"{conv}: only integer zero padding")
        w, b = fold_conv_bn(conv, bn)
        return cls(w, b, conv.stride, conv.padding, conv.dilation, conv.groups, relu, use_mkldnn)

    def _mkldnn_ok(self, x: torch.Tensor) -> bool:
        return (
            self.use_mkldnn
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.is_grad_enabled()
        )

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self._mkldnn_ok(x):
            mk = torch.ops.mkldnn._convolution_pointwise
            args = (self.padding, self.stride, self.dilation, self.groups)
            if residual is None:
                return mk(x, self.weight, self.bias, *args, "relu" if self.relu else "none", [], "")
            if residual.is_contiguous(memory_format=torch.channels_last):
                unary = "relu" if self.relu else None
                return mk.binary(
                    x, residual, self.weight, self.bias, *args, "add", None, unary, [], ""
                )
        y = F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )
        if residual is not None:
            y = y.add_(residual)
        return y.relu_() if self.relu else y

    def extra_repr(self) -> str:
        return (
            f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel_size={tuple(self.weight.shape[2:])}, "
            f"stride={tuple(self.stride)}, padding={tuple(self.padding)}, groups={self.groups}, relu={self.relu}, "
            f"mkldnn={self.use_mkldnn}"
        )


def _fused_from_convbnact(m: ConvBnAct, use_mkldnn: bool) -> FusedConv2d:
    act = relu_like(getattr(m, "act", None))
    if act is None:
        raise NotSupportedError(f"ConvBnAct with activation {type(m.act).__name__}")
    return FusedConv2d.from_conv(m.conv, getattr(m, "bn", None), act, use_mkldnn)


class OptimizedShuffleUnit(nn.Module):
    """A :class:`~shufflenet.layers.ShuffleUnit` for inference: folded, fused, shuffle after the depthwise conv.

    Same function as the unit it was built from (up to float rounding).
    """

    def __init__(
        self, unit: ShuffleUnit, use_mkldnn: bool = True, native_shuffle: bool = True
    ) -> None:
        super().__init__()
        if not isinstance(unit.se, nn.Identity):
            raise NotSupportedError("ShuffleUnit with squeeze-and-excitation")
        if relu_like(unit.act) is not True:
            raise NotSupportedError(f"ShuffleUnit with activation {type(unit.act).__name__}")
        self.stride = unit.stride
        self.compress = _fused_from_convbnact(unit.compress, use_mkldnn)
        mid = unit.compress.conv.out_channels
        if not isinstance(unit.shuffle, ChannelShuffle | ChannelUnshuffle | nn.Identity):
            raise NotSupportedError(f"ShuffleUnit.shuffle of type {type(unit.shuffle).__name__}")
        perm = shuffle_permutation(unit.shuffle, mid)
        dw = _fused_from_convbnact(unit.depthwise, use_mkldnn)
        if perm is not None and unit.shuffle_position == "before_dw":
            inv = invert_permutation(perm).to(dw.weight.device)
            dw.weight.data = dw.weight.data[inv].contiguous()
            dw.bias.data = dw.bias.data[inv].contiguous()
        self.depthwise = dw
        if perm is None:
            self.shuffle: nn.Module = nn.Identity()
        elif isinstance(unit.shuffle, ChannelShuffle):
            self.shuffle = FastChannelShuffle(unit.shuffle.groups, use_native=native_shuffle)
        else:
            self.shuffle = FastChannelShuffle(
                unit.shuffle.groups, inverse=True, use_native=native_shuffle
            )
        if relu_like(getattr(unit.expand, "act", None)) is not False:
            raise NotSupportedError("ShuffleUnit.expand with an activation")
        # stride 1: relu(x + expand(.)) in the expand conv; stride 2: relu after the concatenation
        self.expand = FusedConv2d.from_conv(
            unit.expand.conv, getattr(unit.expand, "bn", None), unit.stride == 1, use_mkldnn
        )
        self.shortcut = copy.deepcopy(unit.shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle(self.depthwise(self.compress(x)))
        if self.stride == 1:
            return self.expand(out, residual=x)
        return torch.cat([self.shortcut(x), self.expand(out)], dim=1).relu_()


def _rewrite(module: nn.Module, use_mkldnn: bool, native_shuffle: bool) -> nn.Module:
    """Return ``module`` with its children replaced recursively (in place on this copy)."""
    if isinstance(module, ShuffleUnit):
        try:
            return OptimizedShuffleUnit(module, use_mkldnn, native_shuffle)
        except NotSupportedError:
            pass  # e.g. squeeze-and-excitation: keep the unit, rewrite inside it
    if isinstance(module, ConvBnAct):
        try:
            return _fused_from_convbnact(module, use_mkldnn)
        except NotSupportedError:
            pass
    if isinstance(module, ChannelShuffle | ChannelUnshuffle):
        return FastChannelShuffle(
            module.groups, isinstance(module, ChannelUnshuffle), native_shuffle
        )
    if isinstance(module, nn.Dropout):
        return nn.Identity()
    if type(module) is nn.Sequential:
        children = list(module.children())
        out: list[nn.Module] = []
        i = 0
        while i < len(children):
            c = children[i]
            if (
                isinstance(c, nn.Conv2d)
                and c.padding_mode == "zeros"
                and not isinstance(c.padding, str)
            ):
                bn = (
                    children[i + 1]
                    if i + 1 < len(children) and isinstance(children[i + 1], nn.BatchNorm2d)
                    else None
                )
                j = i + 1 + (bn is not None)
                relu = j < len(children) and relu_like(children[j]) is True
                out.append(FusedConv2d.from_conv(c, bn, relu, use_mkldnn))
                # keep indices (and state-dict names) stable
                out += [nn.Identity()] * (j - i - 1 + relu)
                i = j + relu
                continue
            out.append(_rewrite(c, use_mkldnn, native_shuffle))
            i += 1
        return nn.Sequential(*out)
    for name, child in list(module.named_children()):
        new = _rewrite(child, use_mkldnn, native_shuffle)
        if new is not child:
            setattr(module, name, new)
    return module


def optimize_torch(
    model: nn.Module, use_mkldnn: bool = True, native_shuffle: bool = True
) -> nn.Module:
    """Folded, fused, channels-last copy of ``model`` (eval mode, no gradients). ``model`` is not modified."""
    m = copy.deepcopy(model).eval()
    m = _rewrite(m, use_mkldnn, native_shuffle)
    for p in m.parameters():
        p.requires_grad_(False)
    return m.to(memory_format=torch.channels_last)
