"""Training: configuration and recipes, the training loop, checkpoints, metrics, DDP.

from shufflenet.train import TrainConfig, fit
result = fit(TrainConfig(model="shufflenet_v1_g3_x0_5", data="builtin", epochs=15))
print(result.final["val_acc1"], result.run_dir)

``fit`` also takes ready datasets and a ready model (``fit(config, train_set=..., val_set=..., model=...)``):
the experiment reports train through it. ``fit(TrainConfig(init=PATH, freeze_epochs=2, ...))`` fine-tunes
from a model file or a published checkpoint (:mod:`shufflenet.train.finetune`).
"""

from .config import RECIPES, TrainConfig, resolve
from .engine import EvalResult, evaluate, recalibrate_bn, train_one_epoch
from .finetune import BackboneFreezer, classifier_keys, finetune_param_groups, read_init
from .optim import build_optimizer, build_scheduler, param_groups
from .report import FitResult
from .run import Trainer, fit

__all__ = [
    "RECIPES",
    "BackboneFreezer",
    "EvalResult",
    "FitResult",
    "TrainConfig",
    "Trainer",
    "build_optimizer",
    "build_scheduler",
    "classifier_keys",
    "evaluate",
    "finetune_param_groups",
    "fit",
    "param_groups",
    "read_init",
    "recalibrate_bn",
    "resolve",
    "train_one_epoch",
]
