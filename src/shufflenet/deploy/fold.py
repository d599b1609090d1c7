"""Batch-norm folding and the fixed channel permutations of the shuffle, shared by the deploy backends.

Folding: ``bn(conv(x)) = conv'(x)`` with ``W' = W * s`` and ``b' = (b - mean) * s + beta``, ``s = gamma /
sqrt(var + eps)`` per output channel (computed in float64, stored in the conv's dtype). :func:`fold_conv_bn`
folds one pair; :func:`fold_batchnorm` folds every conv -> batch norm pair of a whole model (ONNX export).
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops.channel_shuffle import ChannelShuffle, ChannelUnshuffle, channel_shuffle_indices
from .errors import NotSupportedError

__all__ = [
    "fold_batchnorm",
    "fold_bn",
    "fold_conv_bn",
    "relu_like",
    "shuffle_permutation",
    "invert_permutation",
]


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv`` followed by ``bn`` in eval mode (``bn=None``: the conv's own, bias 0s).

    Returns:
        ``(weight (out, in/groups, kh, kw), bias (out,))``, detached, on the conv's device and dtype.
    """
    w = conv.weight.detach()
    b = (
        conv.bias.detach()
        if conv.bias is not None
        else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    )
    if bn is None:
        return w.clone(), b.clone()
    if not isinstance(bn, nn.BatchNorm2d):
        raise NotSupportedError(
            f"cannot fold {type(bn).__name__} into a convolution (only BatchNorm2d)"
        )
    if bn.running_mean is None or bn.running_var is None:
        raise NotSupportedError(
            "cannot fold a BatchNorm2d without running statistics (track_running_stats=False)"
        )
    if bn.num_features != w.shape[0]:
        raise NotSupportedError(
            f"BatchNorm2d({bn.num_features}) does not follow a conv with {w.shape[0]} outputs"
        )
    return fold_bn(w, b, bn)


def fold_bn(
    w: torch.Tensor, b: torch.Tensor, bn: nn.BatchNorm2d
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold eval-mode ``bn`` into a conv of weight ``w`` (out first) and bias ``b``."""
    f64 = torch.float64
    var = bn.running_var.detach().to(f64)
    mean = bn.running_mean.detach().to(f64)
    gamma = bn.weight.detach().to(f64) if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().to(f64) if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    w2 = w.to(f64) * scale.reshape(-1, *([1] * (w.dim() - 1)))
    b2 = (b.to(f64) - mean) * scale + beta
    return w2.to(w.dtype), b2.to(w.dtype)


_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every batch norm that directly follows a convolution inside an ``nn.Sequential`` (this covers
    :class:`~shufflenet.layers.ConvBnAct` and ``conv, bn, relu`` sequences) into that convolution, in place,
    replacing the batch norm by ``nn.Identity``. Returns ``model``; call it on an eval-mode copy.

    Uses the running statistics (inference behaviour, :func:`fold_bn`). Batch norms without running statistics,
    not after a convolution, or whose width differs from the convolution's outputs are left as they are.
    Unlike :func:`shufflenet.deploy.optimized.optimize_torch` nothing else changes: the module tree, the
    channel shuffles and the memory format stay those of ``model``.
    """
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if not (isinstance(conv, _CONV_TYPES) and isinstance(bn, _BN_TYPES)):
                continue
            if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
                continue
            if bn.num_features != conv.out_channels:
                continue
            w = conv.weight.detach()
            b = (
                conv.bias.detach()
                if conv.bias is not None
                else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
            )
            w2, b2 = fold_bn(w, b, bn)
            conv.weight.copy_(w2)
            conv.bias = nn.Parameter(b2, requires_grad=conv.weight.requires_grad)
            setattr(seq, bn_name, nn.Identity())
    return model


def relu_like(act: nn.Module | None) -> bool | None:
    """``False`` for no activation (None/Identity), ``True`` for ReLU/ReLU6-free ReLU, ``None`` otherwise."""
    if act is None or isinstance(act, nn.Identity):
        return False
    if type(act) is nn.ReLU:
        return True
    return None


def shuffle_permutation(module: nn.Module, channels: int) -> torch.Tensor | None:
    """Source index of every output channel of a channel permutation module: ``y[:, c] = x[:, perm[c]]``.

    ``None`` for an identity (``nn.Identity``, one group, or one channel per group). Raises
    :class:`NotSupportedError` otherwise.
    """
    if isinstance(module, nn.Identity):
        return None
    if isinstance(module, ChannelShuffle | ChannelUnshuffle):
        if module.groups in (1, channels):
            return None
        return channel_shuffle_indices(channels, module.groups, module.inverse)
    raise NotSupportedError(
        f"{type(module).__name__} is not a channel permutation this backend knows"
    )


def invert_permutation(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), dtype=perm.dtype)
    return inv
