"""ShuffleUnit against a functional re-implementation of the paper's Fig. 2, channel flow, variants, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import bn_eval, inverse, randomize_bn, shuffle_perm
from torch import nn

from shufflenet import ChannelShuffle, ChannelUnshuffle, ShuffleUnit, SqueezeExcite


def unit_reference(u: ShuffleUnit, x: torch.Tensor, mode: str, position: str) -> torch.Tensor:
    """Fig. 2 (b)/(c) of the paper, written with functional ops and the unit's weights (eval mode)."""
    c, d, e = u.compress, u.depthwise, u.expand
    mid = d.conv.in_channels
    g = e.conv.groups
    perm = {"shuffle": shuffle_perm(mid, g), "unshuffle": inverse(shuffle_perm(mid, g))}.get(mode)
    out = F.relu(
        bn_eval(F.conv2d(x, c.conv.weight, groups=c.conv.groups), c.bn)
    )  # 1x1 GConv, BN, ReLU
    if perm is not None and position == "before_dw":
        out = out[:, perm]
    out = bn_eval(
        F.conv2d(out, d.conv.weight, stride=u.stride, padding=1, groups=mid), d.bn
    )  # 3x3 DWConv, BN
    if perm is not None and position == "after_dw":
        out = out[:, perm]
    out = bn_eval(F.conv2d(out, e.conv.weight, groups=g), e.bn)  # 1x1 GConv, BN
    if u.stride == 1:
        return F.relu(x + out)
    return F.relu(torch.cat([F.avg_pool2d(x, 3, 2, 1), out], dim=1))


@pytest.mark.parametrize("mode", ["shuffle", "unshuffle", "none"])
@pytest.mark.parametrize("position", ["before_dw", "after_dw"])
@pytest.mark.parametrize(
    ("c_in", "c_out", "stride", "groups"), [(48, 48, 1, 3), (24, 64, 2, 4), (32, 64, 2, 2)]
)
def test_unit_equals_functional_reference(mode, position, c_in, c_out, stride, groups):
    u = ShuffleUnit(
        c_in, c_out, stride=stride, groups=groups, shuffle=mode, shuffle_position=position
    )
    randomize_bn(u, bias_low=-0.2)
    u.eval()
    x = torch.randn(2, c_in, 7, 6)
    with torch.no_grad():
        y = u(x)
        torch.testing.assert_close(y, unit_reference(u, x, mode, position))
    assert y.shape == (2, c_out, -(-7 // stride), -(-6 // stride))


def test_shuffle_changes_the_function():
    # the same weights with and without the shuffle give different outputs: the permutation is applied
    a = ShuffleUnit(48, 48, groups=3, shuffle="shuffle")
    b = ShuffleUnit(48, 48, groups=3, shuffle="none")
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.randn(1, 48, 5, 5)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))


def _group_dependence(u: ShuffleUnit, groups: int) -> list[list[bool]]:
    """dep[k][j]: does output group j change when input group k changes? (measured by perturbation)"""
    u.eval()
    x = torch.randn(1, u.in_channels, 6, 6)
    cin, cout = u.in_channels // groups, u.out_channels // groups
    with torch.no_grad():
        y = u(x)
        dep = []
        for k in range(groups):
            x2 = x.clone()
            x2[:, k * cin : (k + 1) * cin] += torch.randn(1, cin, 6, 6)
            diff = (u(x2) - y).abs()
            dep.append([bool(diff[:, j * cout : (j + 1) * cout].sum() > 0) for j in range(groups)])
    return dep


def test_channel_flow_without_shuffle_stays_in_group():
    # Sec. 3.1: stacked group convolutions without shuffle never mix groups
    u = ShuffleUnit(48, 48, groups=3, shuffle="none")
    randomize_bn(u, bias_low=-0.2)
    dep = _group_dependence(u, 3)
    assert dep == [[j == k for j in range(3)] for k in range(3)]


@pytest.mark.parametrize("mode", ["shuffle", "unshuffle"])
def test_channel_flow_with_shuffle_reaches_every_group(mode):
    u = ShuffleUnit(48, 48, groups=3, shuffle=mode)
    randomize_bn(u, bias_low=-0.2)
    dep = _group_dependence(u, 3)
    assert dep == [[True] * 3 for _ in range(3)]


