"""Int8 model files: a shufflenet model file (one ``.safetensors``, JSON metadata) holding the int8 program.

Metadata keys: those of :mod:`shufflenet.model_file` (``arch``, ``arch_kwargs``, ``input_spec`` - the input
convention: size, channel order, normalisation - ``class_names``, ``extra``) with ``format`` =
``"shufflenet.int8/1"``, plus ``int8`` (JSON): every op's fields, every activation's channels, scale and
signedness, the calibration method. Tensors: ``op<i>.w`` (int8), ``op<i>.w_scale``, ``op<i>.b`` (float32),
``op<i>.kidx`` (int32, the 1x1 conv's input order: the channel shuffle). The input's own scale is the first
activation's. Loading executes no code and checks the program's structure; files are written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..data.spec import InputSpec
from ..model_file import ModelInfo
from ..utils.atomic import atomic_path
from .core import QuantizedModel
from .program import QProgram

__all__ = ["INT8_FORMAT", "is_int8_file", "load_quantized", "save_quantized"]

INT8_FORMAT = "shufflenet.int8/1"


def save_quantized(
    path: str | os.PathLike[str],
    model: QuantizedModel,
    input_spec: InputSpec | None = None,
    class_names: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (from :func:`~shufflenet.quantize.quantize`) to ``path`` atomically; returns the path."""
    if not isinstance(model, QuantizedModel):
        raise TypeError(f"save_quantized expects a QuantizedModel, got {type(model).__name__}")
    cfg = model.arch_cfg or {}
    metadata = {
        "format": INT8_FORMAT,
        "arch": str(cfg.get("arch", "")),
        "arch_kwargs": json.dumps(cfg.get("kwargs", {})),
        "input_spec": json.dumps((input_spec or InputSpec()).to_dict()),
        "class_names": json.dumps(class_names),
        "extra": json.dumps(extra or {}),
        "int8": json.dumps({"method": model.method, **model.program.meta()}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(model.program.tensors(), str(tmp), metadata=metadata)
    return path


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {e}") from e


def is_int8_file(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a readable int8 model file (never raises)."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() != ".safetensors":
        return False
    try:
        return _metadata(p).get("format") == INT8_FORMAT
    except ValueError:
        return False


def load_quantized(path: str | os.PathLike[str]) -> tuple[QuantizedModel, ModelInfo]:
    """Read an int8 model file; returns ``(model, info)``. Raises ValueError for another or a damaged file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    meta = _metadata(path)
    if meta.get("format") != INT8_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not an int8 model file (format={meta.get('format')!r}, expected {INT8_FORMAT!r})"
        )
    try:
        tensors = load_file(str(path))
        q = json.loads(meta["int8"])
        info = ModelInfo(
            arch=meta.get("arch", ""),
            arch_kwargs=json.loads(meta.get("arch_kwargs", "{}")),
            input_spec=InputSpec.from_dict(json.loads(meta["input_spec"])),
            class_names=json.loads(meta.get("class_names", "null")),
            extra=json.loads(meta.get("extra", "{}")),
        )
        program = QProgram.from_saved(q, tensors)
        method = str(q.get("method", "mse"))
    except (KeyError, json.JSONDecodeError, TypeError, SafetensorError) as e:
        raise ValueError(f"{str(path)!r} has damaged int8 metadata: {e!r}") from e
    if info.class_names is not None and (
        not isinstance(info.class_names, list)
        or not all(isinstance(c, str) for c in info.class_names)
    ):
        raise ValueError(f"{str(path)!r}: class_names must be a list of strings")
    arch_cfg = {"arch": info.arch, "kwargs": info.arch_kwargs} if info.arch else None
    model = QuantizedModel(program, method=method, arch_cfg=arch_cfg)
    return model, info
