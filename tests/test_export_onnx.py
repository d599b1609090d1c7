"""ONNX export (:func:`shufflenet.deploy.onnx.export_onnx` and ``shufflenet export``): batch norm folding, graph structure (dynamic shapes, no BatchNormalization, shuffles as
Reshape-Transpose-Reshape), ONNX Runtime agreement, and checkpoint -> ONNX -> ONNX Runtime end to end."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import RELEASE, megvii_state, save_release_file, seeded_model
from torch import nn

from shufflenet import create_model, save_model
from shufflenet.cli.export import main as export_main
from shufflenet.data.spec import InputSpec
from shufflenet.deploy.fold import fold_batchnorm
from shufflenet.deploy.onnx import OUTPUT_NAME, check_onnx, export_onnx, summarize_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    return seeded_model(model, seed, spread=0.2, linear_std=0.1)


def _ort_run(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize(
    "name", ["shufflenet_v1_g3_x0_25", "shufflenet_v1_g8_x0_5", "shufflenet_v2_x0_5"]
)
def test_fold_batchnorm_keeps_outputs_and_removes_bn(name):
    model = _randomize_bn(create_model(name, num_classes=10))
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(folded(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_fold_batchnorm_leaves_bn_without_conv():
    seq = nn.Sequential(
        nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU(), nn.BatchNorm2d(4)
    )
    fold_batchnorm(seq.eval())
    assert [type(m) for m in seq] == [nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.BatchNorm2d]


def test_export_v2_torchscript_exporter(tmp_path):
    model = _randomize_bn(create_model("shufflenet_v2_x0_5", num_classes=10))
    path = tmp_path / "v2.onnx"
    export_onnx(model, path, input_size=64, exporter="torchscript", fallback=False, opset=17)
    summary = summarize_onnx(path)
    assert summary.opset == 17
    assert summary.batchnorm_nodes == 0
    assert summary.shuffles == summary.transposes == 16  # one shuffle per unit
    assert summary.dynamic_input and summary.input_shape[1] == 3
    assert summary.output_shape[1] == 10
    check = check_onnx(model, path, input_size=64)
    assert check.max_abs_output > 0.1
    assert check.ok(1e-4, 1e-4), check
    # batch, height and width all differ from the traced example
    x = torch.randn(3, 3, 80, 112)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(
            _ort_run(path, x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item()
        )


def test_checkpoint_to_onnx_to_ort_end_to_end(tmp_path, capsys):
    model = _randomize_bn(create_model("shufflenet_v1_g3_x0_25", num_classes=10))
    spec = InputSpec(
        image_size=64,
        resize_size=None,
        channel_order="BGR",
        scale=255.0,
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
    )
    ckpt, out = tmp_path / "tiny.safetensors", tmp_path / "tiny.onnx"
    save_model(ckpt, model, input_spec=spec)

    # the library's default exporter, example size from the spec
    assert export_main([str(ckpt), "--onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max abs difference" in printed
    assert "BatchNormalization nodes: 0" in printed
    assert "Reshape-Transpose-Reshape: 16" in printed

    summary = summarize_onnx(out)
    assert summary.batchnorm_nodes == 0 and summary.shuffles == 16
    assert summary.dynamic_input
    assert InputSpec.from_dict(json.loads(summary.metadata["shufflenet.input_spec"])) == spec
    assert summary.metadata["shufflenet.arch"] == "shufflenet_v1_g3_x0_25"
    x = torch.randn(2, 3, 96, 72) * 100
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(_ort_run(out, x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_converted_megvii_checkpoint_exports(tmp_path, capsys):
    from test_interop_megvii import reference_forward

    from shufflenet.cli.convert import main as convert_main

    state = megvii_state(3, RELEASE[(3, "0.5x")], seed=11)
    src, ckpt, out = tmp_path / "m.pth", tmp_path / "m.safetensors", tmp_path / "m.onnx"
    save_release_file(src, state)
    assert convert_main(["--from", "megvii", str(src), str(ckpt)]) == 0
    assert export_main([str(ckpt), "--onnx", str(out), "--no-dynamo", "--opset", "17"]) == 0
    assert "max abs difference" in capsys.readouterr().out
    x = torch.rand(1, 3, 224, 224) * 255  # BGR, 0-255: the release's input convention
    ref = reference_forward(state, 3, x)[0]
    torch.testing.assert_close(_ort_run(out, x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_export_errors(tmp_path, capsys):
    # user errors: exit status 2, one line, nothing written
    assert (
        export_main([str(tmp_path / "missing.safetensors"), "--onnx", str(tmp_path / "o.onnx")])
        == 2
    )
    (line,) = capsys.readouterr().err.splitlines()
    assert "neither a registered model name nor an existing file" in line
    assert not (tmp_path / "o.onnx").exists()
    assert export_main([str(tmp_path / "x.safetensors")]) == 2  # --onnx is required
    assert "--onnx" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    ckpt = save_model(tmp_path / "m.safetensors", create_model("shufflenet_v1_g3_x0_25"))
    assert export_main([str(ckpt), "--onnx", str(blocker / "o.onnx")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "is a file, not a directory" in line


def test_static_spatial_size_for_non_global_pooling(tmp_path):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 5),
    )
    model = _randomize_bn(model)
    path = tmp_path / "s.onnx"
    export_onnx(
        model, path, input_size=32, dynamic_spatial=False, exporter="dynamo", fallback=False
    )
    summary = summarize_onnx(path)
    assert summary.input_shape == ["batch", 3, 32, 32]
    assert not summary.dynamic_input and summary.batchnorm_nodes == 0
    check = check_onnx(model, path, input_size=32, dynamic_spatial=False)
    assert check.shapes == [(1, 3, 32, 32), (2, 3, 32, 32)]
    assert check.ok(1e-4, 1e-4), check


def test_default_output_name_is_logits_for_library_and_cli(tmp_path):
    model = _randomize_bn(create_model("shufflenet_v1_g3_x0_25", num_classes=10))
    proto = onnx.load_from_string(export_onnx(model, None, input_size=32))
    assert OUTPUT_NAME == "logits"
    assert [o.name for o in proto.graph.output] == ["logits"]
    ckpt, out = tmp_path / "m.safetensors", tmp_path / "m.onnx"
    save_model(ckpt, model, input_spec=InputSpec(image_size=32))
    assert export_main([str(ckpt), "--onnx", str(out)]) == 0
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["logits"]


def test_check_fails_on_nan_weights(tmp_path, capsys):
    model = _randomize_bn(create_model("shufflenet_v1_g3_x0_25", num_classes=10))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    path = tmp_path / "nan.onnx"
    export_onnx(model, path, input_size=32)
    check = check_onnx(model, path, input_size=32)
    assert check.nonfinite == sum(s[0] for s in check.shapes) * 10  # every logit
    assert not check.ok(1e9, 1e9)
    ckpt = tmp_path / "nan.safetensors"
    save_model(ckpt, model, input_spec=InputSpec(image_size=32))
    assert export_main([str(ckpt), "--onnx", str(tmp_path / "cli.onnx")]) == 1
    assert "not finite" in capsys.readouterr().err
