"""Questions asked of a model by code that did not build it (exporters, benchmarks, the native engine)."""

from __future__ import annotations

from torch import nn

__all__ = ["in_channels"]


def in_channels(model: nn.Module) -> int:
    """Channels of the (N, C, H, W) input that ``model`` expects.

    Every model in this package stores it as ``model.in_chans``; for other modules (a plain
    ``nn.Sequential``, a deployment wrapper) it is the ``in_chans`` of the first sub-module that has one,
    else the ``in_channels`` of the first ``nn.Conv2d`` in ``model.modules()`` order.

    Raises:
        ValueError: when neither exists (e.g. a model of linear layers only).
    """
    for m in model.modules():
        chans = getattr(m, "in_chans", None)
        if isinstance(chans, int) and not isinstance(chans, bool):
            return chans
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ValueError(
        f"cannot tell the input channels of {type(model).__name__}: it has no in_chans attribute and "
        "no Conv2d"
    )
