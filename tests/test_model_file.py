"""Model files (safetensors + JSON metadata): round trip, damaged and foreign files, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from shufflenet import InputSpec, ModelInfo, ShuffleNetV1, create_model, load_model, save_model
from shufflenet.model_file import FORMAT, read_info


def _trained_like(name: str = "shufflenet_v1_g3_x0_25", **kwargs) -> nn.Module:
    """A model whose BN statistics and weights differ from a fresh one (so a failed load shows)."""
    model = create_model(name, **kwargs)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, model.stem.conv.in_channels, 32, 32))
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def test_round_trip_equal_outputs_and_metadata(tmp_path):
    model = _trained_like(num_classes=4, small_input=True)
    spec = InputSpec(image_size=32, resize_size=None, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    path = save_model(
        tmp_path / "m.safetensors",
        model,
        input_spec=spec,
        class_names=list("abcd"),
        extra={"epoch": 3},
    )
    assert path.is_file()
    loaded, info = load_model(path)
    assert isinstance(loaded, ShuffleNetV1) and not loaded.training
    assert isinstance(info, ModelInfo)
    assert info.arch == "shufflenet_v1_g3_x0_25"
    assert info.arch_kwargs == {"num_classes": 4, "small_input": True}
    assert info.input_spec == spec
    assert info.class_names == ["a", "b", "c", "d"]
    assert info.extra == {"epoch": 3}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert read_info(path) == info
    # a loaded model saves again under the same architecture
    resaved = save_model(
        tmp_path / "again.safetensors", loaded, input_spec=spec, class_names=list("abcd")
    )
    assert (read_info(resaved).arch, read_info(resaved).arch_kwargs) == (
        info.arch,
        info.arch_kwargs,
    )


def test_metadata_is_plain_json(tmp_path):
    path = save_model(
        tmp_path / "m.safetensors", create_model("shufflenet_v1_g1_x0_25", num_classes=2)
    )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT
    assert meta["arch"] == "shufflenet_v1_g1_x0_25"
    assert json.loads(meta["arch_kwargs"]) == {"num_classes": 2}
    assert json.loads(meta["input_spec"])["image_size"] == 224  # the default InputSpec
    assert json.loads(meta["class_names"]) is None


def test_load_to_device(tmp_path):
    path = save_model(tmp_path / "m.safetensors", create_model("shufflenet_v1_g3_x0_25"))
    model, _ = load_model(path, map_location="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_load_to_cuda(tmp_path):
    model = _trained_like()
    path = save_model(tmp_path / "m.safetensors", model)
    loaded, _ = load_model(path, map_location="cuda")
    assert all(p.device.type == "cuda" for p in loaded.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x.cuda()).cpu(), model(x), rtol=1e-4, atol=1e-4)


def test_create_model_with_weights(tmp_path):
    model = _trained_like(num_classes=6)
    path = save_model(tmp_path / "m.safetensors", model)
    again = create_model("shufflenet_v1_g3_x0_25", weights=path, num_classes=6).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    # a bare state dict (no shufflenet metadata) also loads through weights=
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(bare))
    from_bare = create_model("shufflenet_v1_g3_x0_25", weights=bare, num_classes=6).eval()
    with torch.no_grad():
        assert torch.equal(from_bare(x), model(x))


def test_weights_for_another_architecture(tmp_path):
    model = create_model("shufflenet_v1_g3_x0_25")
    path = save_model(tmp_path / "m.safetensors", model)
    with pytest.raises(
        ValueError, match=r"architecture 'shufflenet_v1_g3_x0_25', not 'shufflenet_v1_g8_x0_25'"
    ):
        create_model("shufflenet_v1_g8_x0_25", weights=path)
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(bare))
    with pytest.raises(ValueError, match=r"do not fit shufflenet_v1_g8_x0_25"):
        create_model("shufflenet_v1_g8_x0_25", weights=bare)


def test_truncated_file(tmp_path):
    path = save_model(tmp_path / "m.safetensors", create_model("shufflenet_v1_g3_x0_25"))
    data = path.read_bytes()
    for cut in (len(data) // 2, 5):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(
            ValueError, match=r"cut\d+\.safetensors' is not a readable safetensors file"
        ):
            load_model(bad)


def test_not_safetensors_at_all(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_text("this is not a model file\n" * 10)
    with pytest.raises(ValueError, match=r"is not a readable safetensors file"):
        load_model(bad)


def test_foreign_safetensors_file(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"not a shufflenet model file \(metadata format='pt'"):
        load_model(foreign)
    no_meta = tmp_path / "nometa.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(no_meta))
    with pytest.raises(ValueError, match=r"not a shufflenet model file \(metadata format=None"):
        load_model(no_meta)


def test_damaged_metadata(tmp_path):
    path = tmp_path / "damaged.safetensors"
    meta = {
        "format": FORMAT,
        "arch": "shufflenet_v1_g3_x0_25",
        "arch_kwargs": "{not json",
        "input_spec": "{}",
    }
    save_file({"weight": torch.zeros(1)}, str(path), metadata=meta)
    with pytest.raises(ValueError, match=r"metadata 'arch_kwargs' is not valid JSON"):
        load_model(path)
    del meta["arch_kwargs"]
    save_file({"weight": torch.zeros(1)}, str(path), metadata=meta)
    with pytest.raises(ValueError, match=r"damaged shufflenet metadata: 'arch_kwargs' is missing"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        load_model(tmp_path / "nope.safetensors")


def test_save_needs_an_architecture_name(tmp_path):
    with pytest.raises(ValueError, match=r"without an architecture name"):
        save_model(tmp_path / "m.safetensors", ShuffleNetV1(groups=3, width_mult=0.25))
    # an explicit name works
    path = save_model(
        tmp_path / "m.safetensors",
        ShuffleNetV1(groups=3, width_mult=0.25),
        arch="shufflenet_v1_g3_x0_25",
    )
    assert read_info(path).arch == "shufflenet_v1_g3_x0_25"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_atomic_write_leaves_only_the_file(tmp_path):
    target = tmp_path / "sub" / "m.safetensors"
    save_model(target, create_model("shufflenet_v1_g3_x0_25"))
    save_model(target, create_model("shufflenet_v1_g3_x0_25", num_classes=3))  # overwrite
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.safetensors"]
    assert read_info(target).arch_kwargs == {"num_classes": 3}


def test_failed_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "m.safetensors"
    save_model(target, create_model("shufflenet_v1_g3_x0_25", num_classes=3))
    old = target.read_bytes()

    def exploding_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("shufflenet.model_file.save_file", exploding_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_model(target, create_model("shufflenet_v1_g3_x0_25", num_classes=5))
    assert target.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
