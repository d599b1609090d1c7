"""Grouped convolution: the per-group reference against a hand loop, F.conv2d and the layers; weight counts."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from shufflenet import (
    DepthwiseConv2d,
    DepthwiseSeparableConv2d,
    GroupConv2d,
    PointwiseGroupConv2d,
    grouped_conv2d_reference,
)


def hand_loop_conv(x, weight, bias, stride, padding, dilation, groups):
    """Grouped convolution from the definition, one output element at a time (pure Python sums).

    Output channel ``o`` belongs to group ``o // (c2 / g)`` and sees only that group's ``c1 / g`` input
    channels.
    """
    n_batch, c1, h, w = x.shape
    c2, cg, kh, kw = weight.shape
    xp = F.pad(x, (padding, padding, padding, padding))
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = torch.zeros(n_batch, c2, ho, wo, dtype=x.dtype)
    per_group_out = c2 // groups
    for n, o, i, j in itertools.product(range(n_batch), range(c2), range(ho), range(wo)):
        grp = o // per_group_out
        acc = 0.0 if bias is None else float(bias[o])
        for ci in range(cg):
            for u in range(kh):
                for v in range(kw):
                    acc += float(weight[o, ci, u, v]) * float(
                        xp[n, grp * cg + ci, i * stride + u * dilation, j * stride + v * dilation]
                    )
        out[n, o, i, j] = acc
    return out


@pytest.mark.parametrize(
    ("c1", "c2", "groups", "k", "stride", "padding", "dilation", "bias"),
    [
        (4, 6, 2, 3, 1, 1, 1, True),
        (6, 6, 3, 3, 2, 1, 1, False),
        (4, 4, 4, 3, 1, 2, 2, True),  # depthwise, dilated
        (6, 3, 3, 1, 1, 0, 1, True),  # pointwise
        (2, 4, 1, 2, 1, 0, 1, False),  # dense, even kernel
    ],
)
def test_reference_equals_hand_loop(c1, c2, groups, k, stride, padding, dilation, bias):
    x = torch.randn(2, c1, 5, 4, dtype=torch.float64)
    w = torch.randn(c2, c1 // groups, k, k, dtype=torch.float64)
    b = torch.randn(c2, dtype=torch.float64) if bias else None
    want = hand_loop_conv(x, w, b, stride, padding, dilation, groups)
    got = grouped_conv2d_reference(x, w, b, stride, padding, dilation, groups)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_reference_groups_are_independent():
    # zeroing input group 1 changes only output group 1
    x = torch.randn(1, 6, 4, 4, dtype=torch.float64)
    w = torch.randn(9, 2, 3, 3, dtype=torch.float64)
    y = grouped_conv2d_reference(x, w, padding=1, groups=3)
    x2 = x.clone()
    x2[:, 2:4] = 0
    y2 = grouped_conv2d_reference(x2, w, padding=1, groups=3)
    changed = (y - y2).abs().flatten(2).amax(-1)[0] > 0
    assert changed.tolist() == [False] * 3 + [True] * 3 + [False] * 3


@st.composite
def conv_cases(draw):
    groups = draw(st.integers(1, 4))
    c1 = groups * draw(st.integers(1, 3))
    c2 = groups * draw(st.integers(1, 3))
    k = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 2))
    dilation = draw(st.integers(1, 2))
    padding = draw(st.integers(0, 2))
    h = draw(st.integers(dilation * (k - 1) + 1, 7))
    w = draw(st.integers(dilation * (k - 1) + 1, 7))
    bias = draw(st.booleans())
    batch = draw(st.integers(1, 2))
    return batch, c1, c2, groups, k, stride, padding, dilation, h, w, bias


@given(conv_cases())
def test_property_reference_equals_f_conv2d(case):
    batch, c1, c2, groups, k, stride, padding, dilation, h, w, bias = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c1, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(c2, c1 // groups, k, k, generator=gen, dtype=torch.float64)
    b = torch.randn(c2, generator=gen, dtype=torch.float64) if bias else None
    want = F.conv2d(x, weight, b, stride, padding, dilation, groups)
    got = grouped_conv2d_reference(x, weight, b, stride, padding, dilation, groups)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@given(conv_cases())
def test_property_group_conv2d_layer_equals_reference(case):
    batch, c1, c2, groups, k, stride, padding, dilation, h, w, bias = case
    layer = GroupConv2d(
        c1, c2, k, stride, groups, padding=padding, dilation=dilation, bias=bias
    ).double()
    x = torch.randn(batch, c1, h, w, dtype=torch.float64)
    want = grouped_conv2d_reference(x, layer.weight, layer.bias, stride, padding, dilation, groups)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), want, rtol=1e-10, atol=1e-10)


def test_pointwise_and_depthwise_layers_equal_reference():
    x = torch.randn(2, 12, 6, 6, dtype=torch.float64)
    pw = PointwiseGroupConv2d(12, 8, groups=4).double()
    dw = DepthwiseConv2d(12, 3, stride=2).double()
    with torch.no_grad():
        torch.testing.assert_close(pw(x), grouped_conv2d_reference(x, pw.weight, groups=4))
        torch.testing.assert_close(
            dw(x), grouped_conv2d_reference(x, dw.weight, stride=2, padding=1, groups=12)
        )


def test_reference_gradcheck():
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, c, d: grouped_conv2d_reference(a, c, d, 1, 1, 1, 2), (x, w, b)
    )


# ---------------------------------------------------------------------------------------------- weight counts


@pytest.mark.parametrize(
    ("c1", "c2", "k", "g"),
    [(24, 48, 3, 1), (24, 48, 3, 2), (240, 60, 1, 3), (96, 256, 5, 2), (64, 64, 3, 64)],
)
def test_group_conv_weight_count(c1, c2, k, g):
    layer = GroupConv2d(c1, c2, k, groups=g)
    assert layer.weight.numel() == k * k * c1 * c2 // g
    assert layer.bias is None
    with_bias = GroupConv2d(c1, c2, k, groups=g, bias=True)
    assert sum(p.numel() for p in with_bias.parameters()) == k * k * c1 * c2 // g + c2


@pytest.mark.parametrize(("c1", "c2", "g"), [(240, 60, 3), (60, 240, 3), (384, 96, 8), (24, 60, 1)])
def test_pointwise_group_conv_weight_count(c1, c2, g):
    layer = PointwiseGroupConv2d(c1, c2, groups=g)
    assert layer.kernel_size == (1, 1)
    assert layer.weight.numel() == c1 * c2 // g


@pytest.mark.parametrize(("c", "k"), [(60, 3), (32, 5), (7, 3)])
def test_depthwise_conv_weight_count(c, k):
    layer = DepthwiseConv2d(c, k)
    assert layer.groups == c
    # h * w * c1 * c2 / g with c1 = c2 = g = c
    assert layer.weight.numel() == k * k * c * c // c == k * k * c


@pytest.mark.parametrize(("c1", "c2", "k"), [(32, 64, 3), (64, 128, 3), (16, 24, 5)])
def test_separable_weight_count(c1, c2, k):
    layer = DepthwiseSeparableConv2d(c1, c2, k)
    conv_weights = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv_weights == k * k * c1 + c1 * c2
    bn = 2 * c1 + 2 * c2  # affine BN after each conv
    assert sum(p.numel() for p in layer.parameters()) == k * k * c1 + c1 * c2 + bn
    # against the dense convolution: ratio 1/c2 + 1/k^2 (MobileNet, Sec. 3.1)
    dense = k * k * c1 * c2
    assert conv_weights / dense == pytest.approx(1 / c2 + 1 / (k * k))


# ---------------------------------------------------------------------------------------------- shapes and errors


@pytest.mark.parametrize(
    ("k", "stride", "dilation", "size"), [(3, 1, 1, 9), (3, 2, 1, 9), (5, 2, 1, 8), (3, 1, 2, 7)]
)
def test_same_padding(k, stride, dilation, size):
    layer = GroupConv2d(4, 8, k, stride, groups=2, dilation=dilation)
    y = layer(torch.randn(1, 4, size, size))
    assert y.shape == (1, 8, -(-size // stride), -(-size // stride))


def test_extra_repr_shows_groups():
    assert "groups=3" in repr(GroupConv2d(6, 12, 3, groups=3))
    assert "groups=12" in repr(DepthwiseConv2d(12))
    assert "kernel_size=(1, 1)" in repr(PointwiseGroupConv2d(8, 8, groups=2))


def test_layer_rejects_indivisible_channels():
    with pytest.raises(ValueError, match=r"in_channels=10 is not divisible by groups=3"):
        GroupConv2d(10, 12, groups=3)
    with pytest.raises(ValueError, match=r"out_channels=10 is not divisible by groups=4"):
        PointwiseGroupConv2d(8, 10, groups=4)
    with pytest.raises(ValueError, match=r"groups=8 is larger than in_channels=4"):
        GroupConv2d(4, 8, groups=8)


@pytest.mark.parametrize("groups", [0, -2])
def test_layer_rejects_non_positive_groups(groups):
    with pytest.raises(ValueError, match=rf"groups={groups} must be a positive integer"):
        GroupConv2d(4, 8, groups=groups)


@pytest.mark.parametrize(("groups", "shown"), [(2.0, r"2\.0"), ("2", r"'2'"), (True, "True")])
def test_layer_rejects_non_integer_groups(groups, shown):
    with pytest.raises(TypeError, match=rf"groups must be an int, got {shown}"):
        GroupConv2d(4, 8, groups=groups)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"kernel_size": 0}, r"kernel_size=0 must be a positive integer"),
    ({"stride": 0}, r"stride=0 must be a positive integer"),
    ({"dilation": 1.5}, r"dilation must be an int, got 1\.5"),
])  # fmt: skip
def test_layer_rejects_bad_geometry(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        GroupConv2d(4, 8, groups=2, **kwargs)


def test_depthwise_rejects_bad_channels():
    with pytest.raises(ValueError, match=r"channels=0 must be a positive integer"):
        DepthwiseConv2d(0)


def test_reference_rejects_bad_input():
    w = torch.randn(6, 2, 3, 3)
    with pytest.raises(ValueError, match=r"x must be 4-D .*got shape \(4, 5, 5\)"):
        grouped_conv2d_reference(torch.randn(4, 5, 5), w, groups=2)
    with pytest.raises(ValueError, match=r"in_channels=5 is not divisible by groups=2"):
        grouped_conv2d_reference(torch.randn(1, 5, 5, 5), w, groups=2)
    with pytest.raises(ValueError, match=r"weight\.shape\[1\]=2 must equal in_channels/groups=6/2"):
        grouped_conv2d_reference(torch.randn(1, 6, 5, 5), w, groups=2)
