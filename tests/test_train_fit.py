"""``fit``: the run directory, learning, the paper recipe's BN recalibration, non-finite loss, the groups hook."""

from __future__ import annotations

import csv
import itertools
import json

import pytest
import torch
from conftest import tiny_train_config
from safetensors.torch import load_file

from shufflenet import load_model, profile
from shufflenet.distributed import init_distributed
from shufflenet.train import RECIPES, fit, resolve
from shufflenet.train.run import Trainer


def test_run_directory_contents(tmp_path):
    threads = torch.get_num_threads()
    r = fit(tiny_train_config(tmp_path, epochs=2, max_steps=4, plots=True, name="run"))
    assert r.status == "completed" and r.epochs_done == 2 and r.run_dir == tmp_path / "run"
    names = {p.name for p in r.run_dir.iterdir()}
    assert {
        "config.json",
        "metrics.csv",
        "metrics.jsonl",
        "curves.png",
        "confusion_matrix.png",
        "model.safetensors",
        "best.safetensors",
        "summary.json",
        "checkpoints",
    } <= names
    for png in r.plots:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((r.run_dir / "metrics.csv").read_text().splitlines()))
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert {
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc1",
        "val_acc5",
        "lr",
        "images_per_s",
    } <= set(rows[0])
    lines = (r.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    saved = json.loads((r.run_dir / "config.json").read_text())
    assert saved["image_size"] == 16 and saved["in_chans"] == 1 and saved["small_input"] is True
    assert saved["lr"] == RECIPES["default"]["lr"] and saved["optimizer"] == "adamw"
    assert saved["hflip"] == 0.0

    model, info = load_model(r.model_path)
    assert info.arch == "shufflenet_v1_g3_x0_25" and info.class_names == [str(i) for i in range(10)]
    assert info.input_spec.image_size == 16 and info.input_spec.channel_order == "L"
    assert info.extra["data"] == "builtin" and info.extra["val_acc1"] == r.final["val_acc1"]
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)
    assert (r.params, r.macs) == (
        profile(model, (1, 16, 16)).params,
        profile(model, (1, 16, 16)).macs,
    )
    assert torch.get_num_threads() == threads  # fit leaves the process as it found it
    assert not torch.are_deterministic_algorithms_enabled()


def test_fit_learns_digits(tmp_path):
    r = fit(tiny_train_config(tmp_path, epochs=4, batch_size=64, lr=0.1))
    assert r.final["val_acc1"] > 0.6, r.history  # chance is 0.1
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]


def test_paper_recipe_recalibrates_batch_norm(tmp_path):
    r = fit(
        tiny_train_config(tmp_path, recipe="paper", epochs=1, max_steps=3, bn_recalibrate_batches=5)
    )
    assert r.final["bn_recalibrated"] is True
    final = load_file(r.model_path)
    last = load_file(r.checkpoint)  # weights after the last step, before recalibration
    for k in final:
        if "running" in k or "num_batches" in k:
            continue
        assert torch.equal(final[k], last[k]), k  # recalibration touches only the statistics
    assert any(not torch.equal(final[k], last[k]) for k in final if "running_var" in k)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = resolve(tiny_train_config(tmp_path, epochs=3, max_steps=4, name="nan"))
    trainer = Trainer(cfg, init_distributed("cpu"))
    real, calls = trainer.optim.criterion, itertools.count()
    trainer.optim.criterion = lambda logits, y: (
        real(logits, y) * (float("nan") if next(calls) == 6 else 1.0)
    )
    r = trainer.run()
    assert r.status == "nonfinite" and r.epochs_done == 1 and r.final == {}
    ckpts = sorted(p.name for p in (r.run_dir / "checkpoints").glob("*.safetensors"))
    assert ckpts == ["e0001s000000.safetensors"] and r.checkpoint.name == ckpts[0]
    assert not (r.run_dir / "model.safetensors").exists()


def test_parallel_groups_needs_several_processes(tmp_path):
    with pytest.raises(ValueError, match="launch several"):
        fit(tiny_train_config(tmp_path, epochs=1, max_steps=1, parallel="groups"))


def test_dataset_errors_surface_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="accepted: 'builtin'"):
        fit(tiny_train_config(tmp_path, data=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="no full batch"):
        fit(tiny_train_config(tmp_path, batch_size=4096))
