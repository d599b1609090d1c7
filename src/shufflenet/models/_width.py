"""The width multiplier of MobileNet v1 (Howard et al. 2017, Sec. 3.2), also used for the Xception here."""

from __future__ import annotations

__all__ = ["scaled_channels"]


def scaled_channels(channels: int, width_mult: float, divisor: int = 8) -> int:
    """``channels * width_mult`` rounded to the nearest multiple of ``divisor``, at least ``divisor``.

    E.g. 32 channels: 32 at 1.0, 16 at 0.5, 8 at 0.25; 728 at 0.25 -> 182 -> 184.
    """
    return max(divisor, int(channels * width_mult + divisor / 2) // divisor * divisor)
