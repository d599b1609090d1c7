"""Per-layer cost formulas: pure functions of a module and its input/output shapes.

Units: ``macs`` are multiply-accumulates per forward pass of the given batch; FLOPs are ``2 * macs``.
Following the papers (ShuffleNet Table 1, MobileNet, AlexNet), only convolutions and fully-connected layers
are charged; normalisation, activations, pooling and channel shuffle are listed with 0 multiply-adds.
A module type without a formula here is reported as unsupported, never skipped silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..ops.channel_shuffle import ChannelShuffle, ChannelUnshuffle

__all__ = ["HANDLERS", "register_handler", "find_handler", "conv_macs"]

Handler = Callable[[nn.Module, tuple, torch.Tensor], int]
HANDLERS: dict[type, Handler] = {}


def register_handler(*types: type) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for t in types:
            HANDLERS[t] = fn
        return fn

    return deco


def find_handler(module: nn.Module) -> Handler | None:
    for cls in type(module).__mro__:
        if cls in HANDLERS:
            return HANDLERS[cls]
    return None


def conv_macs(out_numel: int, in_channels: int, kernel_size: tuple[int, ...], groups: int) -> int:
    """Multiply-adds of a (grouped) convolution: every output element needs ``c1/g * prod(k)`` of them."""
    return out_numel * (in_channels // groups) * math.prod(kernel_size)


@register_handler(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(m: nn.Conv2d, inputs: tuple, out: torch.Tensor) -> int:
    return conv_macs(out.numel(), m.in_channels, m.kernel_size, m.groups)


@register_handler(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose(m: nn.ConvTranspose2d, inputs: tuple, out: torch.Tensor) -> int:
    # every input element is scattered to c2/g * prod(k) outputs
    x = inputs[0]
    return x.numel() * (m.out_channels // m.groups) * math.prod(m.kernel_size)


@register_handler(nn.Linear)
def _linear(m: nn.Linear, inputs: tuple, out: torch.Tensor) -> int:
    return out.numel() * m.in_features


@register_handler(nn.Bilinear)
def _bilinear(m: nn.Bilinear, inputs: tuple, out: torch.Tensor) -> int:
    return out.numel() * m.in1_features * m.in2_features


def _free(m: nn.Module, inputs: tuple, out: torch.Tensor) -> int:
    return 0


register_handler(
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Tanh,
    nn.Softmax,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.Flatten,
    nn.Upsample,
    ChannelShuffle,
    ChannelUnshuffle,
)(_free)
