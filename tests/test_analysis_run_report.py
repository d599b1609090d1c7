"""The report page of a trained model, made from a tiny ``shufflenet train`` run directory."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import torch

from shufflenet.analysis import run_report
from shufflenet.cli import train
from shufflenet.train.config import TrainConfig


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    argv = ["--model", "shufflenet_v1_g3_x0_25", "--model-kwargs", '{"stage_repeats": [1, 1, 1]}',
            "--image-size", "16", "--epochs", "2", "--threads", "1", "--no-progress", "--output", str(out),
            "--name", "tiny"]  # fmt: skip
    assert train.main(argv) == 0
    return out / "tiny"


def test_report_page_reproduces_the_run(run_dir, tmp_path, capsys) -> None:
    page = tmp_path / "page"
    argv = [str(run_dir), "--out", str(page), "--note", "load average 1.0", "--copy-model"]
    assert run_report.main(argv) == 0
    res = json.loads((page / "results.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    # the saved model evaluated again gives the run's own final numbers
    assert res["test_top1"] == pytest.approx(summary["final"]["val_acc1"], abs=1e-12)
    assert res["test_images"] == summary["final"]["val_count"] == 359
    confusion = np.array(res["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 359
    assert np.trace(confusion) / 359 == pytest.approx(res["test_top1"])
    np.testing.assert_allclose(
        res["per_class_top1"], np.diag(confusion) / confusion.sum(1), rtol=1e-12
    )
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert res["train_top1_last_epoch"] == pytest.approx(history[-1]["train_acc"])
    assert res["train_seconds"] == pytest.approx(sum(r["epoch_seconds"] for r in history))
    assert (page / "model.safetensors").read_bytes() == (run_dir / "model.safetensors").read_bytes()
    for name in ("curves.png", "confusion_matrix.png"):
        assert (page / name).read_bytes()[:4] == b"\x89PNG"
    text = (page / "report.md").read_text()
    assert res["train_command"] in text and "load average 1.0" in text
    assert f"{100 * res['test_top1']:.2f}" in text and "gives the same" in text
    assert "test top-1" in capsys.readouterr().out


def test_train_command_repeats_the_run(run_dir) -> None:
    """The rebuilt command parses back into the run's configuration for every option it names."""
    cfg = json.loads((run_dir / "config.json").read_text())
    cmd = run_report.train_command(cfg)
    args = shlex.split(cmd)
    assert args[:2] == ["shufflenet", "train"]
    parsed = train.build_parser().parse_args(args[2:])
    for key in (
        "model",
        "model_kwargs",
        "epochs",
        "image_size",
        "lr",
        "schedule",
        "seed",
        "threads",
    ):
        assert getattr(parsed, key) == cfg[key], key
    assert set(run_report._COMMAND_OPTIONS) <= {f for f in TrainConfig.__dataclass_fields__}


def test_unfinished_run_is_refused(tmp_path, capsys) -> None:
    (tmp_path / "config.json").write_text("{}")
    threads = torch.get_num_threads()
    argv = [str(tmp_path), "--out", str(tmp_path / "p"), "--threads", str(threads + 1)]
    assert run_report.main(argv) == 2
    assert torch.get_num_threads() == threads  # restored, also on error
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing summary.json" in err
