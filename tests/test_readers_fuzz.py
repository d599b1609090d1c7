"""Property tests of every reader of files users hand us: damaged input is a clear ValueError, never another
exception, never code execution.

Each reader gets random bytes, truncations, and small edits (flipped, replaced, inserted or deleted bytes,
biased towards the headers at either end) of a valid file written here: MNIST IDX (raw and gzipped), CIFAR
python batches, shufflenet model files (safetensors), ``torch.save`` files (zip and legacy formats) and images.
A valid-looking result is fine (an edit inside pixel or weight data leaves a valid file); anything else must be
a ``ValueError`` (unreadable images: ``UnreadableImage``, which the loader counts as a skip). Files whose
unedited form would run code when unpickled are among the seeds: the canary must never be called.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tempfile
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CODE_RAN, CodeOnLoad
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from shufflenet import InputSpec, create_model, load_model, save_model
from shufflenet.data import build_dataset
from shufflenet.data.folder import UnreadableImage, read_image
from shufflenet.interop.torch_files import load_torch_state_dict
from shufflenet.model_file import read_info

FUZZ = settings(
    max_examples=60,
    deadline=timedelta(seconds=10),  # generous: the CPUs are shared; it catches hangs, not slowness
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def no_code_ran():
    CODE_RAN.clear()
    yield
    assert CODE_RAN == [], "a reader executed code from a file"


# ----------------------------------------------------------------- damaged variants of a valid file
def damaged(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, a truncation, or 1-4 small edits of ``valid``."""
    n = len(valid)
    position = st.one_of(
        st.integers(0, min(63, n - 1)),  # headers and pickle opcodes at the start
        st.integers(max(0, n - 64), n - 1),  # zip directories and pickle ends at the end
        st.integers(0, n - 1),
    )
    edit = st.tuples(
        position, st.sampled_from(["flip", "set", "insert", "delete"]), st.integers(0, 255)
    )

    def apply(edits: list[tuple[int, str, int]]) -> bytes:
        b = bytearray(valid)
        for pos, op, value in edits:
            pos = min(pos, len(b) - 1)
            if op == "flip":
                b[pos] ^= 1 << (value % 8)
            elif op == "set":
                b[pos] = value
            elif op == "insert":
                b.insert(pos, value)
            elif len(b) > 1:
                del b[pos]
        return bytes(b)

    return st.one_of(
        st.binary(max_size=256),
        st.integers(0, n - 1).map(lambda k: valid[:k]),
        st.lists(edit, min_size=1, max_size=4).map(apply),
    )


def damaged_file(files: dict[str, bytes]) -> st.SearchStrategy[tuple[str, bytes]]:
    """The name of one of ``files`` and a damaged variant of that file (:func:`damaged`)."""
    return st.sampled_from(sorted(files)).flatmap(
        lambda k: st.tuples(st.just(k), damaged(files[k]))
    )


def _written(save: Callable[[io.BytesIO], object]) -> bytes:
    """The bytes ``save`` writes to a file object."""
    buf = io.BytesIO()
    save(buf)
    return buf.getvalue()


def _only_value_errors(read, *args, **kwargs):
    """Call ``read``; a ValueError is the accepted failure, any other exception fails the test."""
    try:
        return read(*args, **kwargs)
    except ValueError:
        return None


# ----------------------------------------------------------------- MNIST IDX
def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


RNG = np.random.default_rng(0)
MNIST = {
    "train-images-idx3-ubyte": _idx(RNG.integers(0, 256, (3, 28, 28))),
    "train-labels-idx1-ubyte": _idx(np.array([0, 9, 4])),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _write_mnist(root: Path, name: str, data: bytes, gz: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for p in root.iterdir():
        p.unlink()
    for other, valid in MNIST.items():
        content = data if other == name else valid
        if gz:
            (root / f"{other}.gz").write_bytes(content if other == name else gzip.compress(valid))
        else:
            (root / other).write_bytes(content)
    for split in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (root / split).write_bytes(MNIST[split.replace("t10k", "train")])


@FUZZ
@given(
    name=st.sampled_from(sorted(MNIST)),
    gz=st.booleans(),
    data=st.data(),
)
def test_mnist_reader(workdir, name, gz, data):
    valid = gzip.compress(MNIST[name], mtime=0) if gz else MNIST[name]
    if gz and data.draw(st.booleans()):  # damage the content inside a valid gzip stream
        content = gzip.compress(data.draw(damaged(MNIST[name])), mtime=0)
    else:
        content = data.draw(damaged(valid))
    _write_mnist(workdir / "mnist", name, content, gz)
    ds = _only_value_errors(build_dataset, workdir / "mnist", True)
    if ds is not None:
        assert all(0 <= int(y) < 10 for y in ds.targets)
        assert ds[len(ds) - 1][0].dtype == torch.uint8 if len(ds) else True


# ----------------------------------------------------------------- CIFAR batches
def _cifar_files(protocol: int) -> dict[str, bytes]:
    flat = RNG.integers(0, 256, (1, 3072)).astype(np.uint8)
    batch = pickle.dumps(
        {b"labels": [3], b"data": flat, b"filenames": [b"a.png"]}, protocol=protocol
    )
    meta = pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}, protocol=protocol)
    files = {f"data_batch_{i}": batch for i in range(1, 6)}
    return {**files, "test_batch": batch, "batches.meta": meta}


CIFAR = {p: _cifar_files(p) for p in (2, 4)}
EVIL = pickle.dumps({b"labels": [3], b"data": CodeOnLoad()}, protocol=2)


