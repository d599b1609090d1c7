"""Evaluating a folder as users have it: whole by default, classes matched by name (also a subset of the
model's), ImageNet WordNet IDs for 1000-class models, clear errors; the shipped ImageNet class list."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shufflenet import InputSpec, create_model, save_model
from shufflenet.cli import evaluate, predict
from shufflenet.data import (
    build_transform,
    evaluation_data,
    imagenet_classes,
    imagenet_labels,
    imagenet_wnids,
    model_class_names,
    readable_class_names,
)
from shufflenet.data.folder import load_folder

RNG = np.random.default_rng(0)
SPEC = InputSpec(16, None, "RGB", 1.0, (0.5,) * 3, (0.25,) * 3)


def make_folder(root: Path, counts: dict[str, int], size: int = 20) -> list[tuple[Path, str]]:
    """``counts[name]`` random PNGs under ``root/name/``; returns (path, class name) of every image."""
    out = []
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            path = root / name / f"{i}.png"
            Image.fromarray(RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
            out.append((path, name))
    return out


def labels_and_paths(ds) -> list[tuple[str, int]]:
    """(path, label) of every sample of an image-folder dataset or a Subset of one."""
    base = getattr(ds, "dataset", ds)
    idx = getattr(ds, "indices", range(len(base.samples)))
    return [(str(base.samples[i][0]), int(base.samples[i][1])) for i in idx]


# ----------------------------------------------------------------- the ImageNet class list
def test_imagenet_classes_are_the_standard_1000_in_order():
    classes = imagenet_classes()
    wnids = imagenet_wnids()
    assert len(classes) == 1000 and len(set(wnids)) == 1000
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert wnids == sorted(wnids)  # the output order of released models: sorted WordNet IDs
    assert classes[0] == ("n01440764", "tench") and classes[999] == ("n15075141", "toilet tissue")
    # A few more published facts (ILSVRC-2012 class indices).
    assert classes[1] == ("n01443537", "goldfish") and classes[2] == (
        "n01484850",
        "great white shark",
    )
    assert classes[147] == ("n02066245", "grey whale") and classes[401][1] == "accordion"
    labels = imagenet_labels()
    assert all(label and label == label.strip() for label in labels)


def test_imagenet_class_list_ships_as_package_data():
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["shufflenet"]
    data_file = "data/imagenet_classes.json"  # relative to the shufflenet package
    assert (root / "src" / "shufflenet" / data_file).is_file()
    assert any(fnmatch.fnmatch(data_file, p) for p in patterns)


def test_model_class_names():
    assert model_class_names(["a", "b"], 2) == (["a", "b"], None)
    names, note = model_class_names(None, 1000)
    assert names == imagenet_wnids() and "ImageNet" in note
    assert model_class_names(None, 3)[0] == ["0", "1", "2"]
    with pytest.raises(ValueError, match="3 class names for its 2 outputs"):
        model_class_names(["a", "b", "c"], 2)
    assert readable_class_names(None, 1000)[:2] == ["tench", "goldfish"]
    assert readable_class_names(imagenet_wnids(), 1000)[999] == "toilet tissue"
    assert readable_class_names(["cat", "dog"], 2) == ["cat", "dog"]


# ----------------------------------------------------------------- which images, which labels
MODEL_NAMES = ["ant", "bee", "cat", "dog", "eel"]


def test_a_plain_folder_is_evaluated_whole_with_labels_matched_by_name(tmp_path):
    images = make_folder(tmp_path, {"eel": 4, "bee": 5, "dog": 3})
    ev = evaluation_data(tmp_path, MODEL_NAMES, 5)
    assert ev.split == "all" and len(ev) == 12 and ev.description == "the whole folder"
    assert ev.present == [1, 3, 4] and ev.class_names == MODEL_NAMES
    expected = sorted((str(p), MODEL_NAMES.index(name)) for p, name in images)
    assert sorted(labels_and_paths(ev.dataset)) == expected
    img, label = ev.dataset[0]
    assert img.shape == (3, 20, 20) and label == MODEL_NAMES.index(
        Path(ev.dataset.samples[0][0]).parent.name
    )


def test_split_val_is_the_training_time_hold_out(tmp_path):
    make_folder(tmp_path, {"bee": 5, "dog": 10, "eel": 4})
    held_out = load_folder(tmp_path, train=False, val_fraction=0.2)  # what training held out
    expected = sorted(str(held_out.dataset.samples[i][0]) for i in held_out.indices)
    for names in (["bee", "dog", "eel"], MODEL_NAMES, ["eel", "dog", "cat", "bee"]):  # any order
        ev = evaluation_data(tmp_path, names, len(names), split="val", val_fraction=0.2)
        got = labels_and_paths(ev.dataset)
        assert sorted(p for p, _ in got) == expected and ev.split == "val"
        assert all(names[y] == Path(p).parent.name for p, y in got)
        rest = evaluation_data(tmp_path, names, len(names), split="train", val_fraction=0.2)
        assert len(rest) + len(ev) == 19
        assert not {p for p, _ in labels_and_paths(rest.dataset)} & set(expected)


def test_the_models_own_training_folder_defaults_to_its_hold_out(tmp_path):
    make_folder(tmp_path, {"bee": 5, "dog": 5})
    ev = evaluation_data(tmp_path, ["bee", "dog"], 2, training_data=str(tmp_path))
    assert ev.split == "val" and len(ev) == 2 and any("training data" in n for n in ev.notes)
    whole = evaluation_data(tmp_path, ["bee", "dog"], 2, split="all", training_data=str(tmp_path))
    assert len(whole) == 10


def test_a_folder_with_its_own_split(tmp_path):
    make_folder(tmp_path / "train", {"bee": 3, "cat": 3})
    make_folder(tmp_path / "val", {"bee": 2, "cat": 1})
    assert len(evaluation_data(tmp_path, MODEL_NAMES, 5)) == 3  # auto: val/
    assert len(evaluation_data(tmp_path, MODEL_NAMES, 5, split="train")) == 6
    ev = evaluation_data(tmp_path, MODEL_NAMES, 5, split="all")
    assert len(ev) == 9 and ev.present == [1, 2]
    assert all(MODEL_NAMES[y] == Path(p).parent.name for p, y in labels_and_paths(ev.dataset))


def test_wnid_folders_match_a_1000_class_model_without_names(tmp_path):
    make_folder(tmp_path, {"n01440764": 2, "n15075141": 3, "n01443537": 1})
    ev = evaluation_data(tmp_path, None, 1000)
    assert len(ev) == 6 and ev.present == [0, 1, 999]
    assert any("ImageNet" in n for n in ev.notes)


def test_folder_names_that_match_nothing_are_named(tmp_path):
    make_folder(tmp_path, {"bee": 1, "horse": 1, "zebra": 1})
    with pytest.raises(ValueError, match=r"\['horse', 'zebra'\].*5 class names") as e:
        evaluation_data(tmp_path, MODEL_NAMES, 5)
    assert "bee" not in str(e.value).split("match")[0]
    with pytest.raises(ValueError, match=r"\['bee', 'horse', 'zebra'\].*1000 class names") as e:
        evaluation_data(tmp_path, None, 1000)
    assert len(str(e.value)) < 400  # names a few of the model's classes, not all 1000


def test_folders_without_images_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="unrecognised dataset layout"):
        evaluation_data(tmp_path / "empty", MODEL_NAMES, 5)
    for name in ("bee", "dog"):
        (tmp_path / "no_images" / name).mkdir(parents=True)
        (tmp_path / "no_images" / name / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"class sub-folders .*\(bee, dog\) hold no images"):
        evaluation_data(tmp_path / "no_images", MODEL_NAMES, 5)
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (4, 4)).save(loose / "a.png")
    with pytest.raises(ValueError, match="not in class sub-folders"):
        evaluation_data(loose, MODEL_NAMES, 5)
    with pytest.raises(ValueError, match="split='test'"):
        evaluation_data(tmp_path, MODEL_NAMES, 5, split="test")


def test_builtin_digits_relabelled_to_the_models_order():
    names = [
        str(d) for d in (9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 42)
    ]  # reversed, plus one class not in the data
    ev = evaluation_data("builtin", names, len(names), image_size=8)
    assert ev.split == "val" and len(ev) == 359 and ev.present == list(range(10))
    from shufflenet.data import builtin_digits

    plain = builtin_digits(False, image_size=8)
    for i in (0, 100, 358):
        (img, label), (img0, label0) = ev.dataset[i], plain[i]
        assert torch.equal(img, img0) and names[label] == str(label0)
    with pytest.raises(ValueError, match="--split all is for image folders"):
        evaluation_data("builtin", names, len(names), split="all")
    with pytest.raises(ValueError, match=r"names \['0'\]"):
        evaluation_data("builtin", [str(d) for d in range(1, 10)] + ["x"], 10)


# ----------------------------------------------------------------- the command line
def _tiny_model(tmp_path: Path, class_names: list[str] | None, num_classes: int) -> Path:
    torch.manual_seed(0)
    model = create_model("shufflenet_v1_g3_x0_25", num_classes=num_classes, stage_repeats=[1, 1, 1])
    model.eval()
    return save_model(tmp_path / "m.safetensors", model, SPEC, class_names)


@torch.no_grad()
def _reference_accuracy(model_path: Path, images: list[tuple[Path, int]]) -> tuple[float, int]:
    """Top-1 accuracy by running the model on each image alone (independent of the loader and engine)."""
    from shufflenet import load_model
    from shufflenet.data.folder import read_image

    model, info = load_model(model_path)
    transform = build_transform(info.input_spec, False)
    hits = 0
    for path, label in images:
        logits = model(transform(read_image(path), torch.Generator())[None])  # (1, outputs)
        hits += int(logits.argmax(1).item() == label)
    return hits / len(images), len(images)


def test_cli_evaluates_a_subset_folder_whole(tmp_path, capsys):
    model_path = _tiny_model(tmp_path, MODEL_NAMES, 5)
    images = make_folder(tmp_path / "data", {"cat": 4, "ant": 3, "eel": 5})
    acc, n = _reference_accuracy(model_path, [(p, MODEL_NAMES.index(c)) for p, c in images])
    argv = [
        str(model_path),
        "--data",
        str(tmp_path / "data"),
        "--confusion",
        str(tmp_path / "c.png"),
    ]
    assert evaluate.main(argv) == 0
    out = capsys.readouterr().out
    assert "the whole folder: 12 images evaluated, 3 classes of the model's 5" in out
    assert evaluate.main([*argv, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["images"] == metrics["val_count"] == n == 12
    assert metrics["classes"] == 3 and metrics["model_classes"] == 5 and metrics["split"] == "all"
    assert metrics["val_acc1"] == pytest.approx(acc)
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert evaluate.main([*argv, "--json", "--split", "val"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3  # round(0.2 * 4, 3, 5) = 1 + 1 + 1


def test_cli_1000_class_model_on_wnid_folders_and_readable_predictions(tmp_path, capsys):
    model_path = _tiny_model(tmp_path, None, 1000)
    images = make_folder(tmp_path / "val", {"n01440764": 2, "n15075141": 2, "n02066245": 1})
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    acc, _ = _reference_accuracy(model_path, [(p, index[w]) for p, w in images])
    argv = [str(model_path), "--data", str(tmp_path / "val"), "--json"]
    assert evaluate.main(argv + ["--confusion", str(tmp_path / "c.png")]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    assert metrics["images"] == 5 and metrics["classes"] == 3 and metrics["model_classes"] == 1000
    assert metrics["val_acc1"] == pytest.approx(acc)
    assert "ImageNet" in captured.err
    assert predict.main([str(model_path), str(images[0][0]), "--json", "--top-k", "1000"]) == 0
    top = json.loads(capsys.readouterr().out)["top"]
    assert sorted(c["class"] for c in top) == sorted(imagenet_labels())


def test_cli_errors_are_one_line_with_status_2(tmp_path, capsys):
    model_path = _tiny_model(tmp_path, MODEL_NAMES, 5)
    make_folder(tmp_path / "data", {"cat": 1, "horse": 1})
    for case in ("data", "empty"):
        if case == "empty":
            (tmp_path / "empty" / "cat").mkdir(parents=True)
        assert evaluate.main([str(model_path), "--data", str(tmp_path / case)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("shufflenet evaluate: error:")
        assert ("['horse']" in err) if case == "data" else ("hold no images" in err)
    assert not list(tmp_path.glob("*.png"))  # nothing written
