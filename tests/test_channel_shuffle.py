"""channel_shuffle / channel_unshuffle against literal permutations, torch's native op, gradcheck and ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from shufflenet import (
    ChannelShuffle,
    ChannelUnshuffle,
    channel_shuffle,
    channel_shuffle_indices,
    channel_unshuffle,
)


def shuffle_perm(channels: int, groups: int) -> list[int]:
    """Input channel read by each output channel, written from the definition with two loops.

    Channels are laid out as ``groups`` rows of ``n = channels / groups``; the shuffle reads them column by
    column: first channel 0 of every group, then channel 1 of every group, ...
    """
    n = channels // groups
    perm = []
    for i in range(n):  # position inside a group
        for j in range(groups):  # group
            perm.append(j * n + i)
    return perm


def inverse(perm: list[int]) -> list[int]:
    inv = [0] * len(perm)
    for out_pos, src in enumerate(perm):
        inv[src] = out_pos
    return inv


def by_index(x: torch.Tensor, perm: list[int]) -> torch.Tensor:
    return x.index_select(1, torch.tensor(perm, dtype=torch.long, device=x.device))


# ---------------------------------------------------------------------------------------------- literal values


def test_literal_permutation_12_channels_3_groups():
    x = torch.arange(12.0).view(1, 12, 1, 1)
    y = channel_shuffle(x, 3)
    assert y.flatten().tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    # the test's own permutation helper agrees with the paper's example
    assert shuffle_perm(12, 3) == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]


def test_literal_inverse_12_channels_3_groups():
    x = torch.arange(12.0).view(1, 12, 1, 1)
    # inverse of 0,4,8,1,5,9,2,6,10,3,7,11: output channel k holds input channel (k % 4) * 3 + k // 4
    expected = [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]
    assert channel_unshuffle(x, 3).flatten().tolist() == expected
    assert inverse(shuffle_perm(12, 3)) == expected


def test_groups_one_and_groups_equal_channels_are_identity_and_transpose():
    x = torch.randn(2, 6, 3, 3)
    assert torch.equal(channel_shuffle(x, 1), x)
    assert torch.equal(channel_unshuffle(x, 1), x)
    # g = C: each group has one channel, the shuffle reads them in order again
    assert torch.equal(channel_shuffle(x, 6), x)


@pytest.mark.parametrize(
    ("channels", "groups"), [(12, 3), (12, 4), (24, 8), (6, 2), (240, 3), (30, 5)]
)
def test_matches_literal_and_native(channels, groups):
    x = torch.randn(2, channels, 3, 4)
    perm = shuffle_perm(channels, groups)
    y = channel_shuffle(x, groups)
    assert torch.equal(y, by_index(x, perm))
    assert torch.equal(y, F.channel_shuffle(x, groups))
    assert torch.equal(y, nn.ChannelShuffle(groups)(x))
    assert torch.equal(ChannelShuffle(groups)(x), y)
    u = channel_unshuffle(x, groups)
    assert torch.equal(u, by_index(x, inverse(perm)))
    assert torch.equal(ChannelUnshuffle(groups)(x), u)
    # the inverse is a shuffle with C / g groups
    assert torch.equal(u, F.channel_shuffle(x, channels // groups))


@pytest.mark.parametrize(("channels", "groups"), [(12, 3), (16, 4), (40, 8)])
def test_round_trip(channels, groups):
    x = torch.randn(3, channels, 5, 2)
    assert torch.equal(channel_unshuffle(channel_shuffle(x, groups), groups), x)
    assert torch.equal(channel_shuffle(channel_unshuffle(x, groups), groups), x)


# ---------------------------------------------------------------------------------------------- indices


def test_indices_literal_12_channels_3_groups():
    idx = channel_shuffle_indices(12, 3)
    assert idx.dtype == torch.int64 and idx.shape == (12,)
    assert idx.tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert channel_shuffle_indices(12, 3, inverse=True).tolist() == [
        0,
        3,
        6,
        9,
        1,
        4,
        7,
        10,
        2,
        5,
        8,
        11,
    ]
    assert channel_shuffle_indices(6, 1).tolist() == [0, 1, 2, 3, 4, 5]
    assert channel_shuffle_indices(4, 4, inverse=True).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("channels", "groups"), [(1, 1), (6, 2), (12, 4), (24, 8), (30, 5), (240, 3), (7, 7)]
)
def test_indices_match_the_loop_and_the_ops(channels, groups):
    idx = channel_shuffle_indices(channels, groups)
    inv = channel_shuffle_indices(channels, groups, inverse=True)
    assert idx.tolist() == shuffle_perm(channels, groups)
    assert inv.tolist() == inverse(shuffle_perm(channels, groups))
    x = torch.randn(2, channels, 3, 2)
    assert torch.equal(x[:, idx], channel_shuffle(x, groups))
    assert torch.equal(x[:, inv], channel_unshuffle(x, groups))
    # the modules say which permutation they apply
    for module in (ChannelShuffle(groups), ChannelUnshuffle(groups)):
        perm = channel_shuffle_indices(channels, module.groups, module.inverse)
        assert torch.equal(x[:, perm], module(x))


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((10, 3), ValueError, r"channels=10 is not divisible by groups=3"),
        ((4, 8), ValueError, r"groups=8 is larger than channels=4"),
        ((0, 1), ValueError, r"channels=0 must be a positive integer"),
        ((12, 0), ValueError, r"groups=0 must be a positive integer"),
        ((12.0, 3), TypeError, r"channels must be an int, got 12\.0"),
        ((12, "3"), TypeError, r"groups must be an int, got '3'"),
    ],
)
def test_indices_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        channel_shuffle_indices(*args)


# ------------------------------------------------------------------------------ layouts, ranks, dtypes, autograd


def test_channels_last_kept_and_equal():
    x = torch.randn(2, 12, 5, 7)
    xc = x.to(memory_format=torch.channels_last)
    for fn in (channel_shuffle, channel_unshuffle):
        y = fn(xc, 3)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert not y.is_contiguous()
        assert torch.equal(y, fn(x, 3))
    assert torch.equal(channel_shuffle(xc, 3), by_index(x, shuffle_perm(12, 3)))


def test_contiguous_input_gives_contiguous_output():
    x = torch.randn(2, 12, 5, 7)
    assert channel_shuffle(x, 4).is_contiguous()
    assert channel_unshuffle(x, 4).is_contiguous()


def test_channels_last_3d_kept_for_5d_input():
    x = torch.randn(2, 12, 3, 4, 5)
    xc = x.to(memory_format=torch.channels_last_3d)
    for fn in (channel_shuffle, channel_unshuffle):
        y = fn(xc, 4)
        assert y.is_contiguous(memory_format=torch.channels_last_3d)
        assert torch.equal(y, fn(x, 4))
    assert torch.equal(channel_shuffle(xc, 4), by_index(x, shuffle_perm(12, 4)))


def test_three_dim_input():
    x = torch.randn(2, 12, 9)  # (N, C, L)
    assert torch.equal(channel_shuffle(x, 3), by_index(x, shuffle_perm(12, 3)))
    assert torch.equal(channel_unshuffle(x, 3), by_index(x, inverse(shuffle_perm(12, 3))))
    assert torch.equal(channel_shuffle(x, 3), F.channel_shuffle(x, 3))


def test_non_contiguous_view_input():
    base = torch.randn(2, 12, 8, 6)
    x = base[:, :, ::2, 1:]  # a strided view, neither contiguous nor channels_last
    assert torch.equal(channel_shuffle(x, 3), by_index(x.contiguous(), shuffle_perm(12, 3)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_bitwise_equal_to_index_select(dtype):
    x = torch.randn(2, 24, 3, 3).to(dtype)
    for fn, perm in (
        (channel_shuffle, shuffle_perm(24, 4)),
        (channel_unshuffle, inverse(shuffle_perm(24, 4))),
    ):
        y = fn(x, 4)
        assert y.dtype == dtype
        assert torch.equal(y, by_index(x, perm))


def test_integer_tensor():
    x = torch.arange(2 * 8 * 2 * 2).view(2, 8, 2, 2)
    assert torch.equal(channel_shuffle(x, 2), by_index(x, shuffle_perm(8, 2)))


@pytest.mark.parametrize("fn", [channel_shuffle, channel_unshuffle])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_float64(fn, channels_last):
    x = torch.randn(2, 6, 3, 2, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: fn(t, 3), (x,))
    assert torch.autograd.gradgradcheck(lambda t: fn(t, 3), (x,))


def test_gradient_is_inverse_permutation():
    x = torch.randn(1, 12, 2, 2, requires_grad=True)
    w = torch.randn(1, 12, 2, 2)
    (channel_shuffle(x, 3) * w).sum().backward()
    # d/dx of sum(w * P x) is P^T w: the upstream gradient moved back by the inverse permutation
    assert torch.equal(x.grad, by_index(w, inverse(shuffle_perm(12, 3))))


# ---------------------------------------------------------------------------------------------- property tests


@st.composite
def shuffle_cases(draw):
    groups = draw(st.integers(1, 6))
    n = draw(st.integers(1, 5))
    batch = draw(st.integers(1, 3))
    spatial = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "transposed"]))
    return groups, n, batch, spatial, layout


def _make(groups, n, batch, spatial, layout, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, groups * n, *spatial, generator=gen)
    if layout == "channels_last" and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    elif layout == "channels_last" and x.dim() == 5:
        x = x.to(memory_format=torch.channels_last_3d)
    elif layout == "transposed":
        x = x.transpose(0, -1).contiguous().transpose(0, -1)  # same values, batch-innermost strides
    return x


@given(shuffle_cases())
def test_property_shuffle_equals_definition(case):
    groups, n, batch, spatial, layout = case
    x = _make(groups, n, batch, spatial, layout)
    channels = groups * n
    y = channel_shuffle(x, groups)
    assert y.shape == x.shape
    assert torch.equal(y, by_index(x, shuffle_perm(channels, groups)))
    assert torch.equal(y, F.channel_shuffle(x.contiguous(), groups))
    assert torch.equal(channel_unshuffle(y, groups), x)
    if layout == "channels_last" and x.dim() in (4, 5):
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        assert y.is_contiguous(memory_format=fmt)


@given(shuffle_cases())
def test_property_unshuffle_equals_inverse(case):
    groups, n, batch, spatial, layout = case
    x = _make(groups, n, batch, spatial, layout, seed=1)
    u = channel_unshuffle(x, groups)
    assert torch.equal(u, by_index(x, inverse(shuffle_perm(groups * n, groups))))
    assert torch.equal(channel_shuffle(u, groups), x)


@given(st.integers(1, 8), st.integers(1, 8))
def test_property_repeated_shuffle_composes(groups, n):
    # k shuffles equal the literal permutation composed k times, and the identity comes back (the shuffle
    # is a "perfect shuffle" of a (g, n) matrix; its order is at most C)
    channels = groups * n
    perm = shuffle_perm(channels, groups)
    x = torch.arange(float(channels)).view(1, channels, 1)
    y, p, steps = x, list(range(channels)), 0
    while True:
        y = channel_shuffle(y, groups)
        p = [p[k] for k in perm]
        steps += 1
        assert y.flatten().tolist() == [float(v) for v in p]
        if p == list(range(channels)):
            break
        assert steps <= channels
    assert torch.equal(y, x)


# ---------------------------------------------------------------------------------------------- errors


def test_channels_not_divisible():
    with pytest.raises(ValueError, match=r"channels=10 is not divisible by groups=3"):
        channel_shuffle(torch.randn(1, 10, 2, 2), 3)
    with pytest.raises(ValueError, match=r"channels=10 is not divisible by groups=4"):
        channel_unshuffle(torch.randn(1, 10, 2, 2), 4)


@pytest.mark.parametrize("groups", [0, -1, -3])
def test_groups_not_positive(groups):
    with pytest.raises(ValueError, match=rf"groups={groups} must be a positive integer"):
        channel_shuffle(torch.randn(1, 6, 2, 2), groups)
    with pytest.raises(ValueError, match=rf"groups={groups} must be a positive integer"):
        ChannelShuffle(groups)
    with pytest.raises(ValueError, match=rf"groups={groups} must be a positive integer"):
        ChannelUnshuffle(groups)


def test_groups_larger_than_channels():
    with pytest.raises(ValueError, match=r"groups=8 is larger than channels=4"):
        channel_shuffle(torch.randn(1, 4, 2, 2), 8)
    with pytest.raises(ValueError, match=r"groups=8 is larger than channels=4"):
        ChannelShuffle(8)(torch.randn(1, 4, 2, 2))


@pytest.mark.parametrize(
    ("groups", "shown"), [(2.0, r"2\.0"), ("3", r"'3'"), (True, r"True"), (None, r"None")]
)
def test_groups_not_an_int(groups, shown):
    x = torch.randn(1, 6, 2, 2)
    with pytest.raises(TypeError, match=rf"groups must be an int, got {shown}"):
        channel_shuffle(x, groups)
    with pytest.raises(TypeError, match=rf"groups must be an int, got {shown}"):
        channel_unshuffle(x, groups)
    with pytest.raises(TypeError, match=rf"groups must be an int, got {shown}"):
        ChannelShuffle(groups)


def test_numpy_integer_groups_accepted():
    x = torch.randn(1, 6, 2, 2)
    assert torch.equal(channel_shuffle(x, np.int64(3)), channel_shuffle(x, 3))


@pytest.mark.parametrize("shape", [(4, 6), (6,)])
def test_input_with_fewer_than_three_dims(shape):
    with pytest.raises(
        ValueError, match=r"3 or more dims .*got shape \(" + ", ".join(map(str, shape))
    ):
        channel_shuffle(torch.randn(*shape), 2)
    with pytest.raises(ValueError, match=r"3 or more dims"):
        channel_unshuffle(torch.randn(*shape), 2)


def test_not_a_tensor():
    with pytest.raises(TypeError, match=r"expects a torch\.Tensor, got ndarray"):
        channel_shuffle(np.zeros((1, 6, 2, 2)), 3)


def test_extra_repr():
    assert "groups=3" in repr(ChannelShuffle(3))
    assert "groups=4" in repr(ChannelUnshuffle(4))


# ---------------------------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    x = torch.randn(2, 24, 5, 5).to(dtype)
    for fn in (channel_shuffle, channel_unshuffle):
        for fmt in (torch.contiguous_format, torch.channels_last):
            xc = x.to("cuda").to(memory_format=fmt)
            y = fn(xc, 3)
            assert y.device.type == "cuda"
            assert y.is_contiguous(memory_format=fmt)
            assert torch.equal(y.cpu(), fn(x, 3))
    xg = x.double().cuda().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: channel_shuffle(t, 3), (xg,))


# ---------------------------------------------------------------------------------------------- ONNX


class _ShuffleNetSlice(nn.Module):
    """conv -> shuffle -> depthwise conv -> unshuffle: a module that uses both ops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 12, 1, groups=3)
        self.shuffle = ChannelShuffle(3)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.unshuffle = ChannelUnshuffle(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unshuffle(self.dw(self.shuffle(self.conv(x))))


def _export(model: nn.Module, x: torch.Tensor, path, dynamo: bool) -> None:
    if dynamo:
        dims = {
            0: torch.export.Dim("batch"),
            2: torch.export.Dim("height"),
            3: torch.export.Dim("width"),
        }
        torch.onnx.export(
            model, (x,), str(path), dynamo=True, dynamic_shapes=(dims,),
            input_names=["x"], output_names=["y"], verbose=False,
        )  # fmt: skip
    else:
        axes = {0: "batch", 2: "height", 3: "width"}
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": axes, "y": axes},
        )  # fmt: skip


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning"
)  # the TorchScript exporter is tested on purpose
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_export_and_onnxruntime(dynamo, tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    if dynamo:
        pytest.importorskip("onnxscript", reason="onnxscript (dynamo exporter) is not installed")
    model = _ShuffleNetSlice().eval()
    path = tmp_path / "slice.onnx"
    _export(model, torch.randn(2, 6, 8, 8), path, dynamo)

    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    ops = {n.op_type for n in graph.graph.node}
    assert "Transpose" in ops
    assert all(n.domain in ("", "ai.onnx") for n in graph.graph.node), "custom-domain op in graph"
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.HasField("dim_param") for d in dims] == [True, False, True, True]  # N, C, H, W

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    # the export size and two others, one with a different batch and non-square spatial size
    for shape in [(2, 6, 8, 8), (1, 6, 5, 9), (3, 6, 12, 4)]:
        x = torch.randn(shape)
        (got,) = sess.run(None, {name: x.numpy()})
        with torch.no_grad():
            want = model(x)
        assert got.shape == tuple(want.shape)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning"
)  # the TorchScript exporter is tested on purpose
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_shuffle_alone_is_exact_permutation(dynamo, tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    if dynamo:
        pytest.importorskip("onnxscript", reason="onnxscript (dynamo exporter) is not installed")
    path = tmp_path / "shuffle.onnx"
    _export(ChannelShuffle(3).eval(), torch.randn(2, 12, 4, 4), path, dynamo)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(2, 12, 4, 4), (1, 12, 3, 7)]:
        x = torch.randn(shape)
        (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        np.testing.assert_array_equal(got, by_index(x, shuffle_perm(12, 3)).numpy())
