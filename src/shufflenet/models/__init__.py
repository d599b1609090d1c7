"""Model definitions and the registry. Importing this package registers every model."""

from . import alexnet, shufflenet_v1  # noqa: F401  (registers models)
from ._registry import create_model, get_model_factory, is_model, list_models, register_model
from .alexnet import AlexNet
from .shufflenet_v1 import ShuffleNetV1, shufflenet_v1_channels

__all__ = [
    "AlexNet",
    "ShuffleNetV1",
    "create_model",
    "get_model_factory",
    "is_model",
    "list_models",
    "register_model",
    "shufflenet_v1_channels",
]
