"""Two CPU processes on loopback (``shufflenet train --nproc 2``, i.e. torchrun with gloo) against one process
on the same global batch: DDP with synchronised batch norm, and group-parallel training. Each multi-process
run is stopped after one epoch and resumed, so resuming under torchrun (and, for groups, the per-rank
optimiser shards) is covered too.

Why "within tolerance" and not equal: the per-rank halves are summed in another order than the whole batch,
and a few steps of SGD from a fresh ShuffleNet amplify float32 rounding (a 1-thread and a 2-thread run of the
*same* process differ by ~1e-4 after 4 steps). Plain per-rank batch norm (no ``--sync-bn``) differs by ~4e-2,
so the tolerance below still tells the two apart.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shufflenet.train import TrainConfig, fit

pytestmark = pytest.mark.slow

MODEL = "shufflenet_v1_g2_x0_25"  # g = 2: splits over 2 processes for --parallel groups
KWARGS = {"stage_repeats": [1, 1, 1]}
# SGD: AdamW's first steps are about lr * sign(gradient), which turns rounding noise in near-zero gradients
# into differences of 2 * lr; SGD's update is proportional to the gradient.
COMMON = dict(
    image_size=16, batch_size=32, epochs=2, max_steps=2, optimizer="sgd", deterministic=True
)


def _flags(out: Path, name: str) -> list[str]:
    flags = [
        "--model",
        MODEL,
        "--model-kwargs",
        json.dumps(KWARGS),
        "--output",
        str(out),
        "--name",
        name,
    ]
    for k, v in COMMON.items():
        flags += [f"--{k.replace('_', '-')}"] if v is True else [f"--{k.replace('_', '-')}", str(v)]
    return [*flags, "--no-progress", "--no-plots"]


def _run(args: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "shufflenet", "train", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    cfg = TrainConfig(model=MODEL, model_kwargs=KWARGS, output=str(out), name="one", threads=1, progress=False,
                      plots=False, **COMMON)  # fmt: skip
    return fit(cfg)


def _compare(single, run_dir: Path) -> None:
    ref, got = load_file(single.model_path), load_file(run_dir / "model.safetensors")
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=2e-3, msg=k)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    for mine, theirs in zip(history, single.history):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-3)
        assert (
            mine["val_count"] == theirs["val_count"] == 359
        )  # every image once, summed over ranks
        assert mine["val_acc1"] == pytest.approx(theirs["val_acc1"], abs=0.01)


@pytest.mark.parametrize(
    "mode", [["--parallel", "ddp", "--sync-bn"], ["--parallel", "groups"]], ids=["ddp", "groups"]
)
def test_two_processes_equal_one(tmp_path, single, mode):
    out = _run([*_flags(tmp_path, "two"), "--nproc", "2", *mode, "--stop-after-epochs", "1"])
    assert "over 2 processes" in out and "stopped after 1 epochs" in out
    run_dir = tmp_path / "two"
    out = _run(["--resume", str(run_dir)])  # the saved configuration relaunches 2 processes
    assert "validation top-1" in out
    _compare(single, run_dir)
