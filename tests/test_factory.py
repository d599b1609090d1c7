"""The model resolver (:func:`shufflenet.resolve_model`, ``create_model(name, weights=...)``) on every path,
and :func:`shufflenet.load_matching`. Published checkpoints are small random state dicts in the Megvii and
torchvision layouts built by the tests of those layouts, checked against their independent functional
forward passes."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file
from test_interop_megvii import reference_forward as megvii_forward
from test_shufflenet_v2 import TORCHVISION, random_state, torchvision_layout
from test_shufflenet_v2 import reference_forward as torchvision_forward

from shufflenet import (
    InputSpec,
    LoadReport,
    create_model,
    load_matching,
    resolve_model,
    save_model,
)
from shufflenet.cli.convert import main as convert_main
from shufflenet.interop import MEGVII_V1_INPUT_SPEC


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def _randomized(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    model = create_model(name, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1 + (t == 1).float())
    return model.eval()


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    state = random_state(torchvision_layout(TORCHVISION["shufflenet_v2_x0_5"][0]), seed=4)
    path = tmp_path_factory.mktemp("tv") / "shufflenetv2_x0.5.pth"
    torch.save(state, path)
    return state, path


def test_registered_name():
    r = resolve_model("shufflenet_v1_g3_x0_25", num_classes=7)
    assert (r.source, r.name, r.path, r.class_names) == (
        "registry",
        "shufflenet_v1_g3_x0_25",
        None,
        None,
    )
    assert r.arch_kwargs == {"num_classes": 7} and r.model.num_classes == 7
    assert not r.model.training
    with pytest.raises(ValueError, match="did you mean shufflenet_v1_g3_x0_25"):
        resolve_model("shufflenet_v1_g3_x0_2")


def test_model_file_wins(tmp_path):
    model = _randomized("shufflenet_v1_g3_x0_25", num_classes=4, small_input=True)
    spec = InputSpec(image_size=32, resize_size=None)
    path = save_model(tmp_path / "m.safetensors", model, input_spec=spec, class_names=list("abcd"))
    path.rename(tmp_path / "renamed.bin")  # the content decides, not the suffix
    path = tmp_path / "renamed.bin"
    r = resolve_model(path)
    assert (r.source, r.name, r.input_spec, r.class_names) == (
        "shufflenet", "shufflenet_v1_g3_x0_25", spec, list("abcd"),
    )  # fmt: skip
    assert r.arch_kwargs == {"num_classes": 4, "small_input": True}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(r.model(x), model(x))
        assert torch.equal(create_model("shufflenet_v1_g3_x0_25", weights=path)(x), model(x))
    with pytest.raises(ValueError, match="not 'shufflenet_v1_g8_x0_25'"):
        create_model("shufflenet_v1_g8_x0_25", weights=path)
    with pytest.raises(ValueError, match="small_input=True; small_input=False contradicts"):
        resolve_model(path, small_input=False)


def test_model_file_with_other_classes_reinitialises_the_head(tmp_path):
    model = _randomized("shufflenet_v1_g3_x0_25", num_classes=4)
    path = save_model(tmp_path / "m.safetensors", model, class_names=list("abcd"))
    with pytest.warns(UserWarning, match=r"re-initialised fc.weight, fc.bias"):
        r = resolve_model(path, num_classes=9)
    assert r.model.num_classes == 9 and r.class_names is None and r.arch_kwargs["num_classes"] == 9
    own = r.model.state_dict()
    for k, v in model.state_dict().items():
        if k.startswith("fc."):
            assert own[k].shape[0] == 9
        else:
            assert torch.equal(own[k], v), k
    assert any("re-initialised" in n for n in r.notes)


def test_converted_megvii_model_file_gives_the_release_outputs(megvii_file, tmp_path):
    state, src = megvii_file
    out = tmp_path / "converted.safetensors"
    assert convert_main(["--from", "megvii", str(src), str(out)]) == 0
    model = create_model("shufflenet_v1_g3_x0_5", weights=out)
    x = torch.rand(2, 3, 224, 224) * 255
    with torch.no_grad():
        _close(model(x), megvii_forward(state, 3, x)[0])


def test_megvii_checkpoint_converted_in_memory(megvii_file):
    state, path = megvii_file
    r = resolve_model(path)
    assert (r.source, r.name, r.input_spec) == (
        "megvii",
        "shufflenet_v1_g3_x0_5",
        MEGVII_V1_INPUT_SPEC,
    )
    assert r.arch_kwargs["shuffle"] == "unshuffle" and r.arch_kwargs["classifier_bias"] is False
    assert r.notes == (
        "converted a Megvii ShuffleNet v1 checkpoint in memory "
        "(`shufflenet convert --from megvii` writes it as a model file)",
    )
    x = torch.rand(1, 3, 224, 224) * 255
    with torch.no_grad():
        _close(r.model(x), megvii_forward(state, 3, x)[0])


def test_megvii_checkpoint_with_ten_classes(megvii_file):
    """The transfer-learning case: ImageNet weights, a 10-class head; only the classifier is new."""
    state, path = megvii_file
    with pytest.warns(UserWarning, match=r"num_classes=10 .* re-initialised fc.weight;"):
        model = create_model("shufflenet_v1_g3_x0_5", weights=path, num_classes=10)
    assert model.fc.weight.shape == (10, 480) and model.fc.bias is None
    x = torch.rand(1, 3, 224, 224) * 255
    _, acts = megvii_forward(state, 3, x)
    with torch.no_grad():
        _close(model.forward_features(x), acts[-1])  # the backbone is the release's


def test_torchvision_checkpoint(torchvision_file):
    state, path = torchvision_file
    r = resolve_model(path)
    assert (r.source, r.name) == ("torchvision", "shufflenet_v2_x0_5")
    assert "torchvision ShuffleNet v2" in r.notes[0]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _close(r.model(x), torchvision_forward(state, x))
        _close(create_model("shufflenet_v2_x0_5", weights=path)(x), torchvision_forward(state, x))
    with pytest.raises(ValueError, match="not 'shufflenet_v2_x1_0'"):
        create_model("shufflenet_v2_x1_0", weights=path)


def test_plain_state_dict_needs_a_name(tmp_path):
    model = _randomized("mobilenet_v1_x0_25", num_classes=5)
    path = tmp_path / "sd.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="plain state dict"):
        resolve_model(path)
    r = resolve_model(path, arch="mobilenet_v1_x0_25", num_classes=5)
    assert r.source == "state_dict" and r.notes == ()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(r.model(x), model(x))
    with pytest.raises(ValueError, match="do not fit shufflenet_v1_g3_x0_25"):
        create_model("shufflenet_v1_g3_x0_25", weights=path)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="neither a registered model name nor an existing file"
    ):
        resolve_model(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pth"):
        resolve_model(junk)


def test_load_matching_reports_and_strictness():
    src = _randomized("shufflenet_v1_g3_x0_25", num_classes=4).state_dict()
    dst = create_model("shufflenet_v1_g3_x0_25", num_classes=6)
    report = load_matching(dst, src)
    assert isinstance(report, LoadReport)
    assert report.reinitialised == ("fc.weight", "fc.bias") and report.ignored == (
        "fc.weight",
        "fc.bias",
    )
    assert set(report.loaded) == set(src) - {"fc.weight", "fc.bias"}
    for k in report.loaded:
        assert torch.equal(dst.state_dict()[k], src[k]), k
    table = report.table().splitlines()
    assert table[0].split() == ["loaded", str(len(src) - 2)]
    assert table[1].split()[:2] == ["re-initialised", "2"] and "fc.weight, fc.bias" in table[1]

    # a backbone tensor that does not fit: an error naming it, and nothing loaded
    other = create_model("shufflenet_v1_g3_x0_25", num_classes=6, in_chans=1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"stem.conv.weight \(12, 3, 3, 3\) -> \(12, 1, 3, 3\)\)"):
        load_matching(other, src)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in before.items())
    extra = dict(src, **{"stages.9.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"not in the model: stages.9.weight"):
        load_matching(create_model("shufflenet_v1_g3_x0_25", num_classes=4), extra)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loose = load_matching(other, src, strict=False)
    assert len(loose.reinitialised) == 3 and loose.reinitialised[0].endswith("weight")
