"""``shufflenet reproduce``: the reports are written, and their numbers are those of the library and the papers."""

from __future__ import annotations

import csv
import json
import math
import pickle
import types

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from shufflenet import create_model, load_model
from shufflenet.analysis.reproduce import (
    BUDGETS,
    EXPERIMENTS,
    ComplexityConfig,
    GroupsConfig,
    ReproduceOptions,
    ShuffleConfig,
    common,
    run_experiment,
)
from shufflenet.analysis.reproduce.common import load_splits, train_eval
from shufflenet.cli import reproduce as cli


@pytest.mark.slow  # profiles AlexNet and nine other models at full size
def test_complexity_report_matches_published_counts(tmp_path) -> None:
    opts = ComplexityConfig(out=tmp_path, groups=[3], widths=[0.5, 1.0])
    results = run_experiment("complexity", opts)
    rows = {r["model"]: r for r in results["deep_roots"]}
    # Deep Roots Table 1 / the AlexNet figures of the same work, as literals
    assert rows["nin_cifar10"]["params"] == 966_986
    assert rows["nin_root16"]["params"] == 244_682
    assert rows["nin_root4"]["macs"] + rows["nin_root4"]["biases"] == 123_397_514
    assert rows["alexnet_g2"]["params"] == 60_965_224
    assert rows["alexnet_g2"]["macs"] + rows["alexnet_g2"]["biases"] == 724_417_384
    sn = {r["model"]: r for r in results["shufflenet_v1"]}
    assert set(sn) == {"shufflenet_v1_g3_x0_5", "shufflenet_v1_g3_x1_0"}
    assert round(sn["shufflenet_v1_g3_x1_0"]["conv_macs"] / 1e6) == 137  # ShuffleNet Table 1, g=3
    assert round(sn["shufflenet_v1_g3_x0_5"]["macs"] / 1e6) == 38  # Table 2, 0.5x
    report = (tmp_path / "report.md").read_text()
    assert "| nin_root8 | 314,954 | 314,954 | 103,343,498 |" in report
    assert (tmp_path / "complexity_table1.png").stat().st_size > 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["experiment"] == "complexity"


def test_budget_fills_unset_options_only() -> None:
    opts = ReproduceOptions(out="x", budget="smoke", epochs=3)
    assert opts.epochs == 3 and opts.subset == BUDGETS["smoke"]["subset"]
    with pytest.raises(ValueError, match="budget='huge'"):
        ReproduceOptions(out="x", budget="huge")
    groups = GroupsConfig(out="x", data="builtin", budget="smoke")
    assert groups.corr_images == BUDGETS["smoke"]["corr_images"] and groups.epochs == 1


def test_training_experiments_need_data(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["groups", "--out", str(tmp_path)])
    assert "--data" in capsys.readouterr().err


