"""Building a model with weights: the one resolver behind ``create_model(name, weights=...)``, torch.hub and the
command line's model argument.

:func:`resolve_model` takes any of

- a registered name (``"shufflenet_v1_g3_x1_0"``): an untrained model, built by the registry;
- a shufflenet model file (``.safetensors`` written by :func:`~shufflenet.model_file.save_model`): its stored
  architecture, constructor arguments, class names and input convention win; a name that contradicts them is
  an error;
- a published checkpoint (Megvii's ShuffleNet v1 release, torchvision's ShuffleNet v2), in a ``torch.save``
  file or a ``.safetensors`` file: detected from its keys and converted in memory with the same code as
  ``shufflenet convert`` (:func:`shufflenet.interop.convert_release`), with a note saying so;
- a plain state dict (``torch.save`` or ``.safetensors``) for a named architecture
  (``create_model(name, weights=PATH)``);
- an int8 model file (``shufflenet quantize``): the :class:`~shufflenet.quantize.QuantizedModel` it holds;

and returns a :class:`ResolvedModel`: the model (eval mode) and what is known about it. The file's kind is
read from its content, not its suffix. Loading never executes code from the file.

Another number of classes than the weights have (``num_classes=10`` for an ImageNet checkpoint): every tensor
whose name and shape match is loaded, the classifier keeps a fresh initialisation, and a warning names the
re-initialised tensors (:func:`load_matching`, which ``shufflenet train --init`` uses too). A tensor outside
the classifier that does not match is an error unless ``strict=False``.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data.spec import InputSpec
from .interop.releases import convert_release, detect_release
from .interop.torch_files import load_torch_state_dict
from .model_file import build_from_info, is_model_file, parse_model_info, read_safetensors
from .models import create_model as build_model
from .models import get_model_factory, is_model
from .quantize.io import is_int8_file, load_quantized

__all__ = [
    "LoadReport",
    "ResolvedModel",
    "SOURCES",
    "create_model",
    "load_matching",
    "resolve_model",
]

#: where a :class:`ResolvedModel` came from
SOURCES = ("registry", "shufflenet", "megvii", "torchvision", "state_dict", "int8")

_NOTE_CONVERTED = {
    "megvii": "converted a Megvii ShuffleNet v1 checkpoint in memory "
    "(`shufflenet convert --from megvii` writes it as a model file)",
    "torchvision": "converted a torchvision ShuffleNet v2 checkpoint in memory "
    "(`shufflenet convert --from torchvision` writes it as a model file)",
}


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    """A model and what is known about it.

    Attributes:
        model: in eval mode, on the CPU.
        name: registry name of its architecture; ``arch_kwargs`` its constructor arguments (JSON values), so
            that ``shufflenet.models.create_model(name, **arch_kwargs)`` builds the same architecture.
        input_spec: how images must be prepared for it (the file's, or the default for a registry model).
        class_names: one per output, when the file names them.
        source: one of :data:`SOURCES`.
        path: the file it was read from (``None`` for a registry name).
        notes: one-line notes for the user (a conversion, a re-initialised classifier, ...).
        extra: what the file records besides (a model file's ``extra``: training data, epoch, the source of
            a conversion, ...).
    """

    model: nn.Module
    name: str
    arch_kwargs: dict[str, Any]
    input_spec: InputSpec
    class_names: list[str] | None
    source: str
    path: Path | None
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What :func:`load_matching` did with each tensor.

    ``loaded``: the model's tensors taken from the state dict; ``reinitialised``: the model's tensors the
    state dict has not (or not in this shape), left at their initialisation; ``ignored``: the state dict's
    tensors the model has no place for."""

    loaded: tuple[str, ...]
    reinitialised: tuple[str, ...]
    ignored: tuple[str, ...]

    def table(self) -> str:
        """A short table: the number of tensors in each row and (for the rows that are not ``loaded``) their
        names."""

        def names(keys: tuple[str, ...]) -> str:
            shown = ", ".join(keys[:6])
            return shown + (f", ... ({len(keys) - 6} more)" if len(keys) > 6 else "")

        rows = [
            ("loaded", len(self.loaded), ""),
            ("re-initialised", len(self.reinitialised), names(self.reinitialised)),
            ("ignored", len(self.ignored), names(self.ignored)),
        ]
        return "\n".join(f"{what:<15}{n:>5}  {keys}".rstrip() for what, n, keys in rows)


def _head_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of the classifier: the last module (in registration order) that holds parameters
    of its own (``fc``, AlexNet's last ``classifier`` layer, NIN's last convolution)."""
    last = None
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            last = name
    if last is None:
        return set()
    prefix = f"{last}." if last else ""
    return {k for k in model.state_dict() if k.startswith(prefix) and "." not in k[len(prefix) :]}


def load_matching(
    model: nn.Module, state_dict: dict[str, torch.Tensor], *, strict: bool = True
) -> LoadReport:
    """Copy every tensor of ``state_dict`` whose name and shape match into ``model``; report the rest.

    With ``strict=True`` only the classifier may differ (another number of classes): any other tensor of
    the model that the state dict lacks or has in another shape, and any tensor of the state dict outside
    the classifier that the model has no place for, is a :class:`ValueError` naming them, and nothing is
    loaded. A missing ``num_batches_tracked`` (checkpoints of old PyTorch) is never an error.
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict of tensors, got {type(state_dict).__name__}")
    own = model.state_dict()
    loaded, reinit, ignored = [], [], []
    for k, v in own.items():
        src = state_dict.get(k)
        if isinstance(src, torch.Tensor) and tuple(src.shape) == tuple(v.shape):
            loaded.append(k)
        else:
            reinit.append(k)
    ignored = [k for k in state_dict if k not in own or k in reinit]
    if strict:
        head = _head_keys(model)
        bad_model = [k for k in reinit if k not in head and not k.endswith("num_batches_tracked")]
        bad_source = [k for k in ignored if k not in head and k not in own]
        if bad_model or bad_source:

            def describe(k: str) -> str:
                theirs = state_dict.get(k)
                if k in own and isinstance(theirs, torch.Tensor):
                    return f"{k} {tuple(theirs.shape)} -> {tuple(own[k].shape)}"
                return k

            parts = []
            if bad_model:
                parts.append(
                    "missing or of another shape: " + ", ".join(map(describe, bad_model[:6]))
                )
            if bad_source:
                parts.append("not in the model: " + ", ".join(bad_source[:6]))
            raise ValueError(
                f"the weights do not fit {type(model).__name__} outside its classifier ("
                + "; ".join(parts)
                + "); pass strict=False to load only the matching tensors"
            )
    with torch.no_grad():
        for k in loaded:
            own[k].copy_(state_dict[k])
    return LoadReport(tuple(loaded), tuple(reinit), tuple(ignored))


def _read_any(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """``(tensors, safetensors metadata)`` of a ``.safetensors`` file, ``(state dict, None)`` of a
    ``torch.save`` file; the kind is read from the first bytes, not the suffix."""
    if not path.exists():
        raise FileNotFoundError(
            f"{str(path)!r} is neither a registered model name nor an existing file"
        )
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a file")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header (the suffix only decides
    # which reader's error a damaged file gets)
    if (len(head) == 9 and head[8:9] == b"{") or path.suffix.lower() == ".safetensors":
        return read_safetensors(path)
    return load_torch_state_dict(path), None


def _check_name(name: str | None, stored: str, path: Path, what: str) -> None:
    if name is not None and name != stored:
        raise ValueError(
            f"{str(path)!r} holds {what} of architecture {stored!r}, not {name!r}; "
            f"use create_model({stored!r}, weights=...) or shufflenet.resolve_model(path)"
        )


def _check_kwargs(given: dict[str, Any], stored: dict[str, Any], path: Path) -> None:
    clash = {k: v for k, v in given.items() if k in stored and stored[k] != v}
    unknown = {k: v for k, v in given.items() if k not in stored}
    if clash:
        k, v = next(iter(clash.items()))
        raise ValueError(
            f"{str(path)!r} was saved with {k}={stored[k]!r}; {k}={v!r} contradicts it "
            "(a model file's architecture is the one its weights were trained for)"
        )
    if unknown:
        raise ValueError(
            f"{str(path)!r} stores the whole architecture; options {sorted(unknown)} cannot be added "
            "to it (only num_classes and in_chans can differ: the classifier or stem is then "
            "re-initialised)"
        )


def _rebuild(
    built: nn.Module,
    name: str,
    kwargs: dict[str, Any],
    overrides: dict[str, Any],
    strict: bool,
    path: Path,
) -> tuple[nn.Module, dict[str, Any], list[str]]:
    """``built`` (weights loaded) again with ``overrides`` (num_classes / in_chans) applied where they differ
    from ``kwargs``, loading every matching tensor; the notes say what was re-initialised."""
    changed = {
        k: v
        for k, v in overrides.items()
        if v is not None and kwargs.get(k, _default(name, k)) != v
    }
    if not changed:
        return built, kwargs, []
    new_kwargs = {**kwargs, **changed}
    model = build_model(name, **new_kwargs)
    try:
        report = load_matching(model, built.state_dict(), strict=strict)
    except ValueError as e:
        raise ValueError(f"{str(path)!r}: {e}") from None
    notes: list[str] = []
    if report.reinitialised:
        what = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        message = (
            f"{what} differs from the weights in {str(path)!r}: re-initialised "
            f"{', '.join(report.reinitialised)}; loaded the other {len(report.loaded)} tensors"
        )
        warnings.warn(message, UserWarning, stacklevel=4)
        notes.append(message)
    return model, new_kwargs, notes


def _default(name: str, key: str) -> Any:
    """The default of constructor argument ``key`` of the registered model ``name`` (``None`` if none)."""
    param = inspect.signature(get_model_factory(name)).parameters.get(key)
    if param is None or param.default is inspect.Parameter.empty:
        return None
    return param.default


def resolve_model(
    spec: str | os.PathLike[str],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    strict: bool = True,
    **arch_kwargs: Any,
) -> ResolvedModel:
    """Build the model ``spec`` names: a registered name or a file (see the module docstring).

    Args:
        spec: a registered model name, or the path of a model file, a published checkpoint or a state dict.
        arch: the architecture the file must hold (``create_model(arch, weights=spec)``); required for a
            plain state dict, checked against a model file or a converted checkpoint.
        num_classes, in_chans: build with another classifier or stem than the file's; the tensors that
            then do not fit are re-initialised (with a warning naming them).
        strict: refuse weights that do not fit outside the classifier (``False``: load what fits).
        **arch_kwargs: constructor arguments for a registered name or a plain state dict; for a model file
            they must agree with the stored ones.

    Raises:
        ValueError: an unknown name, an unreadable file, weights that do not fit, a contradiction between
            the arguments and the file. FileNotFoundError: a path that does not exist.
    """
    overrides = {"num_classes": num_classes, "in_chans": in_chans}
    given = {k: v for k, v in overrides.items() if v is not None}
    if not isinstance(spec, str | os.PathLike):
        raise TypeError(f"model must be a name or a path, got {type(spec).__name__}")
    path = Path(spec)
    if isinstance(spec, str) and not path.exists():
        if arch is not None and arch != spec:
            raise ValueError(f"model {spec!r} and arch={arch!r} name two architectures")
        if is_model(spec) or not (os.sep in spec or "/" in spec or "." in spec):
            model = build_model(spec, **given, **arch_kwargs)  # unknown: the registry's close names
            cfg = model.model_cfg
            chans = in_chans or 3
            return ResolvedModel(
                model.eval(),
                spec,
                dict(cfg["kwargs"]),
                _spec(chans),
                None,
                "registry",
                None,
            )
    if is_int8_file(path):  # an int8 model (shufflenet.quantize): runs as it is stored
        q, info = load_quantized(path)
        _check_name(arch, info.arch or arch, path, "an int8 model")
        return ResolvedModel(
            q, info.arch, info.arch_kwargs, info.input_spec, info.class_names, "int8", path
        )
    tensors, meta = _read_any(path)
    notes: list[str] = []
    if meta is not None and is_model_file(meta):
        info = parse_model_info(path, meta)
        _check_name(arch, info.arch, path, "a model")
        _check_kwargs(arch_kwargs, info.arch_kwargs, path)
        model = build_from_info(info, path)
        try:
            load_matching(model, tensors, strict=True)
        except ValueError as e:
            raise ValueError(
                f"weights in {str(path)!r} do not fit its own architecture: {e}"
            ) from None
        if any(k not in model.state_dict() for k in tensors):
            raise ValueError(f"weights in {str(path)!r} have tensors {info.arch} does not")
        model, kwargs, more = _rebuild(
            model, info.arch, dict(info.arch_kwargs), overrides, strict, path
        )
        notes += more
        spec_ = info.input_spec
        class_names = info.class_names
        if num_classes is not None and num_classes != len(class_names or [None] * num_classes):
            class_names = None
        if in_chans is not None and in_chans != spec_.in_chans:
            spec_ = _spec(in_chans, like=spec_)
        return ResolvedModel(
            model.eval(),
            info.arch,
            kwargs,
            spec_,
            class_names,
            "shufflenet",
            path,
            tuple(notes),
            dict(info.extra),
        )
    release = detect_release(tensors)
    if release is not None:
        converted = convert_release(tensors, release, file_name=path.name)
        cfg = converted.model.model_cfg
        _check_name(arch, cfg["arch"], path, f"a {release} checkpoint")
        _check_kwargs(arch_kwargs, cfg["kwargs"], path)
        notes.append(_NOTE_CONVERTED[release])
        model, kwargs, more = _rebuild(
            converted.model, cfg["arch"], dict(cfg["kwargs"]), overrides, strict, path
        )
        notes += more
        spec_ = converted.input_spec
        if in_chans is not None and in_chans != spec_.in_chans:
            spec_ = _spec(in_chans, like=spec_)
        return ResolvedModel(
            model.eval(),
            cfg["arch"],
            kwargs,
            spec_,
            None,
            release,
            path,
            tuple(notes),
            dict(converted.extra),
        )
    if arch is None:
        raise ValueError(
            f"{str(path)!r} is a plain state dict (no shufflenet metadata, not a known release): name its "
            "architecture, e.g. shufflenet.create_model(NAME, weights=PATH) or --weights with a model name"
        )
    model = build_model(arch, **given, **arch_kwargs)
    if num_classes is None:  # the classifier's size comes from the weights
        rows = {
            int(tensors[k].shape[0])
            for k in _head_keys(model)
            if k.endswith("weight") and k in tensors and tensors[k].dim() >= 1
        }
        if len(rows) == 1 and rows != {getattr(model, "num_classes", None)}:
            model = build_model(arch, num_classes=rows.pop(), **given, **arch_kwargs)
    try:
        report = load_matching(model, tensors, strict=strict)
    except ValueError as e:
        raise ValueError(f"weights in {str(path)!r} do not fit {arch}: {e}") from None
    if report.reinitialised:
        message = (
            f"weights in {str(path)!r} have no (or another shape of) {', '.join(report.reinitialised)}: "
            f"re-initialised; loaded the other {len(report.loaded)} tensors"
        )
        warnings.warn(message, UserWarning, stacklevel=3)
        notes.append(message)
    return ResolvedModel(
        model.eval(),
        arch,
        dict(model.model_cfg["kwargs"]),
        _spec(in_chans or 3),
        None,
        "state_dict",
        path,
        tuple(notes),
    )


def _spec(in_chans: int, like: InputSpec | None = None) -> InputSpec:
    """The default input convention for ``in_chans`` channels (``like``'s sizes when given)."""
    base = like or InputSpec()
    if in_chans == base.in_chans:
        return base
    if in_chans == 1:
        return dataclasses.replace(
            base, channel_order="L", mean=(base.mean[0],), std=(base.std[0],)
        )
    raise ValueError(f"in_chans={in_chans} must be 1 (grey) or 3 (colour)")


def create_model(
    name: str, weights: str | os.PathLike[str] | None = None, **kwargs: Any
) -> nn.Module:
    """Build the registered model ``name``, optionally with ``weights`` (see :func:`resolve_model`).

    Args:
        name: a name from :func:`shufflenet.list_models`, e.g. ``"shufflenet_v1_g3_x1_0"``.
        weights: a local file: a shufflenet model file (its stored architecture is used, and must be
            ``name``), a Megvii v1 or torchvision v2 checkpoint (converted in memory), or a state dict for
            ``name``. Nothing is downloaded.
        **kwargs: model options, e.g. ``num_classes=10``; with weights of another number of classes the
            classifier is re-initialised (with a warning naming its tensors) and everything else loaded.

    Without weights the model is in training mode (as the registry builds it); with weights, in eval mode.
    """
    if weights is None:
        return build_model(name, **kwargs)
    num_classes = kwargs.pop("num_classes", None)
    in_chans = kwargs.pop("in_chans", None)
    return resolve_model(
        weights, arch=name, num_classes=num_classes, in_chans=in_chans, **kwargs
    ).model
