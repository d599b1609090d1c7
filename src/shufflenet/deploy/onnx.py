"""ONNX export of the optimised graph, and an ONNX Runtime runner (the ``[onnx]`` extra).

:func:`export_onnx` writes the model with batch norm folded into the convolutions (ONNX Runtime fuses
Conv + ReLU and the residual Add itself; the shuffle is Reshape-Transpose-Reshape), with a dynamic batch and
spatial size. :class:`OnnxRuntimeRunner` runs a file or bytes on numpy arrays or torch tensors;
:class:`OnnxRuntimeModule` is the same as an ``nn.Module``; :func:`verify_onnx` compares against eager PyTorch.

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
from pathlib import Path

import numpy as np
import torch
from torch import nn

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
    opset: int = 17,
    in_chans: int | None = None,
    fold: bool = True,
    exporter: str = "auto",
) -> bytes:
    """Export ``model`` (a copy, in eval mode; the model is not modified) to ONNX.

    Args:
        model: any module; with ``fold=True`` its batch norms are folded into the convolutions first
            (:func:`shufflenet.deploy.optimized.optimize_torch` without the CPU-only kernels).
        path: also write the file here (atomically); ``None``: only return the bytes.
        input_size: height = width (or ``(h, w)``) of the example input used for tracing.
        dynamic: mark batch, height and width dynamic (the output's batch too).
        opset: ONNX opset.
        in_chans: input channels (default: those of the first convolution).
        exporter: ``"torchscript"`` (``torch.onnx.export(dynamo=False)``, fast), ``"dynamo"``, or ``"auto"``:
            TorchScript unless the model has adaptive pooling to a size other than 1 (which that exporter cannot
            make dynamic). If the first fails the other is tried. A model whose spatial size cannot be dynamic (e.g. adaptive pooling to a
            fixed size, as AlexNet's) is exported with a dynamic batch only.

    Returns:
        The serialized ONNX model. Input ``"input"`` (N, C, H, W) float32, output ``"output"``.
    """
    from .native.lower import _in_channels
    from .optimized import optimize_torch

    src = optimize_torch(model, use_mkldnn=False, native_shuffle=False) if fold else model
    import copy

    src = copy.deepcopy(src).eval().to(memory_format=torch.contiguous_format).cpu()
    h, w = _size(input_size)
    c = in_chans if in_chans is not None else _in_channels(model)
    x = torch.randn(1, c, h, w)
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ValueError(f"exporter={exporter!r} must be 'auto', 'torchscript' or 'dynamo'")
    if exporter == "auto":
        fixed_pool = any(
            isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d)
            and m.output_size not in (1, (1, 1))
            for m in src.modules()
        )
        exporter = "dynamo" if fixed_pool and dynamic else "torchscript"
    full = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch"}}
    batch_only = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    # (exporter, dynamic axes): some layers (adaptive pooling to a fixed size) export only with fixed spatial size
    attempts = [(exporter, full if dynamic else None)]
    if dynamic:
        attempts.append((exporter, batch_only))
    other = "dynamo" if exporter == "torchscript" else "torchscript"
    attempts += [(other, full if dynamic else None)] + ([(other, batch_only)] if dynamic else [])
    errors = []
    data = None
    for kind, axes in attempts:
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings(), torch.no_grad(), _quiet():
                warnings.simplefilter("ignore")
                if kind == "torchscript":
                    torch.onnx.export(
                        src, (x,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                        dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True,
                    )  # fmt: skip
                else:
                    shapes = None
                    if axes:
                        from torch.export import Dim

                        dims = {0: Dim("batch")}
                        if 2 in axes[INPUT_NAME]:
                            dims.update({2: Dim("height", min=8), 3: Dim("width", min=8)})
                        shapes = (dims,)
                    prog = torch.onnx.export(
                        src, (x,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                        dynamic_shapes=shapes, opset_version=opset, dynamo=True, verbose=False,
                    )  # fmt: skip
                    prog.save(buf)
            data = buf.getvalue()
            break
        except Exception as e:  # noqa: BLE001 - try the next way, report all if all fail
            errors.append(f"{kind} (dynamic axes {axes}): {type(e).__name__}: {str(e)[:500]}")
    if data is None:
        raise RuntimeError("ONNX export failed:\n" + "\n".join(errors))
    if path is not None:
        from ..utils.atomic import atomic_path

        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(data)
    return data


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
    from .native.lower import _in_channels

    h, w = _size(input_size)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, _in_channels(model), h, w, generator=g)
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
