"""The analysis commands end to end on tiny inputs: files written, numbers consistent."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from shufflenet import InputSpec, create_model, save_model
from shufflenet.analysis.correlation import block_diagonality, layer_correlation
from shufflenet.analysis.correlation_control import NIN_PAIRS
from shufflenet.cli import correlate, filters, flow
from shufflenet.data import build_transform, make_loader
from shufflenet.data.subsets import dataset_split


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
def test_correlate_on_builtin_digits_without_control(tmp_path, capsys) -> None:
    model = create_model("nin_root4", in_chans=1)
    spec = InputSpec(32, None, "L", 1.0, (0.3,), (0.3,))
    path = save_model(tmp_path / "nin.safetensors", model, input_spec=spec)
    args = [str(path), "--data", "builtin", "--layers", "conv2c", "conv3a", "--max-images", "20"]
    argv = [
        *args,
        "--batch-size",
        "8",
        "--out",
        str(tmp_path / "c"),
        "--no-progress",
        "--init-seeds",
    ]
    assert correlate.main(argv) == 0
    (res,) = json.loads((tmp_path / "c" / "correlation.json").read_text())["pairs"]
    assert res["untrained"] == [] and res["excess"] is None
    res = res["trained"]
    assert res["layer_a"] == "features.conv2c" and res["layer_b"] == "features.conv3a"
    assert res["images"] == 20 and res["samples"] == 20 * 16 * 16
    assert res["block"]["groups"] == 2 and res["block"]["chance"] == 0.5
    matrix = np.loadtxt(tmp_path / "c" / "correlation_conv2c-conv3a.csv", delimiter=",", skiprows=1)
    matrix = matrix[:, 1:]
    assert matrix.shape == (192, 192)
    inside = np.abs(matrix[:96, :96]).sum() + np.abs(matrix[96:, 96:]).sum()
    assert inside / np.abs(matrix).sum() == pytest.approx(res["block"]["share"], rel=1e-4)
    assert "score" in capsys.readouterr().out


def _write_cifar_test_split(root, n: int) -> None:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    flat = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    batch = {b"labels": [i % 10 for i in range(n)], b"data": flat}
    (d / "test_batch").write_bytes(pickle.dumps(batch))
    for b in range(5):
        (d / f"data_batch_{b + 1}").write_bytes(pickle.dumps({b"labels": [0], b"data": flat[:1]}))
    names = [f"class{i}".encode() for i in range(10)]
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))


def test_correlate_default_nin_pairs_with_untrained_control(tmp_path, capsys) -> None:
    """Every default pair trained and untrained; the seed-0 control equals an independent measurement of a
    model built under that seed, and the excess is trained minus the mean untrained share."""
    _write_cifar_test_split(tmp_path / "data", 12)
    spec = InputSpec(16, None, "RGB", 1.0, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    path = save_model(tmp_path / "nin.safetensors", create_model("nin_root4"), input_spec=spec)
    argv = [str(path), "--data", str(tmp_path / "data"), "--max-images", "12", "--batch-size", "5",
            "--init-seeds", "0", "1", "--bootstrap", "3", "--chunks", "3", "--out", str(tmp_path / "c"),
            "--no-progress"]  # fmt: skip
    assert correlate.main(argv) == 0
    out = tmp_path / "c"
    data = json.loads((out / "correlation.json").read_text())
    pairs = data["pairs"]
    assert [(p["layer_a"], p["layer_b"]) for p in pairs] == [
        (f"features.{a}", f"features.{b}") for a, b in NIN_PAIRS
    ]
    assert [p["groups"] for p in pairs] == [4, 4, 2, 2]
    assert [p["chance"] for p in pairs] == [0.25, 0.25, 0.5, 0.5]
    for p in pairs:
        assert p["excess"] == pytest.approx(p["trained_share"] - np.mean(p["untrained_shares"]))
        assert p["bootstrap"]["resamples"] == 3 and p["bootstrap"]["chunks"] == 3
        assert p["trained"]["images"] == 12 and len(p["untrained"]) == 2
    # the control, measured independently: a model built under seed 0, the same images
    torch.manual_seed(0)
    fresh = create_model("nin_root4")
    ds = dataset_split(tmp_path / "data", False)
    loader = make_loader(ds, build_transform(spec, False), 12, False)
    ref = layer_correlation(fresh, loader, "conv2c", "conv3a")
    assert pairs[2]["untrained_shares"][0] == pytest.approx(ref.block.share, rel=1e-6)
    m = np.loadtxt(out / "correlation_conv1c-conv2a.csv", delimiter=",", skiprows=1)[:, 1:]
    assert m.shape == (96, 192)
    assert block_diagonality(m, 4).share == pytest.approx(pairs[0]["trained_share"], rel=1e-4)
    assert (out / "correlation.png").stat().st_size > 0 and (out / "shares.png").stat().st_size > 0
    text = capsys.readouterr().out
    assert text.count("learned excess") == 4 and "bootstrap 95%" in text


def test_correlate_bad_input_exits_2(tmp_path, capsys) -> None:
    path = save_model(tmp_path / "m.safetensors", create_model("shufflenet_v1_g3_x0_25"))
    assert correlate.main([str(path), "--data", "builtin", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no default layer pairs" in err
