"""Model registry: names, patterns, unknown names, duplicates, recorded configuration."""

from __future__ import annotations

import pytest
from torch import nn

import shufflenet
from shufflenet.models import (
    _registry,
    create_model,
    get_model_factory,
    is_model,
    list_models,
    register_model,
)


def test_list_models_sorted_and_complete():
    names = list_models()
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    for name in ("shufflenet_v1_g3_x1_0", "shufflenet_v1_g8_x0_25", "alexnet_g1", "alexnet_g2"):
        assert name in names


def test_list_models_pattern():
    assert list_models("shufflenet_v1_g3_*") == [
        "shufflenet_v1_g3_x0_25",
        "shufflenet_v1_g3_x0_5",
        "shufflenet_v1_g3_x1_0",
        "shufflenet_v1_g3_x1_5",
        "shufflenet_v1_g3_x2_0",
    ]
    assert list_models("alexnet_g?") == ["alexnet_g1", "alexnet_g2"]
    assert list_models("*_x1_0") == sorted(n for n in list_models() if n.endswith("_x1_0"))
    assert list_models("no_such_model*") == []
    assert list_models("SHUFFLENET*") == []  # case-sensitive


def test_top_level_exports():
    names = (
        "create_model", "list_models", "register_model", "channel_shuffle", "channel_unshuffle",
        "ChannelShuffle", "ChannelUnshuffle", "GroupConv2d", "PointwiseGroupConv2d", "DepthwiseConv2d",
        "DepthwiseSeparableConv2d", "ConvBnAct", "ShuffleUnit", "ShuffleNetV1", "grouped_conv2d_reference",
        "profile", "save_model", "load_model",
    )  # fmt: skip
    for name in names:
        assert name in shufflenet.__all__ and hasattr(shufflenet, name)


def test_unknown_name_lists_close_matches():
    with pytest.raises(
        ValueError,
        match=r"unknown model 'shufflenet_v1_g3_x1'.*did you mean.*shufflenet_v1_g3_x1_0",
    ):
        create_model("shufflenet_v1_g3_x1")
    with pytest.raises(ValueError, match=r"unknown model 'alexnet_g3'.*alexnet_g[12]"):
        create_model("alexnet_g3")
    with pytest.raises(ValueError, match=r"unknown model 'zzzz'") as info:
        create_model("zzzz")
    assert "did you mean" not in str(info.value)


def test_name_must_be_a_string():
    with pytest.raises(TypeError, match=r"model name must be a str, got int"):
        create_model(3)


def test_is_model_and_factory():
    assert is_model("shufflenet_v1_g3_x1_0") and not is_model("shufflenet_v1_g5_x1_0")
    model = get_model_factory("shufflenet_v1_g2_x0_5")(num_classes=3)
    assert (
        isinstance(model, shufflenet.ShuffleNetV1) and model.groups == 2 and model.width_mult == 0.5
    )


@pytest.fixture
def scratch_registry():
    """Remove whatever a test registers."""
    before = dict(_registry._MODELS)
    yield
    _registry._MODELS.clear()
    _registry._MODELS.update(before)


def test_register_and_create(scratch_registry):
    @register_model
    def tiny_test_net(num_classes: int = 2) -> nn.Module:
        return nn.Linear(4, num_classes)

    assert "tiny_test_net" in list_models("tiny_*")
    model = create_model("tiny_test_net", num_classes=5)
    assert model.out_features == 5
    assert model.model_cfg == {"arch": "tiny_test_net", "kwargs": {"num_classes": 5}}


def test_duplicate_registration_is_an_error(scratch_registry):
    def shufflenet_v1_g3_x1_0(**kwargs) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match=r"'shufflenet_v1_g3_x1_0' is already registered"):
        register_model(shufflenet_v1_g3_x1_0)
    # the original entry is untouched
    assert isinstance(create_model("shufflenet_v1_g3_x1_0"), shufflenet.ShuffleNetV1)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("shufflenet_v1_g3_x1_0", {}),
        ("shufflenet_v1_g8_x0_5", {"num_classes": 10, "small_input": True}),
        ("shufflenet_v1_g2_x0_25", {"shuffle": "none", "in_chans": 1}),
    ],
)
def test_model_cfg_recorded(name, kwargs):
    model = create_model(name, **kwargs)
    assert model.model_cfg == {"arch": name, "kwargs": kwargs}
    # the recorded configuration rebuilds an identical architecture
    again = create_model(model.model_cfg["arch"], **model.model_cfg["kwargs"])
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_unknown_kwarg_fails_loudly():
    with pytest.raises(TypeError, match=r"no_such_option"):
        create_model("shufflenet_v1_g3_x1_0", no_such_option=1)
