"""Training: configuration and recipes, the training loop, checkpoints, metrics, DDP.

from shufflenet.train import TrainConfig, fit
result = fit(TrainConfig(model="shufflenet_v1_g3_x0_5", data="builtin", epochs=15))
print(result.final["val_acc1"], result.run_dir)

``fit`` also takes ready datasets and a ready model (``fit(config, train_set=..., val_set=..., model=...)``):
the experiment reports train through it.
"""

from .config import RECIPES, TrainConfig, resolve
from .engine import EvalResult, evaluate, recalibrate_bn, train_one_epoch
from .optim import build_optimizer, build_scheduler, param_groups
from .report import FitResult
from .run import Trainer, fit

__all__ = [
    "RECIPES",
    "EvalResult",
    "FitResult",
    "TrainConfig",
    "Trainer",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "fit",
    "param_groups",
    "recalibrate_bn",
    "resolve",
    "train_one_epoch",
]
