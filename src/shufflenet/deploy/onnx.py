"""ONNX export, graph summary, parity check and an ONNX Runtime runner (the ``[onnx]`` extra).

:func:`export_onnx` is the package's one ONNX exporter (``shufflenet export`` and the ``"onnxruntime"`` backend
use it, with the same defaults: :data:`DEFAULT_EXPORTER`, :data:`DEFAULT_OPSET`): it writes the model with batch
norm folded into the convolutions (ONNX Runtime fuses Conv + ReLU and the residual Add itself; the shuffle is
Reshape-Transpose-Reshape), with a dynamic batch and spatial size (or a dynamic batch only), optionally with
``metadata_props`` (:func:`onnx_metadata`: ``shufflenet.input_spec``, ``shufflenet.arch``,
``shufflenet.arch_kwargs``). The graph's input is ``input`` (N, C, H, W) and its output ``logits`` (N, classes).
:func:`summarize_onnx` counts the nodes (batch norms, channel shuffles); :func:`check_onnx` is the one parity
check against eager PyTorch (non-finite outputs fail it); :class:`OnnxRuntimeRunner` runs a file or bytes on
numpy arrays or torch tensors and :class:`OnnxRuntimeModule` is the same as an ``nn.Module``.

Example::

    from shufflenet.deploy.onnx import check_onnx, export_onnx, OnnxRuntimeRunner
    export_onnx(model, "model.onnx", input_size=224)        # dynamic batch / height / width
    assert check_onnx(model, "model.onnx", input_size=224).ok()
    logits = OnnxRuntimeRunner("model.onnx", threads=2)(images)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import io
import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.export import Dim

from ..data.spec import InputSpec, random_prepared
from ..models import in_channels
from ..utils.atomic import atomic_path
from .fold import fold_batchnorm

__all__ = [
    "DEFAULT_EXPORTER",
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "OnnxCheck",
    "OnnxGraphSummary",
    "OnnxRuntimeModule",
    "OnnxRuntimeRunner",
    "check_onnx",
    "export_onnx",
    "onnx_metadata",
    "require_onnx",
    "summarize_onnx",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_EXPORTER = "auto"
DEFAULT_OPSET = 17
EXPORTERS = ("auto", "torchscript", "dynamo")
# opsets the TorchScript exporter is asked for here: 11 (the oldest mobile toolchains still take) to its newest
TORCHSCRIPT_OPSETS = range(11, 21)
# the dynamo exporter writes opset 18 or newer (it converts a request for an older one upward)
DYNAMO_MIN_OPSET = 18


def require_onnx(*modules: str):
    """Import and return the optional ONNX packages ``modules`` (default ``onnx`` and ``onnxruntime``).

    A missing one raises :class:`ImportError` naming it and the extra that installs it."""
    names = modules or ("onnx", "onnxruntime")
    loaded, missing = [], []
    for name in names:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f"ONNX support needs {', '.join(missing)}: pip install 'shufflenet[onnx]' "
            "(onnx, onnxruntime, onnxscript)"
        )
    return loaded[0] if len(loaded) == 1 else tuple(loaded)


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
    opset: int | None = None,
    in_chans: int | None = None,
    fold: bool = True,
    exporter: str = DEFAULT_EXPORTER,
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
        opset: ONNX opset, honoured exactly or refused (:class:`ValueError`): 11-20 with the TorchScript
            exporter, 18 or newer with the dynamo exporter; ``None``: :data:`DEFAULT_OPSET` with the TorchScript
            exporter, the dynamo exporter's own default. The written file's opset is checked against it.
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
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r} must be 'auto', 'torchscript' or 'dynamo'")
    if opset is not None and (not isinstance(opset, int) or opset < TORCHSCRIPT_OPSETS[0]):
        raise ValueError(
            f"opset={opset!r} is not supported: the oldest opset exported here is {TORCHSCRIPT_OPSETS[0]}"
        )
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
        if exporter == "dynamo" and opset is not None and opset < DYNAMO_MIN_OPSET:
            raise ValueError(
                f"opset={opset}: {type(model).__name__} has adaptive pooling to a fixed size, which only the "
                f"dynamo exporter makes dynamic, and it writes opset {DYNAMO_MIN_OPSET} or newer; export with a "
                "fixed spatial size (dynamic_spatial=False, --static-size) for this opset"
            )
    _check_opset(exporter, opset)
    if exporter == "torchscript" or fallback:
        _swap_shuffles(
            src
        )  # Reshape-Transpose-Reshape at any opset (no aten::unflatten, which needs 13)
    full = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, output_name: {0: "batch"}}
    batch_only = {INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}}
    axes = (full if dynamic_spatial else batch_only) if dynamic else None
    # (exporter, dynamic axes): some layers (adaptive pooling to a fixed size) export only with fixed spatial size
    attempts = [(exporter, axes)]
    if fallback:
        other = "dynamo" if exporter == "torchscript" else "torchscript"
        kinds = [exporter]
        if _opset_ok(other, opset):  # never fall back to an exporter that would write another opset
            kinds.append(other)
        for kind in kinds:
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
                    opts = {"opset_version": DEFAULT_OPSET if opset is None else opset}
                    torch.onnx.export(
                        src, (x,), buf, input_names=[INPUT_NAME], output_names=[output_name],
                        dynamic_axes=ax, dynamo=False, do_constant_folding=True, **opts,
                    )  # fmt: skip
                else:
                    shapes = None
                    if ax:
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
    if opset is not None:
        written = _written_opset(data)
        if written is not None and written != opset:
            raise RuntimeError(
                f"opset {opset} was asked for but the {kind} exporter wrote opset {written}; nothing was written"
            )
    if metadata is not None:
        data = _with_metadata(data, metadata)
    if path is not None:
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(data)
    return data


def _opset_ok(exporter: str, opset: int | None) -> bool:
    if opset is None:
        return True
    if exporter == "dynamo":
        return opset >= DYNAMO_MIN_OPSET
    return opset in TORCHSCRIPT_OPSETS


def _check_opset(exporter: str, opset: int | None) -> None:
    """Refuse an opset the chosen exporter would not write as asked."""
    if _opset_ok(exporter, opset):
        return
    if exporter == "dynamo":
        raise ValueError(
            f"opset={opset}: the dynamo exporter writes opset {DYNAMO_MIN_OPSET} or newer; use the TorchScript "
            f"exporter (exporter='torchscript', --exporter torchscript) for opsets {TORCHSCRIPT_OPSETS[0]}-17"
        )
    raise ValueError(
        f"opset={opset}: the TorchScript exporter writes opsets {TORCHSCRIPT_OPSETS[0]}-"
        f"{TORCHSCRIPT_OPSETS[-1]}; use the dynamo exporter for a newer one"
    )


def _written_opset(data: bytes) -> int | None:
    """The default-domain opset of a serialized model (None without the onnx package)."""
    try:
        onnx = importlib.import_module("onnx")
    except ImportError:
        return None
    proto = onnx.load_from_string(data)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


class _ReshapeShuffle(nn.Module):
    """Channel shuffle as reshape -> transpose -> reshape with an inferred size: the same permutation as
    :class:`~shufflenet.ops.ChannelShuffle` (``inverse``: :class:`~shufflenet.ops.ChannelUnshuffle`), and
    exportable at every opset (``unflatten`` needs opset 13)."""

    def __init__(self, groups: int, inverse: bool = False) -> None:
        super().__init__()
        self.groups = groups
        self.inverse = inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        rest = x.shape[2:]
        if self.inverse:
            y = x.reshape(n, -1, self.groups, *rest)  # (N, C/g, g, *S)
        else:
            y = x.reshape(n, self.groups, -1, *rest)  # (N, g, C/g, *S)
        return y.transpose(1, 2).reshape(n, c, *rest)  # (N, C, *S)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, inverse={self.inverse}"


def _swap_shuffles(model: nn.Module) -> int:
    """Replace every ChannelShuffle / ChannelUnshuffle of ``model`` (a copy) by :class:`_ReshapeShuffle`."""
    from ..ops.channel_shuffle import ChannelShuffle, ChannelUnshuffle

    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ChannelShuffle | ChannelUnshuffle):
                inverse = isinstance(child, ChannelUnshuffle)
                setattr(parent, name, _ReshapeShuffle(child.groups, inverse))
                count += 1
    return count


def _with_metadata(data: bytes, metadata: Mapping[str, str]) -> bytes:
    """``data`` with ``metadata`` added to its ``metadata_props``, checked by ``onnx.checker``."""
    onnx = require_onnx("onnx")
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
        ort = require_onnx("onnxruntime")
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


def onnx_metadata(
    model: nn.Module, input_spec: InputSpec | None = None, extra: dict[str, Any] | None = None
) -> dict[str, str]:
    """The ``metadata_props`` that ``shufflenet export`` stores: ``shufflenet.input_spec`` (JSON of
    ``input_spec``), ``shufflenet.arch`` and ``shufflenet.arch_kwargs`` (from ``model.model_cfg``, when the
    model came from the registry), and ``extra`` (values that are not strings are JSON-encoded).
    Pass the result to :func:`export_onnx` as ``metadata``."""
    meta: dict[str, str] = {}
    if input_spec is not None:
        meta["shufflenet.input_spec"] = json.dumps(input_spec.to_dict())
    cfg = getattr(model, "model_cfg", None) or {}
    if "arch" in cfg:
        meta["shufflenet.arch"] = cfg["arch"]
        meta["shufflenet.arch_kwargs"] = json.dumps(cfg.get("kwargs", {}))
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    return meta


@dataclasses.dataclass
class OnnxGraphSummary:
    """What an exported graph contains."""

    opset: int
    op_counts: dict[str, int]
    batchnorm_nodes: int
    transposes: int
    # Transpose nodes fed by a Reshape and feeding a Reshape (and shape queries only)
    shuffles: int
    input_shape: list[str | int]
    output_shape: list[str | int]
    metadata: dict[str, str]

    @property
    def dynamic_input(self) -> bool:
        """Batch, height and width of the input are symbolic."""
        dims = self.input_shape
        return len(dims) == 4 and all(isinstance(dims[i], str) for i in (0, 2, 3))


def summarize_onnx(path: str | os.PathLike[str]) -> OnnxGraphSummary:
    """Count the nodes of an ONNX file and find the Reshape-Transpose-Reshape channel shuffles."""
    onnx = require_onnx("onnx")
    proto = onnx.load(str(path))
    graph = proto.graph
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for inp in n.input:
            consumers.setdefault(inp, []).append(n)
    transposes = [n for n in graph.node if n.op_type == "Transpose"]
    shuffles = 0
    for t in transposes:
        src = producer.get(t.input[0])
        kinds = {d.op_type for d in consumers.get(t.output[0], [])}
        # the TorchScript exporter also reads the transposed shape (Shape) to compute the final Reshape
        if (
            src is not None
            and src.op_type == "Reshape"
            and "Reshape" in kinds
            and kinds <= {"Reshape", "Shape"}
        ):
            shuffles += 1

    def dims(v) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    counts = Counter(n.op_type for n in graph.node)
    return OnnxGraphSummary(
        opset=opset,
        op_counts=dict(counts),
        batchnorm_nodes=counts.get("BatchNormalization", 0),
        transposes=len(transposes),
        shuffles=shuffles,
        input_shape=dims(graph.input[0]),
        output_shape=dims(graph.output[0]),
        metadata={p.key: p.value for p in proto.metadata_props},
    )


@dataclasses.dataclass
class OnnxCheck:
    """ONNX Runtime against PyTorch on random inputs.

    ``nonfinite`` counts the output positions where either output is not finite: a check with any fails (a model with NaN
    weights gives NaN in both, and a difference of NaN is no agreement)."""

    shapes: list[tuple[int, ...]]
    max_abs_diff: float
    max_abs_output: float
    nonfinite: int = 0

    def ok(self, atol: float = 1e-4, rtol: float = 1e-4) -> bool:
        return self.nonfinite == 0 and self.max_abs_diff <= atol + rtol * self.max_abs_output

    def describe(self) -> str:
        """One line: the shapes compared and the result."""
        shapes = ", ".join("x".join(map(str, s)) for s in self.shapes)
        line = (
            f"ONNX Runtime vs PyTorch on random inputs {shapes}: max abs difference "
            f"{self.max_abs_diff:.3g} (max |output| {self.max_abs_output:.3g})"
        )
        if self.nonfinite:
            line += f"; {self.nonfinite} non-finite output values"
        return line


@torch.no_grad()
def check_onnx(
    model: nn.Module,
    onnx_model: str | os.PathLike[str] | bytes,
    shapes: list[tuple[int, ...]] | None = None,
    input_size: int = 224,
    in_chans: int | None = None,
    seed: int = 0,
    dynamic_spatial: bool = True,
    input_spec: InputSpec | None = None,
) -> OnnxCheck:
    """Run ``onnx_model`` (a path or bytes) with ONNX Runtime (CPU) and ``model`` (a float32 copy in eval mode
    on the CPU) on the same random inputs.

    ``shapes`` defaults to ``(1, C, S, S)`` and ``(2, C, S + 32, S - S // 4)`` with ``S = input_size`` and
    ``C = in_chans`` (default: the model's, :func:`shufflenet.models.in_channels`), so the dynamic batch and
    (non-square) spatial sizes are exercised; with ``dynamic_spatial=False`` both are ``S x S``. Inputs are
    standard normal, or, with ``input_spec``, uniform random images prepared by that convention
    (``(u * scale - mean) / std``, ``u`` in [0, 1)), so that activations have realistic ranges.
    """
    ort = require_onnx("onnxruntime")
    if shapes is None:
        s = input_size
        c = in_chans if in_chans is not None else in_channels(model)
        second = (s + 32, max(s - s // 4, 1)) if dynamic_spatial else (s, s)
        shapes = [(1, c, s, s), (2, c, *second)]
    m = copy.deepcopy(model).eval().cpu().float()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    src = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    session = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    worst, biggest, nonfinite = 0.0, 0.0, 0
    for shape in shapes:
        if input_spec is None:
            x = torch.randn(*shape, generator=gen)
        else:
            x = random_prepared(shape, input_spec, gen)
        ref = m(x).numpy()
        try:
            got = session.run(None, {name: x.numpy()})[0]
        except Exception as e:  # onnxruntime's own exception types
            raise RuntimeError(f"ONNX Runtime failed on an input of shape {shape}: {e}") from e
        if got.shape != ref.shape:
            raise ValueError(
                f"ONNX output shape {got.shape} != PyTorch {ref.shape} for input {shape}"
            )
        bad = ~np.isfinite(ref) | ~np.isfinite(got)
        nonfinite += int(bad.sum())
        if not bad.all():
            worst = max(worst, float(np.abs(got - ref)[~bad].max()))
            biggest = max(biggest, float(np.abs(ref)[~bad].max()))
    return OnnxCheck([tuple(s) for s in shapes], worst, biggest, nonfinite)
