"""Two layers whose group-parallel form needs more than slicing.

- :class:`SeededDropout`: dropout on a replicated tensor must drop the same units on every rank, or the
  replicas (and their gradients) diverge. It draws its masks from its own generator, seeded identically on
  every rank when the model is built (no communication); on a sharded tensor each rank gets its own seed, so
  that the masks of different ranks' channels are independent. (The masks differ from the single-device
  model's, which draws from the global RNG: compare the two with dropout off.)
- :class:`HaloLocalResponseNorm`: AlexNet's LRN normalises each channel by its ``size`` neighbours, which
  crosses the boundary between two ranks' channel blocks. Each rank first receives ``size // 2`` halo
  channels from its neighbours (one all-to-all), normalises, and keeps its own channels.
"""

from __future__ import annotations

import torch
from torch import nn

from .comm import ParallelContext
from .layout import ChannelLayout
from .modules import convert_layout

__all__ = ["SeededDropout", "HaloLocalResponseNorm"]


class SeededDropout(nn.Module):
    """Dropout drawing its masks from its own generator seeded with ``seed`` (the same seed on two ranks gives
    the same masks for the same shapes and call sequence)."""

    def __init__(self, p: float, seed: int) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p={p!r} must be in [0, 1)")
        self.p, self.seed = float(p), int(seed)
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty_like(x).bernoulli_(1.0 - self.p, generator=self._generator(x.device))
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class HaloLocalResponseNorm(nn.Module):
    """LRN over a channel-block-sharded tensor: (N, |block_r|, H, W) -> same, equal to the full LRN's slice."""

    def __init__(
        self, lrn: nn.LocalResponseNorm, layout: ChannelLayout, ctx: ParallelContext
    ) -> None:
        super().__init__()
        if layout.parts is None or layout != ChannelLayout.blocks(
            layout.channels, layout.world_size
        ):
            raise ValueError("HaloLocalResponseNorm needs a contiguous-block layout")
        self.lrn = lrn
        # the window of channel c: [c - before, c + after]
        before, after = lrn.size // 2, (lrn.size - 1) // 2
        halo = []
        for part in layout.parts:
            lo, hi = (part[0], part[-1] + 1) if part else (0, 0)
            halo.append(tuple(range(max(0, lo - before), min(layout.channels, hi + after))))
        halo_layout = ChannelLayout(layout.channels, layout.world_size, tuple(halo))
        self.exchange = convert_layout(layout, halo_layout, ctx)  # one all-to-all (none for P = 1)
        own = layout.local(ctx.rank)
        self.offset = own[0] - halo[ctx.rank][0] if own else 0
        self.length = len(own)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lrn(self.exchange(x))  # (N, |block_r| + halo, H, W)
        return y.narrow(1, self.offset, self.length)
