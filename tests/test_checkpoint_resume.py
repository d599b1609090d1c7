"""Checkpoints: exact resume (in process, after SIGINT, after SIGKILL), damaged and foreign files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN, tiny_train_config
from safetensors.torch import load_file

from shufflenet.train import fit
from shufflenet.train.checkpoint import find_checkpoint, load_state, resume_config


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def without_timing(history):
    drop = ("images_per_s", "epoch_seconds")
    return [{k: v for k, v in row.items() if k not in drop} for row in history]


def test_resume_equals_uninterrupted_run(tmp_path):
    ref = fit(tiny_train_config(tmp_path, epochs=3, max_steps=3, name="ref"))
    part = fit(tiny_train_config(tmp_path, epochs=3, max_steps=3, name="part", stop_after_epochs=1))
    assert part.status == "stopped" and part.epochs_done == 1 and part.model_path is None
    done = fit(resume_config(part.run_dir))
    assert done.status == "completed" and done.run_dir == part.run_dir and done.epochs_done == 3
    assert_same_weights(ref.model_path, done.model_path)
    assert without_timing(done.history) == without_timing(ref.history)
    rows = (done.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]  # each epoch once
    kept = sorted(p.name for p in (done.run_dir / "checkpoints").iterdir())
    assert kept == [f"e000{e}s000000.{x}" for e in (2, 3) for x in ("safetensors", "state.pt")]


def test_resume_with_a_new_learning_rate_follows_it(tmp_path):
    part = fit(tiny_train_config(tmp_path, epochs=2, max_steps=2, name="p", stop_after_epochs=1))
    done = fit(resume_config(part.run_dir, lr=0.5, schedule="constant"))
    assert done.history[-1]["lr"] == 0.5


# ----------------------------------------------------------------- signals (subprocesses)
def _train_cmd(out: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "shufflenet", "train", "--model", TINY_TRAIN["model"],
        "--model-kwargs", json.dumps(TINY_TRAIN["model_kwargs"]), "--image-size", "16", "--batch-size", "32",
        "--threads", "1", "--no-progress", "--no-plots", "--deterministic", "--output", str(out),
        "--name", name, *extra,
    ]  # fmt: skip


def _start_and_signal(tmp_path, sig: int, epochs: int) -> tuple[subprocess.Popen, Path]:
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(tmp_path, "killed", "--epochs", str(epochs)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first = run_dir / "checkpoints" / "e0001s000000.safetensors"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.exists(), proc.communicate()[0]
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return proc, run_dir


@pytest.mark.slow
def test_sigint_writes_a_checkpoint_and_resume_is_exact(tmp_path):
    proc, run_dir = _start_and_signal(tmp_path, signal.SIGINT, epochs=4)
    out = proc.stdout.read()
    assert proc.returncode == 130, out
    assert "SIGINT" in out and "--resume" in out
    model_path, _, state = find_checkpoint(run_dir)
    assert (state["epoch"], state["step"]) > (1, 0)  # a checkpoint written on the signal
    assert not (run_dir / "model.safetensors").exists()
    done = fit(resume_config(run_dir))
    ref = fit(tiny_train_config(tmp_path, epochs=4, name="ref"))
    assert_same_weights(ref.model_path, done.model_path)


@pytest.mark.slow
def test_sigkill_resumes_from_the_last_checkpoint_exactly(tmp_path):
    proc, run_dir = _start_and_signal(tmp_path, signal.SIGKILL, epochs=4)
    assert proc.returncode == -signal.SIGKILL
    _, _, state = find_checkpoint(run_dir)
    assert state["step"] == 0 and state["epoch"] < 4
    done = fit(resume_config(run_dir))
    ref = fit(tiny_train_config(tmp_path, epochs=4, name="ref"))
    assert_same_weights(ref.model_path, done.model_path)
    assert not list(run_dir.rglob("*.tmp"))  # no temporary file left behind by the atomic writes


# ----------------------------------------------------------------- damaged and foreign files
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    r = fit(tiny_train_config(tmp, epochs=1, max_steps=1, name="r"))
    return r.checkpoint, r.checkpoint.with_name(
        r.checkpoint.name.replace(".safetensors", ".state.pt")
    )


def test_truncated_state_is_a_clear_error(tmp_path, checkpoint):
    model, state = checkpoint
    bad = tmp_path / state.name
    bad.write_bytes(state.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable shufflenet training state"):
        load_state(bad)


def test_truncated_model_file_is_a_clear_error(tmp_path, checkpoint):
    model, state = checkpoint
    (tmp_path / state.name).write_bytes(state.read_bytes())
    (tmp_path / model.name).write_bytes(model.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        find_checkpoint(tmp_path / state.name)
    with pytest.raises(ValueError, match="no readable checkpoint"):
        find_checkpoint(tmp_path)


def test_foreign_files_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "e0001s000000.state.pt"
    torch.save({"model": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a shufflenet training state"):
        load_state(other)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch PWNED",))

    torch.save({"format": "x", "evil": Evil()}, other)
    with pytest.raises(ValueError, match="not a readable shufflenet training state"):
        load_state(other)
    assert not Path("PWNED").exists()
    json_file = tmp_path / "config.state.pt"
    json_file.write_text("{}")
    with pytest.raises(ValueError, match="not a readable"):
        load_state(json_file)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a run directory nor a checkpoint"):
        find_checkpoint(tmp_path / "notes.txt")


def test_mismatched_pair_is_a_clear_error(tmp_path, checkpoint):
    model, state = checkpoint
    (tmp_path / state.name).write_bytes(state.read_bytes())
    other = fit(tiny_train_config(tmp_path, epochs=1, max_steps=1, name="other")).checkpoint
    (tmp_path / model.name).write_bytes(other.read_bytes())
    with pytest.raises(ValueError, match="different saves"):
        find_checkpoint(tmp_path / model.name)


def test_nothing_to_resume(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        find_checkpoint(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        find_checkpoint(tmp_path)
