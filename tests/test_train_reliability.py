"""Training under misuse and failure: the run-directory lock, one-line errors before any work, a checkpoint
directory replaced mid-run, weights that become NaN, damaged checkpoints, evaluation on part of the classes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_train_config
from safetensors.torch import load_file
from torch import nn

from shufflenet.cli import train
from shufflenet.distributed import DistContext, init_distributed
from shufflenet.train import evaluate, fit, resolve
from shufflenet.train.checkpoint import resume_config
from shufflenet.train.run import CheckpointWriteError, Trainer
from shufflenet.train.run_dir import LOCK_NAME, RunDirBusy, RunDirLock

TINY_ARGV = ["--model", "shufflenet_v1_g3_x0_25", "--model-kwargs", '{"stage_repeats": [1, 1, 1]}',
             "--image-size", "16", "--threads", "1", "--no-progress", "--no-plots"]  # fmt: skip


def assert_same_weights(a, b) -> None:
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


@pytest.fixture
def stopped_run(tmp_path):
    """A run stopped after its first of two epochs (resumable)."""
    r = fit(tiny_train_config(tmp_path, epochs=2, max_steps=2, name="run", stop_after_epochs=1))
    assert r.status == "stopped"
    return r.run_dir


def test_a_second_process_on_a_run_directory_is_refused(stopped_run, capsys) -> None:
    with RunDirLock(stopped_run):  # this process holds the run
        assert train.main(["--resume", str(stopped_run)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        assert f"in use by process {os.getpid()}" in err and LOCK_NAME in err
        with pytest.raises(RunDirBusy, match=str(os.getpid())):
            RunDirLock(stopped_run)
    # released: the run continues, and holds the lock while it trains
    assert train.main(["--resume", str(stopped_run)]) == 0


def test_a_lock_left_by_a_dead_process_is_taken_over(stopped_run, capsys) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)
    (stopped_run / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": "here"}))
    r = fit(resume_config(stopped_run))
    assert r.status == "completed"
    err = capsys.readouterr().err
    assert f"taking over the lock of {str(stopped_run)!r} left by process {pid}" in err
    assert (stopped_run / LOCK_NAME).read_text() == ""  # released at the end


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threads", "-2"], "threads=-2 must be a positive integer"),
        (["--image-size", "0"], "image_size=0 must be a whole number of pixels from 1 to 4096"),
        (["--image-size", "100000"], "image_size=100000 must be a whole number of pixels"),
        # 11x11/4 convolution and three unpadded 3x3/2 max pools: 63 px is the least that gives 1x1
        (["--model", "alexnet_g2"], "image_size=32 is too small for alexnet_g2: it needs at least 63x63"),
        (["--model-kwargs", '{"groups": 5}'], "shufflenet_v1_g3_x0_5 fixes groups=3; got groups=5"),
        (["--model-kwargs", '{"num_classes": 3}'], "num_classes=3 does not match the data's 10 classes"),
        (["--model-kwargs", '{"bogus": 1}'], "unexpected keyword argument 'bogus'"),
    ],
)  # fmt: skip
def test_bad_options_fail_in_one_line_before_any_work(tmp_path, capsys, argv, message) -> None:
    out = tmp_path / "runs"
    assert train.main(["--epochs", "1", "--no-progress", "--output", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("shufflenet train: error:")
    assert message in err
    assert not out.exists() or not any(out.iterdir())  # no run directory was made


def test_output_under_a_regular_file_is_refused(tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    assert train.main(["--output", str(tmp_path / "file" / "runs")]) == 2
    err = capsys.readouterr().err
    assert "lies under" in err and "is a file, not a directory" in err
    assert len(err.strip().splitlines()) == 1


def test_checkpoint_directory_replaced_by_a_file_loses_no_epoch(tmp_path) -> None:
    ref = fit(tiny_train_config(tmp_path, epochs=2, max_steps=2, name="ref"))
    trainer = Trainer(
        resolve(tiny_train_config(tmp_path, epochs=2, max_steps=2, name="cut")),
        init_distributed("cpu"),
    )
    blocker = trainer.run_dir / "checkpoints"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointWriteError, match="it is not a directory") as caught:
        trainer.run()
    rescued = trainer.run_dir / "rescued-checkpoints" / "e0001s000000.safetensors"
    assert f"--resume {rescued}" in str(caught.value) and rescued.is_file()
    blocker.unlink()
    done = fit(resume_config(rescued))
    assert done.status == "completed" and done.run_dir == trainer.run_dir
    assert_same_weights(ref.model_path, done.model_path)  # as if nothing had happened


def test_weights_that_become_nan_in_the_only_step_exit_3_and_save_nothing(
    tmp_path, capsys, monkeypatch
) -> None:
    # the loss of the only step is finite; the step itself leaves an infinite weight (a divergent update)
    real_step = torch.optim.AdamW.step

    def diverging_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", diverging_step)
    argv = [
        *TINY_ARGV,
        "--epochs",
        "1",
        "--max-steps",
        "1",
        "--output",
        str(tmp_path),
        "--name",
        "nan",
    ]
    assert train.main(argv) == 3
    assert "the weights became NaN or infinite in epoch 1 (by step 1)" in capsys.readouterr().out
    run = tmp_path / "nan"
    assert not (run / "model.safetensors").exists() and not (run / "best.safetensors").exists()
    assert not list(run.glob("checkpoints/*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "nonfinite" and summary["model_path"] is None


def test_resume_says_which_damaged_checkpoint_it_skipped(tmp_path, capsys) -> None:
    r = fit(tiny_train_config(tmp_path, epochs=3, max_steps=2, name="run", stop_after_epochs=2))
    newest = r.run_dir / "checkpoints" / "e0002s000000.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    capsys.readouterr()
    done = fit(resume_config(r.run_dir))
    err = capsys.readouterr().err
    assert "skipped checkpoint e0002s000000:" in err and str(newest) in err
    assert "resumed from" in err and "e0001s000000.safetensors (epoch 1, step 0)" in err
    assert done.status == "completed" and done.epochs_done == 3


def test_evaluate_on_labels_covering_part_of_the_outputs() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 12))  # 12 output classes
    images = torch.randn(20, 3, 4, 4)
    labels = torch.tensor([0, 3, 7, 11] * 5)  # the data holds 4 of them
    batches = [(images[i : i + 6], labels[i : i + 6], []) for i in range(0, 20, 6)]
    r = evaluate(model, batches, 4, DistContext())
    # reference: per-image loops in float64
    with torch.no_grad():
        logits = model(images).double().numpy()
    y = labels.numpy()
    top1 = np.mean([np.argmax(row) == t for row, t in zip(logits, y)])
    top5 = np.mean([t in np.argsort(-row)[:5] for row, t in zip(logits, y)])
    loss = np.mean([math.log(np.exp(row).sum()) - row[t] for row, t in zip(logits, y)])
    confusion = np.zeros((12, 12), dtype=np.int64)
    for row, t in zip(logits, y):
        confusion[t, np.argmax(row)] += 1
    assert r.count == 20 and r.acc1 == pytest.approx(top1) and r.acc5 == pytest.approx(top5)
    assert r.loss == pytest.approx(loss, rel=1e-5)
    assert r.confusion.shape == (12, 12) and np.array_equal(r.confusion.numpy(), confusion)
    with pytest.raises(ValueError, match="label 12 is not one of the model's 12 output classes"):
        evaluate(model, [(images[:2], torch.tensor([0, 12]), [])], 12, DistContext())
