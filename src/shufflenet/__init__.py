"""shufflenet: grouped convolution, channel shuffle and the ShuffleNet family on PyTorch.

Quick tour::

    import torch, shufflenet
    x = torch.randn(2, 12, 8, 8)
    shufflenet.channel_shuffle(x, 3)                      # channels 0,4,8,1,5,9,...
    model = shufflenet.create_model("shufflenet_v1_g3_x1_0", num_classes=10)
    report = shufflenet.profile(model, 224)                # parameters and multiply-adds per layer
"""

from . import quantize  # a callable module: shufflenet.quantize(model, images) is quantize.quantize
from .complexity import ComplexityReport, profile
from .data.spec import InputSpec
from .factory import LoadReport, ResolvedModel, create_model, load_matching, resolve_model
from .layers import (
    ConvBnAct,
    DepthwiseConv2d,
    DepthwiseSeparableConv2d,
    GroupConv2d,
    PointwiseGroupConv2d,
    ShuffleUnit,
    SqueezeExcite,
)
from .model_file import ModelInfo, load_model, read_info, save_model
from .models import ShuffleNetV1, list_models, register_model
from .ops import (
    ChannelShuffle,
    ChannelUnshuffle,
    channel_shuffle,
    channel_shuffle_indices,
    channel_unshuffle,
    grouped_conv2d_reference,
)

__version__ = "0.1.0"

__all__ = [
    "ChannelShuffle",
    "ChannelUnshuffle",
    "ComplexityReport",
    "ConvBnAct",
    "DepthwiseConv2d",
    "DepthwiseSeparableConv2d",
    "GroupConv2d",
    "InputSpec",
    "LoadReport",
    "ModelInfo",
    "PointwiseGroupConv2d",
    "ResolvedModel",
    "ShuffleNetV1",
    "ShuffleUnit",
    "SqueezeExcite",
    "__version__",
    "channel_shuffle",
    "channel_shuffle_indices",
    "channel_unshuffle",
    "create_model",
    "grouped_conv2d_reference",
    "list_models",
    "load_matching",
    "load_model",
    "profile",
    "quantize",
    "read_info",
    "register_model",
    "resolve_model",
    "save_model",
]
