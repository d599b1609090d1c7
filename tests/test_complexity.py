"""profile(): closed-form counts, the paper's Tables 1 and 2, AlexNet, torch's FlopCounterMode, unsupported layers."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TABLE1_STAGES, documented_channels, input_sizes
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from shufflenet import (
    DepthwiseConv2d,
    GroupConv2d,
    PointwiseGroupConv2d,
    create_model,
    list_models,
    profile,
)

ALL_MODELS = list_models()
WIDTH_TAGS = {0.25: "x0_25", 0.5: "x0_5", 1.0: "x1_0", 1.5: "x1_5", 2.0: "x2_0"}


def side(n: int, k: int = 3, s: int = 2, p: int = 1) -> int:
    """Output side of a k x k window with stride s and padding p."""
    return (n + 2 * p - k) // s + 1


def shufflenet_v1_closed_form(
    g: int, stem: int, stages: tuple[int, int, int], h: int, w: int, num_classes: int = 1000
) -> tuple[int, int, int]:
    """(parameters, conv multiply-adds, classifier multiply-adds) of ShuffleNet v1, from Table 1 and Fig. 2.

    Conv1 3x3/2 (3 -> stem) + BN, MaxPool 3x3/2, then stages of 4/8/4 units. A unit (in c, out o, stride s):
    1x1 GConv c -> o/4 (dense in the first unit), BN, ReLU; 3x3 DWConv/s on o/4, BN; 1x1 GConv o/4 -> branch,
    BN, with branch = o - c for s = 2 (concatenated with the pooled input) and o for s = 1. FC with bias.
    Every BN has 2 parameters per channel; the convolutions have no bias.
    """
    h, w = side(h), side(w)  # conv1
    conv = h * w * stem * 3 * 9
    params = 3 * 9 * stem + 2 * stem
    h, w = side(h), side(w)  # max pool
    c = stem
    for stage, (o, repeats) in enumerate(zip(stages, (4, 8, 4))):
        for i in range(repeats):
            stride = 2 if i == 0 else 1
            mid = o // 4
            g1 = 1 if (stage, i) == (0, 0) else g
            branch = o - c if stride == 2 else o
            ho, wo = (side(h), side(w)) if stride == 2 else (h, w)
            conv += h * w * c * mid // g1  # 1x1 GConv at the input resolution
            conv += ho * wo * 9 * mid  # 3x3 depthwise
            conv += ho * wo * mid * branch // g  # 1x1 GConv
            params += c * mid // g1 + 9 * mid + mid * branch // g + 2 * (mid + mid + branch)
            h, w, c = ho, wo, o
    fc = c * num_classes
    params += fc + num_classes
    return params, conv, fc


def _v1(g: int, s: float, **kwargs) -> nn.Module:
    return create_model(f"shufflenet_v1_g{g}_{WIDTH_TAGS[s]}", **kwargs)


# ---------------------------------------------------------------------------------------------- ShuffleNet v1


@pytest.mark.parametrize("g", sorted(TABLE1_STAGES))
@pytest.mark.parametrize("s", sorted(WIDTH_TAGS))
def test_shufflenet_v1_equals_closed_form_at_224(g, s):
    stem, stages = (24, TABLE1_STAGES[g]) if s == 1.0 else documented_channels(g, s)
    model = _v1(g, s)
    report = profile(model, 224)
    params, conv, fc = shufflenet_v1_closed_form(g, stem, stages, 224, 224)
    assert report.params == params == sum(p.numel() for p in model.parameters())
    assert report.conv_macs == conv
    assert report.macs == conv + fc
    assert report.flops == 2 * (conv + fc)
    assert report.unsupported == []


@pytest.mark.parametrize("g", sorted(TABLE1_STAGES))
def test_shufflenet_v1_closed_form_other_sizes(g):
    model = _v1(g, 1.0, num_classes=17)
    for h, w in [(97, 130), (33, 33), (1, 2)]:
        report = profile(model, (h, w))
        params, conv, fc = shufflenet_v1_closed_form(g, 24, TABLE1_STAGES[g], h, w, num_classes=17)
        assert (report.params, report.conv_macs, report.macs) == (params, conv, conv + fc)


# Table 1 (conv multiply-adds, millions, classifier not included) and Table 2 (g=3, total).
TABLE1_MMACS = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}
TABLE2_MMACS_G3 = {0.25: 13, 0.5: 38, 1.5: 292, 2.0: 524}


@pytest.mark.parametrize("g", sorted(TABLE1_MMACS))
def test_paper_table1(g):
    report = profile(_v1(g, 1.0), 224)
    assert abs(report.conv_macs / 1e6 - TABLE1_MMACS[g]) <= 0.5
    assert round(report.conv_macs / 1e6) == TABLE1_MMACS[g]


@pytest.mark.parametrize("s", sorted(TABLE2_MMACS_G3))
def test_paper_table2(s):
    report = profile(_v1(3, s), 224)
    assert abs(report.macs / 1e6 - TABLE2_MMACS_G3[s]) <= 0.5


def test_batch_size_and_input_forms():
    model = _v1(3, 0.5)
    one = profile(model, 64)
    assert profile(model, 64, batch_size=3).macs == 3 * one.macs
    assert profile(model, (64, 64)).macs == one.macs
    assert profile(model, (3, 64, 64)).macs == one.macs
    assert one.input_shape == (1, 3, 64, 64)
    assert profile(create_model("shufflenet_v1_g3_x0_5", in_chans=1), 64).input_shape == (
        1,
        1,
        64,
        64,
    )


def test_profile_restores_training_mode_and_counts_without_grad():
    model = _v1(3, 0.25).train()
    bn = model.stem.bn
    before = bn.running_mean.clone()
    profile(model, 32)
    assert model.training
    assert torch.equal(bn.running_mean, before)  # ran in eval mode: statistics unchanged
    model.eval()
    profile(model, 32)
    assert not model.training


@pytest.mark.parametrize("size", [0, -3])
def test_bad_input_size(size):
    with pytest.raises(ValueError, match=rf"input_size={size} must be positive"):
        profile(_v1(3, 0.25), size)


def test_report_serialisation():
    report = profile(_v1(8, 0.25), 64)
    d = json.loads(report.to_json())
    assert d["macs"] == report.macs and d["flops"] == 2 * report.macs
    assert d["params"] == report.params and d["conv_macs"] == report.conv_macs
    assert len(d["layers"]) == len(report.layers)
    assert sum(r["macs"] or 0 for r in d["layers"]) == report.macs
    table = report.table()
    assert (
        f"{report.macs:,}" in table
        and f"{report.params:,}" in table
        and "FLOPs (2 x MACs)" in table
    )
    assert "more layers" in report.table(max_rows=3)


# ---------------------------------------------------------------------------------------------- AlexNet


def alexnet_closed_form(groups: int) -> tuple[int, int]:
    """(parameters, multiply-adds) of AlexNet at 224x224 from its layer table (conv2/4/5 split in `groups`)."""
    # (output side, out channels, in channels per group, kernel)
    convs = [
        (55, 96, 3, 11),
        (27, 256, 96 // groups, 5),
        (13, 384, 256, 3),
        (13, 384, 384 // groups, 3),
    ]
    convs.append((13, 256, 384 // groups, 3))
    fcs = [(256 * 6 * 6, 4096), (4096, 4096), (4096, 1000)]
    macs = sum(s * s * o * i * k * k for s, o, i, k in convs) + sum(i * o for i, o in fcs)
    params = sum(o * i * k * k + o for _, o, i, k in convs) + sum(i * o + o for i, o in fcs)
    return params, macs


@pytest.mark.parametrize(
    ("name", "groups", "published"), [("alexnet_g2", 2, 60_965_224), ("alexnet_g1", 1, 62_378_344)]
)
def test_alexnet_counts(name, groups, published):
    model = create_model(name)
    report = profile(model, 224)
    params, macs = alexnet_closed_form(groups)
    assert params == published
    assert report.params == published == sum(p.numel() for p in model.parameters())
    assert report.macs == macs
    assert report.unsupported == []


# ---------------------------------------------------------------------------------------------- every model


def _modules_by_row(model: nn.Module, report) -> list[tuple[nn.Module, object]]:
    mods = dict(model.named_modules())
    return [(mods[r.name], r) for r in report.layers if r.name in mods]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_conv_layer_cost_formula(name):
    """Each (grouped) conv row: params = h*w*c1*c2/g (+ bias) and MACs = H'*W'*h*w*c1*c2/g."""
    model = create_model(name)
    size = input_sizes(name)[0]
    report = profile(model, size)
    n_conv = 0
    for m, row in _modules_by_row(model, report):
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            weights = kh * kw * m.in_channels * m.out_channels // m.groups
            assert m.weight.numel() == weights
            assert row.params == weights + (m.out_channels if m.bias is not None else 0)
            assert row.groups == m.groups
            _, _, ho, wo = row.output_shape
            assert row.macs == ho * wo * weights, row.name
            n_conv += 1
        elif isinstance(m, nn.Linear):
            assert row.macs == m.in_features * m.out_features
    assert n_conv > 0
    assert report.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_matches_torch_flop_counter(name):
    """torch.utils.flop_counter counts 2 FLOPs per multiply-add of convolutions and matrix products."""
    model = create_model(name).eval()
    h, w = input_sizes(name)[0]
    report = profile(model, (h, w), batch_size=2)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(2, 3, h, w))
    counts = {str(k).split(".")[-1]: v for k, v in counter.get_flop_counts()["Global"].items()}
    torch_conv = sum(v for k, v in counts.items() if "convolution" in k)
    torch_mm = sum(v for k, v in counts.items() if k in ("mm", "addmm", "bmm", "baddbmm"))
    rows = _modules_by_row(model, report)
    our_conv = sum(r.macs for m, r in rows if isinstance(m, nn.modules.conv._ConvNd))
    our_linear = sum(r.macs for m, r in rows if isinstance(m, nn.Linear))
    assert torch_conv == 2 * our_conv
    assert torch_mm == 2 * our_linear
    assert counter.get_total_flops() == torch_conv + torch_mm == report.flops


# ---------------------------------------------------------------------------------------------- layers and gaps


def test_grouped_layer_rows():
    model = nn.Sequential(
        GroupConv2d(12, 24, 3, stride=2, groups=3),
        PointwiseGroupConv2d(24, 48, groups=4),
        DepthwiseConv2d(48, 5),
    )
    report = profile(model, (12, 16, 20))
    rows = {r.name: r for r in report.layers}
    assert (
        rows["0"].macs == 8 * 10 * 3 * 3 * 12 * 24 // 3 and rows["0"].params == 3 * 3 * 12 * 24 // 3
    )
    assert rows["1"].macs == 8 * 10 * 24 * 48 // 4 and rows["1"].params == 24 * 48 // 4
    assert rows["2"].macs == 8 * 10 * 5 * 5 * 48 and rows["2"].params == 5 * 5 * 48
    assert rows["2"].groups == 48 and rows["2"].output_shape == (1, 48, 8, 10)
    assert report.conv_macs == report.macs


class Scale(nn.Module):
    """A leaf module with a parameter and no cost formula."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


