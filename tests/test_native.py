"""Native engine: compiled kernels against eager PyTorch (numerics only, no timing).

ShuffleNet units for every g in {1, 2, 3, 4, 8}, stride 1 and 2, dense first 1x1 conv, every shuffle mode and
position, odd spatial sizes, one image per thread and all threads on one image, every instruction set this CPU
runs; whole models; the order in which threads may run the chunks of consecutive ops; the channels-last
shuffle kernel; the fallback without a compiler. Skipped (with the reason) where no C compiler exists.
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from shufflenet import ShuffleUnit, channel_shuffle, channel_unshuffle, create_model
from shufflenet.deploy import NotSupportedError, channel_shuffle_nhwc, optimize
from shufflenet.deploy.native import NativeUnavailable, build_library, get_library
from shufflenet.deploy.native.build import find_compiler

if find_compiler() is None:
    pytest.skip(
        "no C compiler (cc/gcc/clang): the native engine cannot be built", allow_module_level=True
    )

from conftest import seeded_model

from shufflenet.deploy.native import NativeModule  # noqa: E402
from shufflenet.deploy.native.module import thread_plan  # noqa: E402


@pytest.fixture(scope="module")
def lib():
    try:
        return get_library()
    except NativeUnavailable as e:  # a compiler exists, so a failed build is a failure, not a skip
        pytest.fail(f"native engine did not build: {e}")


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    return seeded_model(model, seed)


def _check(native: nn.Module, ref_model: nn.Module, x: torch.Tensor, tol: float = 1e-4) -> None:
    with torch.no_grad():
        ref = ref_model(x)
    out = native(x)
    assert out.shape == ref.shape
    scale = ref.abs().max().clamp_min(1e-6)
    err = ((out - ref).abs().max() / scale).item()
    assert err <= tol, f"max relative error {err:.2e}"


def _unit(g: int, stride: int, first_grouped: bool = True, **kw) -> ShuffleUnit:
    if stride == 1:
        cin = cout = 8 * g
    else:
        # the dense first 1x1 conv takes any input width (the stem's 24)
        cin = 4 * g if first_grouped else 6
        cout = cin + 8 * g
    unit = ShuffleUnit(
        cin, cout, stride, g, bottleneck_channels=2 * g, first_grouped=first_grouped, **kw
    )
    return _randomize(unit, seed=g * 10 + stride)


@pytest.mark.parametrize("g", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(7, 9), (1, 3), (13, 5), (16, 16)])
def test_unit_matches_eager(lib, g, stride, hw):
    unit = _unit(g, stride)
    native = NativeModule(unit, num_threads=1)
    _check(native, unit, torch.randn(2, unit.in_channels, *hw))


@pytest.mark.parametrize("hw", [(7, 7), (2, 25), (3, 17), (14, 14), (1, 97), (5, 5), (13, 5)])
def test_1x1_conv_tail_pixels(lib, hw):
    # The 1x1 conv cuts a plane into tiles of whole pixel vectors; the last P % VW pixels go with the last tile
    # (a whole tile, up to 4 of them: 49 = 48 + 1, 50, 51, 196 = 192 + 4, 97) or on their own (25, 65). Every
    # instruction set, one and two threads (pixel ranges), blocks of 4, 5, 6, 7 and 8 output channels.
    units = [
        _randomize(ShuffleUnit(13, 13, 1, 1, bottleneck_channels=5), seed=1),
        _randomize(ShuffleUnit(48, 48, 1, 3, bottleneck_channels=12), seed=2),
    ]
    for isa in lib.supported:
        for unit in units:
            x = torch.randn(1, unit.in_channels, *hw)
            for threads in (1, 2):
                _check(NativeModule(unit, isa=isa, num_threads=threads), unit, x)


@pytest.mark.parametrize("g", [1, 2, 3, 4, 8])
def test_first_unit_dense_compress(lib, g):
    unit = _unit(g, 2, first_grouped=False)
    assert unit.compress.conv.groups == 1
    _check(NativeModule(unit, num_threads=1), unit, torch.randn(1, unit.in_channels, 11, 15))


@pytest.mark.parametrize(
    "shuffle,position",
    [
        ("shuffle", "before_dw"),
        ("shuffle", "after_dw"),
        ("unshuffle", "before_dw"),
        ("none", "before_dw"),
    ],
)
@pytest.mark.parametrize("stride", [1, 2])
def test_unit_shuffle_modes(lib, shuffle, position, stride):
    unit = _unit(4, stride, shuffle=shuffle, shuffle_position=position)
    _check(NativeModule(unit, num_threads=1), unit, torch.randn(2, unit.in_channels, 9, 6))


@pytest.mark.parametrize("batch,threads", [(1, 2), (3, 2), (2, 1), (5, 3)])
def test_threading_modes(lib, batch, threads):
    # batch < threads: all threads on one image (chunked ops); batch >= threads: one image per thread
    unit = _unit(3, 1)
    _check(
        NativeModule(unit, num_threads=threads), unit, torch.randn(batch, unit.in_channels, 28, 28)
    )
    unit2 = _unit(3, 2)
    _check(
        NativeModule(unit2, num_threads=threads),
        unit2,
        torch.randn(batch, unit2.in_channels, 27, 29),
    )


def _chunk_needs(mod: NativeModule, x: torch.Tensor, threads: int) -> list[list[int]]:
    """For each op, the chunks of the op before that each of its chunks waits for (bit masks)."""
    n, _, h, w = x.shape
    b = mod._get_bound(n, h, w, thread_plan(n, threads))
    assert b.plan.deps and b.plan.deps_T == threads
    deps = np.ctypeslib.as_array(
        ctypes.cast(b.plan.deps, ctypes.POINTER(ctypes.c_uint64)), (b.plan.nops * 64,)
    )
    chunks = [r["chunks"] for r in mod.profile(x, repeats=1, threads=threads)]
    return [[int(d) for d in deps[64 * o : 64 * o + chunks[o]]] for o in range(b.plan.nops)]


def _seq_with_every_float_op() -> nn.Module:
    # dense 3x3 convs of stride 1, then 2 with a max pool, depthwise convs of stride 1 and 2, both pools, flat ops
    return _randomize(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(16, 16, 3, 1, 1, groups=16),
            nn.BatchNorm2d(16),
            nn.Conv2d(16, 24, 1, groups=4),
            nn.ReLU(),
            nn.Conv2d(24, 24, 3, 2, 1, groups=24),
            nn.AvgPool2d(3, 2, 1),
            nn.MaxPool2d(3, 2, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(24, 7),
        )
    )


@pytest.mark.parametrize(
    "name,size,threads",
    [
        ("shufflenet_v1_g3_x0_5", (96, 112), 2),
        ("shufflenet_v1_g3_x0_5", (96, 112), 3),
        ("shufflenet_v1_g1_x0_25", (160, 128), 2),
        ("shufflenet_v1_g8_x0_25", (128, 128), 4),
        ("mobilenet_v1_x0_25", (96, 96), 2),
        ("small_input", (32, 32), 2),
        ("sequential", (128, 144), 3),
        ("int8:shufflenet_v1_g3_x0_5", (96, 112), 2),
        ("int8:shufflenet_v1_g8_x0_25", (128, 128), 3),
        ("int8:mobilenet_v1_x0_25", (96, 96), 2),
    ],
)
def test_chunks_start_once_what_they_read_is_written(lib, name, size, threads):
    # With several threads a chunk starts once the chunks of the op before that write what it reads are done
    # (plan->deps). sn_check_schedule runs, on one thread, every chunk of the next op as early as those
    # dependencies allow, in random order, after filling every plane the ops write with NaN: a dependency
    # missing (a read before the write) or a slot reused too early (a write over what the op before still
    # reads) changes the output.
    # int8 (the 1x1 conv writing over its residual, ops in flight beside each other): quad planes are filled
    # with bytes of 127 instead of NaN
    int8 = name.startswith("int8:")
    if name == "small_input":
        m = _randomize(create_model("shufflenet_v1_g2_x0_5", num_classes=10, small_input=True))
    elif name == "sequential":
        m = _seq_with_every_float_op()
    else:
        m = _randomize(create_model(name.removeprefix("int8:")))
    x = torch.randn(1, 3, *size)
    if int8:
        from shufflenet import quantize

        q = quantize(m, torch.randn(4, 3, *size))
    for isa in lib.supported:  # chunks differ with the vector width
        if int8:
            mod = q.native(isa=isa, num_threads=threads)
            ref = mod(x)
        else:
            mod = NativeModule(m, isa=isa, num_threads=threads)
            ref = mod(x)
            _check(mod, m, x)
        needs = _chunk_needs(mod, x, threads)
        # the float dependencies are by chunk: somewhere a chunk needs some but not all chunks of the op before
        # (an int8 op waits for the whole op before it)
        partial = [
            0 < d < (1 << len(needs[o - 1])) - 1 for o in range(1, len(needs)) for d in needs[o]
        ]
        assert any(partial) != int8
        b = mod._get_bound(1, *size, thread_plan(1, threads))
        for seed in range(3):
            y = torch.empty_like(ref)
            rc = lib.cdll.sn_check_schedule(
                ctypes.byref(b.plan), mod.isa, threads, x.data_ptr(), y.data_ptr(), seed
            )
            assert rc == 0
            torch.testing.assert_close(y, ref, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_residual_1x1_conv_writes_over_its_residual_only_when_nothing_else_reads_it(kind):
    from shufflenet.deploy.native._abi import OP_DW, OP_PW, OP_QPW
    from shufflenet.deploy.native.lower import Op
    from shufflenet.deploy.native.module import _assign_slots

    res_op = OP_PW if kind == "float" else OP_QPW

    def slots(before_last: Op, after: Op):
        # values: 0 input, 1 x, 2 bottleneck, 3 its depthwise conv, 4 = relu(1x1(3) + x), 5 output
        ops = [
            Op(OP_PW, 0, 1, cin=8, cout=8),
            Op(OP_PW, 1, 2, cin=8, cout=4),
            before_last,
            Op(res_op, 3, 4, res=1, cin=4, cout=8),
            after,
        ]
        chans = [8, 8, 4, 4, 8, 8]
        s = _assign_slots(ops, [False] * 6, chans, {v: (6, 6) for v in range(6)}, 5)
        return s.of

    unit = slots(Op(OP_DW, 2, 3, cin=4, cout=4), Op(OP_PW, 4, 5, cin=8, cout=8))
    assert unit[4] == unit[1]  # a ShuffleNet unit: in place
    # the op before reads x (it may still run beside the 1x1 conv), or an op after does: a new buffer
    read_before = slots(Op(OP_PW, 1, 3, cin=8, cout=4), Op(OP_PW, 4, 5, cin=8, cout=8))
    assert read_before[4] != read_before[1]
    read_after = slots(Op(OP_DW, 2, 3, cin=4, cout=4), Op(res_op, 4, 5, res=1, cin=8, cout=8))
    assert read_after[4] != read_after[1]
    # the output is one part of a concatenation: a new buffer
    ops = [
        Op(OP_PW, 0, 1, cin=8, cout=8),
        Op(OP_PW, 1, 2, cin=8, cout=4),
        Op(OP_DW, 2, 3, cin=4, cout=4),
        Op(res_op, 3, 4, res=1, cin=4, cout=8),
        Op(OP_DW, 3, 4, dst_coff=8, cin=4, cout=4),
        Op(OP_PW, 4, 5, cin=12, cout=8),
    ]
    s = _assign_slots(ops, [False] * 6, [8, 8, 4, 4, 12, 8], {v: (6, 6) for v in range(6)}, 5)
    assert s.of[4] != s.of[1]
    # the residual in the caller's input is never written
    ops = [
        Op(OP_PW, 0, 1, cin=8, cout=4),
        Op(res_op, 1, 2, res=0, cin=4, cout=8),
        Op(OP_PW, 2, 3, cin=8, cout=8),
    ]
    s = _assign_slots(ops, [False] * 4, [8, 4, 8, 8], {v: (6, 6) for v in range(4)}, 3)
    assert s.of[2] >= 2


def test_a_value_stays_until_the_op_after_its_last_reader():
    # op i may run beside op i - 1: it must not write where op i - 1 still reads, even when op i - 1 is that
    # value's last reader; one op later it may
    from shufflenet.deploy.native._abi import OP_PW
    from shufflenet.deploy.native.lower import Op
    from shufflenet.deploy.native.module import _assign_slots

    ops = [Op(OP_PW, v, v + 1, cin=8, cout=8) for v in range(5)]
    s = _assign_slots(ops, [False] * 6, [8] * 6, {v: (6, 6) for v in range(6)}, 5)
    assert s.of[3] != s.of[1]  # op 2 writes 3 while op 1 may still read 1
    # op 3 writes 4 where 1 was: op 1, its last reader, is complete by then
    assert s.of[4] == s.of[1]


def test_every_instruction_set(lib):
    assert "generic" in lib.supported
    for isa in lib.supported:
        for g in (1, 3, 8):
            for stride in (1, 2):
                unit = _unit(g, stride)
                _check(
                    NativeModule(unit, isa=isa, num_threads=2),
                    unit,
                    torch.randn(2, unit.in_channels, 10, 7),
                )
        m = _randomize(create_model("shufflenet_v1_g3_x0_25", num_classes=10))
        _check(NativeModule(m, isa=isa, num_threads=2), m, torch.randn(2, 3, 45, 61))


def test_parallel_run_counters(lib):
    before = lib.stats()
    unit = _unit(3, 1)
    _check(NativeModule(unit, num_threads=2), unit, torch.randn(1, unit.in_channels, 12, 12))
    after = lib.stats()
    assert after["parallel_runs"] >= before["parallel_runs"] + 1
    assert 0 <= after["serial_fallbacks"] <= after["parallel_runs"]


def test_requested_threads_are_strict_by_default(lib):
    # adaptive one-thread runs are opt-in (SHUFFLENET_NATIVE_ADAPTIVE=1, read once per process)
    if os.environ.get("SHUFFLENET_NATIVE_ADAPTIVE", "") == "1":
        pytest.skip("adaptive mode switched on in this environment")
    unit = _unit(3, 1)
    native = NativeModule(unit, num_threads=2)
    x = torch.randn(1, unit.in_channels, 12, 12)
    before = lib.stats()
    for _ in range(40):  # adaptive mode would probe one thread after 3 runs and every 16th run
        native(x)
    after = lib.stats()
    assert after["parallel_runs"] - before["parallel_runs"] >= 40
    assert after["serial_fallbacks"] == before["serial_fallbacks"]


def test_unknown_or_missing_isa_rejected(lib):
    with pytest.raises(ValueError, match="isa"):
        NativeModule(_unit(2, 1), isa="sse9")


@pytest.mark.parametrize(
    "name,size",
    [
        ("shufflenet_v1_g3_x0_5", (67, 45)),
        ("shufflenet_v1_g8_x0_25", (64, 64)),
        ("shufflenet_v1_g1_x0_25", (33, 97)),
        ("mobilenet_v1_x0_25", (51, 50)),
    ],
)
def test_models_match_eager(lib, name, size):
    m = _randomize(create_model(name))
    for threads in (1, 2):
        _check(NativeModule(m, num_threads=threads), m, torch.randn(2, 3, *size))


def test_full_size_model_one_image(lib):
    m = _randomize(create_model("shufflenet_v1_g3_x1_0"))
    x = torch.randn(1, 3, 224, 224)
    _check(NativeModule(m, num_threads=2), m, x)
    # channels-last input, same result
    _check(NativeModule(m, num_threads=2), m, x.contiguous(memory_format=torch.channels_last))


def test_small_input_variant(lib):
    # CIFAR stem: stride-1 stem and no max pool (the stem is not fused with a pool then)
    m = _randomize(create_model("shufflenet_v1_g2_x0_5", num_classes=10, small_input=True))
    _check(NativeModule(m, num_threads=2), m, torch.randn(3, 3, 32, 32))


def test_sequential_of_supported_layers(lib):
    m = nn.Sequential(
        nn.Conv2d(5, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16),
        nn.Conv2d(16, 24, 1, groups=4), nn.ReLU(),
        nn.AvgPool2d(3, 2, 1), nn.MaxPool2d(3, 2, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(24, 7),
    )  # fmt: skip
    _randomize(m)
    _check(NativeModule(m, num_threads=2), m, torch.randn(2, 5, 19, 23))


def test_model_unchanged_and_buffers_shared_safely(lib):
    m = _randomize(create_model("shufflenet_v1_g3_x0_25", num_classes=10))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    native = NativeModule(m)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        ref = m(x)
    outs: list[torch.Tensor] = []

    def work() -> None:
        outs.append(native(x))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out in outs:
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("int8", [False, True])
def test_strided_inputs_give_the_same_output(lib, int8):
    # channels_last, every other image of a wider batch, a transposed view: copied to NCHW first (on the
    # calling thread)
    m = _randomize(create_model("shufflenet_v1_g3_x0_25", num_classes=10))
    if int8:
        from shufflenet import quantize

        native = quantize(m, torch.randn(4, 3, 40, 40)).native(num_threads=2)
    else:
        native = NativeModule(m, num_threads=2)
    x = torch.randn(3, 3, 40, 40)
    ref = native(x)
    views = [
        x.contiguous(memory_format=torch.channels_last),
        torch.stack([x, torch.zeros_like(x)], 1)[:, 0],
        x.transpose(2, 3).contiguous().transpose(2, 3),
    ]
    for v in views:
        assert not v.is_contiguous()
        torch.testing.assert_close(native(v), ref, rtol=0, atol=0)


def test_bad_inputs(lib):
    native = NativeModule(_unit(2, 1))
    with pytest.raises(ValueError, match="channels"):
        native(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="float32"):
        native(torch.randn(1, 16, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError):
        native(torch.randn(16, 8, 8))


def test_unsupported_models_fall_back(lib):
    m = create_model("alexnet_g2", num_classes=10).eval()
    with pytest.raises(NotSupportedError):
        NativeModule(m)
    with pytest.warns(RuntimeWarning, match="native backend unavailable"):
        fast = optimize(m, "native")
    assert fast.backend == "optimized" and fast.requested == "native"
    x = torch.randn(1, 3, 63, 63)
    with torch.no_grad():
        ref = m(x)
    torch.testing.assert_close(fast(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    with pytest.raises(NotSupportedError):
        optimize(m, "native", strict=True)
    se = ShuffleUnit(24, 24, 1, 3, se=True).eval()
    with pytest.raises(NotSupportedError, match="squeeze"):
        NativeModule(se)


def test_no_compiler_message(monkeypatch):
    monkeypatch.setenv("SHUFFLENET_NATIVE", "0")
    assert find_compiler() is None
    with pytest.raises(NativeUnavailable, match="no C compiler"):
        build_library()


def test_optimize_native_backend(lib):
    m = _randomize(create_model("shufflenet_v1_g4_x0_5"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = optimize(m, "native", threads=2)
    assert fast.backend == "native"
    _check(fast, m, torch.randn(2, 3, 64, 64))
    with pytest.raises(RuntimeError, match="inference-only"):
        fast.train()


def test_profile_rows(lib):
    m = _randomize(create_model("shufflenet_v1_g3_x0_25"))
    rows = NativeModule(m).profile(torch.randn(1, 3, 64, 64), repeats=2)
    kinds = {r["kind"] for r in rows}
    assert {"conv3x3", "pw", "dw", "avgpool", "gap", "fc"} <= kinds
    assert all(r["seconds"] >= 0 for r in rows)
    pw_macs = sum(r["macs"] for r in rows if r["kind"] == "pw")
    assert pw_macs > 0
    # with two threads: how each op is cut; the largest thread's share is part of the op's time
    x = torch.randn(1, 3, 160, 160)
    rows = NativeModule(m).profile(x, repeats=1, threads=2)
    assert all(r["chunks"] >= 1 and 0 <= r["share_seconds"] <= r["seconds"] for r in rows)
    assert {"conv3x3", "pw", "dw"} <= {r["kind"] for r in rows if r["chunks"] > 1}
    # one thread: its share is all of the op
    assert all(r["share_seconds"] == r["seconds"] for r in NativeModule(m).profile(x, repeats=1))


@pytest.mark.parametrize(
    "c,g",
    [
        (240, 3),
        (60, 3),
        (96, 8),
        (120, 4),
        (200, 2),
        (120, 5),
        (48, 6),
        (70, 7),
        (34, 17),
        (12, 12),
        (16, 1),
    ],
)
def test_native_channel_shuffle(lib, c, g):
    x = torch.randn(3, c, 5, 7).contiguous(memory_format=torch.channels_last)
    for threads in (1, 2):
        y = channel_shuffle_nhwc(x, g, threads=threads)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(y, channel_shuffle(x, g))
        assert torch.equal(
            channel_shuffle_nhwc(x, g, inverse=True, threads=threads), channel_unshuffle(x, g)
        )
    out = torch.empty_like(x)
    assert channel_shuffle_nhwc(x, g, out=out) is out
    assert torch.equal(out, channel_shuffle(x, g))
    rows = torch.randn(11, c)
    ref = rows.reshape(11, g, c // g).transpose(1, 2).reshape(11, c)
    assert torch.equal(channel_shuffle_nhwc(rows, g), ref)


def test_native_channel_shuffle_large(lib):
    # big enough for the streaming-store path
    x = torch.randn(8, 240, 56, 56).contiguous(memory_format=torch.channels_last)
    assert torch.equal(channel_shuffle_nhwc(x, 3, threads=2), channel_shuffle(x, 3))


def _nan_positions(x: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """A corner, a border pixel, an interior pixel and the last pixel, in different images and channels."""
    n, c, h, w = x.shape
    return [
        (0, 0, 0, 0),
        (n - 1, c - 1, h - 1, w - 1),
        (0, c // 2, h // 2, w // 2),
        (n - 1, 0, 0, w - 1),
    ]


def _check_nan(native: nn.Module, ref_model: nn.Module, x: torch.Tensor) -> None:
    """NaN exactly where eager has NaN, the other outputs as eager's."""
    with torch.no_grad():
        ref = ref_model(x)
    out = native(x)
    assert torch.isnan(ref).any(), "the reference must see the NaN"
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    finite = ~torch.isnan(ref)
    if finite.any():
        scale = ref[finite].abs().max().clamp_min(1e-6)
        assert ((out[finite] - ref[finite]).abs().max() / scale).item() <= 1e-4


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("g", [1, 3, 8])
def test_nan_input_gives_nan_like_eager_units(lib, stride, g):
    unit = _unit(g, stride)
    base = torch.randn(2, unit.in_channels, 11, 13)
    for isa in lib.supported:
        native = NativeModule(unit, isa=isa, num_threads=1)
        for pos in _nan_positions(base):
            x = base.clone()
            x[pos] = float("nan")
            _check_nan(native, unit, x)


