"""Model files: one ``.safetensors`` file with the weights and JSON metadata to rebuild the model.

Metadata keys (all strings, as safetensors requires):

- ``format``: ``"shufflenet.model/1"``;
- ``arch`` and ``arch_kwargs`` (JSON): the registry name and constructor arguments (``create_model``);
- ``input_spec`` (JSON): the :class:`~shufflenet.data.spec.InputSpec` the weights expect;
- ``class_names`` (JSON list, optional);
- ``extra`` (JSON, optional): anything else (training epoch, source of a conversion, ...).

Loading never executes code from the file: safetensors holds raw tensors and the metadata is parsed as JSON.
Files are written atomically. (Training state for resuming a run is :mod:`shufflenet.train.checkpoint`;
building a model from a name, a model file or a published checkpoint is :mod:`shufflenet.factory`.)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .data.spec import InputSpec
from .models import create_model, is_model
from .utils.atomic import atomic_path

__all__ = [
    "FORMAT",
    "build_from_info",
    "ModelInfo",
    "is_model_file",
    "load_model",
    "load_weights",
    "parse_model_info",
    "read_info",
    "read_model_file",
    "read_safetensors",
    "save_model",
]

FORMAT = "shufflenet.model/1"


@dataclasses.dataclass
class ModelInfo:
    """What a model file says about its model."""

    arch: str
    arch_kwargs: dict[str, Any]
    input_spec: InputSpec
    class_names: list[str] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _state_dict_for_save(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage and non-contiguous tensors: store independent contiguous copies.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_model(
    path: str | os.PathLike[str],
    model: nn.Module,
    input_spec: InputSpec | None = None,
    class_names: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and metadata to ``path`` atomically; returns the path.

    ``arch``/``arch_kwargs`` default to ``model.model_cfg`` (set by ``create_model``).
    """
    cfg = getattr(model, "model_cfg", None) or {}
    arch = arch or cfg.get("arch")
    if arch is None:
        raise ValueError(
            "cannot save a model without an architecture name: build it with shufflenet.create_model "
            "or pass arch="
        )
    arch_kwargs = dict(cfg.get("kwargs", {}) if arch_kwargs is None else arch_kwargs)
    metadata = {
        "format": FORMAT,
        "arch": arch,
        "arch_kwargs": json.dumps(arch_kwargs),
        "input_spec": json.dumps((input_spec or InputSpec()).to_dict()),
        "class_names": json.dumps(class_names),
        "extra": json.dumps(extra or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(_state_dict_for_save(model), str(tmp), metadata=metadata)
    return path


def read_safetensors(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the (string) metadata of any ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(
            f"{str(path)!r} is not a readable safetensors file (truncated or another format?): {e}"
        ) from e
    return tensors, metadata


def read_info(path: str | os.PathLike[str]) -> ModelInfo:
    """Parse the metadata of a model file written by :func:`save_model`."""
    _, meta = read_safetensors(path)
    return parse_model_info(path, meta)


def is_model_file(metadata: dict[str, str]) -> bool:
    """The safetensors ``metadata`` is that of a shufflenet model file."""
    return metadata.get("format") == FORMAT


def read_model_file(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], ModelInfo]:
    """The tensors and the parsed metadata of a model file written by :func:`save_model`."""
    tensors, meta = read_safetensors(path)
    return tensors, parse_model_info(path, meta)


#: bounds on what a model file may ask to build (a damaged or hostile file must not allocate terabytes)
MAX_NUM_CLASSES = 100_000
MAX_IN_CHANS = 4


def parse_model_info(path: str | os.PathLike[str], meta: dict[str, str]) -> ModelInfo:
    """Parse and check the metadata: every problem is one :class:`ValueError` naming the file and the key."""
    where = repr(str(path))
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{where} is a safetensors file but not a shufflenet model file "
            f"(metadata format={meta.get('format')!r}, expected {FORMAT!r}); "
            "for a bare state dict use shufflenet.create_model(name, weights=path)"
        )
    fields = {}
    for key, default in (
        ("arch", None),
        ("arch_kwargs", None),
        ("input_spec", None),
        ("class_names", "null"),
        ("extra", "{}"),
    ):
        raw = meta.get(key, default)
        if raw is None:
            raise ValueError(f"{where} has damaged shufflenet metadata: {key!r} is missing")
        if key == "arch":
            fields[key] = raw
            continue
        try:
            fields[key] = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: metadata {key!r} is not valid JSON ({e})") from None
    arch, kwargs, spec = fields["arch"], fields["arch_kwargs"], fields["input_spec"]
    if not is_model(arch):
        raise ValueError(f"{where}: metadata arch={arch!r} is not a registered model")
    if not isinstance(kwargs, dict):
        raise ValueError(f"{where}: metadata arch_kwargs must be a JSON object, got {kwargs!r:.80}")
    for key, high in (("num_classes", MAX_NUM_CLASSES), ("in_chans", MAX_IN_CHANS)):
        if key in kwargs:
            v = kwargs[key]
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= high:
                raise ValueError(
                    f"{where}: metadata arch_kwargs {key}={v!r:.40} must be an integer from 1 to {high}"
                )
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: metadata input_spec must be a JSON object, got {spec!r:.80}")
    try:
        input_spec = InputSpec.from_dict(spec)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: metadata input_spec is not valid: {e}") from None
    names = fields["class_names"]
    if names is not None and (
        not isinstance(names, list) or not all(isinstance(n, str) for n in names)
    ):
        raise ValueError(
            f"{where}: metadata class_names must be a list of strings (or null), got {names!r:.80}"
        )
    if not isinstance(fields["extra"], dict):
        raise ValueError(f"{where}: metadata extra must be a JSON object")
    return ModelInfo(arch, kwargs, input_spec, names, fields["extra"])


def build_from_info(info: ModelInfo, path: str | os.PathLike[str]) -> nn.Module:
    """The (untrained) model a model file's metadata describes; arch_kwargs the architecture does not take,
    or class names that do not match its outputs, are a :class:`ValueError` naming the file."""
    try:
        model = create_model(info.arch, **info.arch_kwargs)
    except TypeError as e:
        raise ValueError(
            f"{str(path)!r}: metadata arch_kwargs {sorted(info.arch_kwargs)} do not fit {info.arch}: {e}"
        ) from None
    n = getattr(model, "num_classes", None)
    if info.class_names is not None and n is not None and len(info.class_names) != n:
        raise ValueError(
            f"{str(path)!r}: metadata lists {len(info.class_names)} class names; the model has {n} outputs"
        )
    return model


def load_model(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelInfo]:
    """Rebuild the model stored at ``path`` and load its weights strictly; returns ``(model, info)``.

    The model is in eval mode on ``map_location``.
    """
    tensors, info = read_model_file(path)
    model = build_from_info(info, path)
    _load_state(model, tensors, path)
    return model.to(map_location).eval(), info


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load the weights of a ``.safetensors`` file (model file or bare state dict) into ``model``, strictly.

    (Published ``torch.save`` checkpoints, other classes and partial loads: :mod:`shufflenet.factory`.)"""
    tensors, _ = read_safetensors(path)
    _load_state(model, tensors, path)
    return model


def _load_state(model: nn.Module, tensors: dict[str, torch.Tensor], path) -> None:
    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"weights in {str(path)!r} do not fit {type(model).__name__}: {e}") from e
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"weights in {str(path)!r} do not fit {type(model).__name__}: "
            f"missing {result.missing_keys[:5]}{'...' if len(result.missing_keys) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}"
            f"{'...' if len(result.unexpected_keys) > 5 else ''}"
        )