class Square(nn.Module):
    """A parameter-free leaf module with no cost formula."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class Block(nn.Module):
    """A container whose cost is that of its children."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.scale = Scale(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(self.conv(x))


def test_unsupported_leaf_modules_are_reported():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Block(), Square(), nn.ReLU())
    report = profile(model, 8)
    assert report.unsupported == ["1.scale", "2"]
    rows = {r.name: r for r in report.layers}
    assert (
        rows["1.scale"].macs is None
        and rows["1.scale"].params == 4
        and rows["1.scale"].type == "Scale"
    )
    assert rows["2"].macs is None and rows["2"].params == 0
    assert (
        "1" not in report.unsupported and "" not in report.unsupported
    )  # containers are not leaves
    assert report.params == sum(
        p.numel() for p in model.parameters()
    )  # its parameters still counted
    assert report.macs == 8 * 8 * 4 * 3 * 9 + 8 * 8 * 4 * 4  # the two convs
    assert "UNSUPPORTED" in report.table() and "1.scale" in report.table()
    assert report.to_dict()["unsupported"] == ["1.scale", "2"]


def test_registered_models_have_no_unsupported_layers():
    for name in ("shufflenet_v1_g3_x0_25", "shufflenet_v1_g8_x0_5"):
        assert profile(create_model(name, se=True), 32).unsupported == []
