"""ExecuTorch/XNNPACK and ncnn export (:mod:`shufflenet.deploy.executorch`, :mod:`shufflenet.deploy.ncnn`):
every op delegated, the rewrites keep the numerics, parity against eager PyTorch through each engine's own
runtime, the conversion traps of ncnn, errors that name the layer and engine, and ``shufflenet export``."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import time

import pytest
import torch
from conftest import seeded_model
from torch import nn

from shufflenet import ChannelShuffle, ChannelUnshuffle, create_model, save_model
from shufflenet.cli.export import main as export_main
from shufflenet.deploy.executorch import (
    ExecuTorchRunner,
    _avg_pool2d_padded,
    _split_even_as_slices,
    check_executorch,
    export_executorch,
    sidecar_path,
)
from shufflenet.deploy.fold import NotSupportedError
from shufflenet.deploy.ncnn import _check_param, check_ncnn, export_ncnn, ncnn_ready_copy


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    return seeded_model(model, seed, spread=0.2, linear_std=0.1)


class _Tiny(nn.Module):
    """Conv -> shuffle -> padded average pool (zeros counted) -> channel split -> unshuffle -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.shuffle = ChannelShuffle(3)
        self.pool = nn.AvgPool2d(3, 2, 1)
        self.conv2 = nn.Conv2d(6, 6, 1)
        self.unshuffle = ChannelUnshuffle(2)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.pool(self.shuffle(torch.relu(self.bn(self.conv(x)))))  # (N, 12, H/2, W/2)
        a, b = x.chunk(2, dim=1)
        x = self.unshuffle(torch.cat([a, self.conv2(b)], dim=1))
        return self.fc(x.mean((2, 3), keepdim=True).flatten(1))


# --- the rewrites, against PyTorch's own ops ---------------------------------------------------------------


def test_padded_avg_pool_rewrite_equals_count_include_pad():
    x = torch.randn(2, 4, 9, 10)
    got = _avg_pool2d_padded(x, [3, 3], [2, 2], [1, 1])
    ref = nn.AvgPool2d(3, 2, 1, count_include_pad=True)(x)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    # a corner: 4 real pixels of 9, divided by 9 (zeros counted)
    assert got[0, 0, 0, 0].item() == pytest.approx(x[0, 0, :2, :2].sum().item() / 9, abs=1e-6)
    # configurations XNNPACK takes as they are are left alone
    assert _avg_pool2d_padded(x, [3, 3], [2, 2], [1, 1], False, False) is NotImplemented
    assert _avg_pool2d_padded(x, [3, 3], [2, 2], [0, 0]) is NotImplemented


def test_split_rewrite_equals_chunk():
    x = torch.randn(2, 10, 3, 3)
    for got, ref in zip(_split_even_as_slices(x, 4, 1), x.split(4, dim=1)):
        assert torch.equal(got, ref)


def test_ncnn_ready_copy_swaps_shuffles_for_the_same_permutation():
    model = _randomize(_Tiny())
    x = torch.randn(2, 3, 16, 16)
    ready, n = ncnn_ready_copy(model, x)
    assert n == 2
    kinds = [type(m) for m in ready.modules()]
    assert ChannelShuffle not in kinds and ChannelUnshuffle not in kinds
    assert kinds.count(nn.ChannelShuffle) == 2
    assert (
        ready.unshuffle.groups == 6
    )  # unshuffle of 12 channels in 2 groups == shuffle in 6 groups
    with torch.no_grad():
        torch.testing.assert_close(ready(x), model(x), rtol=1e-5, atol=1e-5)


