"""``shufflenet train``, ``evaluate`` and ``predict`` through their ``main(argv)``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from shufflenet.cli import evaluate, predict, train
from shufflenet.data import builtin_digits


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    argv = ["--model", "shufflenet_v1_g3_x0_25", "--model-kwargs", '{"stage_repeats": [1, 1, 1]}',
            "--image-size", "16", "--epochs", "3", "--lr", "0.1", "--threads", "1", "--no-progress", "--output", str(out),
            "--name", "run"]  # fmt: skip
    assert train.main(argv) == 0
    return out / "run"


def test_train_writes_a_summary(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["params"] > 0 and summary["macs"] > 0
    assert (
        summary["final"]["val_acc1"] > 0.3
    )  # 3 epochs of a 10k-parameter net: well above chance (0.1)
    assert sorted(summary["plots"]) == sorted(
        str(run_dir / p) for p in ("confusion_matrix.png", "curves.png")
    )


def test_evaluate_matches_training_and_writes_confusion(run_dir, tmp_path, capsys):
    png = tmp_path / "cm.png"
    assert (
        evaluate.main([str(run_dir / "model.safetensors"), "--json", "--confusion", str(png)]) == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert metrics["val_acc1"] == pytest.approx(summary["final"]["val_acc1"])
    assert metrics["val_count"] == 359 and metrics["data"] == "builtin"
    assert 0 <= metrics["val_acc1"] <= metrics["val_acc5"] <= 1
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert evaluate.main([str(run_dir / "model.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" in out and (run_dir / "model-confusion.png").exists()


def test_predict_prints_top_classes(run_dir, tmp_path, capsys):
    val = builtin_digits(False, image_size=16)
    paths = []
    for i in range(3):
        img, label = val[i]
        path = tmp_path / f"digit{label}.png"
        Image.fromarray(np.repeat(img.permute(1, 2, 0).numpy(), 3, axis=2)).save(
            path
        )  # an RGB file
        paths.append(str(path))
    assert predict.main([str(run_dir / "model.safetensors"), *paths, "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line, path in zip(lines, paths):
        assert line.startswith(f"{path}: ") and line.count("%") == 3
    assert (
        predict.main([str(run_dir / "model.safetensors"), paths[0], "--json", "--top-k", "10"]) == 0
    )
    probs = [c["prob"] for c in json.loads(capsys.readouterr().out)["top"]]
    assert (
        len(probs) == 10
        and probs == sorted(probs, reverse=True)
        and sum(probs) == pytest.approx(1, abs=1e-5)
    )


def test_predict_reports_unreadable_images(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert predict.main([str(run_dir / "model.safetensors"), str(bad)]) == 2  # a user error
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("shufflenet predict: error:") and "bad.png" in line


def test_foreign_checkpoint_is_a_clear_error(tmp_path, capsys):
    foreign = tmp_path / "x.safetensors"
    foreign.write_bytes(b"garbage")
    assert evaluate.main([str(foreign)]) == 2
    assert "x.safetensors" in capsys.readouterr().err
    assert predict.main([str(foreign), "img.png"]) == 2


def test_train_errors_are_one_line(tmp_path, capsys):
    assert train.main(["--data", str(tmp_path / "missing"), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shufflenet train: error:") and "accepted: 'builtin'" in err
    assert err.count("\n") == 1, err
    assert train.main(["--resume", str(tmp_path / "nothing")]) == 2
