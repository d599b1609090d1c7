"""Fine-tuning (``shufflenet train --init``): loading from a Megvii release checkpoint and a shufflenet model
file, the load table, the re-initialised classifier, the frozen backbone (weights and batch-norm statistics
bitwise unchanged while frozen, changed after), the backbone's learning rate, exact resume across the frozen
phase, the source's input convention kept from training to evaluate/predict, and bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_interop_megvii import reference_forward as megvii_forward
from test_shufflenet_v2 import TORCHVISION, random_state, torchvision_layout

from shufflenet import InputSpec, create_model, load_model, read_info, resolve_model, save_model
from shufflenet.cli import evaluate, predict, train
from shufflenet.distributed import init_distributed
from shufflenet.train import TrainConfig, Trainer, fit, resolve
from shufflenet.train.checkpoint import resume_config
from shufflenet.train.config import DEFAULT_MODEL
from shufflenet.train.finetune import BackboneFreezer, read_init

ARCH = "shufflenet_v1_g3_x0_25"
KWARGS = {"stage_repeats": [1, 1, 1]}
CLASSES = ["ant", "bee", "cat"]
# a convention unlike any dataset's: BGR, pixels 0-255, its own normalisation
SOURCE_SPEC = InputSpec(
    image_size=16,
    resize_size=None,
    channel_order="BGR",
    scale=255.0,
    mean=(100.0, 110.0, 120.0),
    std=(60.0, 50.0, 40.0),
)


def _image(label: int, i: int) -> np.ndarray:
    """A 16x16 RGB image whose dominant colour is its class (learnable), with per-image noise."""
    rng = np.random.default_rng(1000 * label + i)
    img = rng.integers(0, 80, (16, 16, 3))
    img[..., label] += 150
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    for split, n in (("train", 8), ("val", 4)):
        for label, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_image(label, i + (100 if split == "val" else 0))).save(
                    d / f"{i}.png"
                )
    return root


def _randomized(seed: int, **kwargs) -> torch.nn.Module:
    """A model with random weights and batch-norm statistics far from their defaults."""
    model = create_model(ARCH, **KWARGS, small_input=True, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=gen) * 0.1
            t.copy_(noise.abs() + 0.5 if k.endswith("running_var") else noise + (t == 1).float())
    return model.eval()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A shufflenet model file of 5 classes with its own input convention."""
    model = _randomized(0, num_classes=5)
    path = tmp_path_factory.mktemp("src") / "source.safetensors"
    save_model(path, model, input_spec=SOURCE_SPEC, class_names=list("vwxyz"))
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def tiny(tmp_path, folder, **kw) -> TrainConfig:
    base = dict(
        model=ARCH,
        model_kwargs=KWARGS,
        data=str(folder),
        batch_size=8,
        threads=1,
        progress=False,
        plots=False,
        deterministic=True,
        output=str(tmp_path),
    )
    return TrainConfig(**{**base, **kw})


def _backbone(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if not k.startswith("fc.")}


def _argv(folder, out, *extra: str) -> list[str]:
    return ["--data", str(folder), "--output", str(out), "--threads", "1", "--no-progress",
            "--no-plots", "--batch-size", "8", *extra]  # fmt: skip


def test_megvii_release_table_head_and_frozen_backbone(megvii_file, folder, tmp_path, capsys):
    """From a Megvii checkpoint: every backbone tensor loaded, the 1000-class classifier replaced by a
    3-class one, the release's convention kept; frozen for the whole run, the backbone stays the release's."""
    state, path = megvii_file
    argv = _argv(folder, tmp_path, "--init", str(path), "--image-size", "32", "--epochs", "1",
                 "--freeze-epochs", "1", "--max-steps", "2", "--name", "ft")  # fmt: skip
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:6] in ("loaded", "re-ini", "ignore")}  # fmt: skip
    # the release has one classifier tensor (no bias); everything else has a place in the model
    assert rows["loaded"][1] == str(len(state) - 1)
    assert rows["re-initialised"][1:] == ["1", "fc.weight"]
    assert rows["ignored"][1:] == ["1", "fc.weight"]
    assert "converted a Megvii ShuffleNet v1 checkpoint in memory" in out

    final = tmp_path / "ft" / "model.safetensors"
    info = read_info(final)
    assert info.input_spec == dataclasses.replace(
        resolve_model(path).input_spec, image_size=32, resize_size=None
    )
    assert (info.input_spec.channel_order, info.input_spec.scale) == ("BGR", 255.0)
    assert info.class_names == CLASSES and info.arch == "shufflenet_v1_g3_x0_5"
    model, _ = load_model(final)
    assert model.fc.weight.shape == (3, 480)
    x = torch.rand(2, 3, 32, 32) * 255
    with torch.no_grad():  # the frozen backbone is still the release's, statistics included
        torch.testing.assert_close(
            model.forward_features(x),
            megvii_forward(state, 3, x, "mean")[1][-1],
            rtol=1e-4,
            atol=1e-4,
        )
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert (config["init"], config["freeze_epochs"], config["backbone_lr_mult"]) == (
        str(path), 1, 0.1,
    )  # fmt: skip