def test_ncnn_param_check_rejects_the_shuffle_traps():
    head = "7767517\n4 4\nInput in0 0 1 in0\n"
    gather = head + "Gather gather_0 1 1 in0 1 0=0\nShuffleChannel sc 1 1 1 2 0=3 1=0\n"
    with pytest.raises(NotSupportedError, match=r"ncnn cannot take.*gather_0 \(Gather\)"):
        _check_param(gather, 1, "Net")
    reshape5d = head + "Reshape reshape_0 1 1 in0 1 0=-1 1=-1 11=10 2=3\n"
    with pytest.raises(NotSupportedError, match=r"reshape_0 \(Reshape\)"):
        _check_param(reshape5d, 0, "Net")
    missing = head + "ReLU relu 1 1 in0 1\n"
    with pytest.raises(NotSupportedError, match="1 channel shuffles but pnnx wrote 0"):
        _check_param(missing, 1, "Net")
    ok = head + "ShuffleChannel sc 1 1 in0 1 0=3 1=0\n"
    assert _check_param(ok, 1, "Net") == {"Input": 1, "ShuffleChannel": 1}


# --- ExecuTorch ----------------------------------------------------------------------------------------------

needs_executorch = pytest.mark.skipif(
    importlib.util.find_spec("executorch") is None, reason="executorch is not installed"
)
needs_ncnn = pytest.mark.skipif(
    importlib.util.find_spec("ncnn") is None or importlib.util.find_spec("pnnx") is None,
    reason="ncnn or pnnx is not installed",
)


@needs_executorch
def test_executorch_tiny_model_fully_delegated_and_equal(tmp_path):
    model = _randomize(_Tiny())
    path = tmp_path / "tiny.pte"
    res = export_executorch(model, path, input_size=(16, 20))
    assert res.outside == {} and res.delegates == 1 and res.delegated > 0
    assert path.stat().st_size == res.nbytes
    side = json.loads(sidecar_path(path).read_text())
    assert side["input"]["shape"] == [1, 3, 16, 20] and side["nodes_outside_delegate"] == 0
    # an odd second size: the padded pooling rewrite sees other borders
    check = check_executorch(model, path, other_shapes=((2, 3, 21, 13),))
    assert sorted(set(check.shapes)) == [(1, 3, 16, 20), (2, 3, 21, 13)]
    assert check.max_abs_output > 0.05
    assert check.ok(1e-5, 1e-5), check


@needs_executorch
def test_executorch_names_the_layer_it_cannot_take():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.AvgPool2d(3, 2, ceil_mode=True), nn.Flatten(), nn.LazyLinear(2)
    )
    model(torch.randn(1, 3, 16, 16))
    with pytest.raises(
        NotSupportedError, match=r"ExecuTorch/XNNPACK does not take.*1 \(AvgPool2d\)"
    ):
        export_executorch(model, None, input_size=16)
    res = export_executorch(model, None, input_size=16, allow_outside=True)
    assert res.outside_count == 1 and res.outside_layers == ["1 (AvgPool2d)"]


@needs_executorch
@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["shufflenet_v1_g3_x0_25", "shufflenet_v2_x0_5", "mobilenet_v1_x0_25"]
)
def test_executorch_model_families_fully_delegated(name):
    model = _randomize(create_model(name, num_classes=10))
    res = export_executorch(model, None, input_size=64)
    assert res.outside == {} and res.delegates == 1, res
    check = check_executorch(model, res.data)
    assert check.max_abs_output > 0.05
    assert check.ok(1e-5, 1e-5), check


# --- ncnn ----------------------------------------------------------------------------------------------------


@needs_ncnn
@pytest.mark.parametrize(
    "name, kwargs",
    [
        (
            "shufflenet_v1_g3_x0_25",
            {},
        ),  # per-group widths 5 and 15: not divisible by ncnn's packing of 4
        ("shufflenet_v1_g8_x0_5", {"shuffle": "unshuffle", "shuffle_position": "after_dw"}),
        ("shufflenet_v2_x0_5", {}),
    ],
)
def test_ncnn_export_parity(tmp_path, name, kwargs):
    model = _randomize(create_model(name, num_classes=10, **kwargs))
    files = export_ncnn(model, tmp_path, input_size=64)
    assert files.layers.get("ShuffleChannel") == files.shuffles == 16
    assert not any(k in files.layers for k in ("Gather", "Permute", "Reshape"))
    check = check_ncnn(model, files.param, files.bin, 64, threads=2)
    assert [s[2:] for s in check.shapes] == [(64, 64), (96, 48)]
    assert check.max_abs_output > 0.05
    assert check.ok(1e-4), check.rel_error


