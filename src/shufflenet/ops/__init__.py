"""Functional ops: channel shuffle and the grouped-convolution reference."""

from .channel_shuffle import (
    ChannelShuffle,
    ChannelUnshuffle,
    channel_shuffle,
    channel_shuffle_indices,
    channel_unshuffle,
)
from .grouped_conv import grouped_conv2d_reference
from .validate import check_channels_divisible, check_group_conv_args, check_groups_arg

__all__ = [
    "ChannelShuffle",
    "ChannelUnshuffle",
    "channel_shuffle",
    "channel_shuffle_indices",
    "channel_unshuffle",
    "grouped_conv2d_reference",
    "check_channels_divisible",
    "check_group_conv_args",
    "check_groups_arg",
]