def test_shuffle_position_is_equivalent_up_to_permuted_depthwise_weights():
    # DWConv and BN act per channel, so shuffle-before-DW with weights w equals shuffle-after-DW with
    # weights permuted by the inverse permutation (the module docstring's claim)
    before = ShuffleUnit(48, 48, groups=3, shuffle_position="before_dw")
    after = ShuffleUnit(48, 48, groups=3, shuffle_position="after_dw")
    randomize_bn(before, bias_low=-0.2)
    after.load_state_dict(before.state_dict())
    inv = torch.tensor(inverse(shuffle_perm(12, 3)))
    with torch.no_grad():
        after.depthwise.conv.weight.copy_(before.depthwise.conv.weight[inv])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(after.depthwise.bn, name).copy_(getattr(before.depthwise.bn, name)[inv])
    before.eval(), after.eval()
    x = torch.randn(2, 48, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(before(x), after(x))


def unit_params(
    c_in: int, c_out: int, stride: int, g: int, first_grouped: bool = True, mid: int | None = None
):
    """Closed-form parameter count: three bias-free convolutions, each followed by an affine BN."""
    mid = c_out // 4 if mid is None else mid
    branch = c_out if stride == 1 else c_out - c_in
    g1 = g if first_grouped else 1
    return (c_in * mid // g1 + 2 * mid) + (9 * mid + 2 * mid) + (mid * branch // g + 2 * branch)


@pytest.mark.parametrize(
    ("c_in", "c_out", "stride", "g", "first_grouped", "mid"),
    [
        (240, 240, 1, 3, True, None),
        (24, 240, 2, 3, False, None),
        (24, 384, 2, 8, False, None),
        (272, 544, 2, 4, True, None),
        (200, 200, 1, 2, True, 40),
    ],
)
def test_unit_parameter_count_and_layers(c_in, c_out, stride, g, first_grouped, mid):
    u = ShuffleUnit(c_in, c_out, stride, g, bottleneck_channels=mid, first_grouped=first_grouped)
    assert sum(p.numel() for p in u.parameters()) == unit_params(
        c_in, c_out, stride, g, first_grouped, mid
    )
    expected_mid = c_out // 4 if mid is None else mid
    assert u.compress.conv.out_channels == expected_mid
    assert u.compress.conv.groups == (g if first_grouped else 1)
    assert u.depthwise.conv.groups == expected_mid
    assert u.depthwise.conv.stride == (stride, stride)
    assert u.expand.conv.groups == g
    assert isinstance(u.shuffle, ChannelShuffle if g > 1 else nn.Identity)


def test_shuffle_argument_forms():
    assert isinstance(ShuffleUnit(48, 48, groups=3, shuffle=True).shuffle, ChannelShuffle)
    assert isinstance(ShuffleUnit(48, 48, groups=3, shuffle=False).shuffle, nn.Identity)
    assert isinstance(ShuffleUnit(48, 48, groups=3, shuffle="none").shuffle, nn.Identity)
    assert isinstance(ShuffleUnit(48, 48, groups=3, shuffle="unshuffle").shuffle, ChannelUnshuffle)
    assert ShuffleUnit(48, 48, groups=3, shuffle="shuffle").shuffle.groups == 3


def test_squeeze_excite_variant():
    plain = ShuffleUnit(24, 240, 2, 3, first_grouped=False)
    se = ShuffleUnit(24, 240, 2, 3, first_grouped=False, se=True)
    assert isinstance(se.se, SqueezeExcite)
    branch, hidden = 240 - 24, max(8, (240 - 24) // 16)
    se_params = 2 * branch * hidden + hidden + branch
    assert (
        sum(p.numel() for p in se.parameters())
        == sum(p.numel() for p in plain.parameters()) + se_params
    )
    # the gate scales the branch: with the same weights the outputs differ, shape is unchanged
    se.load_state_dict(plain.state_dict(), strict=False)
    plain.eval(), se.eval()
    x = torch.randn(1, 24, 8, 8)
    with torch.no_grad():
        assert se(x).shape == plain(x).shape == (1, 240, 4, 4)
        assert not torch.allclose(se(x), plain(x))
        # the pooled shortcut half is untouched by SE
        torch.testing.assert_close(se(x)[:, :24], plain(x)[:, :24])


def test_gradcheck_small_unit():
    u = ShuffleUnit(12, 24, stride=2, groups=2).double().eval()
    randomize_bn(u, bias_low=-0.2)
    x = torch.randn(1, 12, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(u, (x,))


def test_backward_reaches_every_parameter():
    u = ShuffleUnit(24, 48, stride=2, groups=2, se=True)
    out = u(torch.randn(2, 24, 8, 8))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in u.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_extra_repr():
    r = repr(
        ShuffleUnit(
            24, 240, 2, 3, first_grouped=False, shuffle="unshuffle", shuffle_position="after_dw"
        )
    )
    for part in (
        "in_channels=24",
        "out_channels=240",
        "stride=2",
        "groups=3",
        "'unshuffle'",
        "'after_dw'",
    ):
        assert part in r


# ---------------------------------------------------------------------------------------------- errors


def test_stride_one_requires_equal_channels():
    with pytest.raises(ValueError, match=r"in_channels=24 must equal out_channels=48"):
        ShuffleUnit(24, 48, stride=1, groups=2)


def test_stride_two_requires_more_output_channels():
    with pytest.raises(ValueError, match=r"out_channels=48 must exceed in_channels=48"):
        ShuffleUnit(48, 48, stride=2, groups=2)


@pytest.mark.parametrize("stride", [0, 3])
def test_bad_stride(stride):
    with pytest.raises(ValueError, match=rf"stride={stride} must be 1 or 2"):
        ShuffleUnit(48, 48, stride=stride, groups=3)


def test_unit_groups_must_divide_channels():
    with pytest.raises(ValueError, match=r"in_channels=50 is not divisible by groups=3"):
        ShuffleUnit(50, 50, groups=3, bottleneck_channels=12)
    with pytest.raises(ValueError, match=r"bottleneck_channels=10 is not divisible by groups=3"):
        ShuffleUnit(48, 48, groups=3, bottleneck_channels=10)
    with pytest.raises(ValueError, match=r"branch output channels=40 is not divisible by groups=3"):
        ShuffleUnit(24, 64, stride=2, groups=3, bottleneck_channels=12, first_grouped=False)


@pytest.mark.parametrize(("groups", "exc", "match"), [
    (0, ValueError, r"groups=0 must be a positive integer"),
    (2.0, TypeError, r"groups must be an int, got 2\.0"),
    ("3", TypeError, r"groups must be an int, got '3'"),
    (True, TypeError, r"groups must be an int, got True"),
])  # fmt: skip
def test_unit_bad_groups(groups, exc, match):
    with pytest.raises(exc, match=match):
        ShuffleUnit(48, 48, groups=groups)


def test_bad_shuffle_options():
    with pytest.raises(ValueError, match=r"shuffle='random' must be one of"):
        ShuffleUnit(48, 48, groups=3, shuffle="random")
    with pytest.raises(ValueError, match=r"shuffle_position='middle' must be one of"):
        ShuffleUnit(48, 48, groups=3, shuffle_position="middle")