@needs_ncnn
def test_ncnn_names_the_layer_it_cannot_take(tmp_path):
    class Sorts(nn.Module):
        def forward(self, x):
            return x.sort(dim=1).values

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Sorts(), nn.Flatten(), nn.Linear(4 * 14 * 14, 2))
    with pytest.raises(NotSupportedError, match="ncnn"):
        export_ncnn(model, tmp_path, input_size=16)


# --- shufflenet export ---------------------------------------------------------------------------------------


@needs_executorch
@needs_ncnn
@pytest.mark.slow
def test_cli_export_executorch_and_ncnn(tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    save_model(ckpt, _randomize(create_model("shufflenet_v1_g3_x0_25", num_classes=10)))
    pte, nc = tmp_path / "m.pte", tmp_path / "nc"
    rc = export_main([str(ckpt), "--input-size", "64", "--executorch", str(pte), "--ncnn", str(nc)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "nodes outside the delegate: 0 (none)" in out
    assert "16 channel shuffles as ShuffleChannel" in out
    side = json.loads((tmp_path / "m.pte.json").read_text())
    assert side["arch"] == "shufflenet_v1_g3_x0_25" and side["input_spec"]["image_size"] == 224
    assert json.loads((nc / "model.ncnn.json").read_text())["input"]["blob"] == "in0"


def test_cli_export_needs_a_target_and_names_the_missing_extra(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "m.safetensors"
    save_model(ckpt, create_model("shufflenet_v1_g3_x0_25", num_classes=10))
    assert export_main([str(ckpt)]) == 2
    assert "--executorch" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ncnn", None)  # import ncnn now raises ImportError
    assert export_main([str(ckpt), "--ncnn", str(tmp_path / "nc")]) == 2
    assert "pip install 'shufflenet[mobile]'" in capsys.readouterr().err


# --- bench: one process per backend, load of other processes, busy runs not judged ------------------------


def test_bench_result_busy_rules():
    from shufflenet.deploy.benchmark import BackendResult, BenchResult, format_table

    def result(before, during):
        r = BackendResult("eager", median_ms=1.0, p10_ms=0.9, p90_ms=1.2, min_ms=0.8)
        r.images_per_s, r.gflops, r.max_rel_error, r.engine = 1000.0, 1.0, 0.0, "eager"
        r.other_cores_before, r.other_cores_during = before, during
        return BenchResult("m", 1, 2, 32, 10, 5, {"eager": r}, {"eager": {"eager": 1.0}}, {})

    quiet, busy, unknown = result(0.05, 0.1), result(0.05, 0.9), result(None, None)
    assert not quiet.busy() and busy.busy() and unknown.busy()
    assert busy.max_other_cores() == 0.9
    assert "not judged" in format_table(busy) and "BUSY machine" in format_table(busy)
    assert "quiet machine" in format_table(quiet) and "not judged" not in format_table(quiet)


def test_load_during_rounds_is_pooled_over_their_loops():
    from shufflenet.deploy.benchmark import BackendResult, _pool_rounds

    def round_(other_s, seconds):
        r = BackendResult("native", times_ms=[1.0], other_cores_before=0.01)
        r.other_seconds_during, r.seconds_during = other_s, seconds
        r.other_cores_during = max(0.0, other_s) / seconds
        return r

    # one clock tick of another process in a 30 ms loop reads as 0.33 cores; over all loops it is 0.033
    pooled = None
    for other_s, seconds in [(0.01, 0.03), (0.0, 0.12), (-0.01, 0.05), (0.01, 0.10)]:
        pooled = _pool_rounds(pooled, round_(other_s, seconds))
    assert pooled.other_cores_during == pytest.approx(0.01 / 0.30)
    assert pooled.times_ms == [1.0] * 4 and pooled.other_cores_before == 0.01
    # a round whose load could not be read leaves the load unknown (then the result counts as busy)
    unknown = BackendResult("native", times_ms=[1.0])
    assert _pool_rounds(pooled, unknown).other_cores_during is None


def test_load_meter_subtracts_own_cpu():
    from shufflenet.deploy.benchmark import _LoadMeter, cpu_busy_other

    assert cpu_busy_other(0.05) is None or cpu_busy_other(0.05) >= 0
    meter = _LoadMeter()
    meter.start()
    t = time.perf_counter()
    while time.perf_counter() - t < 0.3:  # this process spins one core
        pass
    other = meter.stop()
    if other is not None:  # Linux
        # the spinning core is this process's own: what is left is other processes' use, not 1 + theirs
        assert 0.0 <= other < (os.cpu_count() or 1)


@needs_executorch
@needs_ncnn
@pytest.mark.slow
def test_bench_runs_each_backend_in_its_own_process():
    from shufflenet.deploy.benchmark import run_benchmark

    res = run_benchmark(
        "shufflenet_v1_g3_x0_25",
        batch=1,
        threads=1,
        backends=("eager", "executorch", "ncnn"),
        input_size=32,
        runs=3,
        warmup=1,
        load_window=0.05,
    )
    pids = {r.pid for r in res.backends.values()}
    assert len(pids) == 3 and os.getpid() not in pids
    for name, r in res.backends.items():
        assert r.status == "ok", (name, r.reason)
        assert len(r.times_ms) == 3 and r.max_rel_error < 1e-4
        assert r.other_cores_during is None or r.other_cores_during >= 0
    assert "0 ops outside" in res.backends["executorch"].engine


@pytest.mark.slow
def test_bench_rounds_interleave_worker_processes(monkeypatch):
    from shufflenet.deploy import benchmark

    calls = []
    real = benchmark._run_worker

    def spy(spec, timeout):
        res = real(spec, timeout)
        calls.append((spec["backend"], spec["runs"], res.pid))
        return res

    monkeypatch.setattr(benchmark, "_run_worker", spy)
    res = benchmark.run_benchmark(
        "shufflenet_v1_g3_x0_25",
        batch=1,
        threads=1,
        backends=("eager", "optimized"),
        input_size=32,
        runs=5,
        rounds=2,
        warmup=1,
        load_window=0.0,
    )
    # round 1: eager then optimized, 3 runs each; round 2 rotated: optimized then eager, 2 runs each
    assert [(b, n) for b, n, _ in calls] == [
        ("eager", 3), ("optimized", 3), ("optimized", 2), ("eager", 2)
    ]  # fmt: skip
    assert len({pid for _, _, pid in calls}) == 4  # a fresh process every time
    for name, r in res.backends.items():
        assert r.status == "ok", (name, r.reason)
        assert len(r.times_ms) == 5 and r.median_ms == pytest.approx(statistics.median(r.times_ms))
    with pytest.raises(ValueError, match="rounds=0 must be a positive int"):
        benchmark.run_benchmark("shufflenet_v1_g3_x0_25", backends=("eager",), rounds=0)


@needs_executorch
def test_executorch_refuses_ops_the_runtime_cannot_run():
    # LocalResponseNorm becomes avg_pool3d outside the delegate, and the portable runtime has no kernel for it:
    # the export says so instead of writing a program that fails to load
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.LocalResponseNorm(3), nn.Flatten(), nn.LazyLinear(2)
    )
    model(torch.randn(1, 3, 8, 8))
    with pytest.raises(
        NotSupportedError,
        match=r"no portable kernel for aten::avg_pool3d \(1 \(LocalResponseNorm\)\)",
    ):
        export_executorch(model, None, input_size=8, allow_outside=True)


@needs_executorch
def test_executorch_runner_rejects_a_file_that_is_not_a_program():
    with pytest.raises(ValueError, match="not a loadable ExecuTorch program"):
        ExecuTorchRunner(b"not a program" * 8)
