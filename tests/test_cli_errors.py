"""Every command, given invalid arguments, exits with status 2 and one line on stderr (no traceback), and
writes nothing; a failed check exits 1. The exit statuses come from one table (``shufflenet.cli.main``)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from shufflenet import InputSpec, create_model, save_model
from shufflenet.cli.main import COMMANDS, EXIT_CODES, CheckFailed, exit_code, main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-errors")
    model = create_model("shufflenet_v1_g3_x0_25", num_classes=3)
    ok = save_model(
        root / "ok.safetensors", model, InputSpec(image_size=32), class_names=["a", "b", "c"]
    )
    blocker = root / "a-file"
    blocker.write_text("not a directory")
    garbage = root / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 40)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}

    def with_meta(name: str, **changes: str):
        meta = {
            "format": "shufflenet.model/1",
            "arch": "shufflenet_v1_g3_x0_25",
            "arch_kwargs": json.dumps({"num_classes": 3}),
            "input_spec": json.dumps(InputSpec(image_size=32).to_dict()),
            "class_names": json.dumps(["a", "b", "c"]),
            "extra": "{}",
        }
        meta.update(changes)
        save_file(state, str(root / name), metadata=meta)
        return root / name

    bad = {
        "unknown_kwarg": with_meta(
            "k.safetensors", arch_kwargs=json.dumps({"num_classes": 3, "wings": 2})
        ),
        "names_type": with_meta("t.safetensors", class_names=json.dumps([1, 2, 3])),
        "names_length": with_meta("l.safetensors", class_names=json.dumps(["a", "b"])),
        "num_classes": with_meta("n.safetensors", arch_kwargs=json.dumps({"num_classes": 10**9})),
        "arch": with_meta("a.safetensors", arch="no_such_net"),
    }
    image = root / "img.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (10, 200, 30)).save(image)
    return {
        "root": root,
        "ok": ok,
        "blocker": blocker,
        "garbage": garbage,
        "bad": bad,
        "image": image,
    }


def _invalid(files) -> dict[str, list[list[str]]]:
    ok, blocker, garbage, root = (str(files[k]) for k in ("ok", "blocker", "garbage", "root"))
    img = str(files["image"])
    return {
        "list": [["--no-such-flag"]],
        "profile": [
            ["shufflenet_v1_g3"],  # unknown name: the close names in the one line
            ["shufflenet_v1_g3_x0_25", "--input-size", "0"],
            ["shufflenet_v1_g3_x0_25", "--input-size", "-7"],
            ["shufflenet_v1_g3_x0_25", "--input-size", "99999"],
            ["shufflenet_v1_g3_x0_25", "--in-chans", "5"],
            [garbage],
            [f"{root}/missing.safetensors"],
        ],
        "conv-cost": [["--input", "7x7", "--filters", "4"], ["--filters", "4"]],
        "train": [["--no-such-flag"], ["--epochs", "many"]],
        "evaluate": [
            ["no_such_model"],
            [garbage],
            [ok, "--confusion", f"{root}/no/such/dir/c.png"],
            [ok, "--confusion", f"{blocker}/c.png"],
            [ok, "--batch-size", "0"],
        ],
        "predict": [[ok, img, "--top-k", "0"], [garbage, img], [ok, f"{root}/missing.png"]],
        "correlate": [
            [ok, "--data", "builtin", "--layers", "a"],
            [ok, "--data", "builtin", "--layers", "a", "b", "--out", f"{blocker}/x"],
            [ok, "--data", "builtin", "--layers", "a", "b", "--eps", "0"],
        ],
        "flow": [
            ["no_such_model"],
            ["gconv-stack", "--groups", "0"],
            ["gconv-stack", "--out", f"{blocker}/x"],
            ["shufflenet_v1_g3_x0_25", "--module", "no.such.module", "--out", f"{root}/flow"],
        ],
        "filters": [
            ["no_such_model"],
            [ok, "--layer", "no_such_layer", "--out", f"{root}/filters"],
            [ok, "--out", f"{blocker}/x"],
        ],
        "reproduce": [["--no-such-flag"]],
        "bench": [
            ["shufflenet_v1_g3_x0_25", "--batch", "0"],
            ["shufflenet_v1_g3_x0_25", "--rounds", "0"],
            ["no_such_model"],
        ],
        "export": [
            [ok],  # --onnx is required
            [ok, "--onnx", f"{blocker}/m.onnx"],
            [ok, "--onnx", f"{root}/no/such/dir/m.onnx"],
            [garbage, "--onnx", f"{root}/m.onnx"],
            [ok, "--onnx", f"{root}/m.onnx", "--input-size", "0"],
        ],
        "quantize": [
            [ok, f"{root}/q.safetensors"],  # --data is required
            [garbage, f"{root}/q.safetensors", "--data", "builtin"],
            [ok, f"{blocker}/q.safetensors", "--data", "builtin"],
            [ok, f"{root}/q.safetensors", "--data", "builtin", "--calib-images", "0"],
            [ok, f"{root}/q.safetensors", "--data", f"{root}/no/such/dir"],
        ],
        "convert": [
            ["--from", "megvii", f"{root}/missing.pth", f"{root}/out.safetensors"],
            ["--from", "megvii", garbage, f"{root}/out.safetensors"],
            ["--from", "caffe", garbage, f"{root}/out.safetensors"],
            ["--from", "megvii", garbage, f"{blocker}/out.safetensors"],
        ],
    }


def _assert_one_line_error(capsys, argv):
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, f"{argv}: stderr is not one line:\n{err}"
    assert "Traceback" not in err and lines[0].startswith("shufflenet"), err


def test_every_command_is_covered(files):
    assert set(_invalid(files)) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_invalid_arguments_exit_2_with_one_line(command, files, capsys):
    before = sorted(p.name for p in files["root"].rglob("*"))
    for argv in _invalid(files)[command]:
        status = main([command, *argv])
        assert status == 2, f"shufflenet {command} {argv}: exit status {status}"
        _assert_one_line_error(capsys, [command, *argv])
    assert sorted(p.name for p in files["root"].rglob("*")) == before  # nothing written


@pytest.mark.parametrize(
    "case", ["unknown_kwarg", "names_type", "names_length", "num_classes", "arch"]
)
@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "profile"])
def test_damaged_metadata_is_one_line(command, case, files, capsys):
    path = str(files["bad"][case])
    argv = {
        "evaluate": [path],
        "predict": [path, str(files["image"])],
        "export": [path, "--onnx", str(files["root"] / "never.onnx")],
        "profile": [path],
    }[command]
    assert main([command, *argv]) == 2
    err = capsys.readouterr().err
    (line,) = err.splitlines()
    assert path in line and "metadata" in line, line
    expected = {
        "unknown_kwarg": "wings",
        "names_type": "class_names must be a list of strings",
        "names_length": "2 class names; the model has 3 outputs",
        "num_classes": "num_classes=1000000000 must be an integer from 1 to 100000",
        "arch": "arch='no_such_net' is not a registered model",
    }[case]
    assert expected in line, line


def test_failed_check_exits_1(files, tmp_path, capsys):
    model = create_model("shufflenet_v1_g3_x0_25", num_classes=3)
    with torch.no_grad():
        model.fc.weight.fill_(float("nan"))
    path = save_model(tmp_path / "nan.safetensors", model, InputSpec(image_size=32))
    assert main(["export", str(path), "--onnx", str(tmp_path / "nan.onnx")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "not finite" in line


def test_exit_code_table():
    assert exit_code(CheckFailed("x")) == 1
    assert exit_code(ValueError("x")) == exit_code(FileNotFoundError("x")) == 2
    assert exit_code(KeyboardInterrupt()) == 130
    assert exit_code(RuntimeError("a bug")) is None  # a bug keeps its traceback
    assert [code for _, code in EXIT_CODES] == [1, 130, 2]