@FUZZ
@given(
    protocol=st.sampled_from([2, 4]),
    name=st.sampled_from(["data_batch_1", "batches.meta", "evil"]),
    data=st.data(),
)
def test_cifar_reader(workdir, protocol, name, data):
    files = dict(CIFAR[protocol])
    target = "data_batch_1" if name == "evil" else name
    files[target] = data.draw(damaged(EVIL if name == "evil" else files[target]))
    root = workdir / "cifar" / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)
    for fname, content in files.items():
        (root / fname).write_bytes(content)
    ds = _only_value_errors(build_dataset, root, True)
    if ds is not None:
        assert len(ds) == 5 and all(0 <= int(y) < len(ds.classes) for y in ds.targets)


def test_the_unedited_evil_pickle_is_refused(workdir):
    root = workdir / "cifar-evil" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    for fname, content in {**CIFAR[2], "data_batch_1": EVIL}.items():
        (root / fname).write_bytes(content)
    with pytest.raises(ValueError, match="refusing to load global"):
        build_dataset(root, True)


# ----------------------------------------------------------------- shufflenet model files (safetensors)
def _model_file() -> bytes:
    torch.manual_seed(0)
    model = create_model("shufflenet_v1_g3_x0_25", num_classes=3, stage_repeats=[1, 1, 1]).eval()
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as d:
        path = save_model(Path(d) / "m.safetensors", model, InputSpec(16, None), ["a", "b", "c"])
        buf.write(path.read_bytes())
    return buf.getvalue()


MODEL_FILE = _model_file()


@FUZZ
@given(content=damaged(MODEL_FILE))
def test_model_file_reader(workdir, content):
    path = workdir / "m.safetensors"
    path.write_bytes(content)
    info = _only_value_errors(read_info, path)
    loaded = _only_value_errors(load_model, path)
    if loaded is not None:
        model, info = loaded
        assert info is not None and isinstance(model, torch.nn.Module)


# ----------------------------------------------------------------- torch.save files
def _torch_files() -> dict[str, bytes]:
    torch.manual_seed(0)
    model = create_model("shufflenet_v1_g3_x0_25", num_classes=3, stage_repeats=[1, 1, 1])
    state = model.state_dict()  # 15k parameters: a small file
    return {
        name: _written(partial(torch.save, obj, _use_new_zipfile_serialization=zipped))
        for name, obj, zipped in (
            ("zip", {"state_dict": state}, True),
            ("legacy", {"model": state}, False),
            ("evil", {"w": torch.zeros(2), "x": CodeOnLoad()}, True),
        )
    }


TORCH_FILES = _torch_files()


@FUZZ
@given(case=damaged_file(TORCH_FILES))
def test_torch_file_reader(workdir, case):
    kind, content = case
    path = workdir / "w.pth"
    path.write_bytes(content)
    state = _only_value_errors(load_torch_state_dict, path)
    if state is not None:
        assert all(isinstance(v, torch.Tensor) for v in state.values())
    model = _only_value_errors(
        create_model, "shufflenet_v1_g3_x0_25", path, num_classes=3, stage_repeats=[1, 1, 1]
    )
    if model is not None and kind != "evil":
        assert sum(p.numel() for p in model.parameters()) > 0


def test_the_unedited_torch_files_load(workdir):
    for kind in ("zip", "legacy"):
        path = workdir / f"{kind}.pth"
        path.write_bytes(TORCH_FILES[kind])
        model = create_model(
            "shufflenet_v1_g3_x0_25", weights=path, num_classes=3, stage_repeats=[1, 1, 1]
        )
        ref = create_model("shufflenet_v1_g3_x0_25", num_classes=3, stage_repeats=[1, 1, 1])
        assert model.state_dict().keys() == ref.state_dict().keys()


def test_the_unedited_evil_torch_file_is_refused(workdir):
    path = workdir / "evil.pth"
    path.write_bytes(TORCH_FILES["evil"])
    with pytest.raises(ValueError, match="cannot be loaded as plain tensors"):
        load_torch_state_dict(path)


# ----------------------------------------------------------------- images
def _images() -> dict[str, bytes]:
    arr = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    return {
        suffix: _written(partial(im.save, format=Image.registered_extensions()[suffix]))
        for suffix, im in (
            (".png", Image.fromarray(arr)),
            (".jpg", Image.fromarray(arr)),
            (".gif", Image.fromarray(arr).convert("P")),
            (".bmp", Image.fromarray(arr)),
            (".tif", Image.fromarray(arr[..., 0].astype(np.uint16) * 200)),  # 16-bit grey
            (".webp", Image.fromarray(arr)),
        )
    }


IMAGES = _images()


@FUZZ
@given(case=damaged_file(IMAGES))
def test_image_reader(workdir, case):
    suffix, content = case
    path = workdir / f"img{suffix}"
    path.write_bytes(content)
    try:
        img = read_image(path)
    except UnreadableImage:  # the loader counts it as a skip
        return
    assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3


def test_every_bit_flip_in_a_tiff_header(workdir, monkeypatch):
    """Exhaustive over the first 96 bytes of a TIFF (tags Pillow trusts): each single-bit flip decodes or is
    an UnreadableImage. A flipped height makes a 362-byte file claim up to 16.8 M rows; a low pixel limit
    refuses those quickly."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    valid = IMAGES[".tif"]
    path = workdir / "flip.tif"
    unreadable = 0
    for pos in range(min(96, len(valid))):
        for bit in range(8):
            b = bytearray(valid)
            b[pos] ^= 1 << bit
            path.write_bytes(bytes(b))
            try:
                img = read_image(path)
            except UnreadableImage:
                unreadable += 1
                continue
            assert img.dtype == torch.uint8 and img.shape[0] == 3
    assert unreadable > 0  # the header matters: some flips must be refused
