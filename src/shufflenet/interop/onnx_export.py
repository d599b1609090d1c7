"""Export to ONNX with batch norm folded and check the result against ONNX Runtime.

The exported graph has one input ``input`` of shape ``(batch, C, height, width)``, all three dynamic, and one
output ``logits`` of shape ``(batch, classes)``. Batch norm is folded into the preceding convolution before
export (:func:`fold_batchnorm`), and the channel shuffles appear as Reshape -> Transpose -> Reshape. The model's
:class:`~shufflenet.data.spec.InputSpec` and architecture are stored in the ONNX metadata (``metadata_props``
keys ``shufflenet.input_spec``, ``shufflenet.arch``, ``shufflenet.arch_kwargs``), so that a consumer knows how
to prepare images.

Needs the ``onnx`` extra (``onnx``, ``onnxruntime``, ``onnxscript``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import os
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.spec import InputSpec
from ..utils.atomic import atomic_path

__all__ = [
    "OnnxCheck",
    "OnnxGraphSummary",
    "check_onnx",
    "export_onnx",
    "fold_batchnorm",
    "summarize_onnx",
]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _require_onnx() -> None:
    missing = []
    for mod in ("onnx", "onnxruntime"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ImportError(
            f"ONNX export needs {', '.join(missing)}: pip install 'shufflenet[onnx]' "
            "(onnx, onnxruntime, onnxscript)"
        )


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every batch norm that directly follows a convolution inside an ``nn.Sequential`` (this covers
    :class:`~shufflenet.layers.ConvBnAct` and torchvision-style ``conv, bn, relu`` sequences) into that
    convolution, in place, replacing the batch norm by ``nn.Identity``. Returns ``model``.

    Uses the running statistics (inference behaviour): ``w' = w * gamma / sqrt(var + eps)``,
    ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``. Call on an eval-mode copy.
    """
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if not (isinstance(conv, _CONV_TYPES) and isinstance(bn, _BN_TYPES)):
                continue
            if not bn.track_running_stats or bn.running_mean is None:
                continue
            if bn.num_features != conv.out_channels:
                continue
            scale = bn.running_var.add(bn.eps).rsqrt()
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale
            if bn.bias is not None:
                shift = shift + bn.bias
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
            conv.bias = nn.Parameter(shift.to(conv.weight.dtype))
            setattr(seq, bn_name, nn.Identity())
    return model