@pytest.mark.parametrize("under", [False, True])
def test_out_that_is_a_file_is_refused_in_one_line(tmp_path, capsys, under) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "report" if under else tmp_path / "file"
    from shufflenet.cli.main import main

    assert main(["reproduce", "complexity", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"shufflenet reproduce: error: --out {str(out)!r}: "
        f"{str(tmp_path / 'file')!r} is a file, not a directory"
    )
    assert (tmp_path / "file").read_text() == "x"


def test_every_experiment_is_a_cli_choice() -> None:
    action = next(a for a in cli.build_parser()._actions if a.dest == "experiment")
    assert sorted(action.choices) == sorted(EXPERIMENTS)


SMOKE = [
    "--data",
    "builtin",
    "--budget",
    "smoke",
    "--subset",
    "40",
    "--test-subset",
    "20",
    "--batch-size",
    "16",
    "--no-progress",
]


@pytest.mark.slow
def test_groups_smoke_on_builtin_digits(tmp_path) -> None:
    out = tmp_path / "g"
    args = ["groups", *SMOKE, "--roots", "1", "4", "--corr-images", "20", "--save-checkpoints",
            "--init-seeds", "0", "1", "--bootstrap", "2"]  # fmt: skip
    assert cli.main([*args, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())["results"]
    assert set(res) == {"1", "4"}
    # single-channel input: the first conv has 1/3 of the weights of the RGB model (5*5*192*2 fewer)
    assert res["1"]["params"] == 966_986 - 5 * 5 * 192 * 2
    key = res["4"]["correlation"]["conv2c-conv3a"]
    assert key["groups"] == 2 and key["trained"]["images"] == 20 and len(key["untrained"]) == 2
    assert key["excess"] == pytest.approx(key["trained_share"] - np.mean(key["untrained_shares"]))
    assert set(res["4"]["correlation"]) == {
        "conv1c-conv2a",
        "conv2a-conv2b",
        "conv2c-conv3a",
        "conv3a-conv3b",
    }
    assert res["4"]["in_block_share"]["2"] == pytest.approx(key["trained_share"])
    assert (
        res["1"]["correlation"]["conv2c-conv3a"]["excess"] is None
    )  # dense: scored at other counts only
    assert 0.0 <= res["1"]["in_block_share_untrained"]["2"] <= 1.0
    assert res["4"]["train_images"] == 20 and 0.0 <= res["4"]["train_top1"] <= 1.0
    report = (out / "report.md").read_text()
    assert "| root-4 |" in report and "92.02" in report  # published accuracy beside ours
    assert "learned excess" in report and "| root-4 untrained |" in report
    assert "load average at the end (1 / 5 / 15 min)" in report
    for fig in ("correlation_panels.png", "correlation_shares.png", "accuracy.png"):
        assert (out / fig).stat().st_size < 300_000
    model, info = load_model(out / "checkpoints" / "nin_root4.safetensors")
    assert info.arch == "nin_root4" and info.input_spec.channel_order == "L"
    assert sum(p.numel() for p in model.parameters()) == res["4"]["params"]


@pytest.mark.slow
def test_resume_continues_a_stopped_report_exactly(tmp_path, monkeypatch, capsys) -> None:
    args = ["groups", *SMOKE, "--epochs", "2", "--roots", "2", "--corr-images", "8",
            "--init-seeds", "0", "--bootstrap", "0"]  # fmt: skip
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert cli.main([*args, "--save-checkpoints", "--out", str(whole)]) == 0
    # the same report, stopped after its first epoch (as a kill after a checkpoint would leave it)
    real = common.train_config
    monkeypatch.setattr(
        common, "train_config", lambda *a, **k: real(*a, **k).replace(stop_after_epochs=1)
    )
    assert cli.main([*args, "--save-checkpoints", "--out", str(resumed)]) == 1
    assert "stopped" in capsys.readouterr().err
    monkeypatch.setattr(common, "train_config", real)
    assert cli.main([*args, "--resume", "--out", str(resumed)]) == 0
    assert sorted(p.name for p in (resumed / "runs").iterdir()) == [
        "nin_root2"
    ]  # continued in place
    a, b = (json.loads((d / "results.json").read_text())["results"]["2"] for d in (whole, resumed))
    assert b["test_top1"] == a["test_top1"] and b["train_top1"] == a["train_top1"]
    wa, wb = (load_file(d / "checkpoints" / "nin_root2.safetensors") for d in (whole, resumed))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # a finished run is evaluated again, not trained again: same weights, and its recorded epoch times
    before = (resumed / "runs" / "nin_root2" / "metrics.jsonl").read_text()
    assert cli.main([*args, "--resume", "--out", str(resumed)]) == 0
    assert (resumed / "runs" / "nin_root2" / "metrics.jsonl").read_text() == before
    wc = load_file(resumed / "checkpoints" / "nin_root2.safetensors")
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
    epochs = [json.loads(line)["epoch_seconds"] for line in before.splitlines()]
    c = json.loads((resumed / "results.json").read_text())["results"]["2"]
    assert len(epochs) == 2 and c["seconds"] >= sum(epochs)


def test_resume_counts_the_time_before_a_stop_inside_an_epoch(tmp_path, monkeypatch) -> None:
    # a run stopped inside its third epoch: the resumed fit records that epoch's time before the stop too
    opts = GroupsConfig(out=tmp_path, data="builtin", budget="smoke", resume=True)
    run_dir = tmp_path / "runs" / "nin_root2"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "e0002s000010.state.pt").write_bytes(b"")
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text('{"epoch_seconds": 100.0}\n{"epoch_seconds": 250.0}\n')

    def fake_fit(cfg, **kwargs):
        assert cfg.resume == str(run_dir)
        with metrics.open("a") as f:
            f.write('{"epoch_seconds": 300.0}\n')
        final = {"val_acc1": 0.5, "val_count": 10}
        return types.SimpleNamespace(status="completed", final=final, history=[])

    monkeypatch.setattr(common, "fit", fake_fit)
    out = train_eval(nn.Linear(1, 1), None, None, opts, "nin_root2")
    assert 650.0 <= out["seconds"] < 660.0


def test_resume_restarts_a_run_stopped_before_its_first_checkpoint(tmp_path) -> None:
    opts = GroupsConfig(out=tmp_path, data="builtin", budget="smoke", resume=True)
    assert opts.save_checkpoints  # resume implies it
    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    common._discard_unstarted(run_dir)
    assert not run_dir.exists()
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    (run_dir / "summary.json").write_text(
        "{}"
    )  # a finished run without checkpoints: not ours to delete
    with pytest.raises(ValueError, match="no checkpoint to continue from"):
        common._discard_unstarted(run_dir)
    assert run_dir.is_dir()


@pytest.mark.slow
def test_shuffle_smoke_on_builtin_digits(tmp_path) -> None:
    out = tmp_path / "s"
    args = ["shuffle", *SMOKE, "--groups", "1", "3", "--seeds", "0", "1", "--epochs", "1"]
    threads = torch.get_num_threads()
    assert cli.main([*args, "--threads", str(threads + 1), "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # the caller's thread count is restored
    data = json.loads((out / "results.json").read_text())
    res, summary = data["results"], data["summary"]
    on, off = res["shufflenet_v1_g3_x0_25/shuffle/seed0"], res["shufflenet_v1_g3_x0_25/none/seed0"]
    assert on["params"] == off["params"] and on["macs"] == off["macs"]  # shuffle is free
    # the paired gap per seed, its mean and standard error
    gaps = [
        100 * (res[f"shufflenet_v1_g3_x0_25/shuffle/seed{s}"]["test_top1"]
               - res[f"shufflenet_v1_g3_x0_25/none/seed{s}"]["test_top1"])
        for s in (0, 1)
    ]  # fmt: skip
    assert summary["0.25/3"]["gaps"] == pytest.approx(gaps)
    assert summary["0.25/3"]["gap"][0] == pytest.approx(np.mean(gaps))
    assert summary["0.25/3"]["gap"][1] == pytest.approx(np.std(gaps, ddof=1) / np.sqrt(2))
    # g = 1: one function, trained once per seed, gap 0
    g1 = res["shufflenet_v1_g1_x0_25/none/seed1"]
    assert g1["same_function_as_shuffle"] is True and summary["0.25/1"]["gaps"] == [0.0, 0.0]
    assert g1["test_top1"] == res["shufflenet_v1_g1_x0_25/shuffle/seed1"]["test_top1"]
    report = (out / "report.md").read_text()
    assert "| 0.25x, g=3 |" in report and "| 0.25x, g=1 (control) |" in report
    assert (
        "identical outputs for every seed" in report
        and (out / "shuffle_gap.png").stat().st_size > 0
    )


@pytest.mark.slow
def test_alexnet_groups_smoke_on_builtin_digits(tmp_path) -> None:
    out = tmp_path / "a"
    args = ["alexnet-groups", *SMOKE, "--epochs", "1", "--warmup", "0.3", "--out", str(out)]
    assert cli.main(args) == 0
    report = (out / "report.md").read_text()
    assert "single-channel" in report  # no colour measure for grey digits
    assert "30% linear warm-up" in report  # the schedule that ran, not a fixed text
    assert (out / "conv1_filters.png").stat().st_size > 0


def _write_rgb_cifar(root, n_train: int, n_test: int) -> None:
    """A CIFAR-10 directory of random RGB images in the official python layout."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per = -(-n_train // 5)
    for b in range(5):
        flat = rng.integers(0, 256, (per, 3072)).astype(np.uint8)
        batch = {b"labels": [i % 10 for i in range(per)], b"data": flat}
        (d / f"data_batch_{b + 1}").write_bytes(pickle.dumps(batch))
    flat = rng.integers(0, 256, (n_test, 3072)).astype(np.uint8)
    (d / "test_batch").write_bytes(
        pickle.dumps({b"labels": [i % 10 for i in range(n_test)], b"data": flat})
    )
    names = [f"class{i}".encode() for i in range(10)]
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))


@pytest.mark.slow
def test_alexnet_groups_colour_spread_over_filters(tmp_path) -> None:
    _write_rgb_cifar(tmp_path / "data", 20, 10)
    out = tmp_path / "a"
    args = ["alexnet-groups", "--data", str(tmp_path / "data"), "--budget", "smoke", "--epochs", "1",
            "--image-size", "63", "--batch-size", "10", "--threads", "1", "--no-progress"]  # fmt: skip
    assert cli.main([*args, "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "conv1_colour.csv").open()))
    record = json.loads((out / "results.json").read_text())["filters"]
    for label, column in (("trained", "colour_trained"), ("at initialisation", "colour_init")):
        for k, group in enumerate(record[label]["per_group"]):
            values = [float(r[column]) for r in rows if int(r["group"]) == k]
            assert len(values) == 48
            assert group["mean"] == pytest.approx(np.mean(values), rel=1e-6)
            assert group["sd"] == pytest.approx(np.std(values, ddof=1), rel=1e-5)
            assert group["q25"] == pytest.approx(np.percentile(values, 25), rel=1e-5)
    assert "mean ± sd (quartiles)" in (out / "report.md").read_text()


def _tiny_model():
    return create_model(
        "shufflenet_v1_g3_x0_25",
        num_classes=10,
        in_chans=1,
        small_input=True,
        stage_repeats=[1, 1, 1],
    )


def test_reports_train_through_fit_with_their_recipe(tmp_path) -> None:
    opts = ShuffleConfig(
        out=tmp_path, data="builtin", budget="smoke", subset=48, test_subset=30, epochs=2,
        batch_size=16, threads=1, save_checkpoints=True,
    )  # fmt: skip
    train_ds, test_ds = load_splits(opts)
    assert len(train_ds) == 48 and len(test_ds) == 30
    res = train_eval(_tiny_model(), train_ds, test_ds, opts, "tiny/shuffle")
    # 3 steps per epoch, 6 in all, warm-up over round(10% of 6) = 1 step, then half a cosine to 0
    peak, total, warm = 0.05 * 16 / 64, 6, 1
    expected = [peak * 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))) for s in (3, 6)]
    assert [row["lr"] for row in res["history"]] == pytest.approx(expected, abs=1e-12)
    assert [row["epoch"] for row in res["history"]] == [1, 2]
    assert res["test_images"] == 30 and res["test_top1"] == res["history"][-1]["val_acc1"]
    run = tmp_path / "runs" / "tiny_shuffle"  # the run directory of `shufflenet train`
    config = json.loads((run / "config.json").read_text())
    assert config["optimizer"] == "sgd" and config["nesterov"] is True
    assert config["weight_decay"] == 5e-4 and config["model"] == "shufflenet_v1_g3_x0_25"
    assert config["model_kwargs"] == {"stage_repeats": [1, 1, 1]} and config["small_input"] is True
    assert len((run / "metrics.csv").read_text().splitlines()) == 3


def test_a_diverging_report_stops_with_status_3(tmp_path, capsys) -> None:
    args = ["shuffle", *SMOKE, "--groups", "3", "--lr", "1e30", "--threads", "1"]
    assert cli.main([*args, "--out", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "NaN or infinite" in err and "--lr" in err
    assert not (tmp_path / "report.md").exists()


def test_experiment_options_are_typed_and_checked(tmp_path, capsys) -> None:
    with pytest.raises(TypeError, match="GroupsConfig"):
        run_experiment("groups", ShuffleConfig(out=tmp_path, data="builtin"))
    with pytest.raises(ValueError, match="roots"):
        GroupsConfig(out=tmp_path, data="builtin", roots=[0])
    with pytest.raises(SystemExit):  # a flag of another experiment
        cli.main(["shuffle", "--data", "builtin", "--roots", "2"])
    assert "--roots" in capsys.readouterr().err
