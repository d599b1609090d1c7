"""ONNX opsets on request (:func:`shufflenet.deploy.onnx.export_onnx`, ``shufflenet export --opset``): every opset
from 11 to 17 is written exactly as asked by the TorchScript exporter and agrees with PyTorch in ONNX Runtime at
two input shapes; an opset an exporter would not write is refused, never silently changed."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import seeded_model
from torch import nn

from shufflenet import ChannelShuffle, ChannelUnshuffle, create_model, save_model
from shufflenet.cli.export import main as export_main
from shufflenet.deploy.onnx import _ReshapeShuffle, check_onnx, export_onnx, summarize_onnx

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    return seeded_model(model, seed, spread=0.2, linear_std=0.1)


def test_reshape_shuffle_is_the_same_permutation():
    x = torch.arange(12.0).reshape(1, 12, 1, 1).expand(2, 12, 3, 2).contiguous()
    y = _ReshapeShuffle(3)(x)
    # channel_shuffle with g=3 on 12 channels takes input channels 0, 4, 8, 1, 5, 9, ... (literal)
    assert y[0, :, 0, 0].tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert torch.equal(y, ChannelShuffle(3)(x))
    assert torch.equal(_ReshapeShuffle(3, inverse=True)(x), ChannelUnshuffle(3)(x))


_OPSET_MODELS = {
    "v1": lambda: create_model("shufflenet_v1_g3_x0_25", num_classes=10),
    "v1-unshuffle": lambda: create_model(
        "shufflenet_v1_g2_x0_25", num_classes=10, shuffle="unshuffle", shuffle_position="after_dw"
    ),
    "v2": lambda: create_model("shufflenet_v2_x0_5", num_classes=10),
}


@pytest.mark.parametrize("opset", range(11, 18))
@pytest.mark.parametrize("kind", sorted(_OPSET_MODELS))
def test_torchscript_exporter_writes_each_opset_and_matches(tmp_path, opset, kind):
    model = _randomize(_OPSET_MODELS[kind]())
    path = tmp_path / "m.onnx"
    export_onnx(model, path, input_size=48, opset=opset, exporter="torchscript", fallback=False)
    summary = summarize_onnx(path)
    assert summary.opset == opset
    assert summary.dynamic_input
    assert summary.shuffles == 16
    assert "Unflatten" not in summary.op_counts
    check = check_onnx(model, path, input_size=48)
    assert [s[2:] for s in check.shapes] == [(48, 48), (80, 36)]
    assert check.max_abs_output > 0.05
    assert check.ok(1e-4, 1e-4), check


def test_opset_refused_not_changed():
    model = create_model("shufflenet_v1_g3_x0_25", num_classes=10)
    with pytest.raises(ValueError, match=r"dynamo exporter writes opset 18 or newer.*torchscript"):
        export_onnx(model, None, input_size=32, opset=13, exporter="dynamo")
    with pytest.raises(ValueError, match="oldest opset exported here is 11"):
        export_onnx(model, None, input_size=32, opset=10)
    with pytest.raises(ValueError, match="TorchScript exporter writes opsets 11-20"):
        export_onnx(model, None, input_size=32, opset=21, exporter="torchscript")
    # a fixed-size adaptive pool needs the dynamo exporter for a dynamic size: an old opset is refused
    pooled = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 2)
    )
    with pytest.raises(ValueError, match="fixed spatial size"):
        export_onnx(pooled, None, input_size=32, opset=12)
    data = export_onnx(pooled, None, input_size=32, opset=12, dynamic_spatial=False)
    assert onnx.load_from_string(data).opset_import[0].version == 12


def test_dynamo_keeps_its_default_opset():
    model = _randomize(nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), ChannelShuffle(3)))
    data = export_onnx(copy.deepcopy(model), None, input_size=16, exporter="dynamo", fallback=False)
    opset = next(o.version for o in onnx.load_from_string(data).opset_import if o.domain == "")
    assert opset >= 18


def test_cli_opset(tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    save_model(ckpt, _randomize(create_model("shufflenet_v1_g3_x0_25", num_classes=10)))
    out = tmp_path / "m.onnx"
    assert export_main([str(ckpt), "--onnx", str(out), "--opset", "11", "--input-size", "64"]) == 0
    assert "opset 11" in capsys.readouterr().out
    assert summarize_onnx(out).opset == 11
    out2 = tmp_path / "d.onnx"
    rc = export_main([str(ckpt), "--onnx", str(out2), "--opset", "13", "--exporter", "dynamo"])
    assert rc == 2
    assert "dynamo exporter writes opset 18 or newer" in capsys.readouterr().err
    assert not out2.exists()
