"""ShuffleNet v2: torchvision's state-dict layout, published parameter counts and multiply-adds, and outputs
against an independent functional re-implementation (written here, over the torchvision key names)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import state_batch_norm

from shufflenet import create_model, load_model, profile
from shufflenet.cli.convert import main as convert_main
from shufflenet.models import ShuffleNetV2, list_models
from shufflenet.models.shufflenet_v2 import ShuffleNetV2Unit

# torchvision's stages_out_channels (conv1, stage2, stage3, stage4, conv5) and published numbers:
# parameters at 1000 classes, and GFLOPS (multiply-adds, 224x224) of the weights' metadata.
TORCHVISION = {
    "shufflenet_v2_x0_5": ((24, 48, 96, 192, 1024), 1_366_792, 0.04),
    "shufflenet_v2_x1_0": ((24, 116, 232, 464, 1024), 2_278_604, 0.145),
    "shufflenet_v2_x1_5": ((24, 176, 352, 704, 1024), 3_503_624, 0.296),
    "shufflenet_v2_x2_0": ((24, 244, 488, 976, 2048), 7_393_996, 0.583),
}
REPEATS = (4, 8, 4)


def torchvision_layout(channels, num_classes=1000) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's ShuffleNetV2 state dict."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(p, c):
        for n in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{p}.{n}"] = (c,)
        shapes[f"{p}.num_batches_tracked"] = ()

    shapes["conv1.0.weight"] = (channels[0], 3, 3, 3)
    bn("conv1.1", channels[0])
    inp = channels[0]
    for s, (oup, n) in enumerate(zip(channels[1:4], REPEATS)):
        half = oup // 2
        for i in range(n):
            p = f"stage{s + 2}.{i}"
            if i == 0:
                shapes[f"{p}.branch1.0.weight"] = (inp, 1, 3, 3)
                bn(f"{p}.branch1.1", inp)
                shapes[f"{p}.branch1.2.weight"] = (half, inp, 1, 1)
                bn(f"{p}.branch1.3", half)
            shapes[f"{p}.branch2.0.weight"] = (half, inp if i == 0 else half, 1, 1)
            bn(f"{p}.branch2.1", half)
            shapes[f"{p}.branch2.3.weight"] = (half, 1, 3, 3)
            bn(f"{p}.branch2.4", half)
            shapes[f"{p}.branch2.5.weight"] = (half, half, 1, 1)
            bn(f"{p}.branch2.6", half)
        inp = oup
    shapes["conv5.0.weight"] = (channels[4], inp, 1, 1)
    bn("conv5.1", channels[4])
    shapes["fc.weight"] = (num_classes, channels[4])
    shapes["fc.bias"] = (num_classes,)
    return shapes


def random_state(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in layout.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
        elif k.endswith("running_var") or (k.endswith(".weight") and len(shape) == 1):
            state[k] = torch.rand(shape, generator=gen) + 0.5
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[k] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        else:
            state[k] = torch.randn(shape, generator=gen) * 0.1
    return state


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """ShuffleNet v2 inference over a torchvision-layout state dict, with functional ops only."""

    def bn(t, p):
        return state_batch_norm(state, p, t)

    def dw(t, p, stride):
        w = state[f"{p}.weight"]
        return F.conv2d(t, w, stride=stride, padding=1, groups=w.shape[0])

    def shuffle2(t):
        b, c, h, w = t.shape
        return t.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)

    x = F.relu(bn(F.conv2d(x, state["conv1.0.weight"], stride=2, padding=1), "conv1.1"))
    x = F.max_pool2d(x, 3, 2, 1)
    s = 2
    while f"stage{s}.0.branch2.0.weight" in state:
        i = 0
        while f"stage{s}.{i}.branch2.0.weight" in state:
            p = f"stage{s}.{i}"
            stride = 2 if i == 0 else 1
            if stride == 1:
                left, right = x.chunk(2, dim=1)
            else:
                left = bn(dw(x, f"{p}.branch1.0", 2), f"{p}.branch1.1")
                left = F.relu(bn(F.conv2d(left, state[f"{p}.branch1.2.weight"]), f"{p}.branch1.3"))
                right = x
            r = F.relu(bn(F.conv2d(right, state[f"{p}.branch2.0.weight"]), f"{p}.branch2.1"))
            r = bn(dw(r, f"{p}.branch2.3", stride), f"{p}.branch2.4")
            r = F.relu(bn(F.conv2d(r, state[f"{p}.branch2.5.weight"]), f"{p}.branch2.6"))
            x = shuffle2(torch.cat([left, r], dim=1))
            i += 1
        s += 1
    x = F.relu(bn(F.conv2d(x, state["conv5.0.weight"]), "conv5.1"))
    return F.linear(x.mean((2, 3)), state["fc.weight"], state["fc.bias"])


def test_registered():
    assert set(TORCHVISION) <= set(list_models("shufflenet_v2*"))


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_state_dict_layout_is_torchvisions(name):
    channels, _, _ = TORCHVISION[name]
    model = create_model(name)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == torchvision_layout(
        channels
    )


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_published_parameter_counts_and_macs(name):
    _, params, gmacs = TORCHVISION[name]
    model = create_model(name, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == params
    report = profile(model, 224)
    assert report.params == params
    assert round(report.macs / 1e9, 3) == gmacs


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_outputs_match_functional_reference(name, tmp_path):
    channels, _, _ = TORCHVISION[name]
    state = random_state(torchvision_layout(channels, num_classes=10), seed=len(name))
    model = create_model(name, num_classes=10)
    model.load_state_dict(state, strict=True)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for shape in ((2, 3, 128, 128), (1, 3, 97, 130)):
            x = torch.randn(*shape, generator=gen)
            ref = reference_forward(state, x)
            torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())

    # the same through a torchvision-style .pth (plain state dict) given to create_model
    path = tmp_path / "tv.pth"
    torch.save(state, path)
    loaded = create_model(name, weights=path, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        ref = reference_forward(state, x)
        torch.testing.assert_close(loaded(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_model_api():
    model = create_model("shufflenet_v2_x0_5", num_classes=10).eval()
    assert model.num_classes == 10 and model.num_features == 1024
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 1024, 7, 7)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 1024)
        torch.testing.assert_close(model.forward_head(feats), model(x))
    assert model.model_cfg == {"arch": "shufflenet_v2_x0_5", "kwargs": {"num_classes": 10}}


def test_small_input_and_channels():
    model = create_model("shufflenet_v2_x1_0", num_classes=10, small_input=True, in_chans=1).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(2, 1, 32, 32)).shape == (2, 1024, 4, 4)
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    # same parameters as the ImageNet stem except the input channels
    base = create_model("shufflenet_v2_x1_0", num_classes=10)
    assert (
        sum(p.numel() for p in model.parameters())
        == sum(p.numel() for p in base.parameters()) - 2 * 24 * 9
    )


def test_custom_widths_and_errors():
    model = ShuffleNetV2(
        stage_channels=(8, 16, 32, 64, 128), stage_repeats=(1, 2, 1), num_classes=3
    )
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="width_mult"):
        ShuffleNetV2(width_mult=0.75)
    with pytest.raises(ValueError, match="stage_channels"):
        ShuffleNetV2(stage_channels=(8, 16, 32))
    with pytest.raises(ValueError, match="in_channels"):
        ShuffleNetV2Unit(16, 32, stride=1)
    with pytest.raises(ValueError, match="even"):
        ShuffleNetV2Unit(16, 33, stride=2)
    with pytest.raises(ValueError, match="stride"):
        ShuffleNetV2Unit(16, 32, stride=3)


def test_unit_shuffle_is_the_two_group_shuffle():
    unit = ShuffleNetV2Unit(8, 8, stride=1).eval()
    with torch.no_grad():
        for m in unit.branch2:  # make the branch the identity on non-negative inputs
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
                if m.groups == 1:
                    m.weight[:, :, 0, 0] = torch.eye(4)
                else:
                    m.weight[:, :, 1, 1] = 1.0
        x = torch.rand(1, 8, 5, 5)
        # channels (a0..a3 | b0..b3) -> a0 b0 a1 b1 ...
        torch.testing.assert_close(unit(x), x[:, [0, 4, 1, 5, 2, 6, 3, 7]], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "resize"), [("shufflenet_v2_x1_0", 256), ("shufflenet_v2_x2_0", 232)]
)
def test_convert_torchvision_cli(name, resize, tmp_path):
    channels, _, _ = TORCHVISION[name]
    state = random_state(torchvision_layout(channels))
    src, dst = tmp_path / "tv.pth", tmp_path / "tv.safetensors"
    torch.save(state, src)
    assert convert_main(["--from", "torchvision", str(src), str(dst)]) == 0
    model, info = load_model(dst)
    assert info.arch == name and info.arch_kwargs == {"num_classes": 1000}
    assert info.input_spec.channel_order == "RGB" and info.input_spec.scale == 1.0
    assert info.input_spec.mean == (0.485, 0.456, 0.406)
    assert info.input_spec.resize_size == resize and info.input_spec.image_size == 224
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        ref = reference_forward(state, x)
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
