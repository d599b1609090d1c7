"""Every registered model (parametrised over the registry), then the ShuffleNet v1 family's architecture table."""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import TABLE1_STAGES, documented_channels, input_sizes
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import shufflenet
from shufflenet import (
    ChannelShuffle,
    ShuffleNetV1,
    ShuffleUnit,
    SqueezeExcite,
    create_model,
    list_models,
)
from shufflenet.models import (
    MobileNetV1,
    ShuffleNetV2,
    Xception,
    get_model_factory,
    in_channels,
    shufflenet_v1_channels,
)

ALL_MODELS = list_models()


# ---------------------------------------------------------------------------------------------- whole registry


def test_registry_is_populated():
    assert len(ALL_MODELS) >= 27  # 25 ShuffleNet v1 variants and two AlexNets at least


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_two_sizes_and_backward_reaches_every_parameter(name):
    model = create_model(name)
    (h1, w1), (h2, w2) = input_sizes(name)

    # train mode (batch statistics, dropout): finite logits, every parameter gets a gradient
    model.train()
    out = model(torch.randn(2, 3, h1, w1))
    assert out.shape == (2, model.num_classes)
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"

    # eval mode at the second size: every gradient is non-zero. (In train mode the bias of a BN that feeds
    # a linear layer and another train-mode BN has an exactly zero gradient, so this is checked in eval mode.)
    model.zero_grad(set_to_none=True)
    model.eval()
    out = model(torch.randn(2, 3, h2, w2))
    assert out.shape == (2, model.num_classes)
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: zero gradient in {pname}"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_num_classes_and_in_chans(name):
    model = create_model(name, num_classes=7, in_chans=1).eval()
    (h, w), _ = input_sizes(name)
    with torch.no_grad():
        out = model(torch.randn(2, 1, h, w))
    assert out.shape == (2, 7)
    assert model.num_classes == 7
    assert model.in_chans == 1 and in_channels(model) == 1
    assert in_channels(nn.Sequential(model)) == 1  # read off the wrapped model
    with pytest.raises(RuntimeError):  # the stem really expects one channel now
        model(torch.randn(2, 3, h, w))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_equals_head_of_features(name):
    model = create_model(name).eval()
    (h, w), _ = input_sizes(name)
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.dim() == 4 and feats.shape[0] == 2
        assert feats.shape[1] == model.num_features
        torch.testing.assert_close(model.forward_head(feats), model(x), rtol=0, atol=0)
        if "pre_logits" in inspect.signature(model.forward_head).parameters:
            pre = model.forward_head(feats, pre_logits=True)
            assert pre.dim() == 2 and pre.shape[0] == 2


@pytest.mark.parametrize("name", ALL_MODELS)
def test_factory_takes_only_model_options(name):
    # a registered factory has no parameters of its own (no private argument can change the variant)
    params = inspect.signature(get_model_factory(name)).parameters.values()
    assert [p.kind for p in params] == [inspect.Parameter.VAR_KEYWORD]


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("nin_root4", {"_root": 8}, "_root"),
        ("nin_root4", {"root": 8}, r"nin_root4 fixes root=4; got root=8"),
        ("nin_cifar10", {"root": 2}, r"nin_cifar10 fixes root=1"),
        ("shufflenet_v1_g3_x1_0", {"groups": 8}, r"fixes groups=3; got groups=8"),
        ("shufflenet_v1_g3_x1_0", {"width_mult": 2.0}, r"fixes width_mult=1\.0"),
        ("shufflenet_v2_x0_5", {"width_mult": 1.0}, r"fixes width_mult=0\.5"),
        ("mobilenet_v1_x0_25", {"width_mult": 1.0}, r"fixes width_mult=0\.25"),
        ("alexnet_g1", {"groups": 2}, r"alexnet_g1 fixes groups=1"),
        ("resnext26_32x4d", {"cardinality": 8}, r"fixes cardinality=32"),
        ("xception_tiny", {"middle_blocks": 8}, r"fixes middle_blocks=2"),
        ("xception_tiny", {"width_mult": 1.0}, r"fixes width_mult=0\.25"),
    ],
)
def test_variant_arguments_cannot_be_overridden(name, kwargs, match):
    with pytest.raises(TypeError, match=match):
        create_model(name, **kwargs)


def test_width_mult_is_one_name():
    for name, width_mult in [
        ("shufflenet_v1_g3_x0_25", 0.25),
        ("shufflenet_v1_g8_x1_5", 1.5),
        ("shufflenet_v2_x2_0", 2.0),
        ("mobilenet_v1_x0_5", 0.5),
        ("xception_tiny", 0.25),
        ("xception", 1.0),
    ]:
        assert create_model(name).width_mult == width_mult, name
    for cls in (ShuffleNetV1, ShuffleNetV2, MobileNetV1, Xception):
        assert "width_mult" in inspect.signature(cls).parameters
        assert "width" not in inspect.signature(cls).parameters


