"""Model definitions and the registry. Importing this package registers every model."""

from . import alexnet, mobilenet_v1, resnext, shufflenet_v1, shufflenet_v2, xception  # noqa: F401  (registers models)
from ._introspect import in_channels
from ._registry import create_model, get_model_factory, is_model, list_models, register_model
from .alexnet import AlexNet
from .mobilenet_v1 import MobileNetV1
from .nin import NIN
from .resnext import ResNeXt
from .shufflenet_v1 import ShuffleNetV1, shufflenet_v1_channels
from .shufflenet_v2 import ShuffleNetV2
from .xception import Xception

__all__ = [
    "AlexNet",
    "MobileNetV1",
    "NIN",
    "ResNeXt",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "Xception",
    "create_model",
    "get_model_factory",
    "in_channels",
    "is_model",
    "list_models",
    "register_model",
    "shufflenet_v1_channels",
]