def _onnx_metadata(
    input_spec: InputSpec | None, model: nn.Module, extra: dict[str, Any] | None
) -> dict[str, str]:
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


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_size: int = 224,
    in_chans: int = 3,
    opset: int | None = None,
    dynamo: bool = True,
    input_spec: InputSpec | None = None,
    metadata: dict[str, Any] | None = None,
    fold_bn: bool = True,
    quiet: bool = True,
    dynamic_spatial: bool = True,
) -> Path:
    """Write ``model`` (unchanged: a folded eval-mode copy is exported) to the ONNX file ``path`` atomically.

    Args:
        input_size: side of the example input used for tracing, pixels; the graph accepts any size
            unless ``dynamic_spatial=False``.
        in_chans: channels of the input.
        opset: ONNX opset; ``None`` for the exporter's default.
        dynamo: use the ``torch.export``-based exporter (default) or the TorchScript one.
        input_spec: stored in the metadata.
        metadata: further ``metadata_props`` entries (values that are not strings are JSON-encoded).
        fold_bn: fold batch norm first (:func:`fold_batchnorm`).
        quiet: silence the exporters' progress messages and warnings.
        dynamic_spatial: height and width symbolic (default); ``False`` fixes them to ``input_size``
            (models whose pooling is not global, e.g. AlexNet's 6x6 adaptive pool).
    """
    _require_onnx()
    import onnx

    m = copy.deepcopy(model).eval().cpu().float()
    if fold_bn:
        fold_batchnorm(m)
    x = torch.randn(1, in_chans, input_size, input_size)
    path = Path(path)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_spatial else {0: "batch"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_file = str(Path(tmp) / "model.onnx")
        try:
            with _maybe_quiet(quiet):
                if dynamo:
                    from torch.export import Dim

                    dims = {i: Dim(n, min=1 if i == 0 else 2) for i, n in axes.items()}
                    torch.onnx.export(
                        m,
                        (x,),
                        tmp_file,
                        input_names=["input"],
                        output_names=["logits"],
                        dynamic_shapes=(dims,),
                        opset_version=opset,
                        dynamo=True,
                        external_data=False,
                        verbose=False,
                    )
                else:
                    kwargs = {} if opset is None else {"opset_version": opset}
                    torch.onnx.export(
                        m,
                        (x,),
                        tmp_file,
                        input_names=["input"],
                        output_names=["logits"],
                        dynamic_axes={"input": axes, "logits": {0: "batch"}},
                        do_constant_folding=True,
                        dynamo=False,
                        **kwargs,
                    )
        except Exception as e:  # the exporters raise many types; report which one failed and why
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise RuntimeError(
                f"the {'dynamo' if dynamo else 'TorchScript'} ONNX exporter failed on "
                f"{type(m).__name__} ({type(e).__name__}: {first[:500]}); try the other exporter"
                + ("" if not dynamic_spatial else " or a fixed spatial size")
            ) from e
        proto = onnx.load(tmp_file)
    for k, v in _onnx_metadata(input_spec, model, metadata).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp_path:
        onnx.save(proto, str(tmp_path))
    return path


@contextlib.contextmanager
def _maybe_quiet(quiet: bool):
    if not quiet:
        yield
        return
    import logging

    loggers = [
        logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    ]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@dataclasses.dataclass
class OnnxGraphSummary:
    """What an exported graph contains."""

    opset: int
    op_counts: dict[str, int]
    batchnorm_nodes: int
    transposes: int
    shuffles: int  # Transpose nodes fed by a Reshape and feeding a Reshape (and shape queries only)
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
    _require_onnx()
    import onnx

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
        dst = consumers.get(t.output[0], [])
        kinds = {d.op_type for d in dst}
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
    """ONNX Runtime against PyTorch on random inputs."""

    shapes: list[tuple[int, ...]]
    max_abs_diff: float
    max_abs_output: float

    def ok(self, atol: float = 1e-4, rtol: float = 1e-4) -> bool:
        return self.max_abs_diff <= atol + rtol * self.max_abs_output


@torch.no_grad()
def check_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    shapes: list[tuple[int, ...]] | None = None,
    input_size: int = 224,
    in_chans: int = 3,
    seed: int = 0,
    dynamic_spatial: bool = True,
    input_spec: InputSpec | None = None,
) -> OnnxCheck:
    """Run the ONNX file with ONNX Runtime (CPU) and ``model`` (eval mode, float32) on the same random inputs.

    ``shapes`` defaults to ``(1, C, S, S)`` and ``(2, C, S + 32, S - S // 4)`` with ``S = input_size``, so the
    dynamic batch and (non-square) spatial sizes are exercised; with ``dynamic_spatial=False`` both are
    ``S x S``. Inputs are standard normal, or, with ``input_spec``, uniform random images prepared by that
    convention (``(u * scale - mean) / std``, ``u`` in [0, 1)), so that activations have realistic ranges.
    """
    _require_onnx()
    import onnxruntime as ort

    if shapes is None:
        s = input_size
        second = (s + 32, max(s - s // 4, 1)) if dynamic_spatial else (s, s)
        shapes = [(1, in_chans, s, s), (2, in_chans, *second)]
    m = copy.deepcopy(model).eval().cpu().float()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    worst, biggest = 0.0, 0.0
    for shape in shapes:
        if input_spec is None:
            x = torch.randn(*shape, generator=gen)
        else:
            mean = torch.tensor(input_spec.mean).reshape(-1, 1, 1)
            std = torch.tensor(input_spec.std).reshape(-1, 1, 1)
            x = (torch.rand(*shape, generator=gen) * input_spec.scale - mean) / std
        ref = m(x).numpy()
        try:
            got = session.run(None, {name: x.numpy()})[0]
        except Exception as e:  # onnxruntime's own exception types
            raise RuntimeError(f"ONNX Runtime failed on an input of shape {shape}: {e}") from e
        if got.shape != ref.shape:
            raise ValueError(
                f"ONNX output shape {got.shape} != PyTorch {ref.shape} for input {shape}"
            )
        worst = max(worst, float(np.abs(got - ref).max()))
        biggest = max(biggest, float(np.abs(ref).max()))
    return OnnxCheck([tuple(s) for s in shapes], worst, biggest)