def test_torchvision_checkpoint_frozen_backbone_unchanged(folder, tmp_path):
    state = random_state(torchvision_layout(TORCHVISION["shufflenet_v2_x0_5"][0]), seed=6)
    path = tmp_path / "shufflenetv2_x0.5.pth"
    torch.save(state, path)
    release = resolve_model(path)
    cfg = tiny(tmp_path, folder, model=DEFAULT_MODEL, model_kwargs={}, init=str(path))
    result = fit(cfg.replace(image_size=32, epochs=1, freeze_epochs=1, max_steps=2, name="tv"))
    info = read_info(result.model_path)
    assert info.arch == "shufflenet_v2_x0_5" and info.class_names == CLASSES
    assert info.input_spec == dataclasses.replace(
        release.input_spec, image_size=32, resize_size=None
    )
    trained = load_file(result.model_path)
    assert trained["fc.weight"].shape == (3, release.model.fc.weight.shape[1])
    for k, v in _backbone(release.model.state_dict()).items():
        assert torch.equal(trained[k], v), k


def test_frozen_phase_bitwise_then_thawed_and_resume_exact(source, folder, tmp_path):
    path, weights = source
    cfg = tiny(tmp_path, folder, init=str(path), epochs=3, freeze_epochs=2, max_steps=2)
    ref = fit(cfg.replace(name="ref"))
    part = fit(cfg.replace(name="part", stop_after_epochs=1))
    assert part.status == "stopped"
    done = fit(resume_config(part.run_dir))  # resumed inside the frozen phase
    assert done.status == "completed"
    a, b = load_file(ref.model_path), load_file(done.model_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    frozen = load_file(done.run_dir / "checkpoints" / "e0002s000000.safetensors")
    for k, v in _backbone(weights).items():  # weights and running statistics, after 2 frozen epochs
        assert torch.equal(frozen[k], v), k
    assert frozen["fc.weight"].shape == (3, weights["fc.weight"].shape[1])
    changed = [k for k, v in _backbone(weights).items() if v.is_floating_point() and not torch.equal(b[k], v)]  # fmt: skip
    conv_and_bn = [k for k in _backbone(weights) if k.endswith(("weight", "bias", "running_mean", "running_var"))]  # fmt: skip
    assert sorted(changed) == sorted(conv_and_bn)  # every backbone tensor moved once thawed
    assert done.history[0]["lr"] == ref.history[0]["lr"]


def test_backbone_learning_rate_ratio(source, folder, tmp_path):
    path, _ = source
    assert resolve(TrainConfig(init=str(path))).backbone_lr_mult == 0.1
    assert resolve(TrainConfig()).backbone_lr_mult == 1.0
    cfg = resolve(tiny(tmp_path, folder, init=str(path), lr=0.02, backbone_lr_mult=0.25, epochs=1))
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    trainer = Trainer(cfg, init_distributed("cpu"))  # sets process-wide state that fit() restores
    try:
        model = trainer.net.plain
        head = {id(model.fc.weight), id(model.fc.bias)}
        seen = []
        for group in trainer.optim.optimizer.param_groups:
            ids = {id(p) for p in group["params"]}
            seen += ids
            expected = 0.02 if ids <= head else 0.02 * 0.25
            assert ids <= head or not ids & head  # a group is all classifier or all backbone
            assert group["initial_lr"] == pytest.approx(expected)
        assert sorted(seen) == sorted(id(p) for p in model.parameters())  # each once
        assert trainer.optim.optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.02)
    finally:
        trainer.close()
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def test_freezer_keeps_batch_norm_in_eval_mode():
    model = _randomized(1, num_classes=4)
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = model.eval().forward_features(x)  # running statistics
    freezer = BackboneFreezer(model)
    freezer.set(True)
    model.train()
    out = model.forward_features(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    model(x).sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("fc."))
    assert model.fc.weight.grad is not None
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
    freezer.set(False)
    model.train()
    model.forward_features(x)  # batch statistics again: the running ones move
    means = [k for k in stats if k.endswith("running_mean")]
    assert means and all(not torch.equal(model.state_dict()[k], stats[k]) for k in means)
    assert all(p.requires_grad for p in model.parameters())


