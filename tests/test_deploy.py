"""shufflenet.deploy: folding, the 'optimized' / 'eager' / 'onnxruntime' / 'compile' backends, the shuffle
fallback, ONNX export and the bench command (numerics and structure only; nothing here asserts a speed)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import seeded_model
from torch import nn

from shufflenet import (
    ChannelShuffle,
    ChannelUnshuffle,
    ShuffleUnit,
    channel_shuffle,
    channel_unshuffle,
    create_model,
)
from shufflenet.deploy import (
    BACKENDS,
    DeployedModel,
    channel_shuffle_nhwc,
    fold_conv_bn,
    measure_shuffle_bandwidth,
    optimize,
)
from shufflenet.deploy.api import NotSupportedError
from shufflenet.deploy.fold import invert_permutation, shuffle_permutation
from shufflenet.deploy.optimized import FusedConv2d, OptimizedShuffleUnit, optimize_torch


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    return seeded_model(model, seed)


def _close(out: torch.Tensor, ref: torch.Tensor, tol: float = 1e-4) -> None:
    assert out.shape == ref.shape
    err = ((out.float() - ref.float()).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
    assert err <= tol, f"max relative error {err:.2e}"


# --------------------------------------------------------------------------------------------- folding


@pytest.mark.parametrize("groups,bias,k", [(1, False, 3), (3, True, 1), (6, False, 3)])
def test_fold_conv_bn(groups, bias, k):
    conv = nn.Conv2d(6, 12, k, padding=k // 2, groups=groups, bias=bias)
    bn = _randomize(nn.BatchNorm2d(12))
    w, b = fold_conv_bn(conv, bn)
    x = torch.randn(2, 6, 5, 7)
    with torch.no_grad():
        ref = bn(conv(x))
    _close(torch.nn.functional.conv2d(x, w, b, padding=k // 2, groups=groups), ref, 1e-5)


def test_fold_rejects_other_norms():
    with pytest.raises(NotSupportedError):
        fold_conv_bn(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4))


@pytest.mark.parametrize("c,g", [(12, 3), (60, 3), (96, 8), (16, 4), (10, 2)])
def test_shuffle_permutation_is_the_shuffle(c, g):
    x = torch.randn(2, c, 3, 3)
    perm = shuffle_permutation(ChannelShuffle(g), c)
    assert torch.equal(x[:, perm], channel_shuffle(x, g))
    perm_u = shuffle_permutation(ChannelUnshuffle(g), c)
    assert torch.equal(x[:, perm_u], channel_unshuffle(x, g))
    assert torch.equal(invert_permutation(perm), perm_u)
    assert shuffle_permutation(nn.Identity(), c) is None
    assert shuffle_permutation(ChannelShuffle(1), c) is None


def test_shuffle_cannot_be_a_grouped_conv_permutation():
    # The claim behind keeping the shuffle in the PyTorch backend: for g >= 2 no channel order makes both the
    # output groups of the first grouped 1x1 conv and the input groups of the second contiguous ranges.
    for c, g in [(12, 2), (12, 3), (24, 4)]:
        n = c // g
        perm = shuffle_permutation(ChannelShuffle(g), c)
        # channels each group of the first conv produces, and each group of the second reads
        first_groups = [set(range(j * n, (j + 1) * n)) for j in range(g)]
        second_groups = [{int(perm[a * n + t]) for t in range(n)} for a in range(g)]
        assert all(len(f & s) > 0 for f in first_groups for s in second_groups)  # every pair meets
        assert not any(f == s for f in first_groups for s in second_groups)


def test_channel_shuffle_nhwc_pytorch_path():
    x = torch.randn(2, 12, 3, 5).contiguous(memory_format=torch.channels_last)
    y = channel_shuffle_nhwc(x, 3, use_native=False)
    assert torch.equal(y, channel_shuffle(x, 3))
    assert torch.equal(
        channel_shuffle_nhwc(x, 3, inverse=True, use_native=False), channel_unshuffle(x, 3)
    )
    # any layout / dtype: falls back to the reference
    xc = torch.randn(2, 12, 3, 5, dtype=torch.float64)
    assert torch.equal(channel_shuffle_nhwc(xc, 4), channel_shuffle(xc, 4))
    out = torch.empty_like(xc)
    assert channel_shuffle_nhwc(xc, 4, out=out) is out and torch.equal(out, channel_shuffle(xc, 4))
    with pytest.raises(ValueError):
        channel_shuffle_nhwc(x, 5)
    with pytest.raises(TypeError):
        channel_shuffle_nhwc([1, 2], 2)


def test_measure_shuffle_bandwidth_counts_bytes_and_restores_threads():
    threads = torch.get_num_threads()
    res = measure_shuffle_bandwidth((1, 12, 4, 4), 3, rounds=2, threads=threads + 1, gap=0)
    assert torch.get_num_threads() == threads
    assert res["threads"] == threads + 1 and res["bytes"] == 2 * 12 * 4 * 4 * 4
    assert {"clone", "torch", "copy_"} <= set(res["gbps"])
    assert all(res["gbps_best"][k] >= res["gbps"][k] > 0 for k in res["gbps"])


# ------------------------------------------------------------------------------------ optimized backend


@pytest.mark.parametrize("g", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize(
    "mode,position", [("shuffle", "before_dw"), ("unshuffle", "after_dw"), ("none", "before_dw")]
)
def test_optimized_unit(g, stride, mode, position):
    cin = 8 * g if stride == 1 else 4 * g
    cout = 8 * g if stride == 1 else cin + 8 * g
    unit = _randomize(
        ShuffleUnit(
            cin, cout, stride, g, bottleneck_channels=2 * g, shuffle=mode, shuffle_position=position
        )
    )
    opt = OptimizedShuffleUnit(unit).to(memory_format=torch.channels_last)
    x = torch.randn(2, cin, 9, 7)
    with torch.no_grad():
        ref = unit(x)
        _close(opt(x.contiguous(memory_format=torch.channels_last)), ref)
        _close(opt(x), ref)  # a contiguous input works too


@pytest.mark.parametrize(
    "name,size",
    [
        ("shufflenet_v1_g3_x0_5", (64, 64)),
        ("shufflenet_v1_g8_x0_25", (45, 67)),
        ("mobilenet_v1_x0_25", (48, 40)),
        ("alexnet_g2", (63, 63)),
        ("alexnet_g1", (79, 71)),
    ],
)
def test_optimized_models(name, size):
    m = _randomize(create_model(name, num_classes=10))
    before = copy.deepcopy(m.state_dict())
    fast = optimize(m, "optimized")
    assert isinstance(fast, DeployedModel) and fast.backend == "optimized"
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = m(x)
    _close(fast(x), ref)
    # the input model is untouched: weights, mode, layout, gradients
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert not m.training
    assert all(p.requires_grad for p in m.parameters())
    assert all(p.is_contiguous() for p in m.parameters())
    assert not any(p.requires_grad for p in fast.parameters())
    assert not any(
        isinstance(mod, nn.BatchNorm2d)
        for mod in fast.modules()
        if not isinstance(mod, ShuffleUnit)
    )


def test_optimized_folds_and_fuses():
    m = _randomize(create_model("shufflenet_v1_g3_x0_25"))
    opt = optimize_torch(m)
    assert not any(isinstance(mod, nn.BatchNorm2d | nn.ReLU | ShuffleUnit) for mod in opt.modules())
    units = [mod for mod in opt.modules() if isinstance(mod, OptimizedShuffleUnit)]
    assert len(units) == 16
    assert all(u.compress.relu and not u.depthwise.relu for u in units)


def test_optimized_training_model_input_and_eval_copy():
    m = _randomize(create_model("shufflenet_v1_g2_x0_25"))
    m.train()
    fast = optimize(m)  # works on an eval copy; m stays in training mode
    assert m.training
    x = torch.randn(1, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        ref = m(x)
    _close(fast(x), ref)


def test_fused_conv_paths_agree():
    conv = nn.Conv2d(8, 16, 1, groups=2)
    bn = _randomize(nn.BatchNorm2d(16))
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    res = torch.randn(2, 16, 5, 5).contiguous(memory_format=torch.channels_last)
    a = FusedConv2d.from_conv(conv, bn, relu=True, use_mkldnn=True)
    b = FusedConv2d.from_conv(conv, bn, relu=True, use_mkldnn=False)
    with torch.no_grad():
        ref = torch.relu(bn(conv(x)) + res)
        _close(a(x, residual=res), ref, 1e-5)
        _close(b(x, residual=res), ref, 1e-5)
        _close(a(x), torch.relu(bn(conv(x))), 1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_optimized_on_cuda():
    m = _randomize(create_model("shufflenet_v1_g3_x0_5")).cuda()
    fast = optimize(m, "optimized")
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        ref = m(x)
    _close(fast(x), ref, 1e-3)


def test_eager_backend_and_errors():
    m = _randomize(create_model("shufflenet_v1_g3_x0_25"))
    fast = optimize(m, "eager")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
    _close(fast(x), ref, 1e-6)
    with pytest.raises(ValueError, match="backend"):
        optimize(m, "tensorrt")
    with pytest.raises(TypeError):
        optimize("shufflenet_v1_g3_x0_25")
    assert set(BACKENDS) == {"eager", "optimized", "compile", "onnxruntime", "native"}


def test_verify_option():
    m = _randomize(create_model("shufflenet_v1_g3_x0_25"))
    fast = optimize(m, "optimized", verify=True, input_size=32)
    assert fast.backend == "optimized"


# ------------------------------------------------------------------------------------------------- ONNX


def test_onnx_export_and_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from shufflenet.deploy.onnx import (
        OnnxRuntimeModule,
        OnnxRuntimeRunner,
        check_onnx,
        export_onnx,
    )

    m = _randomize(create_model("shufflenet_v1_g3_x0_25", num_classes=10))
    path = tmp_path / "m.onnx"
    data = export_onnx(m, path, input_size=64)
    assert path.read_bytes() == data
    graph = onnx.load(str(path)).graph
    assert not any(n.op_type == "BatchNormalization" for n in graph.node)
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3]  # dynamic batch, height, width
    runner = OnnxRuntimeRunner(path, threads=1)
    for shape in [(1, 3, 64, 64), (3, 3, 48, 80)]:  # other batch and size than exported
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = m(x)
        _close(runner(x), ref)
        _close(torch.from_numpy(runner(x.numpy())), ref)
        _close(OnnxRuntimeModule(data)(x), ref)
    check = check_onnx(m, data, input_size=40)
    assert check.nonfinite == 0 and check.ok(1e-4, 1e-4), check


def test_onnx_export_metadata_output_name_and_strict_exporter():
    onnx = pytest.importorskip("onnx")
    from shufflenet.deploy.onnx import export_onnx

    m = _randomize(create_model("shufflenet_v1_g3_x0_25", num_classes=10))
    data = export_onnx(
        m,
        None,
        input_size=32,
        opset=17,
        exporter="torchscript",
        fallback=False,
        metadata={"shufflenet.arch": "shufflenet_v1_g3_x0_25", "k": "v"},
        output_name="logits",
    )
    proto = onnx.load_from_string(data)
    assert {p.key: p.value for p in proto.metadata_props} == {
        "shufflenet.arch": "shufflenet_v1_g3_x0_25",
        "k": "v",
    }
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.opset_import[0].version == 17
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    with pytest.raises(TypeError, match="must map a str to a str"):
        export_onnx(m, None, input_size=32, metadata={"k": 1})
    with pytest.raises(ValueError, match="exporter='jit'"):
        export_onnx(m, None, input_size=32, exporter="jit")


def test_onnx_fixed_pool_model():
    pytest.importorskip("onnxruntime")
    from shufflenet.deploy.onnx import OnnxRuntimeRunner, export_onnx

    m = create_model("alexnet_g2", num_classes=10).eval()
    data = export_onnx(m, None, input_size=63)
    x = torch.randn(2, 3, 63, 63)
    with torch.no_grad():
        ref = m(x)
    _close(OnnxRuntimeRunner(data, threads=1)(x), ref)


def test_optimize_onnxruntime_backend():
    pytest.importorskip("onnxruntime")
    m = _randomize(create_model("mobilenet_v1_x0_25", num_classes=10))
    fast = optimize(m, "onnxruntime", input_size=32, threads=1)
    assert fast.backend == "onnxruntime"
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        ref = m(x)
    _close(fast(x), ref)


@pytest.mark.slow
def test_compile_backend():
    m = _randomize(create_model("shufflenet_v1_g3_x0_25", num_classes=10))
    fast = optimize(m, "compile", input_size=32)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
    _close(fast(x), ref, 1e-4)


# ------------------------------------------------------------------------------------------------ bench


def test_bench_cli_writes_json_and_plot(tmp_path, capsys):
    from shufflenet.cli.main import main

    out, png = tmp_path / "b.json", tmp_path / "b.png"
    rc = main(
        [
            "bench", "shufflenet_v1_g3_x0_25", "--batch", "2", "--threads", "1", "--input-size", "32",
            "--backends", "eager,optimized,native", "--runs", "2", "--warmup", "1", "--load-window", "0.1",
            "--json", str(out), "--plot", str(png), "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "median ms" in text and "eager" in text
    d = json.loads(out.read_text())
    assert d["model"] == "shufflenet_v1_g3_x0_25" and d["batch"] == 2 and d["threads"] == 1
    assert d["macs_per_image"] > 0
    for b in ("eager", "optimized"):
        r = d["backends"][b]
        assert r["status"] == "ok" and len(r["times_ms"]) == 2 and r["max_rel_error"] <= 1e-4
        assert r["gflops"] > 0 and r["images_per_s"] > 0
    assert d["backends"]["native"]["status"] in ("ok", "skipped")
    assert abs(d["ratios"]["eager"]["eager"] - 1.0) < 1e-12
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the load of other processes is recorded per backend, and a busy machine is said to be busy
    assert d["backends"]["eager"]["other_cores_during"] is not None
    assert d["busy"] == (d["max_other_cores"] > 0.2)
    assert ("BUSY machine" in text) == d["busy"]


def test_bench_cli_rejects_bad_arguments(capsys):
    from shufflenet.cli.main import main

    assert main(["bench", "shufflenet_v1_g3_x0_25", "--backends", "eager,tpu"]) == 2
    assert main(["bench", "shufflenet_v1_g3_x0_25", "--batch", "0"]) == 2
    assert main(["bench", "no_such_model"]) == 2


def test_time_interleaved_rotates_the_order_and_interleaved_latency_restores_threads():
    from shufflenet.deploy.benchmark import interleaved_latency, time_interleaved

    order: list[str] = []
    calls = {k: (lambda k=k: order.append(k)) for k in "abc"}
    times = time_interleaved(calls, rounds=4)
    assert order == list("abcbcacababc")  # round r starts at the r-th call
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(t >= 0 for v in times.values() for t in v)
    with pytest.raises(ValueError, match="rounds=0"):
        time_interleaved(calls, rounds=0)
    threads = torch.get_num_threads()
    out = interleaved_latency(
        {"lin": torch.nn.Linear(4, 2)}, (1, 4), rounds=3, warmup=1, threads=max(1, threads - 1)
    )
    assert torch.get_num_threads() == threads
    assert out["lin"]["min_ms"] <= out["lin"]["median_ms"] and out["lin"]["iqr_ms"] >= 0
