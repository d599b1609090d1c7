"""NIN and its Deep Roots root-N variants: structure, and the published parameter and multiply-add counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shufflenet import create_model, profile
from shufflenet.models.nin import NIN, nin_root_groups

# Deep Roots (Ioannou et al., CVPR 2017), Table 1 (CIFAR-10 NIN), at full precision as in the thesis data
# behind it: (multiply-adds, parameters, top-1 accuracy).
PUBLISHED_NIN = {
    "nin_cifar10": (222_487_946, 966_986, 0.9211),
    "nin_root2": (163_505_546, 736_586, 0.9209),
    "nin_root4": (123_397_514, 455_498, 0.9202),
    "nin_root8": (103_343_498, 314_954, 0.9215),
    "nin_root16": (93_316_490, 244_682, 0.9167),
}
# AlexNet as counted by the same work (Caffe bvlc_alexnet and its one-group form): (multiply-adds, parameters).
PUBLISHED_ALEXNET = {
    "alexnet_g2": (724_417_384, 60_965_224),
    "alexnet_g1": (1_135_266_664, 62_378_344),
}


def _conv_biases(model: nn.Module) -> int:
    return sum(
        m.bias.numel()
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None
    )


@pytest.mark.parametrize("name", sorted(PUBLISHED_NIN))
def test_nin_counts_match_deep_roots(name: str) -> None:
    published_macs, published_params, _ = PUBLISHED_NIN[name]
    model = create_model(name)
    report = profile(model, 32)
    assert report.unsupported == []
    assert report.params == published_params
    # The published counter charges one multiply-add per bias on top of the weights' multiply-adds.
    assert report.macs + _conv_biases(model) == published_macs


@pytest.mark.parametrize("name", sorted(PUBLISHED_ALEXNET))
def test_alexnet_counts_match_published(name: str) -> None:
    published_macs, published_params = PUBLISHED_ALEXNET[name]
    model = create_model(name)
    report = profile(model, 224)
    assert report.params == published_params
    assert report.macs + _conv_biases(model) == published_macs
    # ShuffleNet Table 6 quotes AlexNet at 720 MFLOPs (multiply-adds) for the two-group form.
    if name == "alexnet_g2":
        assert round(report.macs / 1e7) * 10 == 720


def _closed_form_nin(root: int) -> tuple[int, int]:
    """Parameters and multiply-adds of NIN root-N from the layer table, written out by hand."""
    g2, g3 = (1, 1) if root == 1 else (root, root // 2)
    # (k, c_in, c_out, groups, side)
    layers = [
        (5, 3, 192, 1, 32), (1, 192, 160, 1, 32), (1, 160, 96, 1, 32),
        (5, 96, 192, g2, 16), (1, 192, 192, 1, 16), (1, 192, 192, 1, 16),
        (3, 192, 192, g3, 8), (1, 192, 192, 1, 8), (1, 192, 10, 1, 8),
    ]  # fmt: skip
    params = sum(k * k * ci // g * co + co for k, ci, co, g, _ in layers)
    macs = sum(k * k * ci // g * co * s * s for k, ci, co, g, s in layers)
    return params, macs


@pytest.mark.parametrize("root", [1, 2, 4, 8, 16, 32])
def test_nin_counts_closed_form(root: int) -> None:
    name = "nin_cifar10" if root == 1 else f"nin_root{root}"
    report = profile(create_model(name), 32)
    assert (report.params, report.macs) == _closed_form_nin(root)


def test_nin_layer_groups_and_map_sizes() -> None:
    model = create_model("nin_root8")
    convs = {
        n.split(".")[1]: m
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and "." in n
    }
    assert convs["conv2a"].groups == 8 and convs["conv3a"].groups == 4
    assert all(m.groups == 1 for n, m in convs.items() if n not in ("conv2a", "conv3a"))
    assert [convs[n].kernel_size[0] for n in ("conv1a", "conv2a", "conv3a", "conv1b")] == [
        5,
        5,
        3,
        1,
    ]
    sides = {}
    hooks = [
        getattr(model.features, n).register_forward_hook(
            lambda m, i, o, n=n: sides.__setitem__(n, tuple(o.shape[1:]))
        )
        for n in ("conv1c", "conv2c", "conv3b")
    ]
    model.eval()(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert sides == {"conv1c": (96, 32, 32), "conv2c": (192, 16, 16), "conv3b": (192, 8, 8)}


def test_nin_model_api() -> None:
    model = create_model("nin_root4", num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 8, 8) and model.num_features == 192
    assert model(x).shape == (2, 7) and model.num_classes == 7
    assert model.forward_head(feats, pre_logits=True).shape == (2, 192)
    torch.testing.assert_close(model.forward_head(feats), model(x))


def test_nin_affine_bn_adds_two_parameters_per_channel() -> None:
    plain = sum(p.numel() for p in NIN().parameters())
    affine = sum(p.numel() for p in NIN(bn_affine=True).parameters())
    assert affine - plain == 2 * (192 + 160 + 96 + 192 * 5)


@pytest.mark.parametrize("root", [0, 3, -2])
def test_nin_rejects_bad_root(root: int) -> None:
    with pytest.raises(ValueError, match=f"root={root}"):
        nin_root_groups(root)


def test_nin_rejects_unknown_group_layer() -> None:
    with pytest.raises(ValueError, match="conv9z"):
        NIN(groups={"conv9z": 2})