def test_input_convention_kept_through_evaluate_and_predict(source, folder, tmp_path, capsys):
    path, _ = source
    result = fit(tiny(tmp_path, folder, init=str(path), epochs=1, max_steps=2, name="conv"))
    info = read_info(result.model_path)
    assert info.input_spec == SOURCE_SPEC and info.class_names == CLASSES
    # the reference: the convention applied by hand to the validation PNGs
    model, _ = load_model(result.model_path)
    mean, std = torch.tensor(SOURCE_SPEC.mean), torch.tensor(SOURCE_SPEC.std)
    images, labels, files = [], [], []
    for label, name in enumerate(CLASSES):
        for f in sorted((folder / "val" / name).iterdir()):
            rgb = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).float()  # (H, W, 3)
            bgr = rgb.flip(-1)
            images.append(((bgr - mean) / std).permute(2, 0, 1))
            labels.append(label)
            files.append(f)
    with torch.no_grad():
        probs = model.eval()(torch.stack(images)).softmax(1)
    acc = (probs.argmax(1) == torch.tensor(labels)).float().mean().item()
    capsys.readouterr()
    assert evaluate.main([str(result.model_path), "--data", str(folder), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["val_count"] == 12 and metrics["val_acc1"] == pytest.approx(acc)
    assert predict.main([str(result.model_path), str(files[0]), "--json", "--top-k", "3"]) == 0
    top = json.loads(capsys.readouterr().out)["top"]
    for entry in top:
        assert entry["prob"] == pytest.approx(
            probs[0, CLASSES.index(entry["class"])].item(), abs=1e-5
        )


def test_strict_off_loads_what_fits(tmp_path, folder):
    other = _randomized(2, num_classes=5, stage_channels=(240, 480, 960))  # stages of another width
    path = tmp_path / "wide.pt"  # a plain state dict: read as the configuration's model
    torch.save(other.state_dict(), path)
    cfg = TrainConfig(init=str(path), model=ARCH, model_kwargs=KWARGS, small_input=True)
    src = read_init(cfg)
    model, report = src.build(3, strict=False)
    stem = [k for k in model.state_dict() if k.startswith("stem.")]
    assert stem and set(stem) <= set(report.loaded)
    assert "stages.0.0.expand.conv.weight" in report.reinitialised  # wider: left at its init
    assert "fc.weight" in report.reinitialised and "fc.weight" in report.ignored
    for k in stem:
        assert torch.equal(model.state_dict()[k], other.state_dict()[k])
    with pytest.raises(ValueError, match=r"wide.pt.*--init-strict off"):
        src.build(3, strict=True)


def test_classifier_kept_only_for_the_same_classes(tmp_path):
    model = _randomized(3, num_classes=3)
    path = save_model(tmp_path / "abc.safetensors", model, class_names=CLASSES)
    src = read_init(TrainConfig(init=str(path)))
    same, report = src.build(3, strict=True, class_names=CLASSES)
    assert report.reinitialised == () and torch.equal(same.fc.weight, model.fc.weight)
    other, report = src.build(3, strict=True, class_names=["dog", "emu", "fox"])
    assert report.reinitialised == ("fc.weight", "fc.bias") == report.ignored
    assert not torch.equal(other.fc.weight, model.fc.weight)
    assert torch.equal(other.stem.conv.weight, model.stem.conv.weight)


def _fails_cleanly(argv, out, capsys, *needles, one_line=True):
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("shufflenet train: error:"), err
    assert len(err.splitlines()) == 1 or not one_line, err
    for needle in needles:
        assert needle in err.splitlines()[0], err
    assert not out.exists()  # nothing written


def test_weights_of_another_architecture_exit_2(tmp_path, folder, capsys):
    g8 = create_model("shufflenet_v1_g8_x0_25", num_classes=3)
    plain = tmp_path / "g8_state.pt"
    torch.save(g8.state_dict(), plain)
    out = tmp_path / "runs"
    argv = _argv(folder, out, "--init", str(plain), "--model", ARCH, "--epochs", "1")
    _fails_cleanly(argv, out, capsys, str(plain), "missing or of another shape")
    model_file = save_model(tmp_path / "g8.safetensors", g8)
    argv = _argv(folder, out, "--init", str(model_file), "--model", ARCH, "--epochs", "1")
    _fails_cleanly(argv, out, capsys, str(model_file), "shufflenet_v1_g8_x0_25")


def test_bad_init_and_data_exit_2(tmp_path, folder, source, capsys):
    out = tmp_path / "runs"
    _fails_cleanly(_argv(folder, out, "--init", ARCH), out, capsys, ARCH, "no weights")
    empty = tmp_path / "empty"
    for name in CLASSES:
        (empty / name).mkdir(parents=True)
    (empty / "ant" / "notes.txt").write_text("not an image")
    argv = _argv(empty, out, "--init", str(source[0]))
    # the data reader's message lists the accepted layouts below its first line
    _fails_cleanly(argv, out, capsys, str(empty), one_line=False)
    missing = tmp_path / "nowhere.pt"
    _fails_cleanly(_argv(folder, out, "--init", str(missing)), out, capsys, str(missing))
