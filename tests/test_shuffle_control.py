"""The control of the shuffle ablation: with one group a channel shuffle is the identity permutation, so
ShuffleNet with and without shuffle computes the same function from the same weights; with several groups
it does not."""

from __future__ import annotations

import pytest
import torch

from shufflenet import create_model


@pytest.mark.parametrize(("groups", "same"), [(1, True), (3, False)])
def test_shuffle_on_and_off_with_the_same_weights(groups: int, same: bool) -> None:
    name = f"shufflenet_v1_g{groups}_x0_25"
    on = create_model(name, num_classes=10, small_input=True, shuffle="shuffle").eval()
    off = create_model(name, num_classes=10, small_input=True, shuffle="none").eval()
    off.load_state_dict(on.state_dict())  # shuffling has no weights: the same state fits both
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = on(x), off(x)
    if same:
        assert torch.equal(a, b)
    else:
        assert (a - b).abs().max() > 1e-3
