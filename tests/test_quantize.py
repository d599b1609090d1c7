"""Post-training int8 quantisation: the API, its errors, the calibration methods, the model file, the CLI.

The integer arithmetic itself is checked against a slow reference in test_quantize_reference.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import seeded_model
from PIL import Image
from torch import nn

import shufflenet
from shufflenet import ShuffleUnit, create_model, save_model
from shufflenet.cli.main import main as cli_main
from shufflenet.data import build_dataset
from shufflenet.data.loader import default_spec
from shufflenet.deploy import NotSupportedError
from shufflenet.quantize import (
    QuantizedModel,
    is_int8_file,
    load_quantized,
    quantize,
    save_quantized,
)
from shufflenet.quantize.calibrate import choose_clip


@torch.no_grad()
def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    return seeded_model(model, seed)


def _close_to_float(q: nn.Module, m: nn.Module, x: torch.Tensor, tol: float) -> None:
    with torch.no_grad():
        ref = m(x)
    out = q(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    err = ((out - ref).abs().max() / ref.abs().max()).item()
    assert err < tol, f"int8 differs from float32 by {err:.3f} of the output range"


@pytest.mark.parametrize(
    "name,kw,size",
    [
        ("shufflenet_v1_g1_x0_25", {}, 64),
        ("shufflenet_v1_g3_x0_5", {}, 48),
        ("shufflenet_v1_g8_x0_25", {}, 64),
        ("shufflenet_v1_g2_x0_5", {"small_input": True, "num_classes": 10}, 32),
        ("mobilenet_v1_x0_25", {}, 48),
    ],
)
def test_quantized_model_follows_float(name, kw, size):
    m = _randomize(create_model(name, **kw))
    x = torch.randn(8, 3, size, size)
    q = quantize(m, x)
    assert isinstance(q, QuantizedModel)
    _close_to_float(q, m, x, 0.06)
    # the callable package is the same function
    assert torch.equal(shufflenet.quantize(m, x)(x), q(x))


def test_input_and_activation_scales_from_calibration():
    m = _randomize(create_model("shufflenet_v1_g3_x0_25"))
    x = 5 * torch.randn(4, 3, 32, 32)  # well outside [-1, 1]
    q = quantize(m, x, method="minmax")
    values = q.program.values
    assert values[0].scale == pytest.approx(x.abs().max().item() / 127, rel=1e-6)
    # minmax: every planar value's scale is its largest magnitude over the calibration set / qmax
    from shufflenet.deploy.native.lower import lower
    from shufflenet.quantize.calibrate import run_float

    seen = {}
    run_float(lower(m), x, lambda v, t: seen.__setitem__(v, t.abs().max().item()))
    for v, amax in seen.items():
        if not values[v].flat:
            qmax = 255 if values[v].unsigned else 127
            assert values[v].scale == pytest.approx(amax / qmax, rel=1e-5), v
    _close_to_float(q, m, x, 0.03)


def test_shuffle_kept_as_input_order_and_bn_folded():
    m = _randomize(create_model("shufflenet_v1_g3_x0_25"))
    q = quantize(m, torch.randn(2, 3, 32, 32))
    progs = q.program
    assert not any(isinstance(t, nn.BatchNorm2d) for t in q.modules())
    g = 3
    shuffled = [
        op
        for op in progs.ops
        if op.kidx is not None and not np.array_equal(op.kidx, np.sort(op.kidx))
    ]
    assert shuffled, "the channel shuffle must appear as a 1x1 conv's input order"
    # literal shuffle permutation of 3 groups: output i * g + j reads input j * n + i
    n = len(shuffled[0].kidx) // g
    assert shuffled[0].kidx.tolist() == [j * n + i for i in range(n) for j in range(g)]
    # residual add and ReLU fused: the stride-1 units' expand convs read the unit input and end in ReLU
    assert any(op.res >= 0 and op.act == 1 for op in progs.ops)


def test_weights_int8_per_channel_symmetric():
    m = _randomize(create_model("shufflenet_v1_g2_x0_25"))
    q = quantize(m, torch.randn(2, 3, 32, 32))
    for op in q.program.ops:
        if op.w is not None and op.w.dtype == torch.int8:
            assert op.w.abs().max() <= 127
            assert op.w_scale.shape == (op.cout,) and (op.w_scale > 0).all()


def _quant_mse(vals: np.ndarray, clip: float, qmax: int) -> float:
    step = clip / qmax
    return float(((np.clip(np.round(vals / step), 0, qmax) * step - vals) ** 2).mean())


@pytest.mark.parametrize("qmax", [127, 255])
def test_calibration_methods(qmax):
    # a heavy tail: |N(0, 1)| with 0.2% of the values up to 40
    rng = np.random.default_rng(0)
    vals = np.abs(rng.standard_normal(100000))
    vals[:200] = rng.uniform(5, 40, 200)
    hist, _ = np.histogram(vals, bins=2048, range=(0, vals.max()))
    hist = hist.astype(np.float64)
    mm = choose_clip(hist, vals.max(), qmax, "minmax", 99.99)
    pc = choose_clip(hist, vals.max(), qmax, "percentile", 99.0)
    ms = choose_clip(hist, vals.max(), qmax, "mse", 99.99)
    assert mm == vals.max()
    assert abs(pc - np.percentile(vals, 99.0)) < 2 * vals.max() / 2048
    # mse: the smallest measured error of the three (up to the histogram's resolution)
    err = {
        k: _quant_mse(vals, c, qmax) for k, c in {"minmax": mm, "percentile": pc, "mse": ms}.items()
    }
    assert err["mse"] <= 1.02 * min(err.values()), err


def test_bad_inputs():
    m = _randomize(create_model("shufflenet_v1_g3_x0_25"))
    with pytest.raises(ValueError, match="no calibration images"):
        quantize(m, None)
    with pytest.raises(ValueError, match="no calibration images"):
        quantize(m, torch.empty(0, 3, 32, 32))
    with pytest.raises(ValueError, match="no calibration images"):
        quantize(m, [])
    x = torch.randn(2, 3, 32, 32)
    x[1, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        quantize(m, x)
    with pytest.raises(ValueError, match="method"):
        quantize(m, torch.randn(1, 3, 32, 32), method="kl")
    with pytest.raises(TypeError):
        quantize("resnet", torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="1 channels; the model takes 3"):
        quantize(m, torch.randn(2, 1, 32, 32))
    se = _randomize(ShuffleUnit(24, 24, 1, 3, se=True))
    with pytest.raises(NotSupportedError, match="squeeze-and-excitation.*float32"):
        quantize(se, torch.randn(1, 24, 8, 8))


def test_nan_input_gives_nan_logits():
    m = _randomize(create_model("shufflenet_v1_g3_x0_25", num_classes=7))
    q = quantize(m, torch.randn(4, 3, 32, 32))
    x = torch.randn(3, 3, 32, 32)
    x[1, 2, 0, 31] = float("nan")
    out = q(x)
    assert torch.isnan(out[1]).all()
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all()


def test_int8_file_round_trip(tmp_path):
    m = _randomize(create_model("shufflenet_v1_g3_x0_25", num_classes=10))
    x = torch.randn(4, 3, 32, 32)
    q = quantize(m, x, method="percentile")
    spec = shufflenet.InputSpec(image_size=32, resize_size=None)
    path = save_quantized(
        tmp_path / "m.safetensors", q, input_spec=spec, class_names=list("abcdefghij")
    )
    assert is_int8_file(path) and not is_int8_file(tmp_path / "missing.safetensors")
    q2, info = load_quantized(path)
    assert info.input_spec == spec and info.class_names == list("abcdefghij")
    assert info.arch == "shufflenet_v1_g3_x0_25" and q2.method == "percentile"
    assert torch.equal(q2(x), q(x))
    # another model file is refused with a clear error; a damaged one too
    save_model(tmp_path / "float.safetensors", m)
    assert not is_int8_file(tmp_path / "float.safetensors")
    with pytest.raises(ValueError, match="not an int8 model file"):
        load_quantized(tmp_path / "float.safetensors")
    # the one model argument resolves an int8 file to its int8 model
    resolved = shufflenet.resolve_model(path)
    assert isinstance(resolved.model, QuantizedModel) and resolved.source == "int8"
    assert resolved.input_spec == spec and resolved.class_names == list("abcdefghij")
    assert torch.equal(resolved.model(x), q(x))
    with pytest.raises(ValueError, match="architecture"):
        shufflenet.resolve_model(path, arch="mobilenet_v1_x0_25")
    (tmp_path / "bad.safetensors").write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError):
        load_quantized(tmp_path / "bad.safetensors")


def test_cli_quantize_reports_accuracy(tmp_path, capsys):
    data = build_dataset("builtin", True, 0.2, image_size=32)
    spec = default_spec(data, 32)
    m = _randomize(
        create_model("shufflenet_v1_g3_x0_25", num_classes=10, in_chans=1, small_input=True)
    )
    src = save_model(
        tmp_path / "digits.safetensors", m, input_spec=spec, class_names=list(data.classes)
    )
    out = tmp_path / "digits-int8.safetensors"
    rc = cli_main(
        [
            "quantize",
            str(src),
            str(out),
            "--data",
            "builtin",
            "--calib-images",
            "16",
            "--val-images",
            "24",
            "--json",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert '"top1_agreement"' in text and '"top1_int8"' in text
    q, info = load_quantized(out)
    assert info.input_spec == spec and info.class_names == list(data.classes)
    assert info.extra["calibration_images"] == 16
    assert (q.in_chans, q.num_classes) == (1, 10)

    # the int8 file is a model argument like any other: predict names a class for an image
    img = tmp_path / "digit.png"
    Image.fromarray(data.images[0].squeeze()).save(img)  # uint8 (H, W, 1) -> grey PNG
    capsys.readouterr()
    assert cli_main(["predict", str(out), str(img)]) == 0
    first = capsys.readouterr().out.split(":", 1)[1].split("(")[0].strip()
    assert first in data.classes


def test_cli_quantize_registered_name(tmp_path, capsys):
    out = tmp_path / "q.safetensors"
    args = [
        "quantize",
        "shufflenet_v1_g2_x0_25",
        str(out),
        "--data",
        "builtin",
        "--calib-images",
        "8",
    ]
    assert cli_main(args + ["--val-images", "8"]) == 0
    assert "agreement" in capsys.readouterr().out
    # an int8 model cannot be quantised again
    assert (
        cli_main(["quantize", str(out), str(tmp_path / "q2.safetensors"), "--data", "builtin"]) == 2
    )
    assert "already an int8 model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--calib-images", "0"], "calib-images"),
        (["--data", "/nonexistent/dir"], ""),
    ],
)
def test_cli_quantize_errors(tmp_path, capsys, args, msg):
    base = [
        "quantize",
        "shufflenet_v1_g3_x0_25",
        str(tmp_path / "o.safetensors"),
        "--data",
        "builtin",
    ]
    assert cli_main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("shufflenet quantize: error:") and msg in err.splitlines()[0]
    assert not (tmp_path / "o.safetensors").exists()
