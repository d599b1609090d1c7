"""The analysis commands end to end on tiny inputs: files written, numbers consistent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shufflenet import InputSpec, create_model, save_model
from shufflenet.cli import correlate, filters, flow


def test_flow_gconv_stack(tmp_path, capsys) -> None:
    assert (
        flow.main(
            [
                "gconv-stack",
                "--channels",
                "12",
                "--groups",
                "3",
                "--depth",
                "2",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "flow.json").read_text())
    assert (tmp_path / "flow.png").stat().st_size > 0
    rec = data["flow"]
    assert rec["no_shuffle_depth2"]["outputs_seeing_all_groups"] == 0
    assert rec["shuffle_depth2"]["outputs_seeing_all_groups"] == 12
    assert all(r["measured_support_equals_structural"] for r in rec.values())
    assert "12/12 outputs see every input group" in capsys.readouterr().out


def test_flow_of_a_registered_model_module(tmp_path) -> None:
    args = [
        "shufflenet_v1_g3_x0_25",
        "--module",
        "stages.0.1",
        "--input-size",
        "4",
        "--out",
        str(tmp_path),
    ]
    assert flow.main(args) == 0
    rec = json.loads((tmp_path / "flow.json").read_text())["flow"]["stages.0.1"]
    assert rec["outputs"] == 60 and rec["outputs_seeing_all_groups"] == 60


def test_filters_of_a_model_file(tmp_path, capsys) -> None:
    model = create_model("alexnet_g2", num_classes=5)
    path = save_model(tmp_path / "alex.safetensors", model)
    assert filters.main([str(path), "--layer", "conv1", "--out", str(tmp_path / "f")]) == 0
    summary = json.loads((tmp_path / "f" / "filters.json").read_text())["summary"]
    assert summary["groups"] == 2 and len(summary["per_group"]) == 2
    lines = (tmp_path / "f" / "filters.csv").read_text().splitlines()
    assert lines[0] == "filter,group,norm,colour_fraction" and len(lines) == 97
    assert "group 1 (filters 48-95)" in capsys.readouterr().out


@pytest.mark.slow  # imports scikit-learn for the built-in digits: seconds on a shared CPU
def test_correlate_on_builtin_digits(tmp_path, capsys) -> None:
    model = create_model("nin_root4", in_chans=1)
    spec = InputSpec(32, None, "L", 1.0, (0.3,), (0.3,))
    path = save_model(tmp_path / "nin.safetensors", model, input_spec=spec)
    args = [str(path), "--data", "builtin", "--layers", "conv2c", "conv3a", "--max-images", "20"]
    assert (
        correlate.main([*args, "--batch-size", "8", "--out", str(tmp_path / "c"), "--no-progress"])
        == 0
    )
    res = json.loads((tmp_path / "c" / "correlation.json").read_text())["result"]
    assert res["layer_a"] == "features.conv2c" and res["layer_b"] == "features.conv3a"
    assert res["images"] == 20 and res["samples"] == 20 * 16 * 16
    assert res["block"]["groups"] == 2 and res["block"]["chance"] == 0.5
    matrix = np.loadtxt(tmp_path / "c" / "correlation.csv", delimiter=",", skiprows=1)[:, 1:]
    assert matrix.shape == (192, 192)
    inside = np.abs(matrix[:96, :96]).sum() + np.abs(matrix[96:, 96:]).sum()
    assert inside / np.abs(matrix).sum() == pytest.approx(res["block"]["share"], rel=1e-4)
    assert "in-block share" in capsys.readouterr().out