def test_nan_input_gives_nan_logits_every_isa(lib):
    # stem conv with fused max pool, max pool alone, average pools, ReLUs, GAP, FC
    models = [
        _randomize(create_model("shufflenet_v1_g3_x0_25", num_classes=10)),
        _randomize(create_model("mobilenet_v1_x0_25", num_classes=10)),
        _randomize(
            nn.Sequential(
                nn.Conv2d(3, 8, 3, 1, 1),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
                nn.Conv2d(8, 8, 3, 1, 1, groups=8),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )  # fmt: skip
        ),
    ]
    base = torch.randn(2, 3, 33, 35)
    for m in models:
        for isa in lib.supported:
            for threads in (1, 2):
                native = NativeModule(m, isa=isa, num_threads=threads)
                for pos in _nan_positions(base):
                    x = base.clone()
                    x[pos] = float("nan")
                    _check_nan(native, m, x)


def test_thread_plan_policy():
    from shufflenet.deploy.native.module import thread_plan

    one = thread_plan(1, 2)  # fewer images than threads: all threads on each image
    assert (one.threads, one.mode, one.nsets) == (2, 0, 1)
    many = thread_plan(5, 2)  # one image per thread, a workspace set per thread
    assert (many.threads, many.mode, many.nsets, many.adaptive) == (2, 1, 2, False)
    single = thread_plan(3, 1)
    assert (single.threads, single.mode, single.adaptive) == (1, 0, False)
    assert thread_plan(1, None).threads == max(1, torch.get_num_threads())
