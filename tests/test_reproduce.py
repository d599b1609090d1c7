"""``shufflenet reproduce``: the reports are written, and their numbers are those of the library and the papers."""

from __future__ import annotations

import json
import math

import pytest

from shufflenet import create_model, load_model
from shufflenet.analysis.reproduce import (
    BUDGETS,
    EXPERIMENTS,
    ComplexityConfig,
    GroupsConfig,
    ReproduceOptions,
    ShuffleConfig,
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
    args = ["groups", *SMOKE, "--roots", "1", "4", "--corr-images", "20", "--save-checkpoints"]
    assert cli.main([*args, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())["results"]
    assert set(res) == {"1", "4"}
    # single-channel input: the first conv has 1/3 of the weights of the RGB model (5*5*192*2 fewer)
    assert res["1"]["params"] == 966_986 - 5 * 5 * 192 * 2
    assert (
        res["4"]["correlation"]["block"]["groups"] == 2 and res["4"]["correlation"]["images"] == 20
    )
    assert 0.0 <= res["4"]["in_block_share"]["2"] <= 1.0
    report = (out / "report.md").read_text()
    assert "| root-4 |" in report and "92.02" in report  # published accuracy beside ours
    for fig in ("correlation_panels.png", "accuracy.png"):
        assert (out / fig).stat().st_size < 300_000
    model, info = load_model(out / "checkpoints" / "nin_root4.safetensors")
    assert info.arch == "nin_root4" and info.input_spec.channel_order == "L"
    assert sum(p.numel() for p in model.parameters()) == res["4"]["params"]


@pytest.mark.slow
def test_shuffle_smoke_on_builtin_digits(tmp_path) -> None:
    out = tmp_path / "s"
    assert cli.main(["shuffle", *SMOKE, "--groups", "3", "--epochs", "1", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())["results"]
    on, off = res["shufflenet_v1_g3_x0_25/shuffle"], res["shufflenet_v1_g3_x0_25/none"]
    assert on["params"] == off["params"] and on["macs"] == off["macs"]  # shuffle is free
    assert "| 0.25x, g=3 |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_alexnet_groups_smoke_on_builtin_digits(tmp_path) -> None:
    out = tmp_path / "a"
    assert cli.main(["alexnet-groups", *SMOKE, "--epochs", "1", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "single-channel" in report  # no colour measure for grey digits
    assert (out / "conv1_filters.png").stat().st_size > 0


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
