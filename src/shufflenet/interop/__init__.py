"""Interoperability: published checkpoints (Megvii ShuffleNet v1, torchvision ShuffleNet v2), ``torch.save``
files (ONNX lives in :mod:`shufflenet.deploy.onnx`).

Nothing here downloads anything: every function takes a local file.
"""

from .megvii import (
    MEGVII_V1_INPUT_SPEC,
    MegviiV1Config,
    convert_megvii_v1,
    create_megvii_v1,
    infer_megvii_v1_config,
    is_megvii_v1_state_dict,
    load_megvii_v1,
    megvii_v1_key_map,
)
from .releases import RELEASES, ConvertedCheckpoint, convert_release, detect_release
from .torch_files import load_torch_state_dict, unwrap_state_dict
from .torchvision_v2 import (
    TorchvisionV2Config,
    convert_torchvision_v2,
    infer_torchvision_v2_config,
    is_torchvision_v2_state_dict,
    load_torchvision_v2,
    torchvision_v2_input_spec,
)

__all__ = [
    "RELEASES",
    "ConvertedCheckpoint",
    "convert_release",
    "detect_release",
    "MEGVII_V1_INPUT_SPEC",
    "MegviiV1Config",
    "TorchvisionV2Config",
    "convert_megvii_v1",
    "convert_torchvision_v2",
    "create_megvii_v1",
    "infer_megvii_v1_config",
    "infer_torchvision_v2_config",
    "is_megvii_v1_state_dict",
    "is_torchvision_v2_state_dict",
    "load_megvii_v1",
    "load_torch_state_dict",
    "load_torchvision_v2",
    "megvii_v1_key_map",
    "torchvision_v2_input_spec",
    "unwrap_state_dict",
]
