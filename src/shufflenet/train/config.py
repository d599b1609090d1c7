"""Training configuration: one dataclass, recipes that fill what the user left open, JSON round trip.

A field left ``None`` is resolved: optimisation fields from the recipe (:func:`resolve`), data fields from the
dataset and device fields from the machine (in :func:`shufflenet.train.run.fit`). The run directory keeps the
fully resolved configuration (``config.json``).

Recipes:

- ``default``, for small datasets trained from scratch in minutes: AdamW, learning rate 3e-3, weight decay
  0.05 on convolution and linear weights, one warm-up epoch then cosine decay to 0, no label smoothing.
  (SGD at any useful rate is unstable early on a fresh ShuffleNet: the pooled features have a squared norm
  near 10^3, so each classifier update moves the logits by ~10^3 x lr; AdamW's steps do not scale with it.)
- ``paper``, ShuffleNet's ImageNet recipe (Zhang et al. 2017, Sec. 4; label smoothing and batch-norm
  recalibration as in the released training code): SGD momentum 0.9, learning rate 0.5 per 1024 images
  decayed linearly to 0, weight decay 4e-5 on convolution and linear weights only, label smoothing 0.1,
  batch-norm statistics recalibrated on the training images at the end.

Choosing the other optimiser than the recipe's brings that optimiser's defaults (:data:`OPTIMIZER_DEFAULTS`):
SGD with Nesterov momentum, 0.02 per 64 images, weight decay 5e-4; AdamW 2e-3, weight decay 0.05.
A learning rate with ``lr_batch`` scales linearly with the global batch size: ``lr * batch_size / lr_batch``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "TrainConfig",
    "RECIPES",
    "OPTIMIZER_DEFAULTS",
    "resolve",
    "DEFAULT_MODEL",
    "DEFAULT_EPOCHS",
    "MAX_IMAGE_SIZE",
]

DEFAULT_MODEL = "shufflenet_v1_g3_x0_5"
DEFAULT_EPOCHS = 10

_COMMON = {"momentum": 0.9, "schedule": "cosine", "warmup_epochs": 1.0, "label_smoothing": 0.0}
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.02, "lr_batch": 64, "weight_decay": 5e-4, "nesterov": True},
    "adamw": {"lr": 2e-3, "lr_batch": None, "weight_decay": 0.05, "nesterov": False},
}
RECIPES: dict[str, dict[str, Any]] = {
    "default": {
        **_COMMON,
        "optimizer": "adamw",
        "lr": 3e-3,
        "lr_batch": None,
        "weight_decay": 0.05,
        "nesterov": False,
        "bn_recalibrate": False,
    },
    "paper": {
        **_COMMON,
        "optimizer": "sgd",
        "lr": 0.5,
        "lr_batch": 1024,
        "nesterov": False,
        "weight_decay": 4e-5,
        "schedule": "linear",
        "warmup_epochs": 0.0,
        "label_smoothing": 0.1,
        "bn_recalibrate": True,
    },
}
_FLOAT32_MAX = (
    3.4028234663852886e38  # parameters are float32: a larger rate overflows in the update
)
MAX_IMAGE_SIZE = 4096  # pixels per side: one 3x4096x4096 float image is 200 MB
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("linear", "cosine", "constant")
PARALLEL = ("auto", "none", "ddp", "groups")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` means "resolve automatically" (see module doc)."""

    # what to train on what
    model: str = _f(DEFAULT_MODEL, "registered model name (`shufflenet list`)")
    data: str = _f(
        "builtin",
        "'builtin' (bundled digits) or a directory: MNIST IDX, CIFAR batches, image folder",
    )
    epochs: int = _f(DEFAULT_EPOCHS, "training epochs")
    recipe: str = _f(
        "default", "hyper-parameter preset: 'default' (small data) or 'paper' (ShuffleNet ImageNet)"
    )
    model_kwargs: dict[str, Any] = _f(
        {}, "extra model constructor arguments, JSON (e.g. '{\"drop_rate\": 0.1}')"
    )
    # data
    batch_size: int = _f(64, "global batch size (split evenly across processes)")
    image_size: int | None = _f(
        None, "model input side in pixels; default: the dataset's (224 for folders)"
    )
    in_chans: int | None = _f(None, "1 (grey) or 3 (RGB); default: the dataset's")
    small_input: bool | None = _f(
        None, "CIFAR-style stem; default: on for images <= 64 px where the model has it"
    )
    hflip: float | None = _f(None, "horizontal-flip probability; default 0.5, 0 for digits")
    val_fraction: float = _f(0.2, "share held out for validation when the data has no test split")
    workers: int | None = _f(
        None, "data-loading worker processes; default 0 in memory, 2 for image folders"
    )
    # optimisation (None: from the recipe)
    optimizer: str | None = _f(None, "sgd or adamw", choices=OPTIMIZERS)
    lr: float | None = _f(
        None, "peak learning rate; default: the recipe's, scaled by the batch size"
    )
    momentum: float | None = _f(None, "SGD momentum")
    nesterov: bool | None = _f(None, "Nesterov momentum (SGD)")
    weight_decay: float | None = _f(
        None, "weight decay of convolution and linear weights (never BN or bias)"
    )
    schedule: str | None = _f(None, "learning-rate schedule", choices=SCHEDULES)
    warmup_epochs: float | None = _f(None, "linear warm-up, epochs")
    label_smoothing: float | None = _f(None, "label smoothing of the training loss")
    bn_recalibrate: bool | None = _f(
        None, "recompute batch-norm statistics on training images at the end"
    )
    bn_recalibrate_batches: int = _f(100, "batches used to recalibrate batch norm")
    # hardware
    device: str = _f("auto", "'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...")
    amp: bool | None = _f(None, "mixed precision (CUDA only; default on with CUDA)")
    channels_last: bool | None = _f(
        None,
        "channels-last memory format for model and inputs; default on (about 2x faster on CPU)",
    )
    threads: int | None = _f(None, "CPU threads per process; default: cores / processes")
    deterministic: bool = _f(
        False, "torch.use_deterministic_algorithms (exact repeats; slower on GPU)"
    )
    parallel: str = _f(
        "auto",
        "'ddp' (data parallel), 'groups' (group-parallel), 'none'; auto: ddp under torchrun",
        choices=PARALLEL,
    )
    nproc: int = _f(1, "launch this many processes on this machine (torchrun) and train with DDP")
    sync_bn: bool = _f(False, "synchronise batch-norm statistics across processes (DDP)")
    # run
    seed: int = _f(0, "seed of initialisation, shuffling and augmentation")
    output: str = _f("runs", "parent directory of run directories")
    name: str | None = _f(None, "run directory name; default MODEL-DATA-TIMESTAMP")
    resume: str | None = _f(None, "continue from a run directory or checkpoint file")
    save_every: int = _f(1, "write a checkpoint every N epochs")
    keep_checkpoints: int = _f(2, "checkpoints kept (older ones are deleted)")
    stop_after_epochs: int | None = _f(
        None, "stop (resumably) after this many epochs of this invocation"
    )
    max_steps: int | None = _f(None, "at most this many steps per epoch (smoke tests)")
    progress: bool = _f(True, "progress bar")
    plots: bool = _f(True, "write curves.png and confusion_matrix.png at the end")
    tensorboard: bool = _f(True, "also log to TensorBoard when it is installed")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training options {unknown}; known: {sorted(names)}")
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _check(cfg: TrainConfig) -> None:
    if cfg.recipe not in RECIPES:
        raise ValueError(f"recipe={cfg.recipe!r} is not one of {sorted(RECIPES)}")
    for name, allowed in (
        ("optimizer", OPTIMIZERS),
        ("schedule", SCHEDULES),
        ("parallel", PARALLEL),
    ):
        value = getattr(cfg, name)
        if value is not None and value not in allowed:
            raise ValueError(f"{name}={value!r} must be one of {allowed}")
    for name in (
        "epochs",
        "batch_size",
        "save_every",
        "keep_checkpoints",
        "nproc",
        "bn_recalibrate_batches",
    ):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    for name in ("threads", "workers", "stop_after_epochs", "max_steps", "in_chans"):
        value = getattr(cfg, name)
        if value is None:
            continue
        low = 0 if name == "workers" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            rule = "a non-negative integer" if low == 0 else "a positive integer"
            raise ValueError(f"{name}={value!r} must be {rule} (or left unset: automatic)")
    if cfg.in_chans is not None and cfg.in_chans not in (1, 3):
        raise ValueError(f"in_chans={cfg.in_chans} must be 1 (grey) or 3 (RGB)")
    size = cfg.image_size
    if size is not None and (
        not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_IMAGE_SIZE
    ):
        raise ValueError(
            f"image_size={size!r} must be a whole number of pixels from 1 to {MAX_IMAGE_SIZE} "
            "(or left unset: the dataset's)"
        )
    if not isinstance(cfg.model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict, got {type(cfg.model_kwargs).__name__}")
    if "in_chans" in cfg.model_kwargs:
        raise ValueError(
            f"model_kwargs in_chans={cfg.model_kwargs['in_chans']!r}: the input channels are set by "
            "in_chans (--in-chans), not model_kwargs"
        )
    if cfg.hflip is not None and not 0 <= cfg.hflip <= 1:
        raise ValueError(f"hflip={cfg.hflip} must be a probability in [0, 1]")
    if cfg.lr is not None and not 0 < cfg.lr <= _FLOAT32_MAX:
        raise ValueError(
            f"lr={cfg.lr!r} must be a positive finite number (at most {_FLOAT32_MAX:.3g})"
        )
    if not 0 < cfg.val_fraction < 1:
        raise ValueError(f"val_fraction={cfg.val_fraction} must lie strictly between 0 and 1")


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Validate ``cfg`` and fill the optimisation fields left ``None`` (recipe, then optimiser defaults)."""
    _check(cfg)
    recipe = dict(RECIPES[cfg.recipe])
    if cfg.optimizer is not None and cfg.optimizer != recipe["optimizer"]:
        recipe.update(OPTIMIZER_DEFAULTS[cfg.optimizer], optimizer=cfg.optimizer)
    lr_batch = recipe.pop("lr_batch")
    filled = {k: v if getattr(cfg, k) is None else getattr(cfg, k) for k, v in recipe.items()}
    if cfg.lr is None and lr_batch:
        filled["lr"] = recipe["lr"] * cfg.batch_size / lr_batch
    return cfg.replace(**filled)
