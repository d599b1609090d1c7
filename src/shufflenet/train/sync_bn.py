"""Batch norm over the global batch of all processes, on any backend (gloo on CPU included).

``torch.nn.SyncBatchNorm`` runs on GPUs only. :class:`GlobalBatchNorm2d` computes the same statistics with two
differentiable all-reduces (sum, then sum of squared deviations), so data-parallel training with it equals
single-process training on the global batch. Its parameters and buffers are those of ``nn.BatchNorm2d``: the
state dict, and so the saved model, is unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["GlobalBatchNorm2d", "convert_sync_batchnorm"]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of the ranks' output gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(t)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics span every process of the default group."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(x)
        c = x.shape[1]
        count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        totals = _all_reduce(torch.cat([x.sum((0, 2, 3)), count]))  # (C + 1,)
        n = totals[-1].detach()
        mean = totals[:c] / n  # (C,)
        centred = x - mean.view(1, c, 1, 1)
        var = _all_reduce(centred.square().sum((0, 2, 3))) / n  # biased, as used to normalise
        out = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach() * n / max(n - 1, 1))
        return out

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean, m)
        self.running_var.lerp_(unbiased_var, m)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every ``BatchNorm2d`` of ``model`` (in place) by a synchronised one: ``nn.SyncBatchNorm`` on
    CUDA, :class:`GlobalBatchNorm2d` elsewhere. Parameters and buffers are kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d:
            like = child.weight if child.affine else child.running_mean  # keep its dtype and device
            new = GlobalBatchNorm2d(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
                device=None if like is None else like.device,
                dtype=None if like is None else like.dtype,
            )
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return model