def test_old_width_keyword_of_xception_still_loads(tmp_path):
    # a model file written when Xception's multiplier was called ``width``
    model = Xception(num_classes=3, middle_blocks=1, width_mult=0.125).eval()
    path = shufflenet.save_model(
        tmp_path / "x.safetensors",
        model,
        arch="xception",
        arch_kwargs={"num_classes": 3, "middle_blocks": 1, "width": 0.125},
    )
    with pytest.warns(DeprecationWarning, match="width= is now called width_mult="):
        loaded, _ = shufflenet.load_model(path)
    assert loaded.width_mult == 0.125
    x = torch.randn(1, 3, 71, 71)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
    with pytest.raises(TypeError, match="pass width_mult= only"):
        create_model("xception", width=0.5, width_mult=0.5)


def test_in_channels_of_other_modules():
    # no in_chans attribute: the first convolution's input channels, in modules() order
    assert in_channels(nn.Sequential(nn.ReLU(), nn.Conv2d(5, 8, 3), nn.Conv2d(8, 2, 1))) == 5
    assert in_channels(ShuffleUnit(24, 48, stride=2, groups=3)) == 24
    with pytest.raises(ValueError, match="cannot tell the input channels of Linear"):
        in_channels(nn.Linear(4, 2))


# ---------------------------------------------------------------------------------------------- ShuffleNet v1

# Released models (Megvii ShuffleNet-Series, ShuffleNetV1): (stem, stage2, stage3, stage4) for g=3 and g=8.
RELEASED = {
    (3, 0.5): (12, 120, 240, 480),
    (3, 1.0): (24, 240, 480, 960),
    (3, 1.5): (24, 360, 720, 1440),
    (3, 2.0): (48, 480, 960, 1920),
    (8, 0.5): (16, 192, 384, 768),
    (8, 1.0): (24, 384, 768, 1536),
    (8, 1.5): (24, 576, 1152, 2304),
    (8, 2.0): (48, 768, 1536, 3072),
}
WIDTH_TAGS = {0.25: "x0_25", 0.5: "x0_5", 1.0: "x1_0", 1.5: "x1_5", 2.0: "x2_0"}


def test_all_25_variants_registered():
    expected = {f"shufflenet_v1_g{g}_{tag}" for g in TABLE1_STAGES for tag in WIDTH_TAGS.values()}
    assert expected <= set(ALL_MODELS)
    assert set(list_models("shufflenet_v1_*")) == expected


@pytest.mark.parametrize("g", sorted(TABLE1_STAGES))
def test_table1_architecture_at_1x(g):
    model = create_model(f"shufflenet_v1_g{g}_x1_0")
    assert model.stage_channels == TABLE1_STAGES[g]
    assert model.stem.conv.out_channels == 24
    assert model.stem.conv.kernel_size == (3, 3) and model.stem.conv.stride == (2, 2)
    assert isinstance(model.pool, nn.MaxPool2d)
    assert model.pool.kernel_size == 3 and model.pool.stride == 2
    assert [len(stage) for stage in model.stages] == [4, 8, 4]
    in_ch = 24
    for s, stage in enumerate(model.stages):
        for i, unit in enumerate(stage):
            assert isinstance(unit, ShuffleUnit)
            assert unit.stride == (2 if i == 0 else 1)
            assert unit.out_channels == TABLE1_STAGES[g][s]
            assert unit.in_channels == in_ch
            in_ch = unit.out_channels
            # the first 1x1 of the very first unit (24 input channels) is dense, every other one grouped
            assert unit.compress.conv.groups == (1 if (s, i) == (0, 0) else g)
            assert unit.expand.conv.groups == g
            assert unit.compress.conv.out_channels == unit.out_channels // 4  # bottleneck = out / 4
            if g > 1:
                assert isinstance(unit.shuffle, ChannelShuffle) and unit.shuffle.groups == g
    assert model.num_features == TABLE1_STAGES[g][2]
    assert model.fc.in_features == TABLE1_STAGES[g][2] and model.fc.out_features == 1000
    feats = model.eval().forward_features(torch.randn(1, 3, 224, 224))
    assert feats.shape == (1, TABLE1_STAGES[g][2], 7, 7)  # output stride 32


@pytest.mark.parametrize(("g", "s"), sorted(RELEASED))
def test_widths_of_released_models(g, s):
    stem, stages = shufflenet_v1_channels(g, s)
    assert (stem, *stages) == RELEASED[(g, s)]
    model = create_model(f"shufflenet_v1_g{g}_{WIDTH_TAGS[s]}")
    assert (model.stem.conv.out_channels, *model.stage_channels) == RELEASED[(g, s)]


