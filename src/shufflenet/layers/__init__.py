"""Layers built from grouped, pointwise-group and depthwise convolutions."""

from .conv_bn_act import ConvBnAct
from .group_conv import DepthwiseConv2d, GroupConv2d, PointwiseGroupConv2d
from .separable import DepthwiseSeparableConv2d
from .shuffle_unit import ShuffleMode, ShufflePosition, ShuffleUnit
from .squeeze_excite import SqueezeExcite

__all__ = [
    "ConvBnAct",
    "DepthwiseConv2d",
    "DepthwiseSeparableConv2d",
    "GroupConv2d",
    "PointwiseGroupConv2d",
    "ShuffleMode",
    "ShufflePosition",
    "ShuffleUnit",
    "SqueezeExcite",
]
