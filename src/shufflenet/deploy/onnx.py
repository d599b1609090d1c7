"""ONNX export with batch norm folded, and an ONNX Runtime runner (the ``[onnx]`` extra).

:func:`export_onnx` is the package's one ONNX exporter (``shufflenet export`` and the ``"onnxruntime"`` backend
use it): it writes the model with batch norm folded into the convolutions (ONNX Runtime fuses Conv + ReLU and
the residual Add itself; the shuffle is Reshape-Transpose-Reshape), with a dynamic batch and spatial size (or a
dynamic batch only), optionally with ``metadata_props``. :class:`OnnxRuntimeRunner` runs a file or bytes on
numpy arrays or torch tensors; :class:`OnnxRuntimeModule` is the same as an ``nn.Module``;
:func:`verify_onnx` compares against eager PyTorch.

Example::

    from shufflenet.deploy.onnx import export_onnx, OnnxRuntimeRunner, verify_onnx
    export_onnx(model, "model.onnx", input_size=224)        # dynamic batch / height / width
    err = verify_onnx(model, "model.onnx", input_size=224)   # max |diff| / max |ref|
    logits = OnnxRuntimeRunner("model.onnx", threads=2)(images)
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models import in_channels

__all__ = [
    "export_onnx",
    "OnnxRuntimeRunner",
    "OnnxRuntimeModule",
    "verify_onnx",
    "INPUT_NAME",
    "OUTPUT_NAME",
]

INPUT_NAME = "input"
OUTPUT_NAME = "output"


def _require_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - the extra is installed in CI
        raise ImportError(
            "ONNX Runtime is not installed: pip install 'shufflenet[onnx]' (onnx, onnxruntime, onnxscript)"
        ) from e
    return ort


def _size(input_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    h, w = input_size
    return int(h), int(w)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str] | None = None,
    input_size: int | tuple[int, int] = 224,
    dynamic: bool = True,
    *,
    opset: int | None = 17,
    in_chans: int | None = None,
    fold: bool = True,
    exporter: str = "auto",
    dynamic_spatial: bool = True,
    fallback: bool = True,
    metadata: Mapping[str, str] | None = None,
    output_name: str = OUTPUT_NAME,
) -> bytes:
    """Export ``model`` (a float32 copy, in eval mode, on the CPU; the model is not modified) to ONNX.

    Args:
        model: any module; with ``fold=True`` its batch norms are folded into the convolutions before them
            (:func:`.fold.fold_batchnorm`); the channel shuffles stay where they are and export as
            Reshape-Transpose-Reshape.
        path: also write the file here (atomically); ``None``: only return the bytes.
        input_size: height = width (or ``(h, w)``) of the example input used for tracing, pixels.
        dynamic: mark the batch dynamic (input and output), and height and width unless
            ``dynamic_spatial=False``; ``False``: every dimension fixed to the example's.
        opset: ONNX opset; ``None``: the exporter's default (the dynamo exporter writes 18 or newer).
        in_chans: input channels (default: those of the first convolution).
        exporter: ``"torchscript"`` (``torch.onnx.export(dynamo=False)``, fast), ``"dynamo"``, or ``"auto"``:
            TorchScript unless the model has adaptive pooling to a size other than 1 and the spatial size is
            dynamic (that exporter cannot make it dynamic).
        dynamic_spatial: with ``dynamic``, height and width symbolic too (default); ``False`` fixes them to
            ``input_size`` (models whose pooling is not global, e.g. AlexNet's 6x6 adaptive pool).
        fallback: if the export fails, try a dynamic batch only (when the spatial size was dynamic), then the
            other exporter, and return the first that works. ``False``: exactly the exporter and dynamic axes
            asked for, or :class:`RuntimeError`.
        metadata: ``metadata_props`` entries to store in the file (the model is then checked with
            ``onnx.checker``; needs the ``onnx`` package).
        output_name: name of the graph's output.

    Returns:
        The serialized ONNX model. Input ``"input"`` (N, C, H, W) float32, output ``output_name``
        (N, classes).
    """
    import copy

    from .fold import fold_batchnorm

    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ValueError(f"exporter={exporter!r} must be 'auto', 'torchscript' or 'dynamo'")
    src = copy.deepcopy(model).eval().float().cpu().to(memory_format=torch.contiguous_format)
    if fold:
        fold_batchnorm(src)
    h, w = _size(input_size)
    c = in_chans if in_chans is not None else in_channels(model)
    x = torch.randn(1, c, h, w)
    if exporter == "auto":
        fixed_pool = any(
            isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d)
            and m.output_size not in (1, (1, 1))
            for m in src.modules()
        )
        exporter = "dynamo" if fixed_pool and dynamic and dynamic_spatial else "torchscript"
    full = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, output_name: {0: "batch"}}
    batch_only = {INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}}
    axes = (full if dynamic_spatial else batch_only) if dynamic else None
    # (exporter, dynamic axes): some layers (adaptive pooling to a fixed size) export only with fixed spatial size
    attempts = [(exporter, axes)]
    if fallback:
        other = "dynamo" if exporter == "torchscript" else "torchscript"
        for kind in (exporter, other):
            for a in (axes, batch_only) if axes is full else (axes,):
                if (kind, a) not in attempts:
                    attempts.append((kind, a))
    errors = []
    data = None
    for kind, ax in attempts:
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings(), torch.no_grad(), _quiet():
                warnings.simplefilter("ignore")
                if kind == "torchscript":
                    opts = {} if opset is None else {"opset_version": opset}
                    torch.onnx.export(
                        src, (x,), buf, input_names=[INPUT_NAME], output_names=[output_name],
                        dynamic_axes=ax, dynamo=False, do_constant_folding=True, **opts,
                    )  # fmt: skip
                else:
                    shapes = None
                    if ax:
                        from torch.export import Dim

                        dims = {0: Dim("batch", min=1)}
                        if 2 in ax[INPUT_NAME]:
                            dims.update({2: Dim("height", min=8), 3: Dim("width", min=8)})
                        shapes = (dims,)
                    prog = torch.onnx.export(
                        src, (x,), input_names=[INPUT_NAME], output_names=[output_name],
                        dynamic_shapes=shapes, opset_version=opset, dynamo=True, verbose=False,
                    )  # fmt: skip
                    prog.save(buf)
            data = buf.getvalue()
            break
        except Exception as e:  # noqa: BLE001 - try the next way, report all if all fail
            errors.append(f"{kind} (dynamic axes {ax}): {type(e).__name__}: {str(e)[:500]}")
    if data is None:
        hint = (
            ""
            if fallback
            else "; try the other exporter" + (" or a fixed spatial size" if axes is full else "")
        )
        raise RuntimeError(
            f"ONNX export of {type(model).__name__} failed{hint}:\n" + "\n".join(errors)
        )
    if metadata is not None:
        data = _with_metadata(data, metadata)
    if path is not None:
        from ..utils.atomic import atomic_path

        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(data)
    return data


def _with_metadata(data: bytes, metadata: Mapping[str, str]) -> bytes:
    """``data`` with ``metadata`` added to its ``metadata_props``, checked by ``onnx.checker``."""
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - the extra is installed in CI
        raise ImportError(
            "ONNX metadata needs the onnx package: pip install 'shufflenet[onnx]'"
        ) from e
    proto = onnx.load_from_string(data)
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"ONNX metadata entry {k!r}: {v!r} must map a str to a str")
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints and log records (the caller reports failures)."""
    loggers = [
        logging.getLogger(n) for n in ("onnxscript", "torch.onnx", "torch.export", "torch._dynamo")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


class OnnxRuntimeRunner:
    """Run an ONNX model with ONNX Runtime on the CPU.

    Args:
        model: path or serialized bytes.
        threads: intra-op threads (default ``torch.get_num_threads()``).
        providers: execution providers (default CPU only).
        optimization: ``"all"`` (default), ``"extended"``, ``"basic"`` or ``"none"``.

    ``runner(x)`` takes a numpy array or a torch tensor (N, C, H, W) float32 and returns the same kind.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        threads: int | None = None,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        optimization: str = "all",
    ) -> None:
        ort = _require_ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads or torch.get_num_threads()))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        if optimization not in levels:
            raise ValueError(f"optimization={optimization!r} must be one of {sorted(levels)}")
        so.graph_optimization_level = levels[optimization]
        src = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(src, so, providers=list(providers))
        self.threads = so.intra_op_num_threads
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def __call__(self, x):
        if isinstance(x, torch.Tensor):
            return torch.from_numpy(self.run_numpy(x.detach().cpu().contiguous().numpy()))
        return self.run_numpy(x)


class OnnxRuntimeModule(nn.Module):
    """:class:`OnnxRuntimeRunner` as a module: torch tensor in (moved to the CPU), torch tensor out."""

    def __init__(self, model: str | os.PathLike[str] | bytes, threads: int | None = None) -> None:
        super().__init__()
        self.runner = OnnxRuntimeRunner(model, threads=threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)

    def extra_repr(self) -> str:
        return f"threads={self.runner.threads}"


def verify_onnx(
    model: nn.Module,
    onnx_model: str | os.PathLike[str] | bytes,
    input_size: int | tuple[int, int] = 224,
    batch: int = 2,
    seed: int = 0,
) -> float:
    """Max absolute difference between ``model`` (eval, float32) and ONNX Runtime, over the reference's max
    absolute value, on a random batch. Callers typically require ``<= 1e-4``."""
    h, w = _size(input_size)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_channels(model), h, w, generator=g)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = (
                model(x.to(next((p.device for p in model.parameters()), torch.device("cpu"))))
                .float()
                .cpu()
            )
    finally:
        model.train(was)
    out = OnnxRuntimeRunner(onnx_model, threads=1)(x)
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
