"""Native int8 kernels against the slow integer reference (test_quantize_reference.py), every instruction set
this CPU runs forced through ``isa=`` (AVX-512 with VNNI, AVX2, portable C), both thread modes; NaN inputs;
``optimize(..., precision="int8")`` and its fallback. Skipped where no C compiler exists."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_quantize_reference import _randomize, check_against_reference, unit

from shufflenet import create_model
from shufflenet.deploy import NotSupportedError, optimize
from shufflenet.deploy.native import NativeUnavailable, get_library
from shufflenet.deploy.native.build import find_compiler
from shufflenet.quantize import load_quantized, quantize, save_quantized

if find_compiler() is None:
    pytest.skip("no C compiler: the native engine cannot be built", allow_module_level=True)


@pytest.fixture(scope="module")
def lib():
    try:
        return get_library()
    except NativeUnavailable as e:
        pytest.fail(f"native engine did not build: {e}")


@pytest.fixture(scope="module")
def isas(lib):
    return lib.supported


@pytest.mark.parametrize("g", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("stride", [1, 2])
def test_units_every_isa(isas, g, stride):
    u = unit(g, stride)
    for hw, batch in (((7, 9), 1), ((13, 5), 3)):
        x = torch.randn(batch, u.in_channels, *hw)
        q = quantize(u, x)
        for isa in isas:
            for threads in (1, 2):
                native = q.native(isa=isa, num_threads=threads)
                check_against_reference(native, q.program, x)


@pytest.mark.parametrize("width", [3, 4, 12])
def test_widths_groups_straddling_tiles(isas, width):
    # widths whose per-group channels are not multiples of 4: tiles span groups
    for g in (3, 8):
        u = unit(g, 1, width=width)
        x = torch.randn(2, u.in_channels, 11, 6)
        q = quantize(u, x)
        for isa in isas:
            check_against_reference(q.native(isa=isa, num_threads=1), q.program, x)


@pytest.mark.parametrize(
    "name,kw,hw",
    [
        ("shufflenet_v1_g1_x0_25", {}, (33, 35)),
        ("shufflenet_v1_g2_x0_5", {"small_input": True, "num_classes": 10}, (17, 15)),
        ("shufflenet_v1_g3_x0_5", {}, (35, 33)),
        ("shufflenet_v1_g4_x0_25", {}, (32, 32)),
        ("shufflenet_v1_g8_x0_25", {}, (33, 31)),
        ("mobilenet_v1_x0_25", {}, (35, 33)),
    ],
)
def test_models_every_isa(isas, name, kw, hw):
    m = _randomize(create_model(name, **kw))
    q = quantize(m, torch.randn(4, 3, *hw))
    x = torch.randn(3, 3, *hw)
    for isa in isas:
        for threads in (1, 2):
            check_against_reference(q.native(isa=isa, num_threads=threads), q.program, x)


def test_one_image_split_over_threads_every_isa(isas):
    # one image on 2 and 3 threads: every op is cut into chunks (pixel vectors, output rows or channel quads,
    # as the plane size asks), which the profile runs one after another and the threads share
    m = _randomize(create_model("shufflenet_v1_g3_x1_0", num_classes=10))
    q = quantize(m, torch.randn(2, 3, 129, 127))
    x = torch.randn(1, 3, 129, 127)
    for isa in isas:
        for threads in (2, 3):
            native = q.native(isa=isa, num_threads=threads)
            rows = native.profile(x, 1, threads=threads)
            split = [r for r in rows if r["chunks"] > 1]
            assert {"quantize", "conv3x3-int8", "pw-int8", "dw-int8"} <= {r["kind"] for r in split}
            assert {r["out"][1] for r in split if r["kind"] == "dw-int8"} >= {17, 9, 5}
            assert all(0 <= r["share_seconds"] <= r["seconds"] for r in rows)
            check_against_reference(native, q.program, x)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return {
                w for line in f if line.startswith("flags") for w in line.split(":", 1)[1].split()
            }
    except OSError:
        return set()


def test_avx512_depthwise_kernels_both_tested(lib, isas):
    # With AVX-512 VBMI the depthwise convs and 3x3 average pools sum a kernel row per instruction (the other
    # tests run that kernel here); forced off, the tap-word kernel that CPUs with VNNI but no VBMI run must
    # give the reference's integers too: stride 1 and 2, signed (the unit's own input into its average pool)
    # and unsigned inputs, one and two threads, quads split over threads.
    if "avx512" not in isas or not lib.cdll.sn_cpu_vnni():
        pytest.skip("this CPU has no AVX-512 VNNI")
    was = lib.cdll.sn_int8_dw_rows_enable(0)
    try:
        assert was == ("avx512vbmi" in _cpu_flags())
        for g, stride in ((1, 1), (3, 2), (8, 1), (8, 2)):
            u = unit(g, stride)
            x = torch.randn(2, u.in_channels, 13, 9)
            q = quantize(u, x)
            for threads in (1, 2):
                check_against_reference(q.native(isa="avx512", num_threads=threads), q.program, x)
        m = _randomize(create_model("shufflenet_v1_g3_x0_5", num_classes=10))
        q = quantize(m, torch.randn(2, 3, 65, 63))
        x = torch.randn(1, 3, 65, 63)
        check_against_reference(q.native(isa="avx512", num_threads=2), q.program, x)
    finally:
        lib.cdll.sn_int8_dw_rows_enable(was)


def test_nan_input_gives_nan_outputs(isas):
    m = _randomize(create_model("shufflenet_v1_g3_x0_25", num_classes=10))
    q = quantize(m, torch.randn(4, 3, 32, 32))
    x = torch.randn(4, 3, 32, 32)
    x[1, 0, 0, 0] = float("nan")
    x[3, 0, 0, 0], x[3, 1, 0, 0] = float("inf"), float("-inf")  # a NaN sum, but no NaN pixel
    for isa in isas:
        out = q.native(isa=isa, num_threads=2)(x)
        assert torch.isnan(out[1]).all()
        assert torch.isfinite(out[[0, 2, 3]]).all()


def test_optimize_int8(tmp_path, lib):
    m = _randomize(create_model("shufflenet_v1_g3_x0_25", num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    q = quantize(m, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = optimize(q, "native", precision="int8", threads=2)
    assert fast.backend == "native"
    torch.testing.assert_close(fast(x), q(x), rtol=1e-5, atol=1e-5)
    # a loaded int8 file runs the same
    q2, _ = load_quantized(save_quantized(tmp_path / "q.safetensors", q))
    torch.testing.assert_close(optimize(q2, "native")(x), q(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="quantize it first"):
        optimize(m, "native", precision="int8")
    with pytest.raises(ValueError, match="precision"):
        optimize(m, "native", precision="int4")
    with pytest.raises(ValueError, match="backend='native'"):
        optimize(q, "onnxruntime")


def test_int8_fallback_to_pytorch_runtime(lib):
    # a concatenation at channel 6 (not a multiple of 4): the int8 kernels do not run it
    u = unit(2, 2, first_grouped=False)
    x = torch.randn(2, u.in_channels, 9, 9)
    q = quantize(u, x)
    with pytest.raises(NotSupportedError, match="multiple of 4"):
        q.native()
    with pytest.warns(RuntimeWarning, match="native int8 backend unavailable"):
        slow = optimize(q, "native", precision="int8")
    assert slow.backend == "eager" and slow.requested == "native"
    torch.testing.assert_close(slow(x), q(x))
    with pytest.raises(NotSupportedError):
        optimize(q, "native", precision="int8", strict=True)
