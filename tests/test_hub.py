"""torch.hub entry points (hubconf.py at the repository root) and local weight files."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shufflenet import create_model, list_models, save_model

ROOT = Path(__file__).resolve().parents[1]


def _import_hubconf():
    spec = importlib.util.spec_from_file_location("shufflenet_hubconf_test", ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hubconf_has_an_entry_for_every_registered_model():
    hub = _import_hubconf()
    assert hub.dependencies == ["torch"]
    entries = {n for n in dir(hub) if not n.startswith("_") and callable(getattr(hub, n))}
    assert set(list_models()) <= entries
    assert "shufflenet_v2_x1_0" in entries and "shufflenet_v1_g8_x2_0" in entries
    assert "weights" in (hub.shufflenet_v1_g3_x1_0.__doc__ or "")


def test_torch_hub_load_local():
    model = torch.hub.load(str(ROOT), "shufflenet_v1_g3_x1_0", source="local", num_classes=10)
    assert model.model_cfg == {"arch": "shufflenet_v1_g3_x1_0", "kwargs": {"num_classes": 10}}
    assert type(model) is type(create_model("shufflenet_v1_g3_x1_0"))
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_torch_hub_load_with_local_weights(tmp_path):
    src = create_model("shufflenet_v2_x0_5", num_classes=4)
    st, pth = tmp_path / "w.safetensors", tmp_path / "w.pth"
    save_model(st, src)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, pth)
    for weights in (st, pth):
        model = torch.hub.load(
            str(ROOT), "shufflenet_v2_x0_5", source="local", weights=str(weights), num_classes=4
        )
        for k, v in src.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k


def test_create_model_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        create_model("shufflenet_v2_x0_5", weights=tmp_path / "nope.pth")
    other = tmp_path / "other.pth"
    torch.save(create_model("shufflenet_v1_g3_x0_5").state_dict(), other)
    with pytest.raises(ValueError, match="do not fit"):
        create_model("shufflenet_v2_x0_5", weights=other)
    notdict = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), notdict)
    with pytest.raises(ValueError, match="no state dict"):
        create_model("shufflenet_v2_x0_5", weights=notdict)


def test_hubconf_works_without_the_package_installed(tmp_path):
    """With site-packages on the path but without the installed package (no .pth processing: ``-S``),
    hubconf imports the package from the repository's ``src/``."""
    site_dirs = {str(Path(m.__file__).resolve().parents[1]) for m in (torch, __import__("numpy"))}
    site_dirs.add(str(Path(__import__("safetensors").__file__).resolve().parents[1]))
    code = (
        "import importlib.util, sys, torch\n"
        "assert importlib.util.find_spec('shufflenet') is None, 'package importable before hubconf'\n"
        f"m = torch.hub.load({str(ROOT)!r}, 'shufflenet_v1_g3_x0_5', source='local', num_classes=3)\n"
        "import shufflenet\n"
        "print(shufflenet.__file__)\n"
        "print(m.eval()(torch.randn(1, 3, 64, 64)).shape)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = os.pathsep.join(sorted(site_dirs))
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert Path(lines[0]).resolve() == (ROOT / "src" / "shufflenet" / "__init__.py").resolve()
    assert lines[1] == "torch.Size([1, 3])"
