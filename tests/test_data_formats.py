"""Readers of the on-disk formats (tiny files written here), format detection, bad data, built-in digits."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shufflenet.data import build_dataset, builtin_digits, detect_format, split_indices
from shufflenet.data.cifar import SafeUnpickler, load_cifar, safe_load_pickle
from shufflenet.data.folder import UnreadableImage, load_folder, read_image
from shufflenet.data.loader import collate, make_loader
from shufflenet.data.mnist import load_mnist, read_idx
from shufflenet.data.spec import InputSpec
from shufflenet.data.transforms import build_transform

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------- writers of each format
def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def write_mnist(root: Path, n_train=12, n_test=5, gz=True) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": RNG.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3) % 10,
    }
    for name, a in arrays.items():
        write_idx(root / (name + (".gz" if gz else "")), a, gz)
    return arrays


def write_cifar(root: Path, variant="cifar10", n=6, protocol=4) -> tuple[np.ndarray, list[int]]:
    """Images (N, 32, 32, 3) and labels of the training split, written in the official python layout."""
    images = RNG.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    flat = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # R plane, G plane, B plane
    if variant == "cifar10":
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True)
        labels = [i % 10 for i in range(n)]
        per = -(-n // 5)
        for b in range(5):
            s = slice(b * per, (b + 1) * per)
            batch = {b"batch_label": b"x", b"labels": labels[s], b"data": flat[s], b"filenames": []}
            (d / f"data_batch_{b + 1}").write_bytes(pickle.dumps(batch, protocol=protocol))
        (d / "test_batch").write_bytes(
            pickle.dumps({b"labels": [1, 2], b"data": flat[:2]}, protocol=protocol)
        )
        names = [f"class{i}".encode() for i in range(10)]
        (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=protocol))
    else:
        d = root / "cifar-100-python"
        d.mkdir(parents=True)
        labels = [(7 * i) % 100 for i in range(n)]
        batch = {b"fine_labels": labels, b"coarse_labels": [0] * n, b"data": flat}
        (d / "train").write_bytes(pickle.dumps(batch, protocol=protocol))
        (d / "test").write_bytes(
            pickle.dumps({b"fine_labels": [3], b"data": flat[:1]}, protocol=protocol)
        )
        meta = {
            b"fine_label_names": [f"c{i}".encode() for i in range(100)],
            b"coarse_label_names": [],
        }
        (d / "meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return images, labels


def write_folder(root: Path, classes=("cat", "dog"), per_class=5, size=(20, 14)) -> None:
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = RNG.integers(0, 256, (*size[::-1], 3)).astype(np.uint8)
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(arr).save(root / c / f"{i}.{ext}")


# ----------------------------------------------------------------- MNIST
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_pixels_and_labels(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    assert detect_format(tmp_path) == "mnist"
    train, test = load_mnist(tmp_path, True), load_mnist(tmp_path, False)
    assert len(train) == 12 and len(test) == 5
    img, label = train[3]
    assert img.shape == (1, 28, 28) and img.dtype == torch.uint8
    assert np.array_equal(img[0].numpy(), arrays["train-images-idx3-ubyte"][3])
    assert label == 3 and test[2][1] == 6
    assert train.classes == [str(i) for i in range(10)] and train.hflip is False


def test_idx_truncated_or_foreign_is_a_clear_error(tmp_path):
    write_mnist(tmp_path, gz=False)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(f)
    f.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(f)
    g = tmp_path / "bad.gz"
    g.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read IDX"):
        read_idx(g)


@pytest.mark.parametrize("label", [10, 255])
def test_mnist_labels_outside_0_to_9_are_refused(tmp_path, label):
    write_mnist(tmp_path, gz=False)
    labels = np.arange(12) % 10
    labels[7] = label
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels, gz=False)
    with pytest.raises(ValueError, match=rf"train-labels-idx1-ubyte.*label {label} at index 7"):
        load_mnist(tmp_path, True)
    assert len(load_mnist(tmp_path, False).classes) == 10  # the test split is fine


# ----------------------------------------------------------------- image modes
def _decoded(tmp_path: Path, im: Image.Image, suffix: str) -> np.ndarray:
    path = tmp_path / f"img{suffix}"
    im.save(path)
    return read_image(path).permute(1, 2, 0).numpy()  # (H, W, 3)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535, 1000, 50000]], np.uint16)
    im = Image.fromarray(values)
    assert im.mode == "I;16"
    for suffix in (".png", ".tif"):
        out = _decoded(tmp_path, im, suffix)
        expected = np.floor(
            values.astype(np.float64) / 65535 * 255 + 0.5
        )  # [0, 1, 128, 255, 4, 195]
        assert out.dtype == np.uint8 and np.array_equal(out, np.repeat(expected[..., None], 3, 2))
    grey = Image.fromarray(np.full((4, 4), 30000, np.uint16))  # mid-grey, not "almost white"
    assert abs(float(_decoded(tmp_path, grey, ".png").mean()) - 30000 / 257) <= 0.5


def test_32_bit_modes(tmp_path):
    f = Image.fromarray(np.array([[0.4, 1.6, 127.5, 300.0, -5.0]], np.float32))  # 0..255 scale
    assert f.mode == "F"
    assert _decoded(tmp_path, f, ".tif")[0, :, 0].tolist() == [0, 2, 128, 255, 0]
    i = Image.fromarray(np.array([[0, 257, 65535, 70000]], np.int32))  # 16-bit range, clipped
    assert i.mode == "I"
    assert _decoded(tmp_path, i, ".tif")[0, :, 1].tolist() == [0, 1, 255, 255]
    nan = Image.fromarray(np.array([[1.0, np.nan]], np.float32))
    nan.save(tmp_path / "nan.tif")
    with pytest.raises(UnreadableImage, match="non-finite"):
        read_image(tmp_path / "nan.tif")


def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40 x 30 = 1200 pixels
    with pytest.raises(UnreadableImage, match="40x30 pixels exceed Pillow's limit of 1,000"):
        read_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # limit disabled
    assert read_image(path).shape == (3, 30, 40)


def test_colour_modes_decode_to_their_rgb_values(tmp_path):
    c, m, y, k = 100, 50, 0, 30
    cmyk = _decoded(tmp_path, Image.new("CMYK", (3, 2), (c, m, y, k)), ".tif")
    expected = [round(255 * (1 - v / 255) * (1 - k / 255)) for v in (c, m, y)]  # [137, 181, 225]
    assert np.abs(cmyk.astype(int) - expected).max() <= 1

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 10, 30, 5, 250, 90] + [0] * 759)
    palette.putpixel((0, 0), 1)
    palette.putpixel((1, 0), 2)
    for suffix in (".png", ".gif", ".bmp"):
        assert _decoded(tmp_path, palette, suffix).tolist() == [[[200, 10, 30], [5, 250, 90]]]

    la = Image.fromarray(np.array([[[17, 0], [240, 255]]], np.uint8), mode="LA")
    assert _decoded(tmp_path, la, ".png").tolist() == [[[17] * 3, [240] * 3]]  # alpha dropped
    rgba = Image.new("RGBA", (1, 2), (12, 34, 56, 7))
    assert _decoded(tmp_path, rgba, ".png").tolist() == [[[12, 34, 56]], [[12, 34, 56]]]
    grey = _decoded(tmp_path, Image.new("L", (1, 1), 99), ".jpg")
    assert np.abs(grey.astype(int) - 99).max() <= 1


# ----------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar10_batches(tmp_path, protocol):
    images, labels = write_cifar(tmp_path, "cifar10", n=10, protocol=protocol)
    for path in (tmp_path, tmp_path / "cifar-10-batches-py"):
        assert detect_format(path) == "cifar10"
    ds = load_cifar(tmp_path, train=True)
    assert len(ds) == 10 and ds.classes[3] == "class3"
    img, label = ds[7]
    assert img.shape == (3, 32, 32)
    assert torch.equal(img.permute(1, 2, 0), torch.from_numpy(images[7]))  # planes decoded as RGB
    assert label == labels[7]
    assert len(load_cifar(tmp_path, train=False)) == 2


def test_cifar100_fine_labels(tmp_path):
    images, labels = write_cifar(tmp_path, "cifar100", n=4)
    assert detect_format(tmp_path) == "cifar100"
    ds = build_dataset(tmp_path, train=True)
    assert len(ds.classes) == 100 and ds.name == "cifar100"
    assert [ds[i][1] for i in range(4)] == labels
    assert torch.equal(ds[2][0].permute(1, 2, 0), torch.from_numpy(images[2]))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_cifar_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(
        pickle.dumps({b"data": _Evil()})
    )
    with pytest.raises(ValueError, match="refusing to load global"):
        load_cifar(tmp_path)
    assert not (tmp_path / "PWNED").exists()
    with (
        open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f,
        pytest.raises(pickle.UnpicklingError),
    ):
        SafeUnpickler(f).load()


def test_cifar_truncated_batch_is_a_clear_error(tmp_path):
    write_cifar(tmp_path, "cifar10")
    f = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ValueError, match="data_batch_2"):
        load_cifar(tmp_path)
    assert isinstance(safe_load_pickle(tmp_path / "cifar-10-batches-py" / "batches.meta"), dict)


# ----------------------------------------------------------------- image folders
def test_folder_single_pool_is_split_per_class(tmp_path):
    write_folder(tmp_path, per_class=5)
    assert detect_format(tmp_path) == "folder"
    train, val = load_folder(tmp_path, True, 0.2), load_folder(tmp_path, False, 0.2)
    assert train.classes == ["cat", "dog"] and len(train) == 8 and len(val) == 2
    assert sorted(int(y) for y in val.targets) == [0, 1]
    img, label = train[0]
    assert img.shape == (3, 14, 20) and img.dtype == torch.uint8


def test_folder_train_val_layout(tmp_path):
    write_folder(tmp_path / "train", per_class=3)
    write_folder(tmp_path / "val", per_class=2)
    assert len(build_dataset(tmp_path, True)) == 6
    assert len(build_dataset(tmp_path, False)) == 4
    (tmp_path / "val" / "horse").mkdir()
    with pytest.raises(ValueError, match="horse"):
        build_dataset(tmp_path, False)


def test_unreadable_images_are_skipped_counted_and_reported(tmp_path):
    write_folder(tmp_path / "train", per_class=4)
    write_folder(tmp_path / "val", per_class=1)
    bad = [tmp_path / "train" / "cat" / "broken.jpg", tmp_path / "train" / "dog" / "empty.png"]
    bad[0].write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    bad[1].write_bytes(b"")
    truncated = tmp_path / "train" / "dog" / "cut.jpg"
    good = (tmp_path / "train" / "dog" / "1.png").read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(UnreadableImage, match="broken.jpg"):
        read_image(bad[0])
    ds = build_dataset(tmp_path, True)
    assert len(ds) == 11
    spec = InputSpec(16, None, "RGB", 1.0, (0.5,) * 3, (0.25,) * 3)
    for train in (True, False):
        loader = make_loader(ds, build_transform(spec, train), 4, train=False, workers=0)
        seen, skipped = 0, []
        for images, labels, paths in loader:  # never raises
            assert images.shape[1:] == (3, 16, 16) and len(images) == len(labels)
            seen += len(labels)
            skipped += paths
        assert sorted(skipped) == sorted(str(p) for p in [*bad, truncated])
        assert seen == 8  # 11 images, 3 unreadable


def test_collate_of_only_unreadable_samples():
    images, labels, skipped = collate([])
    assert images.numel() == 0 and labels.numel() == 0 and skipped == []


def _constant_folder(root: Path, per_class: int) -> dict[int, int]:
    """Two class folders of constant-grey PNGs (grey level -> class) and a 0-byte zero.jpg in each."""
    levels = {}
    for c, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            level = 10 + 40 * c + 10 * i
            Image.fromarray(np.full((8, 8, 3), level, np.uint8)).save(root / name / f"{i}.png")
            levels[level] = c
        (root / name / "zero.jpg").write_bytes(b"")
    return levels


def test_training_batches_of_only_unreadable_images_are_refilled(tmp_path):
    levels = _constant_folder(tmp_path, per_class=3)
    ds = build_dataset(tmp_path, True, val_fraction=0.25)  # 6 of 8 images, one zero.jpg per class
    bad = sorted(str(p) for p, _ in ds.dataset.samples if p.name == "zero.jpg")
    assert len(bad) == 2
    n_bad = sum(ds.dataset.samples[i][0].name == "zero.jpg" for i in ds.indices)
    spec = InputSpec(8, None, "RGB", 255.0, (0.0,) * 3, (1.0,) * 3)  # model input = pixel value
    loader = make_loader(ds, build_transform(spec, False), 1, train=True, seed=3)

    def epoch():
        out = []
        for images, labels, skipped in loader:
            assert images.shape == (1, 3, 8, 8) and labels.shape == (1,)  # never an empty batch
            out.append((float(images[0, 0, 0, 0]), int(labels[0]), list(skipped)))
        return out

    first = epoch()
    assert len(first) == len(ds)
    assert sum(len(s) for *_, s in first) == n_bad > 0
    assert sorted(p for *_, s in first for p in s) == sorted(
        str(ds.dataset.samples[i][0])
        for i in ds.indices
        if ds.dataset.samples[i][0].name == "zero.jpg"
    )
    for (
        level,
        label,
        _,
    ) in first:  # every image (also the stand-ins) is a readable file with its label
        assert levels[round(level)] == label
    assert epoch() == first  # the stand-ins are a function of (seed, epoch, index)


def test_evaluation_drops_unreadable_images(tmp_path):
    _constant_folder(tmp_path, per_class=2)
    pool = load_folder(tmp_path, train=True, val_fraction=0.25).dataset
    spec = InputSpec(8, None, "RGB", 1.0, (0.5,) * 3, (0.25,) * 3)
    loader = make_loader(pool, build_transform(spec, False), 1, train=False)
    batches = [(len(labels), list(skipped)) for _, labels, skipped in loader]
    assert [n for n, _ in batches] == [1, 1, 0, 1, 1, 0]  # a/0 a/1 a/zero b/0 b/1 b/zero
    assert [p for _, s in batches for p in s] == [str(tmp_path / c / "zero.jpg") for c in "ab"]


def test_a_dataset_without_readable_images_is_a_clear_error(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "zero.png").write_bytes(b"")
    pool = load_folder(tmp_path, train=True, val_fraction=0.25).dataset
    spec = InputSpec(8, None, "RGB", 1.0, (0.5,) * 3, (0.25,) * 3)
    loader = make_loader(pool, build_transform(spec, False), 1, train=True)
    with pytest.raises(ValueError, match=r"none of the 2 images .* is readable"):
        next(iter(loader))


# ----------------------------------------------------------------- detection errors
def test_missing_path_names_path_and_formats(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as e:
        build_dataset(missing, True)
    assert (
        str(missing) in str(e.value) and "MNIST IDX" in str(e.value) and "CIFAR-10" in str(e.value)
    )


def test_unrecognised_layout_names_path_and_formats(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError) as e:
        detect_format(tmp_path)
    assert str(tmp_path) in str(e.value) and "image folder" in str(e.value)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"x")
    with pytest.raises(ValueError, match="extract"):
        detect_format(archive)


# ----------------------------------------------------------------- built-in digits
def test_builtin_digits_split():
    train, val = builtin_digits(True), builtin_digits(False)
    assert len(train) + len(val) == 1797 and len(val) == 359
    assert not set(train.indices) & set(val.indices)
    assert np.array_equal(train.indices, builtin_digits(True).indices)  # deterministic
    counts = np.bincount(val.targets, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified, ~20% per class
    img, label = train[0]
    assert img.shape == (1, 32, 32) and img.dtype == torch.uint8 and img.max() > 200
    assert build_dataset("builtin", True, image_size=16)[0][0].shape == (1, 16, 16)


def test_split_indices_rejects_bad_fraction():
    with pytest.raises(ValueError, match="val_fraction=1.5"):
        split_indices([0, 1, 1], 1.5)


def test_train_at_batch_size_one_with_a_zero_byte_image_reports_the_skips(tmp_path, capsys):
    from shufflenet.cli import train

    _constant_folder(tmp_path / "data", per_class=3)
    argv = ["--data", str(tmp_path / "data"), "--model", "shufflenet_v1_g3_x0_25",
            "--model-kwargs", '{"stage_repeats": [1, 1, 1]}', "--image-size", "16",
            "--batch-size", "1", "--epochs", "1", "--val-fraction", "0.25", "--threads", "1",
            "--no-progress", "--output", str(tmp_path / "runs"), "--name", "run"]  # fmt: skip
    assert train.main(argv) == 0
    out = capsys.readouterr()
    assert "unreadable images skipped" in out.out + out.err and "zero.jpg" in out.out + out.err
    assert (tmp_path / "runs" / "run" / "model.safetensors").is_file()
