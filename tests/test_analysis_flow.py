"""Information flow between channel groups: structural reachability against hand-derived block structure,
and the gradient measurement against the structure (exact zeros where there is no path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shufflenet import ShuffleUnit, channel_shuffle
from shufflenet.analysis.flow import (
    conv_connectivity,
    gconv_stack,
    measured_flow,
    structural_flow,
)
from shufflenet.ops.channel_shuffle import ChannelShuffle, ChannelUnshuffle

C, G = 12, 3  # 4 channels per group

BLOCK = np.array(
    [[o // 4 == k for k in range(G)] for o in range(C)]
)  # output o sees only its own group
ALL = np.ones((C, G), dtype=bool)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_stacked_group_convs_without_shuffle_stay_block_diagonal(depth: int) -> None:
    stack = gconv_stack(C, G, depth, shuffle=False)
    assert (structural_flow(stack, C, G) == BLOCK).all()
    measured = measured_flow(stack, C, G, input_size=(3, 3))
    assert ((measured > 0) == BLOCK).all()
    assert (measured[~BLOCK] == 0).all()  # exactly zero, not merely small


@pytest.mark.parametrize("depth", [2, 3])
def test_with_shuffle_every_output_sees_every_group_after_two_layers(depth: int) -> None:
    stack = gconv_stack(C, G, depth, shuffle=True)
    assert (structural_flow(stack, C, G) == ALL).all()
    assert (measured_flow(stack, C, G, input_size=(3, 3)) > 0).all()


def test_one_layer_with_shuffle_is_still_block_diagonal() -> None:
    stack = gconv_stack(C, G, 1, shuffle=True)
    assert (structural_flow(stack, C, G) == BLOCK).all()


def test_shuffle_after_one_group_conv_interleaves_groups() -> None:
    """GConv then shuffle: output channel i*g + j is channel j*n + i, of group j, so output o sees group o % g."""
    chain = nn.Sequential(nn.Conv2d(C, C, 1, groups=G, bias=False), ChannelShuffle(G))
    expected = np.array([[o % G == k for k in range(G)] for o in range(C)])
    assert (structural_flow(chain, C, G) == expected).all()
    assert ((measured_flow(chain, C, G, input_size=(2, 2)) > 0) == expected).all()


def test_conv_connectivity_literal() -> None:
    expected = np.array(
        [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]],
        dtype=bool,
    )
    assert (conv_connectivity(4, 6, 2) == expected).all()


@pytest.mark.parametrize("inverse", [False, True])
def test_structural_flow_of_a_shuffle_is_its_permutation(inverse: bool) -> None:
    # one input group per channel: the reachability is the (C, C) permutation matrix of the op itself
    layer = ChannelUnshuffle(G) if inverse else ChannelShuffle(G)
    reach = structural_flow([layer], C, C).astype(float)
    v = torch.arange(C, dtype=torch.float64).view(1, C, 1)
    out = reach @ v.view(C).numpy()
    ref = (
        channel_shuffle(v, G) if not inverse else channel_shuffle(v, C // G)
    )  # unshuffle = shuffle by C/g
    np.testing.assert_array_equal(out, ref.view(C).numpy())


def test_structural_flow_refuses_branching_modules() -> None:
    unit = ShuffleUnit(24, 24, stride=1, groups=3)
    with pytest.raises(TypeError, match="measured_flow"):
        structural_flow(unit, 24, 3)


def test_measured_flow_through_a_shuffle_unit() -> None:
    """With shuffle, one unit already mixes groups; without, the residual unit keeps them apart.

    72 channels, g=3: bottleneck 18 = 6 per group, so after the shuffle every group of the second GConv holds
    channels of all 3 groups (with fewer than g channels per group it could not).
    """
    block = np.array([[o // 24 == k for k in range(3)] for o in range(72)])
    for shuffle, expected in (("shuffle", np.ones((72, 3), dtype=bool)), ("none", block)):
        unit = ShuffleUnit(72, 72, stride=1, groups=3, shuffle=shuffle)
        support = measured_flow(unit, 72, 3, input_size=(4, 4)) > 0
        assert (support == expected).all(), shuffle


def test_flow_input_validation() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        structural_flow(gconv_stack(C, G, 1, False), C, 5)
    with pytest.raises(ValueError, match="expects 12 channels but receives 8"):
        structural_flow(nn.Conv2d(12, 12, 1), 8, 2)
