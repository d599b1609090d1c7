"""Transforms: exact behaviour against hand-computed references, determinism under (seed, epoch, index)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shufflenet.data import (
    ArrayDataset,
    InputSpec,
    build_transform,
    default_spec,
    make_loader,
    set_epoch,
)
from shufflenet.data.loader import EpochSampler
from shufflenet.data.transforms import (
    CenterCrop,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    sample_generator,
)


def image(c=3, h=8, w=8) -> torch.Tensor:
    return torch.arange(c * h * w, dtype=torch.int64).remainder(256).to(torch.uint8).view(c, h, w)


def test_sample_generator_is_a_function_of_seed_epoch_index():
    draw = lambda *k: torch.rand(4, generator=sample_generator(*k))  # noqa: E731
    assert torch.equal(draw(0, 1, 2), draw(0, 1, 2))
    assert not torch.equal(draw(0, 1, 2), draw(0, 2, 1))
    assert not torch.equal(draw(0, 1, 2), draw(1, 1, 2))


def test_random_crop_is_a_window_of_the_padded_image():
    img = image()
    padded = torch.nn.functional.pad(img, (2, 2, 2, 2))
    for i in range(20):
        out = RandomCrop(8, padding=2)(img, sample_generator(0, 0, i))
        windows = [padded[:, t : t + 8, s : s + 8] for t in range(5) for s in range(5)]
        assert any(torch.equal(out, w) for w in windows)
    assert torch.equal(RandomCrop(8)(img, sample_generator(0, 0, 0)), img)
    with pytest.raises(ValueError, match="larger than the padded image"):
        RandomCrop(9)(img, sample_generator(0, 0, 0))


def test_flip():
    img = image()
    assert torch.equal(RandomHorizontalFlip(1.0)(img, torch.Generator()), img.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(img, torch.Generator()), img)
    flips = sum(
        not torch.equal(RandomHorizontalFlip(0.5)(img, sample_generator(0, 0, i)), img)
        for i in range(200)
    )
    assert 70 < flips < 130


def test_random_resized_crop_shape_range_and_determinism():
    img = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    t = RandomResizedCrop(24)
    a, b = t(img, sample_generator(3, 0, 5)), t(img, sample_generator(3, 0, 5))
    assert a.shape == (3, 24, 24) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 255
    assert not torch.equal(a, t(img, sample_generator(3, 1, 5)))


def test_resize_short_side_and_center_crop():
    img = torch.rand(3, 30, 60) * 255
    assert Resize(15)(img).shape == (3, 15, 30)
    assert Resize(30)(img) is img  # already that size: untouched
    flat = torch.full((1, 10, 10), 7.0)
    assert torch.allclose(Resize(5)(flat), torch.full((1, 5, 5), 7.0))
    assert torch.equal(CenterCrop(4)(image(1, 8, 8)), image(1, 8, 8)[:, 2:6, 2:6])
    assert CenterCrop(10)(image(1, 8, 8)).shape == (1, 10, 10)  # zero-padded


def test_normalize_channel_conversions_and_values():
    rgb = torch.tensor([[[255]], [[0]], [[51]]], dtype=torch.uint8)  # one pixel
    spec = InputSpec(1, None, "RGB", 1.0, (0.5, 0.0, 0.0), (0.5, 1.0, 0.2))
    assert torch.allclose(Normalize(spec)(rgb).flatten(), torch.tensor([1.0, 0.0, 1.0]))
    bgr = InputSpec(1, None, "BGR", 255.0, (0.0,) * 3, (1.0,) * 3)
    assert torch.allclose(Normalize(bgr)(rgb).flatten(), torch.tensor([51.0, 0.0, 255.0]))
    grey = InputSpec(1, None, "L", 1.0, (0.0,), (1.0,))
    luma = (0.299 * 255 + 0.114 * 51) / 255
    assert torch.allclose(Normalize(grey)(rgb).flatten(), torch.tensor([luma]))
    one = torch.tensor([[[102]]], dtype=torch.uint8)
    assert torch.allclose(
        Normalize(spec)(one).flatten(), torch.tensor([-0.2, 0.4, 2.0])
    )  # replicated
    with pytest.raises(ValueError, match="2 channels"):
        Normalize(spec)(torch.zeros(2, 1, 1))


def test_build_transform_pipelines():
    small = InputSpec(32, None, "RGB")
    large = InputSpec(64 + 32, 110, "RGB")
    names = lambda t: [type(s).__name__ for s in t.transforms]  # noqa: E731
    assert names(build_transform(small, True)) == [
        "Resize",
        "CenterCrop",
        "RandomCrop",
        "RandomHorizontalFlip",
        "Normalize",
    ]
    assert build_transform(small, True).transforms[2].padding == 4
    assert names(build_transform(small, True, hflip=0)) == [
        "Resize",
        "CenterCrop",
        "RandomCrop",
        "Normalize",
    ]
    assert names(build_transform(large, True)) == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "Normalize",
    ]
    assert names(build_transform(large, False)) == ["Resize", "CenterCrop", "Normalize"]
    assert build_transform(large, False).transforms[0].size == 110
    out = build_transform(large, False)(
        torch.randint(0, 256, (3, 200, 150), dtype=torch.uint8), None
    )
    assert out.shape == (3, 96, 96) and out.dtype == torch.float32


def _dataset(n=40, size=12, channels=3):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, size, size, channels)).astype(np.uint8)
    return ArrayDataset(
        images, np.arange(n) % 4, list("abcd"), "toy", (0.5,) * channels, (0.25,) * channels
    )


def _epoch(loader, epoch):
    set_epoch(loader, epoch)
    return [(x.clone(), y.clone()) for x, y, _ in loader]


def test_loader_is_deterministic_and_independent_of_workers():
    ds = _dataset()
    spec = default_spec(ds)
    t = build_transform(spec, True)
    ref = make_loader(ds, t, 8, True, seed=5)
    with_workers = make_loader(ds, t, 8, True, seed=5, workers=2)
    a0, a1 = _epoch(ref, 0), _epoch(ref, 1)
    b0 = _epoch(with_workers, 0)
    assert len(a0) == 5
    for (xa, ya), (xb, yb) in zip(a0, b0):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a0[0][0], a1[0][0])  # another epoch: another order and augmentation
    assert torch.equal(_epoch(ref, 0)[0][0], a0[0][0])  # same epoch again: same batches


def test_resume_skip_gives_the_rest_of_the_epoch():
    ds = _dataset()
    loader = make_loader(ds, build_transform(default_spec(ds), True), 8, True, seed=2)
    full = _epoch(loader, 3)
    set_epoch(loader, 3, skip_batches=2)
    rest = [(x, y) for x, y, _ in loader]
    assert len(rest) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], rest):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_rank_shards_make_up_the_single_process_batches():
    n, per_rank = 50, 4
    single = [i for _, i in EpochSampler(n, True, seed=9, epoch=2)]
    shards = [
        [i for _, i in EpochSampler(n, True, seed=9, rank=r, world=2, epoch=2)] for r in range(2)
    ]
    for k in range(n // (2 * per_rank)):
        union = (
            shards[0][k * per_rank : (k + 1) * per_rank]
            + shards[1][k * per_rank : (k + 1) * per_rank]
        )
        assert sorted(union) == sorted(single[2 * k * per_rank : 2 * (k + 1) * per_rank])
    evals = [list(EpochSampler(n, False, rank=r, world=3)) for r in range(3)]
    assert sorted(i for s in evals for _, i in s) == list(range(n))  # no padding, no duplicates


def test_default_spec_follows_dataset_and_overrides():
    grey = _dataset(channels=1)
    spec = default_spec(grey)
    assert (spec.channel_order, spec.image_size, spec.resize_size, spec.mean) == (
        "L",
        12,
        None,
        (0.5,),
    )
    rgb_from_grey = default_spec(grey, image_size=96, in_chans=3)
    assert rgb_from_grey.channel_order == "RGB" and rgb_from_grey.mean == (0.5,) * 3
    assert rgb_from_grey.resize_size == round(96 / 0.875)
    with pytest.raises(ValueError, match="in_chans=2"):
        default_spec(grey, in_chans=2)
