"""First-layer filters by group, and how much colour each one carries.

Krizhevsky et al. (2012, Sec. 6.1 and Fig. 3) observed that the two groups of AlexNet specialise: the filters
feeding one GPU's half of ``conv2`` are largely colour-agnostic, the other half colour-specific. ``conv1`` itself
is dense; its filters are split by the groups of the layer that consumes them (``conv2``'s two groups: filters
0-47 and 48-95).

Colour measure of a filter ``w`` (3, kh, kw): split it into its grey part ``m`` (the mean over the three
colour channels, repeated) and the rest ``w - m`` (which sums to zero over the channels). The two parts are
orthogonal, and the colour fraction ``||w - m||^2 / ||w||^2`` is 0 for a grey (achromatic) filter, 2/3 for a
filter that reads a single channel, and 1 for a purely opponent filter such as red minus green.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from .layers import find_module, first_conv, next_conv

__all__ = ["colour_fraction", "FilterGroups", "filter_groups"]


def colour_fraction(weights: np.ndarray | torch.Tensor) -> np.ndarray:
    """(C_out, 3, kh, kw) filters -> (C_out,) colour fractions in [0, 1] (0 = grey, 1 = purely chromatic).

    Raises:
        ValueError: unless the filters have exactly 3 input channels.
    """
    w = np.asarray(
        weights.detach().cpu() if isinstance(weights, torch.Tensor) else weights, dtype=np.float64
    )
    if w.ndim != 4 or w.shape[1] != 3:
        raise ValueError(f"colour needs filters of shape (C_out, 3, kh, kw), got {w.shape}")
    grey = w.mean(axis=1, keepdims=True)  # (C_out, 1, kh, kw)
    chroma = ((w - grey) ** 2).sum(axis=(1, 2, 3))
    total = (w**2).sum(axis=(1, 2, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, chroma / np.where(total > 0, total, 1.0), 0.0)


@dataclasses.dataclass
class FilterGroups:
    """A layer's filters, the groups they are split into, and their colour fractions."""

    layer: str
    weights: np.ndarray  # (C_out, C_in, kh, kw)
    groups: int
    colour: np.ndarray | None  # (C_out,), None unless C_in == 3

    def group_slices(self) -> list[slice]:
        n = self.weights.shape[0] // self.groups
        return [slice(k * n, (k + 1) * n) for k in range(self.groups)]

    def summary(self) -> dict[str, Any]:
        """Per-group mean and median colour fraction, JSON-ready."""
        out: dict[str, Any] = {
            "layer": self.layer,
            "filters": int(self.weights.shape[0]),
            "filter_shape": list(self.weights.shape[1:]),
            "groups": self.groups,
        }
        if self.colour is not None:
            out["per_group"] = [
                {
                    "group": k,
                    "filters": f"{s.start}-{s.stop - 1}",
                    "mean_colour_fraction": float(self.colour[s].mean()),
                    "median_colour_fraction": float(np.median(self.colour[s])),
                }
                for k, s in enumerate(self.group_slices())
            ]
            out["mean_colour_fraction"] = float(self.colour.mean())
        return out


def filter_groups(model: nn.Module, layer: str, groups: int | None = None) -> FilterGroups:
    """Filters of the convolution ``layer`` (a ``Conv2d`` or a block whose first conv is meant).

    ``groups`` defaults to the groups of the next convolution (the consumer: 2 for AlexNet's ``conv1``, whose
    output feeds the two-group ``conv2``), or the layer's own groups if larger.

    Raises:
        ValueError: when ``layer`` has no convolution or its filter count is not divisible by ``groups``.
    """
    name, module = find_module(model, layer)
    conv = first_conv(module)
    if conv is None:
        raise ValueError(f"layer {name!r} ({type(module).__name__}) contains no Conv2d")
    if groups is None:
        consumer = next_conv(model, name)
        groups = max(conv.groups, consumer.groups if consumer is not None else 1)
    w = conv.weight.detach().cpu().numpy().copy()  # a snapshot, not a view of the live weights
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or w.shape[0] % groups:
        raise ValueError(
            f"groups={groups!r} must be a positive divisor of the {w.shape[0]} filters of {name!r}"
        )
    colour = colour_fraction(w) if w.shape[1] == 3 else None
    return FilterGroups(name, w, groups, colour)
