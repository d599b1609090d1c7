"""Backbone features: forward_features(x, return_stages=True) and feature_info for ShuffleNet v1/v2 and
MobileNet v1, against forward hooks on the named modules, literal channel tables and the input/map sides."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from shufflenet import create_model, list_models

BACKBONES = (
    list_models("shufflenet_v1_*") + list_models("shufflenet_v2_*") + list_models("mobilenet_v1_*")
)

# Channels at strides 8, 16, 32 read off the papers' tables (ShuffleNet v1 Table 1, v2 Table 5 with Conv5
# for the last map, MobileNet v1 Table 1).
PUBLISHED = {
    "shufflenet_v1_g3_x1_0": (240, 480, 960),
    "shufflenet_v1_g8_x1_0": (384, 768, 1536),
    "shufflenet_v2_x1_0": (116, 232, 1024),
    "shufflenet_v2_x2_0": (244, 488, 2048),
    "mobilenet_v1_x1_0": (256, 512, 1024),
}


def test_backbones_registered():
    assert len(BACKBONES) == 25 + 4 + 3


@pytest.mark.parametrize("small_input", [False, True], ids=["224-style", "small_input"])
@pytest.mark.parametrize("name", BACKBONES)
def test_stage_maps(name, small_input):
    model = create_model(name, small_input=small_input).eval()
    h, w = (16, 24) if small_input else (64, 96)
    x = torch.randn(2, 3, h, w)
    info = model.feature_info
    assert [i["reduction"] for i in info] == ([2, 4, 8] if small_input else [8, 16, 32])

    # reference: the outputs of the named modules, captured by forward hooks during an ordinary forward
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(i["module"]).register_forward_hook(
            lambda _m, _in, out, key=i["module"]: captured.__setitem__(key, out)
        )
        for i in info
    ]
    with torch.no_grad():
        logits = model(x)
        maps = model.forward_features(x, return_stages=True)
        last = model.forward_features(x)
    for hook in hooks:
        hook.remove()

    assert isinstance(maps, list) and len(maps) == len(info) == 3
    for m, i in zip(maps, info):
        assert m.shape == (2, i["num_chs"], h // i["reduction"], w // i["reduction"])
        assert torch.equal(m, captured[i["module"]])
    assert info[-1]["num_chs"] == model.num_features
    assert torch.equal(maps[-1], last)
    assert torch.equal(model.forward_head(maps[-1]), logits)


@pytest.mark.parametrize(("name", "channels"), sorted(PUBLISHED.items()))
def test_channels_are_the_published_ones(name, channels):
    assert tuple(i["num_chs"] for i in create_model(name).feature_info) == channels


@pytest.mark.parametrize(
    "name", ["shufflenet_v1_g3_x0_5", "shufflenet_v2_x0_5", "mobilenet_v1_x0_25"]
)
def test_sides_not_divisible_by_the_reduction_round_up(name):
    # every stride-2 layer here is a padded 3x3 conv or pool: a side s becomes ceil(s / 2)
    model = create_model(name).eval()
    with torch.no_grad():
        maps = model.forward_features(torch.randn(1, 3, 70, 45), return_stages=True)
    for m, i in zip(maps, model.feature_info):
        assert m.shape[2:] == (math.ceil(70 / i["reduction"]), math.ceil(45 / i["reduction"]))


def test_stage_layout_overrides_follow():
    model = create_model("shufflenet_v1_g2_x1_0", stage_repeats=(1, 1), stage_channels=(48, 96))
    assert [(i["num_chs"], i["reduction"]) for i in model.feature_info] == [(48, 8), (96, 16)]
    maps = model.eval().forward_features(torch.randn(1, 3, 32, 32), return_stages=True)
    assert [tuple(m.shape) for m in maps] == [(1, 48, 4, 4), (1, 96, 2, 2)]


def test_stage_maps_export_for_a_detection_neck():
    class Neck(nn.Module):  # what a detector does with the maps
        def __init__(self, backbone: nn.Module) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [m.mean((2, 3)) for m in self.backbone.forward_features(x, return_stages=True)]

    model = Neck(create_model("shufflenet_v2_x0_5")).eval()
    ep = torch.export.export(model, (torch.randn(1, 3, 64, 64),))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for got, ref in zip(ep.module()(x), model(x)):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
