"""Channel layouts and exchange plans (pure bookkeeping, one process), and the one-process group-parallel
model (``ParallelContext.single()``: no process group needed)."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from shufflenet import channel_shuffle, create_model
from shufflenet.ops.channel_shuffle import ChannelShuffle, ChannelUnshuffle
from shufflenet.parallel import (
    ChannelLayout,
    ParallelContext,
    convert_group_parallel,
    gather_grads,
    gather_state_dict,
    load_full_state_dict,
    shard_layouts,
)
from shufflenet.parallel.layout import plan_exchange, shuffle_permutation


def _simulate(src: ChannelLayout, dst: ChannelLayout, x: torch.Tensor) -> list[torch.Tensor]:
    """Run every rank's plan in one process, moving rows as all_to_all_single would."""
    P = src.world_size
    plans = [plan_exchange(src, dst, r) for r in range(P)]
    local = [x[:, list(src.local(r))] for r in range(P)]
    sends = [
        local[r][:, list(plans[r].send_index)].split(list(plans[r].send_splits), dim=1)
        for r in range(P)
    ]
    out = []
    for d in range(P):
        recv = torch.cat([sends[s][d] for s in range(P)], dim=1)
        assert recv.shape[1] == sum(plans[d].recv_splits)
        out.append(recv[:, list(plans[d].recv_order)])
    return out


def test_blocks_split_evenly_then_front_loaded():
    assert ChannelLayout.blocks(6, 2).parts == ((0, 1, 2), (3, 4, 5))
    assert ChannelLayout.blocks(10, 4).parts == ((0, 1, 2), (3, 4, 5), (6, 7), (8, 9))


@pytest.mark.parametrize("groups, world", [(2, 2), (4, 2), (8, 4), (3, 3)])
@pytest.mark.parametrize("module", [ChannelShuffle, ChannelUnshuffle])
def test_shuffle_is_a_relabelling_plus_one_all_to_all(groups, world, module):
    """Relabel the blocks by the shuffle permutation, exchange to blocks: equals the shuffle's blocks."""
    mid = groups * 6
    x = torch.randn(2, mid, 3, 3)
    shuffle = module(groups)
    perm = shuffle_permutation(shuffle, mid)
    assert torch.equal(shuffle(x), x[:, perm])
    blocks = ChannelLayout.blocks(mid, world)
    relabelled = blocks.relabel(perm)
    y = shuffle(x)
    for r in range(world):  # the data did not move: rank r's rows are still x's block, named in y
        assert torch.equal(y[:, list(relabelled.local(r))], x[:, list(blocks.local(r))])
    out = _simulate(relabelled, blocks, y)
    for r in range(world):
        assert torch.equal(out[r], y[:, list(blocks.local(r))])


def test_shuffle_exchange_sends_all_but_one_pth():
    """With n = mid/g divisible by P, a rank keeps exactly 1/P of its channels (paper's shuffle)."""
    g, P, mid = 4, 2, 32
    perm = shuffle_permutation(ChannelShuffle(g), mid)
    plan = plan_exchange(
        ChannelLayout.blocks(mid, P).relabel(perm), ChannelLayout.blocks(mid, P), 0
    )
    assert plan.sent_to_others == mid // P * (P - 1) // P
    assert channel_shuffle(torch.arange(12.0).view(1, 12, 1), 3).flatten().tolist()[:3] == [0, 4, 8]


def test_random_exchanges_and_halos():
    rng = random.Random(0)
    for _ in range(50):
        C, P = rng.randint(1, 24), rng.randint(1, 4)
        order = list(range(C))
        rng.shuffle(order)
        cuts = sorted(rng.randint(0, C) for _ in range(P - 1))
        src = ChannelLayout.from_parts(C, [order[a:b] for a, b in zip([0, *cuts], [*cuts, C])])
        dst = ChannelLayout.from_parts(
            C, [rng.sample(range(C), rng.randint(0, C)) for _ in range(P)]
        )
        x = torch.randn(2, C)
        out = _simulate(src, dst, x)
        for r in range(P):
            assert torch.equal(out[r], x[:, list(dst.local(r))])


def test_concat_layout_and_errors():
    a = ChannelLayout.from_parts(4, [[0, 1, 2, 3], []])  # first unit: pooled channels all on rank 0
    b = ChannelLayout.blocks(6, 2)
    assert a.concat(b).parts == ((0, 1, 2, 3, 4, 5, 6), (7, 8, 9))
    assert a.concat(b).is_partition()
    with pytest.raises(ValueError, match="held by no rank"):
        plan_exchange(ChannelLayout.from_parts(3, [[0], [1]]), ChannelLayout.blocks(3, 2), 0)


SINGLE = [
    ("shufflenet_v1_g3_x0_5", dict(num_classes=7)),
    ("shufflenet_v1_g8_x0_25", dict(num_classes=7, small_input=True, shuffle="unshuffle")),
    (
        "shufflenet_v1_g2_x0_25",
        dict(num_classes=7, se=True, shuffle_position="after_dw", drop_rate=0.2),
    ),
    ("alexnet_g2", dict(num_classes=7)),
]


@pytest.mark.parametrize("name, kwargs", SINGLE, ids=[s[0] for s in SINGLE])
@pytest.mark.parametrize("dense", ["split", "replicate"])
def test_one_process_form_equals_the_model(name, kwargs, dense):
    """P = 1: same outputs, gradients and state-dict keys; the state dict round-trips."""
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    pmodel = convert_group_parallel(copy.deepcopy(model), ParallelContext.single(), dense)
    size = 32 if kwargs.get("small_input") else 71
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(pmodel(x), model(x), rtol=1e-5, atol=1e-6)
    pmodel(x).square().sum().backward()
    model(x).square().sum().backward()
    grads = gather_grads(pmodel)  # in the model's channel order (the depthwise shards are permuted)
    assert list(grads) == [n for n, _ in model.named_parameters()]
    for n, q in model.named_parameters():
        torch.testing.assert_close(grads[n], q.grad, rtol=1e-4, atol=1e-6)
    state = gather_state_dict(pmodel)
    assert list(state) == list(model.state_dict())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state[k], v)
    assert shard_layouts(pmodel), "grouped layers are recorded as sharded"
    load_full_state_dict(pmodel, model.state_dict())


def test_load_full_state_dict_checks_shapes():
    pmodel = convert_group_parallel(
        create_model("alexnet_g2", num_classes=7), ParallelContext.single()
    )
    state = create_model("alexnet_g2", num_classes=7).state_dict()
    state["features.4.weight"] = state["features.4.weight"][:10]
    with pytest.raises(ValueError, match=r"features.4.weight: \(10, 48, 5, 5\) does not fit"):
        load_full_state_dict(pmodel, state)
