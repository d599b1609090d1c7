"""Fine-tuning: a run that starts from other weights (``TrainConfig.init``), a backbone trained at a fraction
of the classifier's learning rate, and a backbone frozen for the first epochs.

The starting weights are anything :func:`shufflenet.resolve_model` reads: a shufflenet model file, a Megvii
v1 or torchvision v2 checkpoint (converted in memory), or a plain state dict of ``TrainConfig.model``; a
registered name has no weights and is an error. The run's model is the file's architecture with one output
per class of the new data; every tensor whose name and shape match is loaded (:func:`shufflenet.load_matching`),
the classifier is re-initialised when the number of classes differs (or when the file names its classes and
the data's names differ), and a tensor outside the classifier that does not fit is an error unless
``init_strict="off"``. A ``model`` other than the default must be the file's architecture. The file's input
convention (channel order, pixel scale, normalisation; e.g. BGR 0-255 for Megvii's release) is kept: the run
trains and evaluates with it and stores it in its model files, so that ``evaluate``, ``predict`` and
``export`` use it too; ``image_size`` may change its size. Class names come from the data.

The *backbone* is everything but the classifier (the last module with parameters of its own, see
:func:`classifier_keys`). While it is frozen its parameters get no gradient (the optimiser leaves them, and
their weight decay, alone) and its batch-norm layers run in eval mode (running statistics used, not updated),
so the backbone is bitwise unchanged. Whether it is frozen is a function of the epoch
(``epoch < freeze_epochs``), set at the start of every epoch, so a resumed run does exactly what an
uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..data.spec import InputSpec
from ..data.transforms import SMALL_IMAGE_MAX
from ..factory import LoadReport, ResolvedModel, _head_keys, _read_any, load_matching, resolve_model
from ..interop.releases import detect_release
from ..model_file import is_model_file
from ..models import create_model
from .checkpoint import find_checkpoint
from .config import DEFAULT_MODEL, TrainConfig
from .optim import param_groups

__all__ = [
    "BackboneFreezer",
    "InitSource",
    "classifier_keys",
    "finetune_param_groups",
    "init_spec",
    "read_init",
]

_DATA_DECIDES = ("num_classes", "in_chans")


def classifier_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of ``model``'s classifier (the last module holding parameters of its own:
    ``fc`` of the ShuffleNets); every other parameter is the backbone's."""
    return _head_keys(model)


def init_spec(source: InputSpec, image_size: int | None) -> InputSpec:
    """``source``'s convention at another ``image_size`` (``None``: the source's own); the evaluation resize
    follows the rule of :func:`shufflenet.data.default_spec` (none up to 64 px, else side / 0.875)."""
    if image_size is None or image_size == source.image_size:
        return source
    resize = None if image_size <= SMALL_IMAGE_MAX else round(image_size / 0.875)
    return dataclasses.replace(source, image_size=image_size, resize_size=resize)


@dataclasses.dataclass(frozen=True)
class InitSource:
    """The weights a run starts from, as read before the data is known.

    ``spec``: the input convention the run keeps (``None`` for a plain state dict, which carries none: the
    data's is used); ``tensors``: the source's state dict in this library's names."""

    path: Path
    source: str
    arch: str
    arch_kwargs: dict[str, Any]
    spec: InputSpec | None
    tensors: dict[str, torch.Tensor]
    notes: tuple[str, ...]
    class_names: list[str] | None = None

    def build(
        self, num_classes: int, strict: bool, class_names: list[str] | None = None
    ) -> tuple[nn.Module, LoadReport]:
        """The architecture with ``num_classes`` outputs and every matching tensor loaded (training mode).

        The classifier is re-initialised when the number of classes differs, and also when both the file and
        ``class_names`` name the classes and the names differ (other classes, or another order)."""
        kwargs = {**self.arch_kwargs, "num_classes": num_classes}
        model = create_model(self.arch, **kwargs)
        tensors, dropped = self.tensors, ()
        named = self.class_names is not None and class_names is not None
        if named and list(self.class_names) != list(class_names):
            head = classifier_keys(model)
            dropped = tuple(k for k in tensors if k in head)
            tensors = {k: v for k, v in tensors.items() if k not in head}
        try:
            report = load_matching(model, tensors, strict=strict)
        except ValueError as e:
            hint = "pass strict=False to load only the matching tensors"
            text = str(e).replace(hint, "--init-strict off loads only the matching tensors")
            raise ValueError(f"init={str(self.path)!r}: {text}") from None
        if dropped:
            report = LoadReport(report.loaded, report.reinitialised, report.ignored + dropped)
        return model.train(), report


def _explicit_arch(cfg: TrainConfig) -> str | None:
    """The architecture the configuration names on purpose (``model`` other than the default), which a
    file must then hold."""
    return cfg.model if cfg.model != DEFAULT_MODEL else None


