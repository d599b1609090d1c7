"""Which input channel groups can influence which output channels (ShuffleNet, Zhang et al. 2017, Fig. 1).

Two ways to answer, both as a (C_out, G) matrix over output channels and the ``G`` equal groups of input
channels:

- structural (:func:`structural_flow`): from the group structure alone. A grouped convolution connects
  output channel ``o`` to the inputs of its own group; a channel shuffle permutes; per-channel ops (batch norm,
  activations, pooling, dropout) connect each channel to itself. Composing the boolean matrices of a chain of
  such layers gives the reachability.
- measured (:func:`measured_flow`): with gradients, for any module: for each output channel ``o``, the
  gradient of ``sum(output[:, o])`` with respect to a random input, its absolute values summed over each input
  group. Exactly zero where no path exists.

Stacked group convolutions without shuffle stay block-diagonal at any depth; with a shuffle between them every
output channel depends on every input group after two layers.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from ..layers.group_conv import GroupConv2d
from ..ops.channel_shuffle import ChannelShuffle, ChannelUnshuffle, channel_shuffle_indices
from ..ops.validate import check_channels_divisible, check_positive_int

__all__ = [
    "conv_connectivity",
    "chain_layers",
    "structural_flow",
    "measured_flow",
    "group_columns",
    "gconv_stack",
]

_PER_CHANNEL = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)


def conv_connectivity(in_channels: int, out_channels: int, groups: int) -> np.ndarray:
    """(out, in) boolean: output ``o`` reads input ``i`` iff both are in the same of ``groups`` groups."""
    check_channels_divisible(in_channels, groups, "in_channels")
    check_channels_divisible(out_channels, groups, "out_channels")
    og = np.arange(out_channels) // (out_channels // groups)
    ig = np.arange(in_channels) // (in_channels // groups)
    return og[:, None] == ig[None, :]


def chain_layers(module: nn.Module) -> list[nn.Module]:
    """Flatten nested ``nn.Sequential`` containers into their leaf layers, in order."""
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in chain_layers(child)]
    return [module]


def structural_flow(
    layers: nn.Module | Iterable[nn.Module], in_channels: int, input_groups: int
) -> np.ndarray:
    """(C_out, input_groups) boolean reachability through a chain of convs, shuffles and per-channel ops.

    Args:
        layers: a module (nested ``nn.Sequential`` are flattened) or an iterable of modules.
        in_channels: channels entering the chain.
        input_groups: ``G``: the input channels are cut into ``G`` equal groups.

    Raises:
        TypeError: for a layer that is neither a ``Conv2d``, a shuffle nor a per-channel op (use
            :func:`measured_flow` for residual or branching modules).
    """
    seq = (
        chain_layers(layers)
        if isinstance(layers, nn.Module)
        else [x for m in layers for x in chain_layers(m)]
    )
    reach = np.eye(in_channels, dtype=bool)  # (C, C_in): channel c depends on input channel i
    c = in_channels
    for layer in seq:
        if isinstance(layer, nn.Conv2d):
            if layer.in_channels != c:
                raise ValueError(f"{layer} expects {layer.in_channels} channels but receives {c}")
            step = conv_connectivity(layer.in_channels, layer.out_channels, layer.groups)
            c = layer.out_channels
        elif isinstance(layer, ChannelShuffle | ChannelUnshuffle):
            src = channel_shuffle_indices(c, layer.groups, layer.inverse).numpy()
            step = np.eye(c, dtype=bool)[src]  # (C, C): output k reads input src[k]
        elif isinstance(layer, _PER_CHANNEL):
            continue
        else:
            raise TypeError(
                f"structural flow handles convolutions, channel shuffles and per-channel layers; "
                f"{type(layer).__name__} is none of these (measure it with measured_flow)"
            )
        reach = (step.astype(np.int64) @ reach.astype(np.int64)) > 0
    return group_columns(reach, input_groups)


def group_columns(matrix: np.ndarray, groups: int) -> np.ndarray:
    """(C_out, C_in) -> (C_out, groups): OR (booleans) or sum (numbers) over each input group's columns."""
    check_channels_divisible(matrix.shape[1], groups, "input channels")
    parts = matrix.reshape(matrix.shape[0], groups, matrix.shape[1] // groups)
    return parts.any(-1) if matrix.dtype == bool else parts.sum(-1)


def measured_flow(
    module: nn.Module,
    in_channels: int,
    input_groups: int,
    input_size: tuple[int, int] = (8, 8),
    batch_size: int = 2,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> np.ndarray:
    """(C_out, input_groups) influence measured with gradients through ``module`` (in eval mode).

    Entry ``[o, k]`` is ``sum |d sum(y[:, o]) / d x[:, c]|`` over the input channels ``c`` of group ``k``, for
    a standard-normal input ``x`` of shape (batch_size, in_channels, *input_size). It is exactly zero where no
    computational path joins input group ``k`` to output channel ``o``.
    """
    check_positive_int(in_channels, "in_channels")
    check_channels_divisible(in_channels, input_groups, "in_channels")
    if device is None:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    was_training = module.training
    module.eval()
    try:
        gen = torch.Generator().manual_seed(seed)
        x = (
            torch.randn(batch_size, in_channels, *input_size, generator=gen)
            .to(device)
            .requires_grad_(True)
        )
        y = module(x)
        if y.dim() < 2:
            raise ValueError(
                f"module output must have channels at dim 1, got shape {tuple(y.shape)}"
            )
        per_channel = y.transpose(0, 1).reshape(y.shape[1], -1).sum(1)  # (C_out,)
        influence = _per_output_gradients(per_channel, x).numpy()  # (C_out, C_in)
    finally:
        module.train(was_training)
    return group_columns(influence, input_groups)


def _per_output_gradients(outputs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in): ``sum |d outputs[o] / d x|`` over all but the channel axis of ``x``, for every ``o``.

    One backward pass per output (on CPU this beats ``is_grads_batched``, whose batched convolution
    backward is slower than the loop for these small inputs).
    """
    rows = []
    for o in range(outputs.shape[0]):
        (g,) = torch.autograd.grad(outputs[o], x, retain_graph=True)
        rows.append(g.abs().sum(dim=(0, 2, 3)).double().cpu())  # (C_in,)
    return torch.stack(rows)


def gconv_stack(channels: int, groups: int, depth: int, shuffle: bool) -> nn.Sequential:
    """``depth`` pointwise group convolutions (``channels`` -> ``channels``, ``groups`` groups, no bias), with a
    channel shuffle between consecutive ones when ``shuffle`` (ShuffleNet Fig. 1 (a) vs (c))."""
    check_positive_int(depth, "depth")
    layers: list[nn.Module] = []
    for i in range(depth):
        if i and shuffle:
            layers.append(ChannelShuffle(groups))
        layers.append(GroupConv2d(channels, channels, 1, groups=groups))
    return nn.Sequential(*layers)
