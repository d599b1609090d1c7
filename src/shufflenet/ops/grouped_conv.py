"""A literal, slow reference of grouped convolution, for tests and teaching.

Definition (Krizhevsky et al. 2012; Ioannou et al. 2017): the ``c1`` input channels are split into ``g`` groups
of ``c1/g``; group ``i`` is convolved with its own ``c2/g`` filters of size ``h x w x c1/g``; the ``g`` outputs are
concatenated along channels. Parameters and multiply-adds fall to ``1/g`` of the dense convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .validate import check_group_conv_args

__all__ = ["grouped_conv2d_reference"]


def grouped_conv2d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Grouped 2-D convolution computed one group at a time with ordinary (``groups=1``) convolutions.

    Args:
        x: input (N, c1, H, W).
        weight: filters (c2, c1/g, h, w), the first c2/g filters belong to group 0, and so on.
        bias: optional (c2,).
        groups: ``g``.

    Returns:
        (N, c2, H', W'), equal to ``F.conv2d(x, weight, bias, stride, padding, dilation, groups)``.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    c1, c2 = x.shape[1], weight.shape[0]
    check_group_conv_args(c1, c2, groups)
    if weight.shape[1] * groups != c1:
        raise ValueError(
            f"weight.shape[1]={weight.shape[1]} must equal in_channels/groups={c1}/{groups}"
        )
    xs = torch.chunk(x, groups, dim=1)  # g x (N, c1/g, H, W)
    ws = torch.chunk(weight, groups, dim=0)  # g x (c2/g, c1/g, h, w)
    bs = torch.chunk(bias, groups, dim=0) if bias is not None else [None] * groups
    outs = [F.conv2d(xi, wi, bi, stride, padding, dilation, 1) for xi, wi, bi in zip(xs, ws, bs)]
    return torch.cat(outs, dim=1)
