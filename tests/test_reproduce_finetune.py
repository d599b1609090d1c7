"""``shufflenet reproduce finetune`` end to end on a tiny CIFAR-10 written by the test, and its pieces."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from shufflenet import read_info
from shufflenet.analysis.reproduce import EXPERIMENTS, FinetuneConfig
from shufflenet.analysis.reproduce.finetune import class_range, write_folder
from shufflenet.cli import reproduce as cli
from shufflenet.data import ArrayDataset

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _images(n_per_class: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    labels = [c for c in range(10) for _ in range(n_per_class)]
    images = rng.integers(0, 100, (len(labels), 32, 32, 3))
    for i, c in enumerate(labels):  # a class-dependent colour and brightness: learnable
        images[i, ..., c % 3] += 15 * c
    return images.astype(np.uint8), labels


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    d = root / "cifar-10-batches-py"
    d.mkdir()
    train, train_labels = _images(12, 0)
    test, test_labels = _images(6, 1)

    def flat(a):
        return a.transpose(0, 3, 1, 2).reshape(len(a), 3072)  # R, G, B planes

    order = np.random.default_rng(2).permutation(len(train))
    for b, part in enumerate(np.array_split(order, 5)):
        batch = {b"labels": [train_labels[i] for i in part], b"data": flat(train[part])}
        (d / f"data_batch_{b + 1}").write_bytes(pickle.dumps(batch))
    (d / "test_batch").write_bytes(pickle.dumps({b"labels": test_labels, b"data": flat(test)}))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in NAMES]}))
    return root


def test_class_range_and_folder(tmp_path):
    images = np.arange(6 * 2 * 2 * 3, dtype=np.uint8).reshape(6, 2, 2, 3)
    ds = ArrayDataset(images, [0, 5, 6, 9, 5, 4], NAMES, "t", (0.5,) * 3, (0.2,) * 3)
    part = class_range(ds, range(5, 10))
    assert part.classes == NAMES[5:] and part.targets.tolist() == [0, 1, 4, 0]
    assert np.array_equal(part.images, images[[1, 2, 3, 4]]) and part.mean == ds.mean
    root = write_folder(part, 1, 0, tmp_path / "f")
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert [w.split("/")[0] for w in written] == ["dog", "frog", "truck"]  # one per present class
    dog = next(root.glob("dog/*.png"))
    assert np.array_equal(np.asarray(Image.open(dog)), part.images[int(dog.stem)])  # lossless


def test_smoke_end_to_end_and_reuse(cifar, tmp_path):
    out = tmp_path / "ft"
    args = ["finetune", "--data", str(cifar), "--budget", "smoke", "--subset", "40", "--epochs", "1",
            "--per-class", "4", "--finetune-epochs", "2", "--freeze-epochs", "1", "--batch-size", "8",
            "--monitor", "2", "--seeds", "0", "1", "--threads", "1", "--no-progress",
            "--save-checkpoints"]  # fmt: skip
    assert cli.main([*args, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["results"]) == {"seed0", "seed1"}
    diffs = []
    for r in res["results"].values():
        for kind in ("finetune", "scratch"):
            assert r[kind]["test_images"] == 30  # all test images of classes 5-9
            assert 0 <= r[kind]["test_top1"] <= 1 and len(r[kind]["curve"]) == 2
        diffs.append(100 * (r["finetune"]["test_top1"] - r["scratch"]["test_top1"]))
    summary = res["summary"]
    assert summary["differences"] == pytest.approx(diffs)
    assert summary["difference"][0] == pytest.approx(np.mean(diffs))
    assert summary["difference"][1] == pytest.approx(np.std(diffs, ddof=1) / np.sqrt(2))
    assert res["pretraining"]["train_images"] == 40 and res["pretraining"]["test_images"] == 30
    report = (out / "report.md").read_text()
    assert "difference (paired per seed)" in report and "| seed1 |" in report
    assert json.loads((out / "config.json").read_text())["experiment"] == "finetune"
    assert "![" in report and (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    pretrained = out / "checkpoints" / "pretrained.safetensors"
    info = read_info(pretrained)
    assert info.arch == "shufflenet_v1_g3_x0_5" and info.class_names == NAMES[:5]
    assert info.arch_kwargs["small_input"] is True

    again = tmp_path / "again"
    reuse = ["finetune", "--data", str(cifar), "--budget", "smoke", "--per-class", "4",
             "--finetune-epochs", "1", "--freeze-epochs", "0", "--batch-size", "8", "--seeds", "3",
             "--threads", "1", "--no-progress", "--pretrained", str(pretrained)]  # fmt: skip
    assert cli.main([*reuse, "--out", str(again)]) == 0
    res = json.loads((again / "results.json").read_text())
    assert res["pretraining"] == {"reused": str(pretrained)} and set(res["results"]) == {"seed3"}


def test_bad_options_exit_2(cifar, tmp_path, capsys):
    assert "finetune" in EXPERIMENTS
    with pytest.raises(SystemExit) as e:
        cli.main(
            ["finetune", "--data", str(cifar), "--pretrained", str(tmp_path / "none.safetensors")]
        )
    assert e.value.code == 2 and "none.safetensors" in capsys.readouterr().err
    with pytest.raises(ValueError, match="freeze_epochs=5"):
        FinetuneConfig(data=str(cifar), budget="smoke", finetune_epochs=2, freeze_epochs=5)
