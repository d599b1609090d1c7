"""What ``shufflenet export`` adds around the ONNX exporter: metadata, graph summary, ONNX Runtime check.

The export itself is :func:`shufflenet.deploy.onnx.export_onnx` (batch norm folded by
:func:`shufflenet.deploy.fold.fold_batchnorm`, dynamic batch and spatial size). ``shufflenet export`` names the
graph's output ``logits`` (:data:`EXPORT_OUTPUT_NAME`) and stores the model's
:class:`~shufflenet.data.spec.InputSpec` and architecture in the ONNX metadata (:func:`onnx_metadata`:
``metadata_props`` keys ``shufflenet.input_spec``, ``shufflenet.arch``, ``shufflenet.arch_kwargs``), so that a
consumer knows how to prepare images. :func:`summarize_onnx` counts the nodes (batch norms, channel shuffles as
Reshape -> Transpose -> Reshape) and :func:`check_onnx` compares ONNX Runtime with PyTorch.

Needs the ``onnx`` extra (``onnx``, ``onnxruntime``, ``onnxscript``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.spec import InputSpec

__all__ = [
    "EXPORT_OUTPUT_NAME",
    "OnnxCheck",
    "OnnxGraphSummary",
    "check_onnx",
    "onnx_metadata",
    "summarize_onnx",
]

EXPORT_OUTPUT_NAME = "logits"


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


def onnx_metadata(
    model: nn.Module, input_spec: InputSpec | None = None, extra: dict[str, Any] | None = None
) -> dict[str, str]:
    """The ``metadata_props`` that ``shufflenet export`` stores: ``shufflenet.input_spec`` (JSON of
    ``input_spec``), ``shufflenet.arch`` and ``shufflenet.arch_kwargs`` (from ``model.model_cfg``, when the
    model came from the registry), and ``extra`` (values that are not strings are JSON-encoded).
    Pass the result to :func:`shufflenet.deploy.onnx.export_onnx` as ``metadata``."""
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
