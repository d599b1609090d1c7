"""Megvii ShuffleNet v1 checkpoints: layout, mapping layer by layer, and outputs against an independent
functional re-implementation of the release's forward pass (written here from its description, not from our
model code)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    CODE_RAN,
    RELEASE,
    RELEASE_REPEATS,
    CodeOnLoad,
    megvii_state,
    save_release_file,
    state_batch_norm,
)

from shufflenet import create_model, load_model
from shufflenet.cli.convert import main as convert_main
from shufflenet.data.spec import InputSpec
from shufflenet.interop import (
    MEGVII_V1_INPUT_SPEC,
    convert_megvii_v1,
    create_megvii_v1,
    infer_megvii_v1_config,
    load_megvii_v1,
    megvii_v1_key_map,
)


def reference_forward(
    state: dict, groups: int, x: torch.Tensor, global_pool: str = "avg7"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The release's forward pass, functionally: returns logits and [stem, maxpool, unit 0, unit 1, ...]."""

    def bn(t, p):
        return state_batch_norm(state, p, t)

    trace = []
    x = F.relu(bn(F.conv2d(x, state["first_conv.0.weight"], stride=2, padding=1), "first_conv.1"))
    trace.append(x)
    x = F.max_pool2d(x, 3, 2, 1)
    trace.append(x)
    k = 0
    while f"features.{k}.branch_main_1.0.weight" in state:
        p = f"features.{k}"
        w1 = state[f"{p}.branch_main_1.0.weight"]
        g1 = x.shape[1] // w1.shape[1]
        stride = 2 if (k == 0 or k == 4 or k == 12) else 1
        y = F.relu(bn(F.conv2d(x, w1, groups=g1), f"{p}.branch_main_1.1"))
        wd = state[f"{p}.branch_main_1.3.weight"]
        y = bn(
            F.conv2d(y, wd, stride=stride, padding=1, groups=wd.shape[0]), f"{p}.branch_main_1.4"
        )
        # shuffle as in the release: (b, c/g, g, h, w) -> permute(0, 2, 1, 3, 4) -> (b, c, h, w)
        b, c, h, w = y.shape
        y = y.reshape(b, c // groups, groups, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)
        y = bn(
            F.conv2d(y, state[f"{p}.branch_main_2.0.weight"], groups=groups), f"{p}.branch_main_2.1"
        )
        if stride == 1:
            x = F.relu(y + x)
        else:
            x = torch.cat([F.avg_pool2d(x, 3, 2, 1), F.relu(y)], dim=1)
        trace.append(x)
        k += 1
    x = F.avg_pool2d(x, 7) if global_pool == "avg7" else x.mean((2, 3), keepdim=True)
    x = x.reshape(x.shape[0], -1)
    return F.linear(x, state["classifier.0.weight"]), trace


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-4) -> None:
    """Equal up to float32 rounding, relative to the largest output (logits of 0-255 inputs are large)."""
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * expected.abs().max().item())


@pytest.mark.parametrize(("groups", "size"), list(RELEASE))
def test_config_inferred_from_shapes(groups, size):
    widths = RELEASE[(groups, size)]
    state = megvii_state(groups, widths, num_classes=7)
    cfg = infer_megvii_v1_config(state)
    assert cfg.groups == groups
    assert cfg.stem_channels == widths[0]
    assert cfg.stage_channels == widths[1:]
    assert cfg.stage_repeats == RELEASE_REPEATS
    assert cfg.num_classes == 7
    assert cfg.classifier_bias is False
    assert cfg.model_size == size
    name, kwargs = cfg.arch()
    assert name == f"shufflenet_v1_g{groups}_x{size[:-1].replace('.', '_')}"
    assert kwargs == {
        "num_classes": 7,
        "shuffle": "unshuffle",
        "shuffle_position": "after_dw",
        "classifier_bias": False,
    }


@pytest.mark.parametrize(("groups", "size"), list(RELEASE))
def test_mapping_layer_by_layer_and_outputs(groups, size, tmp_path):
    widths = RELEASE[(groups, size)]
    state = megvii_state(groups, widths, seed=groups)
    path = tmp_path / "snetv1.pth.tar"
    save_release_file(path, state)
    model, cfg = load_megvii_v1(path)
    assert not model.training

    # every tensor of the release lands, unchanged, on exactly one of ours, and covers all of ours
    ours = model.state_dict()
    mapping = megvii_v1_key_map(cfg)
    assert set(mapping) == set(state)
    assert set(mapping.values()) == set(ours)
    assert len(set(mapping.values())) == len(mapping)
    for theirs, mine in mapping.items():
        assert torch.equal(ours[mine], state[theirs]), (theirs, mine)

    # activations layer by layer: stem, max pool, then each of the 16 units
    acts = []
    hooks = [model.stem.register_forward_hook(lambda m, i, o: acts.append(o))]
    hooks.append(model.pool.register_forward_hook(lambda m, i, o: acts.append(o)))
    for stage in model.stages:
        for unit in stage:
            hooks.append(unit.register_forward_hook(lambda m, i, o: acts.append(o)))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)) * 60 + 110
    with torch.no_grad():
        out = model(x)
        ref, trace = reference_forward(state, groups, x)
    for h in hooks:
        h.remove()
    assert len(acts) == len(trace) == 2 + sum(RELEASE_REPEATS)
    for i, (a, r) in enumerate(zip(acts, trace)):
        torch.testing.assert_close(
            a, r, rtol=1e-4, atol=1e-4 * r.abs().max().item(), msg=f"layer {i}"
        )
    assert_close_scaled(out, ref)


