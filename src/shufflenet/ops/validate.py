"""Argument checks shared by the ops and layers: clear errors that quote the value and the rule."""

from __future__ import annotations

import numbers

__all__ = [
    "check_groups_arg",
    "check_channels_divisible",
    "check_group_conv_args",
    "check_positive_int",
]


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is an integer >= 1, else raise TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name}={value} must be a positive integer (>= 1)")
    return int(value)


def check_groups_arg(groups: object) -> int:
    """``groups`` must be an integer >= 1."""
    return check_positive_int(groups, "groups")


def check_channels_divisible(channels: int, groups: int, what: str = "channels") -> None:
    """``channels`` must be divisible by ``groups`` and at least ``groups``."""
    if groups > channels:
        raise ValueError(
            f"groups={groups} is larger than {what}={channels}; groups must be <= {what}"
        )
    if channels % groups:
        raise ValueError(f"{what}={channels} is not divisible by groups={groups}")


def check_group_conv_args(in_channels: object, out_channels: object, groups: object) -> None:
    """Rules of a grouped convolution: c1 and c2 positive and both divisible by g (g <= c1, g <= c2)."""
    c1 = check_positive_int(in_channels, "in_channels")
    c2 = check_positive_int(out_channels, "out_channels")
    g = check_groups_arg(groups)
    check_channels_divisible(c1, g, "in_channels")
    check_channels_divisible(c2, g, "out_channels")
