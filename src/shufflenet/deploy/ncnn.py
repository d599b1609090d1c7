"""ncnn export through pnnx (the ``[mobile]`` extra), checked with ncnn's Python binding.

:func:`export_ncnn` folds batch norm into the convolutions of a float32 copy of the model, traces it with
TorchScript and converts it with the ``pnnx`` tool into ``model.ncnn.param`` / ``model.ncnn.bin`` (float32
weights) plus ``model.ncnn.json``, the input convention (blob names, layout, image preparation). The program
takes one image (C, H, W) of any height and width; ncnn runs one image per extractor.

Two conversion traps are handled on the copy that is converted:

- The channel shuffle. Written as view -> transpose -> reshape it becomes 5-D Reshape and Permute layers, which
  ncnn (at most 4-D blobs) computes wrongly; exported the way Megvii's ShuffleNet v2 writes it (reshape,
  permute, index) it becomes a Gather that older converters could not take (ncnn issue #1425). Here every
  :class:`~shufflenet.ops.ChannelShuffle` / :class:`~shufflenet.ops.ChannelUnshuffle` is swapped for
  ``nn.ChannelShuffle`` (the unshuffle of ``C`` channels in ``g`` groups is the shuffle in ``C / g`` groups),
  which pnnx maps to ncnn's own ``ShuffleChannel`` layer, and the written ``.param`` is checked to hold one
  ``ShuffleChannel`` per shuffle and no Gather, Permute or 5-D Reshape.
- Widths not divisible by 4. ncnn packs channels by 4 or 8 (``use_packing_layout``); ShuffleNet's narrow
  variants have groups of 5 or 15 channels, where a packed shuffle would mix lanes. The check below runs ncnn
  with its default packing, so such a width is tested, not assumed; the test suite covers 0.25x widths.

Parity: :func:`check_ncnn` runs random inputs of two image sizes and reports ``max |ncnn - PyTorch| /
max |PyTorch|`` over the logits. ncnn is run with float32 storage and arithmetic (its fp16/bf16 options are
off by default here, see :class:`NcnnRunner`), so the error is float32 rounding (about 1e-6), well under the
1e-3 the command requires.

Example::

    from shufflenet.deploy.ncnn import export_ncnn, check_ncnn, NcnnRunner
    files = export_ncnn(model, "out_dir", input_size=224)
    err = check_ncnn(model, files.param, files.bin)     # relative error on the logits
    logits = NcnnRunner(files.param, files.bin, threads=2)(images)     # (N, C, H, W) -> (N, classes)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.spec import InputSpec, random_prepared
from ..models import in_channels
from ..ops.channel_shuffle import ChannelShuffle, ChannelUnshuffle
from ..utils.atomic import atomic_path, atomic_write
from .errors import NotSupportedError
from .fold import fold_batchnorm

__all__ = [
    "ENGINE",
    "NcnnCheck",
    "NcnnExport",
    "NcnnRunner",
    "check_ncnn",
    "export_ncnn",
    "ncnn_ready_copy",
    "require_ncnn",
]

ENGINE = "ncnn"
MOBILE_EXTRA = "pip install 'shufflenet[mobile]'"
INPUT_BLOB = "in0"
OUTPUT_BLOB = "out0"
# layer types that mean the converter did not recognise a pattern (or produced one ncnn computes wrongly)
_BAD_LAYERS = ("Gather", "Permute", "pnnx.", "aten::", "torch.", "F.", "Tensor.", "prim::")


def require_ncnn():
    """Import the ``ncnn`` binding or raise :class:`ImportError` naming the extra."""
    try:
        import ncnn
    except ImportError as e:
        raise ImportError(f"ncnn export needs the ncnn Python binding ({e}): {MOBILE_EXTRA}") from e
    return ncnn


def _pnnx_executable() -> str:
    try:
        import pnnx
    except ImportError as e:
        raise ImportError(f"ncnn export needs the pnnx converter ({e}): {MOBILE_EXTRA}") from e
    exe = getattr(pnnx, "EXEC_PATH", None)
    if not exe or not os.path.exists(exe):
        exe = shutil.which("pnnx")
    if not exe:
        raise ImportError(f"the pnnx package has no pnnx executable: {MOBILE_EXTRA}")
    return exe


def ncnn_ready_copy(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, int]:
    """A float32 eval copy of ``model`` with batch norm folded and every channel shuffle replaced by
    ``nn.ChannelShuffle`` (pnnx -> ncnn ``ShuffleChannel``); returns ``(copy, number of shuffles)``.

    ``example`` (one input batch) is run once to learn each unshuffle's channel count."""
    src = copy.deepcopy(model).eval().float().cpu().to(memory_format=torch.contiguous_format)
    fold_batchnorm(src)
    channels: dict[int, int] = {}

    def record(mod: nn.Module, args: tuple) -> None:
        channels[id(mod)] = args[0].shape[1]

    hooks = [
        m.register_forward_pre_hook(record)
        for m in src.modules()
        if isinstance(m, ChannelUnshuffle)
    ]
    try:
        with torch.no_grad():
            src(example)
    finally:
        for h in hooks:
            h.remove()
    count = 0
    for parent in list(src.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ChannelShuffle):
                setattr(parent, name, nn.ChannelShuffle(child.groups))
            elif isinstance(child, ChannelUnshuffle):
                # unshuffle in g groups of C channels == shuffle in C / g groups
                setattr(parent, name, nn.ChannelShuffle(channels[id(child)] // child.groups))
            else:
                continue
            count += 1
    return src, count


@dataclasses.dataclass
class NcnnExport:
    """What :func:`export_ncnn` wrote: the ``.param``, ``.bin`` and ``.json`` paths and the layer counts."""

    param: Path
    bin: Path
    sidecar: Path
    layers: dict[str, int]
    shuffles: int


def _param_layers(text: str) -> list[tuple[str, str]]:
    """(type, name) of every layer of an ncnn ``.param`` text."""
    lines = text.strip().splitlines()
    out = []
    for line in lines[2:]:  # magic number, then "layer_count blob_count"
        parts = line.split()
        if len(parts) >= 2:
            out.append((parts[0], parts[1]))
    return out


def _check_param(text: str, shuffles: int, model_name: str) -> dict[str, int]:
    layers = _param_layers(text)
    counts = Counter(t for t, _ in layers)
    bad = [(t, n) for t, n in layers if t.startswith(_BAD_LAYERS)]
    # a 5-D reshape is written with a depth parameter (11=d); ncnn blobs are at most 4-D
    bad += [
        (t, n)
        for (t, n), line in zip(layers, text.strip().splitlines()[2:])
        if t == "Reshape" and re.search(r"\b11=", line)
    ]
    if bad:
        names = ", ".join(f"{n} ({t})" for t, n in bad[:8])
        raise NotSupportedError(
            f"{ENGINE} cannot take these layers of {model_name} as converted by pnnx: {names}"
            + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        )
    if counts.get("ShuffleChannel", 0) != shuffles:
        raise NotSupportedError(
            f"{ENGINE}: {model_name} has {shuffles} channel shuffles but pnnx wrote "
            f"{counts.get('ShuffleChannel', 0)} ShuffleChannel layers"
        )
    return dict(counts)


def export_ncnn(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    input_size: int | tuple[int, int] = 224,
    *,
    name: str = "model",
    in_chans: int | None = None,
    input_spec: InputSpec | None = None,
    metadata: dict[str, Any] | None = None,
    timeout: float = 600.0,
) -> NcnnExport:
    """Convert ``model`` (not modified) to ncnn with pnnx; write ``{name}.ncnn.param``, ``{name}.ncnn.bin`` and
    ``{name}.ncnn.json`` into ``out_dir``.

    Args:
        input_size: height = width (or ``(h, w)``) of the example input; pnnx is also shown a second size so
            that the written graph keeps height and width free.
        in_chans: input channels (default: ``input_spec``'s, else those of the first convolution).
        input_spec: the input convention, stored in the JSON sidecar.
        metadata: more entries for the sidecar.
        timeout: seconds allowed to pnnx.

    Raises:
        ImportError: ncnn or pnnx missing (names the extra).
        NotSupportedError: a layer pnnx or ncnn cannot take (named), or pnnx failed.
    """
    require_ncnn()
    exe = _pnnx_executable()

    h, w = (input_size, input_size) if isinstance(input_size, int) else map(int, input_size)
    if h < 8 or w < 8:
        raise ValueError(f"input_size={input_size!r} must be at least 8 pixels")
    c = in_chans or (input_spec.in_chans if input_spec is not None else in_channels(model))
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"name={name!r} must be letters, digits, '_', '.' or '-'")
    x = torch.randn(1, c, h, w)
    src, shuffles = ncnn_ready_copy(model, x)
    model_name = type(model).__name__
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shufflenet-pnnx-") as tmp:
        pt = Path(tmp) / f"{name}.pt"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            try:
                torch.jit.trace(src, x, check_trace=False).save(str(pt))
            except Exception as e:  # noqa: BLE001
                raise NotSupportedError(
                    f"{ENGINE}: TorchScript cannot trace {model_name} for pnnx: {type(e).__name__}: {e}"
                ) from e
        h2, w2 = h + 32, w + 16  # a second size: pnnx keeps the dimensions that differ symbolic
        cmd = [
            exe,
            str(pt),
            f"inputshape=[1,{c},{h},{w}]f32",
            f"inputshape2=[1,{c},{h2},{w2}]f32",
            "fp16=0",
            "device=cpu",
        ]
        try:
            run = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise NotSupportedError(f"{ENGINE}: pnnx took more than {timeout:.0f} s") from e
        param, binf = Path(tmp) / f"{name}.ncnn.param", Path(tmp) / f"{name}.ncnn.bin"
        if run.returncode != 0 or not param.exists() or not binf.exists():
            tail = (run.stderr or run.stdout or "").strip().splitlines()[-5:]
            raise NotSupportedError(
                f"{ENGINE}: pnnx failed on {model_name} (exit {run.returncode}): "
                + " | ".join(tail)
            )
        text = param.read_text()
        counts = _check_param(text, shuffles, model_name)
        dst_param, dst_bin = out / param.name, out / binf.name
        with atomic_path(dst_param) as t:
            shutil.copyfile(param, t)
        with atomic_path(dst_bin) as t:
            shutil.copyfile(binf, t)
    side = out / f"{name}.ncnn.json"
    info = {
        "format": "ncnn",
        "files": {"param": dst_param.name, "bin": dst_bin.name},
        "input": {
            "blob": INPUT_BLOB,
            "shape": [c, "height", "width"],
            "dtype": "float32",
            "layout": "CHW, one image per extractor",
            "example_size": [h, w],
        },
        "output": {"blob": OUTPUT_BLOB, "meaning": "logits (no softmax)"},
        "input_spec": input_spec.to_dict() if input_spec is not None else None,
        "runtime_options": {"use_fp16_storage": False, "use_fp16_arithmetic": False},
        "shuffle_channel_layers": shuffles,
        **(metadata or {}),
    }
    with atomic_write(side) as f:
        json.dump(info, f, indent=2)
    return NcnnExport(dst_param, dst_bin, side, counts, shuffles)


class NcnnRunner:
    """Run an ncnn model on float32 images with ncnn's Python binding.

    Args:
        param, bin: the files :func:`export_ncnn` wrote.
        threads: ``opt.num_threads`` (default ``torch.get_num_threads()``).
        fp16: allow ncnn's fp16/bf16 storage and arithmetic (faster where the CPU has them, error ~1e-3);
            ``False`` (default) keeps float32 throughout.
        packing: ``opt.use_packing_layout`` (ncnn's default, channels packed by 4 or 8).

    ``runner(x)`` takes a torch tensor or numpy array (N, C, H, W) and returns (N, classes) of the same kind;
    ncnn runs the images one after the other.
    """

    def __init__(
        self,
        param: str | os.PathLike[str],
        bin: str | os.PathLike[str],
        threads: int | None = None,
        *,
        fp16: bool = False,
        packing: bool = True,
    ) -> None:
        ncnn = require_ncnn()
        self.threads = max(1, int(threads or torch.get_num_threads()))
        net = ncnn.Net()
        opt = net.opt
        opt.num_threads = self.threads
        opt.use_packing_layout = packing
        for flag in (
            "use_fp16_storage",
            "use_fp16_packed",
            "use_fp16_arithmetic",
            "use_bf16_storage",
        ):
            if hasattr(opt, flag):
                setattr(opt, flag, bool(fp16))
        opt.use_vulkan_compute = False
        if net.load_param(str(param)) != 0:
            raise ValueError(f"ncnn cannot read the param file {param}")
        if net.load_model(str(bin)) != 0:
            raise ValueError(f"ncnn cannot read the weights file {bin}")
        self._ncnn = ncnn
        self.net = net

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 4:
            raise ValueError(f"ncnn input must be (N, C, H, W), got shape {x.shape}")
        outs = []
        for img in x:
            img = np.ascontiguousarray(img, dtype=np.float32)
            mat = self._ncnn.Mat(img)  # keeps a view of img: img must outlive the extraction
            ex = self.net.create_extractor()
            ex.input(INPUT_BLOB, mat)
            rc, out = ex.extract(OUTPUT_BLOB)
            if rc != 0:
                raise RuntimeError(
                    f"ncnn extraction failed with code {rc} on an input of {img.shape}"
                )
            outs.append(np.array(out, dtype=np.float32).reshape(-1))
        return np.stack(outs)

    def __call__(self, x):
        if isinstance(x, torch.Tensor):
            return torch.from_numpy(self.run_numpy(x.detach().cpu().float().numpy()))
        return self.run_numpy(np.asarray(x))


@dataclasses.dataclass
class NcnnCheck:
    """ncnn against PyTorch (eager, float32) on random inputs."""

    shapes: list[tuple[int, ...]]
    max_abs_diff: float
    max_abs_output: float

    @property
    def rel_error(self) -> float:
        """``max |ncnn - PyTorch| / max |PyTorch|`` over all outputs (NaN if any is NaN)."""
        return self.max_abs_diff / max(self.max_abs_output, 1e-30)

    def ok(self, rtol: float = 1e-3) -> bool:
        return self.rel_error <= rtol


@torch.no_grad()
def check_ncnn(
    model: nn.Module,
    param: str | os.PathLike[str],
    bin: str | os.PathLike[str],
    input_size: int = 224,
    *,
    in_chans: int | None = None,
    input_spec: InputSpec | None = None,
    seed: int = 0,
    threads: int = 1,
    fp16: bool = False,
) -> NcnnCheck:
    """ncnn against ``model`` on random inputs of sizes ``S x S`` and ``(S + 32) x (S - S // 4)``: standard
    normal, or with ``input_spec`` random images prepared by that convention."""

    c = in_chans or (input_spec.in_chans if input_spec is not None else in_channels(model))
    s = input_size
    shapes = [(1, c, s, s), (2, c, s + 32, max(8, s - s // 4))]
    runner = NcnnRunner(param, bin, threads=threads, fp16=fp16)
    m = copy.deepcopy(model).eval().float().cpu()
    gen = torch.Generator().manual_seed(seed)
    worst, biggest = 0.0, 0.0
    for shape in shapes:
        if input_spec is None:
            x = torch.randn(*shape, generator=gen)
        else:
            x = random_prepared(shape, input_spec, gen)
        ref = m(x)
        got = runner(x)
        if got.shape != ref.shape:
            raise ValueError(f"ncnn output shape {tuple(got.shape)} != PyTorch {tuple(ref.shape)}")
        diff = float((got - ref).abs().max())
        worst = diff if diff != diff else max(worst, diff)
        biggest = max(biggest, float(ref.abs().max()))
    return NcnnCheck(shapes, worst, biggest)