def read_init(cfg: TrainConfig) -> InitSource:
    """Read ``cfg.init`` (on a resumed run: the checkpoint's model file, which holds the same architecture
    and convention, so the original file is not needed again).

    Raises ``ValueError`` (a registered name, an unreadable file, an architecture that contradicts
    ``cfg.model``, options the file cannot take) or ``FileNotFoundError``; nothing is written.
    """
    if cfg.init is None:
        raise ValueError("read_init needs a configuration with init set")
    where: str | Path = cfg.init
    if cfg.resume:
        where, _, _ = find_checkpoint(cfg.resume)
    path = Path(where)
    if not path.exists() and not isinstance(where, Path):
        try:
            named = resolve_model(cfg.init)
        except (ValueError, TypeError) as e:
            raise ValueError(f"init={cfg.init!r}: {e}") from None
        if named.source == "registry":
            raise ValueError(
                f"init={cfg.init!r} is a registered model name, which has no weights; give a model file "
                "(`shufflenet train` writes one), a Megvii v1 or torchvision v2 checkpoint, or a state dict"
            )
    extra = {k: v for k, v in cfg.model_kwargs.items() if k not in _DATA_DECIDES}
    try:
        tensors, meta = _read_any(path)
    except ValueError as e:
        raise ValueError(f"init={str(path)!r}: {e}") from None
    if (meta is None or not is_model_file(meta)) and detect_release(tensors) is None:
        return _plain_state_dict(cfg, path, tensors, extra)
    try:
        resolved = resolve_model(path, arch=_explicit_arch(cfg), **extra)
    except (ValueError, TypeError) as e:
        raise ValueError(f"init={str(path)!r}: {e}") from None
    return _from_resolved(resolved, path)


def _from_resolved(resolved: ResolvedModel, path: Path) -> InitSource:
    kwargs = {k: v for k, v in resolved.arch_kwargs.items() if k != "num_classes"}
    if resolved.input_spec.in_chans != kwargs.get("in_chans", 3):
        kwargs["in_chans"] = resolved.input_spec.in_chans
    return InitSource(
        path,
        resolved.source,
        resolved.name,
        kwargs,
        resolved.input_spec,
        resolved.model.state_dict(),
        resolved.notes,
        resolved.class_names,
    )


def _plain_state_dict(
    cfg: TrainConfig, path: Path, tensors: dict[str, torch.Tensor], extra: dict[str, Any]
) -> InitSource:
    """A state dict without metadata: read as ``cfg.model`` (with ``cfg.model_kwargs`` and the CIFAR stem
    when ``cfg.small_input`` asks for it); its input convention is the data's."""
    kwargs = dict(extra)
    if cfg.small_input:
        kwargs.setdefault("small_input", True)
    if cfg.in_chans is not None:
        kwargs["in_chans"] = cfg.in_chans
    return InitSource(path, "state_dict", cfg.model, kwargs, None, tensors, ())


def finetune_param_groups(
    model: nn.Module, weight_decay: float, lr: float, backbone_lr_mult: float
) -> list[dict]:
    """The groups of :func:`shufflenet.train.param_groups` (decayed / not decayed) for the classifier at
    ``lr`` and for the backbone at ``lr * backbone_lr_mult``: up to four groups, the classifier's first (the
    rate a run logs is the first group's); a group without parameters is left out."""
    head = classifier_keys(model)
    head_ids = {id(p) for name, p in model.named_parameters() if name in head}
    groups = []
    for part_lr, in_head in ((lr, True), (lr * backbone_lr_mult, False)):
        for g in param_groups(model, weight_decay):
            params = [p for p in g["params"] if (id(p) in head_ids) == in_head]
            if params:
                groups.append({**g, "params": params, "lr": part_lr})
    return groups


class BackboneFreezer:
    """Freezes and unfreezes ``model``'s backbone (everything but its classifier).

    Frozen: the backbone's parameters have ``requires_grad=False`` and each of its batch-norm layers runs in
    eval mode whatever ``model.train()`` says (a forward pre-hook clears its ``training`` flag), so neither its
    weights nor its running statistics change. Build the optimiser before the first freeze: it must hold the
    backbone's parameters for when they thaw.
    """

    def __init__(self, model: nn.Module) -> None:
        head = classifier_keys(model)
        self.params = [p for name, p in model.named_parameters() if name not in head]
        prefixes = {k.rsplit(".", 1)[0] for k in head}
        self.norms = [
            m
            for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and name not in prefixes
        ]
        self._handles: list[RemovableHandle] = []
        self.frozen = False

    def set(self, frozen: bool) -> None:
        """Freeze (``True``) or unfreeze (``False``); doing it twice is harmless. Unfreezing leaves the
        batch-norm layers' mode to the next ``model.train()``/``model.eval()``."""
        for p in self.params:
            p.requires_grad_(not frozen)
        for h in self._handles:
            h.remove()
        self._handles = []
        if frozen:
            for m in self.norms:
                m.eval()
                self._handles.append(m.register_forward_pre_hook(_keep_eval))
        self.frozen = frozen


def _keep_eval(module: nn.Module, args: Any) -> None:
    module.training = False