@pytest.mark.parametrize("g", sorted(TABLE1_STAGES))
@pytest.mark.parametrize("s", sorted(WIDTH_TAGS))
def test_registered_widths_follow_documented_rule(g, s):
    model = create_model(f"shufflenet_v1_g{g}_{WIDTH_TAGS[s]}")
    stem, stages = documented_channels(g, s)
    assert model.stem.conv.out_channels == stem
    assert model.stage_channels == stages


@settings(max_examples=25)
@given(st.sampled_from(sorted(TABLE1_STAGES)), st.floats(0.05, 4.0, allow_nan=False))
def test_any_width_keeps_grouped_layers_divisible(g, s):
    stem, stages = shufflenet_v1_channels(g, s)
    assert (stem, stages) == documented_channels(g, s)
    assert stem % g == 0
    for c in stages:
        assert c % (4 * g) == 0 and c >= 4 * g
    # building it checks every grouped layer; one unit per stage keeps it cheap
    model = ShuffleNetV1(groups=g, width_mult=s, stage_repeats=(1, 1, 1), num_classes=3)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize(("g", "s"), [(1, 0.0625), (2, 0.03), (3, 0.05), (8, 0.01)])
def test_tiny_width_still_builds(g, s):
    stem, (c2, _, _) = shufflenet_v1_channels(g, s)
    assert c2 > stem and c2 % (4 * g) == 0 and stem % g == 0
    model = ShuffleNetV1(groups=g, width_mult=s, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_small_input_stem():
    model = create_model("shufflenet_v1_g3_x1_0", small_input=True, num_classes=10).eval()
    assert model.stem.conv.stride == (1, 1)
    assert isinstance(model.pool, nn.Identity)
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, 32, 32))
        assert feats.shape == (2, 960, 4, 4)  # output stride 8
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("size", [(1, 1), (33, 47), (224, 160)])
def test_any_input_size(size):
    model = create_model("shufflenet_v1_g8_x0_25", num_classes=4).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 4)


def test_shuffle_ablation_and_se_variant():
    plain = create_model("shufflenet_v1_g3_x0_5", shuffle="none")
    assert not any(isinstance(m, ChannelShuffle) for m in plain.modules())
    shuffled = create_model("shufflenet_v1_g3_x0_5")
    assert sum(isinstance(m, ChannelShuffle) for m in shuffled.modules()) == 16  # one per unit
    assert not any(
        isinstance(m, ChannelShuffle) for m in create_model("shufflenet_v1_g1_x0_5").modules()
    )
    se = create_model("shufflenet_v1_g3_x0_5", se=True)
    assert sum(isinstance(m, SqueezeExcite) for m in se.modules()) == 16
    after = create_model("shufflenet_v1_g3_x0_5", shuffle_position="after_dw")
    assert all(
        u.shuffle_position == "after_dw" for u in after.modules() if isinstance(u, ShuffleUnit)
    )


def test_logits_not_log_probabilities():
    model = create_model("shufflenet_v1_g3_x0_25", num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(4, 3, 32, 32))
    # log-softmax outputs would have logsumexp == 0 for every row
    assert not torch.allclose(out.logsumexp(1), torch.zeros(4), atol=1e-3)


# ---------------------------------------------------------------------------------------------- bad configurations


@pytest.mark.parametrize("groups", [5, 6, 0])
def test_unsupported_groups(groups):
    with pytest.raises(
        ValueError, match=rf"groups={groups} is not a ShuffleNet v1 configuration.*1, 2, 3, 4, 8"
    ):
        ShuffleNetV1(groups=groups)


def test_groups_bool_rejected():
    with pytest.raises(ValueError, match=r"groups=True is not a ShuffleNet v1 configuration"):
        ShuffleNetV1(groups=True)


@pytest.mark.parametrize("width", [0, -1.0, "1x", True])
def test_bad_width(width):
    with pytest.raises(ValueError, match=rf"width_mult={width!r} must be a positive number"):
        ShuffleNetV1(groups=3, width_mult=width)


def test_explicit_stage_channels_must_fit_groups():
    with pytest.raises(ValueError, match=r"not divisible by groups=3"):
        ShuffleNetV1(groups=3, stage_channels=(100, 200, 400), stem_channels=24)


def test_stage_channels_and_repeats_lengths():
    with pytest.raises(
        ValueError, match=r"stage_channels=\[240, 480\] and stage_repeats=\[4, 8, 4\]"
    ):
        ShuffleNetV1(groups=3, stage_channels=(240, 480), stem_channels=24)


def test_registered_variant_rejects_conflicting_groups():
    with pytest.raises(TypeError, match=r"groups"):
        create_model("shufflenet_v1_g3_x1_0", groups=5)