def test_convert_cli_writes_complete_model_file(tmp_path, capsys):
    state = megvii_state(3, RELEASE[(3, "0.5x")], seed=5)
    src, dst = tmp_path / "g3_0.5x.pth", tmp_path / "g3_0.5x.safetensors"
    save_release_file(src, state)
    assert convert_main(["--from", "megvii", str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert "shufflenet_v1_g3_x0_5" in printed and "BGR" in printed

    model, info = load_model(dst)
    assert info.arch == "shufflenet_v1_g3_x0_5"
    assert info.arch_kwargs["shuffle"] == "unshuffle"
    assert info.arch_kwargs["shuffle_position"] == "after_dw"
    assert info.arch_kwargs["classifier_bias"] is False
    assert info.input_spec == InputSpec(
        image_size=224,
        resize_size=256,
        channel_order="BGR",
        scale=255.0,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    assert info.input_spec == MEGVII_V1_INPUT_SPEC
    assert info.extra["groups"] == 3 and info.extra["model_size"] == "0.5x"
    assert model.fc.bias is None

    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(2)) * 255
    with torch.no_grad():
        assert_close_scaled(model(x), reference_forward(state, 3, x)[0])
        # any input size: the release's fixed 7x7 pool becomes a global average
        for hw in ((160, 160), (257, 193)):
            x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(3)) * 255
            ref = reference_forward(state, 3, x, global_pool="global")[0]
            assert_close_scaled(model(x), ref)


def test_convert_cli_class_names(tmp_path):
    state = megvii_state(8, RELEASE[(8, "0.5x")], num_classes=3)
    src, dst, names = tmp_path / "a.pth", tmp_path / "a.safetensors", tmp_path / "names.txt"
    save_release_file(src, state)
    names.write_text("cat\ndog\nbird\n")
    assert convert_main(["--from", "megvii", str(src), str(dst), "--class-names", str(names)]) == 0
    assert load_model(dst)[1].class_names == ["cat", "dog", "bird"]
    names.write_text("cat\ndog\n")
    assert convert_main(["--from", "megvii", str(src), str(dst), "--class-names", str(names)]) == 2


def test_plain_state_dict_without_prefix_and_without_num_batches_tracked(tmp_path):
    state = megvii_state(3, RELEASE[(3, "1.0x")], num_classes=5)
    trimmed = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "model.mdl"
    torch.save(trimmed, path)
    model, cfg = load_megvii_v1(path)
    assert cfg.model_size == "1.0x"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert_close_scaled(model(x), reference_forward(state, 3, x)[0])


def test_create_megvii_v1_matches_release_layout():
    model = create_megvii_v1(8, "1.5x", num_classes=1000)
    state = megvii_state(8, RELEASE[(8, "1.5x")])
    converted, _ = convert_megvii_v1(state)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in converted.state_dict().items()
    }
    with pytest.raises(ValueError, match="model_size"):
        create_megvii_v1(3, "3.0x")


def test_create_model_converts_a_megvii_file_in_memory(tmp_path):
    state = megvii_state(3, RELEASE[(3, "0.5x")], seed=5)
    path = tmp_path / "m.pth"
    save_release_file(path, state)
    model = create_model("shufflenet_v1_g3_x0_5", weights=path)
    x = torch.rand(2, 3, 224, 224) * 255  # BGR 0-255, the release's convention
    ref = reference_forward(state, 3, x)[0]
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    with pytest.raises(ValueError, match="not 'shufflenet_v1_g8_x0_5'"):
        create_model("shufflenet_v1_g8_x0_5", weights=path)


def test_damaged_state_dicts_are_reported():
    good = megvii_state(3, RELEASE[(3, "0.5x")])
    missing = dict(good)
    del missing["features.3.branch_main_1.4.running_var"]
    with pytest.raises(ValueError, match="running_var"):
        convert_megvii_v1(missing)
    extra = dict(good, **{"features.0.branch_main_9.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="branch_main_9"):
        convert_megvii_v1(extra)
    bad_fc = dict(good, **{"classifier.0.weight": torch.zeros(10, 17)})
    with pytest.raises(ValueError, match="classifier"):
        convert_megvii_v1(bad_fc)
    with pytest.raises(ValueError, match="not a Megvii"):
        convert_megvii_v1({"fc.weight": torch.zeros(2, 2)})


def test_pickles_needing_code_are_refused_not_run(tmp_path):
    CODE_RAN.clear()
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": CodeOnLoad()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_megvii_v1(path)
    assert convert_main(["--from", "megvii", str(path), str(tmp_path / "o.safetensors")]) == 2
    assert CODE_RAN == []
    assert not (tmp_path / "o.safetensors").exists()
    # the file does carry code: the unrestricted unpickler runs it (our own test object, harmless)
    torch.load(path, weights_only=False)
    assert CODE_RAN == [("code ran",)]
    CODE_RAN.clear()
