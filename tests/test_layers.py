"""ConvBnAct, DepthwiseSeparableConv2d and SqueezeExcite against explicit functional compositions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import bn_eval, randomize_bn
from torch import nn

from shufflenet import ConvBnAct, DepthwiseConv2d, DepthwiseSeparableConv2d, SqueezeExcite


def test_conv_bn_act_structure_and_forward():
    m = ConvBnAct(6, 12, 3, stride=2, groups=3)
    assert list(dict(m.named_children())) == ["conv", "bn", "act"]
    assert m.conv.groups == 3 and m.conv.stride == (2, 2) and m.conv.padding == (1, 1)
    assert m.conv.bias is None  # BN follows: a conv bias would be redundant
    randomize_bn(m)
    m.eval()
    x = torch.randn(2, 6, 7, 7)
    want = F.relu(bn_eval(F.conv2d(x, m.conv.weight, None, 2, 1, 1, 3), m.bn))
    with torch.no_grad():
        torch.testing.assert_close(m(x), want)
    assert m(x).shape == (2, 12, 4, 4)


def test_conv_bn_act_without_norm_or_act():
    m = ConvBnAct(4, 8, 1, norm_layer=None, act_layer=None)
    assert list(dict(m.named_children())) == ["conv"]
    assert m.conv.bias is not None  # no BN: the conv keeps a bias
    x = torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(m(x), F.conv2d(x, m.conv.weight, m.conv.bias))
    m2 = ConvBnAct(4, 8, 3, act_layer=None)
    assert list(dict(m2.named_children())) == ["conv", "bn"]


def test_conv_bn_act_injected_layers():
    m = ConvBnAct(4, 8, 3, norm_layer=lambda c: nn.GroupNorm(2, c), act_layer=nn.SiLU)
    assert isinstance(m.bn, nn.GroupNorm) and isinstance(m.act, nn.SiLU)


def test_conv_bn_act_rejects_bad_groups():
    with pytest.raises(ValueError, match=r"in_channels=6 is not divisible by groups=4"):
        ConvBnAct(6, 8, 3, groups=4)


def test_depthwise_equals_per_channel_convolution():
    m = DepthwiseConv2d(5, 3, stride=1)
    x = torch.randn(2, 5, 6, 6)
    # one ordinary single-channel convolution per channel, concatenated
    want = torch.cat(
        [F.conv2d(x[:, c : c + 1], m.weight[c : c + 1], padding=1) for c in range(5)], dim=1
    )
    with torch.no_grad():
        torch.testing.assert_close(m(x), want)


def test_separable_forward_is_depthwise_then_pointwise():
    m = DepthwiseSeparableConv2d(8, 16, 3, stride=2)
    randomize_bn(m)
    m.eval()
    x = torch.randn(2, 8, 9, 9)
    dw, pw = m.depthwise, m.pointwise
    assert dw.conv.groups == 8 and dw.conv.kernel_size == (3, 3)
    assert pw.conv.groups == 1 and pw.conv.kernel_size == (1, 1)
    mid = F.relu(bn_eval(F.conv2d(x, dw.conv.weight, None, 2, 1, 1, 8), dw.bn))
    want = F.relu(bn_eval(F.conv2d(mid, pw.conv.weight), pw.bn))
    with torch.no_grad():
        torch.testing.assert_close(m(x), want)
    assert m(x).shape == (2, 16, 5, 5)


def test_separable_without_mid_activation():
    m = DepthwiseSeparableConv2d(8, 16, mid_act=False)
    assert not hasattr(m.depthwise, "act")
    assert hasattr(m.pointwise, "act")
    m2 = DepthwiseSeparableConv2d(8, 16, mid_norm=False, mid_act=False)
    assert list(dict(m2.depthwise.named_children())) == ["conv"]


@pytest.mark.parametrize(("channels", "hidden"), [(64, 8), (240, 15), (512, 32), (16, 8)])
def test_squeeze_excite_forward_and_width(channels, hidden):
    m = SqueezeExcite(channels)
    assert m.fc1.out_channels == hidden  # max(8, C // 16)
    x = torch.randn(2, channels, 5, 3)
    s = x.mean(dim=(2, 3))  # (N, C)
    z = F.relu(s @ m.fc1.weight.flatten(1).T + m.fc1.bias)
    gate = torch.sigmoid(z @ m.fc2.weight.flatten(1).T + m.fc2.bias)  # (N, C)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x * gate[:, :, None, None])
    n_params = sum(p.numel() for p in m.parameters())
    assert n_params == channels * hidden + hidden + hidden * channels + channels


def test_squeeze_excite_gradcheck():
    m = SqueezeExcite(8, reduction=2).double()
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))
