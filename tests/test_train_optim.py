"""Recipes, parameter groups, learning-rate schedules, the CLI's mapping of flags to the configuration."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from shufflenet import create_model
from shufflenet.cli.train import build_parser
from shufflenet.train import RECIPES, TrainConfig, build_optimizer, param_groups, resolve
from shufflenet.train.config import OPTIMIZER_DEFAULTS
from shufflenet.train.optim import build_scheduler, lr_factor


def test_paper_recipe():
    cfg = resolve(TrainConfig(recipe="paper", batch_size=256))
    assert cfg.optimizer == "sgd" and cfg.momentum == 0.9 and not cfg.nesterov
    assert cfg.lr == pytest.approx(0.5 * 256 / 1024)
    assert cfg.schedule == "linear" and cfg.warmup_epochs == 0
    assert cfg.weight_decay == 4e-5 and cfg.label_smoothing == 0.1 and cfg.bn_recalibrate is True


def test_default_recipe_and_explicit_values_win():
    cfg = resolve(TrainConfig(batch_size=128))
    assert (
        cfg.optimizer == "adamw" and cfg.lr == RECIPES["default"]["lr"]
    )  # AdamW: not batch-scaled
    assert cfg.schedule == "cosine" and cfg.bn_recalibrate is False and cfg.weight_decay == 0.05
    mine = resolve(TrainConfig(recipe="paper", lr=0.3, label_smoothing=0.0, schedule="cosine"))
    assert (mine.lr, mine.label_smoothing, mine.schedule) == (0.3, 0.0, "cosine")


def test_switching_optimizer_brings_its_defaults():
    sgd = resolve(TrainConfig(optimizer="sgd", batch_size=128))
    assert sgd.lr == pytest.approx(2 * OPTIMIZER_DEFAULTS["sgd"]["lr"]) and sgd.nesterov is True
    assert sgd.weight_decay == 5e-4 and sgd.schedule == "cosine"
    adamw = resolve(TrainConfig(recipe="paper", optimizer="adamw", weight_decay=0.01))
    assert adamw.lr == 2e-3 and adamw.weight_decay == 0.01 and adamw.label_smoothing == 0.1


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"recipe": "fast"}, "recipe='fast'"),
        ({"optimizer": "lamb"}, "optimizer='lamb'"),
        ({"schedule": "step"}, "schedule='step'"),
        ({"epochs": 0}, "epochs=0"),
        ({"hflip": 2.0}, "hflip=2.0"),
        ({"threads": -2}, "threads=-2 must be a positive integer"),
        ({"threads": 0}, "threads=0 must be a positive integer"),
        ({"image_size": 0}, "image_size=0 must be a whole number of pixels from 1 to 4096"),
        ({"image_size": 100000}, "image_size=100000 must be a whole number"),
        ({"in_chans": 2}, "in_chans=2 must be 1"),
        ({"model_kwargs": {"in_chans": 3}}, "set by in_chans"),
        ({"val_fraction": 1.0}, "val_fraction=1.0"),
        ({"lr": 1e39}, "lr=1e[+]39 must be a positive finite number"),
        ({"lr": float("nan")}, "lr=nan must be"),
        ({"lr": -0.1}, "lr=-0.1 must be"),
    ],
)
def test_bad_options_are_clear_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        resolve(TrainConfig(**kw))


def test_config_json_round_trip_and_unknown_keys():
    cfg = resolve(TrainConfig(model_kwargs={"drop_rate": 0.1}))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"modle": "x"})


def test_weight_decay_only_on_conv_and_linear_weights():
    model = create_model("shufflenet_v1_g3_x0_25", num_classes=10, small_input=True)
    decay, no_decay = param_groups(model, 4e-5)
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    want_decay = {id(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    assert ids(decay["params"]) == want_decay
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {id(m.weight) for m in bn} | {id(m.bias) for m in bn} | {id(model.fc.bias)} == ids(
        no_decay["params"]
    )
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_schedules():
    linear = lr_factor("linear", total_steps=10)
    assert [linear(s) for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
    cosine = lr_factor("cosine", total_steps=10, warmup_steps=2)
    assert cosine(0) == 0.5 and cosine(1) == 1.0 and cosine(2) == 1.0
    assert cosine(6) == pytest.approx(0.5) and cosine(10) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("constant", 5)(4) == 1.0
    with pytest.raises(ValueError, match="schedule='exp'"):
        lr_factor("exp", 5)


def test_scheduler_drives_the_optimizer_per_step():
    cfg = resolve(TrainConfig(recipe="paper", epochs=2, batch_size=1024))
    model = nn.Linear(2, 2)
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, steps_per_epoch=4)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.5 and math.isclose(lrs[4], 0.25) and math.isclose(lrs[-1], 0.5 / 8)
    assert opt.param_groups[0]["lr"] == 0.0


def test_a_group_with_its_own_rate_follows_the_schedule_at_that_rate():
    cfg = resolve(TrainConfig(recipe="paper", epochs=2, batch_size=1024))  # linear decay from 0.5
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    groups = [
        {"params": model[0].parameters(), "lr": 0.1 * cfg.lr},  # "backbone" at a tenth
        {"params": model[1].parameters()},
    ]
    opt = build_optimizer(cfg, model, groups)
    sched = build_scheduler(cfg, opt, steps_per_epoch=4)
    for step in range(8):
        factor = 1 - step / 8
        assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * factor, abs=1e-15)
        assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * factor, abs=1e-15)
        opt.step()
        sched.step()


def test_cli_flags_map_to_config_fields():
    args = build_parser().parse_args(
        [
            "--model",
            "m",
            "--epochs",
            "3",
            "--no-progress",
            "--model-kwargs",
            '{"drop_rate": 0.2}',
            "--lr",
            "0.1",
        ]
    )
    given = {k: v for k, v in vars(args).items() if v is not None}
    assert given == {
        "model": "m",
        "epochs": 3,
        "progress": False,
        "model_kwargs": {"drop_rate": 0.2},
        "lr": 0.1,
    }
    assert TrainConfig(**given).epochs == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model-kwargs", "[1, 2]"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--optimizer", "lamb"])


def test_optimizer_choice():
    model = nn.Conv2d(1, 2, 3)
    assert isinstance(build_optimizer(resolve(TrainConfig()), model), torch.optim.AdamW)
    sgd = build_optimizer(resolve(TrainConfig(optimizer="sgd")), model)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] is True
