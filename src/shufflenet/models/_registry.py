"""Model registry: ``register_model`` adds a factory under its function name; ``create_model`` builds by name.

The registry only registers, lists and builds (untrained) models. Building with weights (a model file, a
published checkpoint, a state dict) is :func:`shufflenet.create_model` in :mod:`shufflenet.factory`.

Every model built by :func:`create_model` carries ``model.model_cfg = {"arch": name, "kwargs": {...}}`` so that a
model file can record how to rebuild it (see :mod:`shufflenet.model_file`).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = ["register_model", "create_model", "list_models", "is_model", "get_model_factory"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(fn: F) -> F:
    """Decorator: register ``fn`` under ``fn.__name__``. A duplicate name is an error."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"a model named {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the shell-style ``pattern``, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def is_model(name: str) -> bool:
    return name in _MODELS


def get_model_factory(name: str) -> Callable[..., nn.Module]:
    """The factory of ``name``; an unknown name raises ``ValueError`` listing close matches."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _MODELS, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint} (`shufflenet list` shows all {len(_MODELS)} models)"
        ) from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` (untrained) with constructor ``kwargs``.

    Args:
        name: a name from :func:`list_models`, e.g. ``"shufflenet_v1_g3_x1_0"``.
        **kwargs: passed to the model, e.g. ``num_classes=10``, ``small_input=True``.

    For weights (``weights=PATH``) use :func:`shufflenet.create_model`.
    """
    if "weights" in kwargs:
        if kwargs["weights"] is not None:
            raise TypeError(
                "shufflenet.models.create_model builds untrained models; for weights=... use "
                "shufflenet.create_model (shufflenet.factory)"
            )
        kwargs.pop("weights")
    model = get_model_factory(name)(**kwargs)
    model.model_cfg = {"arch": name, "kwargs": dict(kwargs)}
    return model
