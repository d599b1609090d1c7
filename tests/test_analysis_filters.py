"""First-layer filters by group and their colour fraction, against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shufflenet import create_model
from shufflenet.analysis.filters import colour_fraction, filter_groups


def test_colour_fraction_closed_forms() -> None:
    rng = np.random.default_rng(0)
    pattern = rng.normal(size=(5, 5))
    grey = np.stack([pattern] * 3)  # same in R, G, B
    red_only = np.stack([pattern, 0 * pattern, 0 * pattern])
    opponent = np.stack([pattern, -pattern, 0 * pattern])  # red minus green: no grey part
    w = np.stack([grey, red_only, opponent, 0 * grey])
    np.testing.assert_allclose(colour_fraction(w), [0.0, 2 / 3, 1.0, 0.0], atol=1e-12)


def test_colour_fraction_is_energy_share_of_channel_deviation() -> None:
    w = np.array([[[[1.0]], [[2.0]], [[6.0]]]])  # one 1x1 filter: (1, 3, 1, 1), channel mean 3
    # deviations (-2, -1, 3): 4 + 1 + 9 = 14 of a total energy 1 + 4 + 36 = 41
    assert colour_fraction(w)[0] == pytest.approx(14 / 41)


def test_colour_fraction_needs_three_channels() -> None:
    with pytest.raises(ValueError, match="3"):
        colour_fraction(np.zeros((4, 1, 3, 3)))


def test_alexnet_conv1_is_split_by_the_groups_of_conv2() -> None:
    model = create_model("alexnet_g2")
    fg = filter_groups(model, "conv1")
    assert fg.layer == "features.0" and fg.groups == 2 and fg.weights.shape == (96, 3, 11, 11)
    assert [(s.start, s.stop) for s in fg.group_slices()] == [(0, 48), (48, 96)]
    assert filter_groups(create_model("alexnet_g1"), "conv1").groups == 1
    # a grey first group and a colourful second one are told apart
    with torch.no_grad():
        conv = model.features[0]
        conv.weight[:48] = conv.weight[:48].mean(dim=1, keepdim=True)
    summary = filter_groups(model, "conv1").summary()
    assert summary["per_group"][0]["mean_colour_fraction"] == pytest.approx(0.0, abs=1e-9)
    assert summary["per_group"][1]["mean_colour_fraction"] > 0.5


def test_filter_groups_rejects_non_divisor() -> None:
    with pytest.raises(ValueError, match="groups=5"):
        filter_groups(create_model("alexnet_g2"), "conv1", groups=5)


def test_filter_groups_is_a_snapshot() -> None:
    """Training after the call must not change what was read (a view of the weights would)."""
    model = create_model("alexnet_g2")
    fg = filter_groups(model, "conv1")
    saved = fg.weights.copy()
    with torch.no_grad():
        model.features[0].weight.add_(1.0)
    np.testing.assert_array_equal(fg.weights, saved)
