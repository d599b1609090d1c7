"""Graph capture: every registered model traces with torch.fx and exports with torch.export, and the traced
graphs compute what the eager model computes. The shuffle ops keep their argument checks for real tensors."""

from __future__ import annotations

import re

import pytest
import torch
import torch.fx
from conftest import input_sizes
from torch import nn
from torch.export import Dim

from shufflenet import (
    ChannelShuffle,
    ChannelUnshuffle,
    ShuffleNetV1,
    channel_shuffle,
    channel_unshuffle,
    create_model,
    list_models,
)

ALL_MODELS = list_models()

# torch.export costs seconds per model: the default run exports one model of each family, the slow run all.
EXPORT_DEFAULT = (
    "alexnet_g2",
    "mobilenet_v1_x0_25",
    "nin_root4",
    "resnext26_32x4d",
    "shufflenet_v1_g3_x0_5",
    "shufflenet_v2_x0_5",
    "xception_tiny",
)


def family(name: str) -> str:
    """``shufflenet_v1_g3_x1_0`` -> ``shufflenet_v1``, ``nin_root4`` -> ``nin``."""
    return re.match(r"[a-z]+(_v\d+)?", name).group(0)


def test_every_family_is_exported_in_the_default_run():
    assert set(EXPORT_DEFAULT) <= set(ALL_MODELS)
    assert {family(n) for n in ALL_MODELS} == {family(n) for n in EXPORT_DEFAULT}


# ---------------------------------------------------------------------------------------------- the shuffle ops


@pytest.mark.parametrize(
    ("module", "fn"),
    [(ChannelShuffle(3), channel_shuffle), (ChannelUnshuffle(3), channel_unshuffle)],
)
def test_fx_records_the_shuffle_as_one_node(module, fn):
    model = nn.Sequential(nn.Conv2d(12, 12, 1), module)
    gm = torch.fx.symbolic_trace(model)
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert [n.target for n in calls] == [fn]
    assert calls[0].args[1] == 3
    x = torch.randn(2, 12, 5, 3)
    assert torch.equal(gm(x), model(x))
    # the traced module runs the op itself: memory format kept, checks on real tensors kept
    xc = x.contiguous(memory_format=torch.channels_last)
    y = gm(xc)
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(y, model(x))
    with pytest.raises(ValueError, match="not divisible by groups=3"):
        torch.fx.symbolic_trace(nn.Sequential(module))(torch.randn(1, 10, 2, 2))


def test_shuffle_traced_through_from_another_module_matches_the_literal_permutation():
    class Caller(
        nn.Module
    ):  # calls the functions through its own global names: FX traces into them
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return channel_unshuffle(channel_shuffle(x, 4), 2)

    gm = torch.fx.symbolic_trace(Caller())
    assert not any(n.target in (channel_shuffle, channel_unshuffle) for n in gm.graph.nodes)
    x = torch.arange(8.0).view(1, 8, 1, 1)
    # shuffle g=4: 0,2,4,6,1,3,5,7; then unshuffle g=2 reads channels 0,2,4,6,1,3,5,7 of that
    assert gm(x).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert gm(x).flatten().tolist() == Caller()(x).flatten().tolist()


def test_checks_on_real_tensors_are_kept():
    with pytest.raises(TypeError, match="channel_shuffle expects a torch.Tensor, got list"):
        channel_shuffle([[1.0, 2.0]], 2)
    with pytest.raises(TypeError, match="channel_unshuffle expects a torch.Tensor, got ndarray"):
        channel_unshuffle(torch.zeros(1, 4, 1).numpy(), 2)
    with pytest.raises(TypeError, match="groups must be an int"):
        ChannelShuffle(2.0)
    with pytest.raises(ValueError, match="3 or more dims"):
        torch.fx.symbolic_trace(ChannelShuffle(2))(torch.zeros(4, 4))


def test_export_of_the_shuffle_with_dynamic_batch_and_sides():
    model = nn.Sequential(ChannelShuffle(3)).eval()
    batch, side = Dim("batch", min=1, max=64), Dim("side", min=2, max=256)
    ep = torch.export.export(
        model, (torch.randn(2, 12, 4, 4),), dynamic_shapes={"input": {0: batch, 2: side, 3: side}}
    )
    x = torch.arange(5 * 12 * 7 * 7, dtype=torch.float32).view(5, 12, 7, 7)
    assert torch.equal(ep.module()(x), channel_shuffle(x, 3))


# ---------------------------------------------------------------------------------------------- whole registry


@pytest.mark.parametrize("name", ALL_MODELS)
def test_fx_symbolic_trace(name):
    model = create_model(name).eval()
    gm = torch.fx.symbolic_trace(model)
    (h, w), _ = input_sizes(name)
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("shuffle", ["shuffle", "unshuffle", "none"])
@pytest.mark.parametrize("position", ["before_dw", "after_dw"])
def test_fx_symbolic_trace_shufflenet_v1_variants(shuffle, position):
    model = ShuffleNetV1(
        3, 0.25, num_classes=5, shuffle=shuffle, shuffle_position=position, se=True
    )
    gm = torch.fx.symbolic_trace(model.eval())
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    expected = {"shuffle": channel_shuffle, "unshuffle": channel_unshuffle, "none": None}[shuffle]
    assert targets.count(channel_shuffle) + targets.count(channel_unshuffle) == (
        0 if expected is None else 16
    )
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


def _check_export(name: str) -> None:
    model = create_model(name).eval()
    (h, w), _ = input_sizes(name)
    batch = Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (torch.randn(2, 3, h, w),), dynamic_shapes={"x": {0: batch}})
    x = torch.randn(3, 3, h, w)  # another batch size than the example
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", EXPORT_DEFAULT)
def test_torch_export(name):
    _check_export(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL_MODELS if n not in EXPORT_DEFAULT])
def test_torch_export_rest_of_registry(name):
    _check_export(name)
