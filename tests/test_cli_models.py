"""Every command takes its model the same way (:func:`shufflenet.resolve_model`): a registered name, a model
file (its configuration wins), or a published checkpoint converted in memory with a note on stderr."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import RELEASE, megvii_state, save_release_file
from PIL import Image
from test_interop_megvii import reference_forward as megvii_forward

from shufflenet import InputSpec, create_model, profile, save_model
from shufflenet.cli.main import main

NOTE = "converted a Megvii ShuffleNet v1 checkpoint in memory"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    state = megvii_state(3, RELEASE[(3, "0.5x")], num_classes=5, seed=2)
    path = root / "ShuffleNetV1-g3-0.5x.pth.tar"
    save_release_file(path, state)
    image = root / "img.png"
    Image.new("RGB", (50, 40), (200, 30, 90)).save(image)
    return state, path, image


def _note_once(capsys) -> str:
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if NOTE in line]
    assert len(notes) == 1, captured.err
    return captured.out


def test_profile_takes_a_release_file(release, capsys):
    _, path, _ = release
    assert main(["profile", str(path), "--json", "--input-size", "64"]) == 0
    out = json.loads(_note_once(capsys))
    ref = profile(create_model("shufflenet_v1_g3_x0_5", num_classes=5, classifier_bias=False), 64)
    assert out["params"] == ref.params and out["macs"] == ref.macs


def test_predict_on_a_release_file_gives_the_release_answer(release, capsys):
    state, path, image = release
    assert main(["predict", str(path), str(image), "--top-k", "2", "--json"]) == 0
    top = json.loads(_note_once(capsys))["top"]
    # the release's own forward pass on the image prepared by its convention (BGR, 0-255, 256 -> crop 224)
    img = Image.open(image).convert("RGB")
    w, h = img.size
    img = img.resize((256 * w // h, 256), Image.BILINEAR)
    left, top_px = (img.size[0] - 224) // 2, (img.size[1] - 224) // 2
    img = img.crop((left, top_px, left + 224, top_px + 224))
    x = torch.from_numpy(np.asarray(img, dtype="float32")).permute(2, 0, 1)[[2, 1, 0]]
    probs = megvii_forward(state, 3, x[None])[0].softmax(1)[0]
    best = int(probs.argmax())
    assert top[0]["class"] == str(best)


def test_flow_filters_export_take_a_release_file(release, tmp_path, capsys):
    _, path, _ = release
    assert main(["flow", str(path), "--module", "stages.0", "--out", str(tmp_path / "flow")]) == 0
    _note_once(capsys)
    assert main(["filters", str(path), "--out", str(tmp_path / "filters")]) == 0
    _note_once(capsys)
    out = tmp_path / "m.onnx"
    assert main(["export", str(path), "--onnx", str(out), "--input-size", "64"]) == 0
    assert "max abs difference" in _note_once(capsys)


def test_bench_honours_a_model_files_configuration(tmp_path, capsys):
    model = create_model("shufflenet_v1_g3_x0_25", num_classes=10, in_chans=1, small_input=True)
    path = save_model(
        tmp_path / "grey.safetensors",
        model,
        InputSpec(image_size=28, resize_size=None, channel_order="L", mean=(0.5,), std=(0.5,)),
    )
    argv = ["bench", str(path), "--backends", "eager", "--runs", "1", "--warmup", "0", "--quiet"]
    argv += ["--load-window", "0"]
    threads = torch.get_num_threads()
    assert main([*argv, "--threads", "1", "--json", str(tmp_path / "b.json")]) == 0
    assert torch.get_num_threads() == threads  # the process's thread count is restored
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["model"] == "shufflenet_v1_g3_x0_25" and result["input_size"] == 28


def test_weights_flag_is_for_a_name(tmp_path, capsys):
    model = create_model("shufflenet_v1_g3_x0_25", num_classes=4)
    sd = tmp_path / "sd.pt"
    torch.save(model.state_dict(), sd)
    assert main(["profile", "shufflenet_v1_g3_x0_25", "--weights", str(sd), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == sum(
        p.numel() for p in model.parameters()
    )
    file = save_model(tmp_path / "m.safetensors", model)
    assert main(["profile", str(file), "--weights", str(sd)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--weights" in line and "holds its own weights" in line
