"""``fit(config)``: a whole training run, from data to the final evaluated model file.

Run directory (``OUTPUT/NAME/``): ``config.json`` (resolved), ``metrics.csv``/``metrics.jsonl``,
``curves.png``, ``confusion_matrix.png``, ``checkpoints/`` (resumable pairs), ``best.safetensors`` (best
validation top-1), ``model.safetensors`` (final weights, after batch-norm recalibration when asked) and
``summary.json``. Only rank 0 writes.

Stopping: SIGINT or SIGTERM (Ctrl-C, a scheduler's preemption) finishes the current step, writes a checkpoint
and returns ``status="interrupted"`` (a second Ctrl-C aborts at once). A NaN or infinite loss stops before the
step is applied, writes nothing more and returns ``status="nonfinite"``: the newest checkpoint is the last good
state. ``stop_after_epochs`` returns ``status="stopped"`` after a checkpoint. A run resumed from any of these
(``config.resume``) ends with the same weights as one never stopped, on the same machine and settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from ..complexity import profile
from ..data import build_dataset, build_transform, default_spec, make_loader, set_epoch
from ..distributed import DistContext, broadcast_object, init_distributed
from ..model_file import load_weights, save_model
from ..models import create_model
from ..utils.atomic import atomic_write
from .checkpoint import (
    find_checkpoint,
    get_rng_state,
    load_shard_state,
    save_checkpoint,
    save_shard_state,
    set_rng_state,
)
from .config import TrainConfig, resolve
from .engine import EpochStats, EvalResult, evaluate, recalibrate_bn, train_one_epoch
from .metrics import MetricsWriter, plot_confusion, plot_curves
from .optim import build_optimizer, build_scheduler
from .parallel_mode import full_model, load_full_weights, resolve_parallel, unwrap, wrap_model

__all__ = ["FitResult", "fit", "Trainer"]

# Changing these between a checkpoint and its resumption changes what is trained.
_RESUME_FIXED = (
    "model",
    "model_kwargs",
    "data",
    "image_size",
    "in_chans",
    "small_input",
    "seed",
    "batch_size",
)


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` did. ``final`` holds the validation metrics of the final model (empty when stopped)."""

    status: str  # "completed", "stopped", "interrupted" or "nonfinite"
    run_dir: Path
    config: TrainConfig
    epochs_done: int
    history: list[dict[str, Any]]
    final: dict[str, Any]
    params: int
    macs: int
    images_per_s: float
    model_path: Path | None = None
    checkpoint: Path | None = None
    plots: list[Path] = dataclasses.field(default_factory=list)
    dataset: dict[str, Any] = dataclasses.field(
        default_factory=dict
    )  # name, train/val sizes, classes


def fit(config: TrainConfig) -> FitResult:
    """Train ``config.model`` on ``config.data`` (see the module docstring); one call per process under DDP."""
    config = resolve(config)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    ctx = init_distributed(config.device)
    try:
        return Trainer(config, ctx).run()
    finally:
        ctx.close()
        torch.set_num_threads(threads)  # leave the caller's process as it was
        torch.use_deterministic_algorithms(deterministic)


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (user code may draw from the legacy global generator)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def _build_model(
    cfg: TrainConfig, num_classes: int, in_chans: int, small: bool
) -> tuple[nn.Module, bool]:
    """The model, and whether it got ``small_input=True`` (asked, or automatic where supported)."""
    kwargs = {"num_classes": num_classes, "in_chans": in_chans, **cfg.model_kwargs}
    want_small = small if cfg.small_input is None else cfg.small_input
    if want_small and "small_input" not in kwargs:
        try:
            return create_model(cfg.model, **kwargs, small_input=True), True
        except TypeError as e:  # this model has no CIFAR-style stem
            if "small_input" not in str(e) or cfg.small_input:
                raise
    return create_model(cfg.model, **kwargs), bool(kwargs.get("small_input", False))


class Trainer:
    """The state of one run; :meth:`run` trains, evaluates and writes."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext) -> None:
        self.ctx = ctx
        self.main = ctx.is_main
        if cfg.threads or ctx.local_world > 1:
            torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // ctx.local_world))
        _seed_everything(cfg.seed, cfg.deterministic)
        self.mode = resolve_parallel(cfg.parallel, ctx)
        ctx.shard_data = self.mode != "groups"
        if cfg.batch_size % ctx.data_world:
            raise ValueError(
                f"batch_size={cfg.batch_size} is not divisible by the {ctx.world} processes"
            )
        self.per_rank_batch = cfg.batch_size // ctx.data_world
        self._setup_data(cfg)
        self._setup_model()
        self._setup_optimisation()
        self.epoch, self.step = 0, 0  # epochs done, steps into the current epoch
        self.stats = EpochStats()
        self.history: list[dict[str, Any]] = []
        self.best = {"val_acc1": -1.0, "epoch": 0}
        self.last_checkpoint: Path | None = None
        self.run_dir = self._setup_run_dir()
        self._stop = threading.Event()
        self.metrics = MetricsWriter(self.run_dir, self.cfg.tensorboard) if self.main else None

    # ----------------------------------------------------------------- setup
    def _setup_data(self, cfg: TrainConfig) -> None:
        size_hint = cfg.image_size or 32
        self.train_set = build_dataset(cfg.data, True, cfg.val_fraction, size_hint)
        self.val_set = build_dataset(cfg.data, False, cfg.val_fraction, size_hint)
        self.classes = list(self.train_set.classes)
        self.spec = default_spec(self.train_set, cfg.image_size, cfg.in_chans)
        in_memory = getattr(self.train_set, "image_size", None) is not None
        self.cfg = cfg.replace(
            image_size=self.spec.image_size,
            in_chans=self.spec.in_chans,
            hflip=cfg.hflip if cfg.hflip is not None else (0.5 if self.train_set.hflip else 0.0),
            workers=cfg.workers
            if cfg.workers is not None
            else (0 if in_memory else min(4, os.cpu_count() or 1)),
            amp=bool(cfg.amp) if cfg.amp is not None else self.ctx.device.type == "cuda",
            channels_last=cfg.channels_last if cfg.channels_last is not None else True,
        )
        cfg = self.cfg
        self.loader_args = common = dict(
            seed=cfg.seed,
            rank=self.ctx.data_rank,
            world=self.ctx.data_world,
            workers=cfg.workers,
            pin_memory=self.ctx.device.type == "cuda",
        )
        self.train_loader = make_loader(
            self.train_set,
            build_transform(self.spec, True, cfg.hflip),
            self.per_rank_batch,
            True,
            **common,
        )
        self.val_loader = make_loader(
            self.val_set, build_transform(self.spec, False), self.per_rank_batch, False, **common
        )
        self.steps_per_epoch = min(len(self.train_loader), cfg.max_steps or len(self.train_loader))
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"no full batch: {len(self.train_set)} training images, batch_size={cfg.batch_size}"
            )

    def _setup_model(self) -> None:
        cfg = self.cfg
        small = self.spec.image_size <= 64
        model, small_input = _build_model(cfg, len(self.classes), self.spec.in_chans, small)
        self.cfg = cfg = cfg.replace(small_input=small_input)
        report = profile(model, (self.spec.in_chans, self.spec.image_size, self.spec.image_size))
        self.params, self.macs = report.params, report.macs
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = wrap_model(model, self.mode, cfg.sync_bn, self.ctx)
        self.plain = unwrap(self.model)  # whose parameters this rank optimises
        # DDP's forward synchronises; evaluate its module. A group-parallel model is evaluated as it is.
        is_ddp = isinstance(self.model, nn.parallel.DistributedDataParallel)
        self.eval_model = self.plain if is_ddp else self.model

    def _setup_optimisation(self) -> None:
        cfg = self.cfg
        self.optimizer = build_optimizer(cfg, self.plain)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.amp_dtype = None
        self.scaler = None
        if cfg.amp and self.ctx.device.type == "cuda":
            if torch.cuda.is_bf16_supported():
                self.amp_dtype = torch.bfloat16
            else:
                self.amp_dtype = torch.float16
                self.scaler = torch.amp.GradScaler("cuda")

    def _setup_run_dir(self) -> Path:
        cfg = self.cfg
        if cfg.resume:
            return self._resume(cfg.resume)
        run_dir = None
        if self.main:
            data = "builtin" if cfg.data == "builtin" else Path(cfg.data).name
            name = cfg.name or f"{cfg.model}-{data}-{datetime.now():%Y%m%d-%H%M%S}"
            run_dir = Path(cfg.output) / name
            n = 1
            while run_dir.exists():
                run_dir = Path(cfg.output) / f"{name}-{n}"
                n += 1
            run_dir.mkdir(parents=True)
            with atomic_write(run_dir / "config.json") as f:
                f.write(cfg.to_json() + "\n")
        return Path(broadcast_object(str(run_dir)))

    def _resume(self, where: str) -> Path:
        model_path, state_path, state = find_checkpoint(where)
        saved = state["config"]
        changed = [k for k in _RESUME_FIXED if saved.get(k) != getattr(self.cfg, k)]
        if changed and self.main:
            diffs = ", ".join(
                f"{k}={getattr(self.cfg, k)!r} (was {saved.get(k)!r})" for k in changed
            )
            print(f"warning: resuming with changed {diffs}", file=sys.stderr)
        if self.mode == "groups":
            load_full_weights(self.model, load_file(model_path), self.mode)
            state["optimizer"] = load_shard_state(model_path, self.ctx.rank)
        else:
            load_weights(self.plain, model_path)
        self._load_optimisation(state)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.stats = EpochStats(**state["epoch_stats"])
        self.history = list(state["history"])
        self.best = dict(state["best"])
        set_rng_state(state["rng"])
        self.last_checkpoint = model_path
        if self.main:
            print(
                f"resumed from {model_path} (epoch {self.epoch}, step {self.step})", file=sys.stderr
            )
        return model_path.parent.parent

    def _load_optimisation(self, state: dict[str, Any]) -> None:
        """Restore optimiser and scheduler state, keeping this configuration's hyper-parameters: a resumed run
        with a new ``--lr`` or ``--epochs`` follows the new schedule from the saved step on (and an unchanged
        one continues bit for bit: the same expression gives the same learning rate)."""
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.base_lrs = [h["initial_lr"] for h in hyper]
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group, h in zip(self.optimizer.param_groups, hyper):
            group.update(h, lr=h["initial_lr"] * factor)

    # ----------------------------------------------------------------- checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "step": self.step,
            # group-parallel ranks each hold their shard's optimiser state (save_shard_state)
            "optimizer": None if self.mode == "groups" else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch_stats": dataclasses.asdict(self.stats),
            "history": self.history,
            "best": self.best,
            "rng": get_rng_state(),
            "world": self.ctx.world,
        }

    def _save_checkpoint(self) -> None:
        model = full_model(self.model, self.mode)  # a collective in group-parallel mode
        directory = self.run_dir / "checkpoints"
        if self.mode == "groups":
            save_shard_state(
                directory, self.epoch, self.step, self.ctx.rank, self.optimizer.state_dict()
            )
            torch.distributed.barrier()  # every shard is on disk before the pair that names them
        if self.main:
            self.last_checkpoint = save_checkpoint(
                directory,
                model,
                self._state(),
                input_spec=self.spec,
                class_names=self.classes,
                keep=self.cfg.keep_checkpoints,
            )

    # ----------------------------------------------------------------- loop
    def _log(self, msg: str) -> None:
        if self.main:
            tqdm.write(msg, file=sys.stdout)
            sys.stdout.flush()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._stop.set()
        self._log(
            f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint"
        )

    def _train_epoch(self) -> str | None:
        set_epoch(self.train_loader, self.epoch, self.step)
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.step,
            desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
            disable=not (self.cfg.progress and self.main),
            leave=False,
            dynamic_ncols=True,
        )
        try:
            return train_one_epoch(
                self.model,
                self.train_loader,
                self.optimizer,
                self.scheduler,
                self.criterion,
                self.ctx,
                self.stats,
                stop_requested=self._stop.is_set,
                amp_dtype=self.amp_dtype,
                scaler=self.scaler,
                channels_last=self.cfg.channels_last,
                max_steps=self.steps_per_epoch,
                bar=bar,
            )
        finally:
            bar.close()
            self.step = self.stats.steps

    def _evaluate(self) -> EvalResult:
        return evaluate(
            self.eval_model,
            self.val_loader,
            len(self.classes),
            self.ctx,
            amp_dtype=self.amp_dtype,
            channels_last=self.cfg.channels_last,
        )

    def _end_epoch(self) -> None:
        row = {"epoch": self.epoch + 1, **self.stats.summary(self.ctx)}
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        row.update(self._evaluate().to_dict())
        row["epoch_seconds"] = self.stats.seconds
        skipped_examples = self.stats.skipped_examples
        self.history.append(row)
        self.epoch, self.step, self.stats = self.epoch + 1, 0, EpochStats()
        self._log(
            f"epoch {row['epoch']}/{self.cfg.epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}"
            f" | val loss {row['val_loss']:.4f} top-1 {row['val_acc1']:.3f} top-5 {row['val_acc5']:.3f}"
            f" | lr {row['lr']:.3g} | {row['images_per_s']:.0f} img/s"
            + (f" | {row['skipped']} unreadable images skipped" if row["skipped"] else "")
        )
        if row["skipped"] and skipped_examples:
            self._log(f"  unreadable, e.g.: {', '.join(skipped_examples)}")
        if row["val_acc1"] > self.best["val_acc1"]:  # the same on every rank
            self.best = {"val_acc1": row["val_acc1"], "epoch": row["epoch"]}
            model = full_model(self.model, self.mode)
            if self.main:
                save_model(
                    self.run_dir / "best.safetensors",
                    model,
                    self.spec,
                    self.classes,
                    extra={"epoch": row["epoch"], **self._provenance()},
                )
        if self.metrics is not None:
            self.metrics.write(self.history)

    def _loop(self) -> str:
        cfg, epochs_run = self.cfg, 0
        while self.epoch < cfg.epochs:
            outcome = self._train_epoch()
            if outcome == "nonfinite":
                where = self.last_checkpoint or "none was written"
                self._log(
                    f"stopped: the training loss became NaN or infinite at epoch {self.epoch + 1}, step "
                    f"{self.step + 1}; the last good checkpoint is {where}. Lower --lr or check the data."
                )
                return "nonfinite"
            if outcome == "stop":
                self._save_checkpoint()
                self._log(
                    f"interrupted; checkpoint {self.last_checkpoint}; continue with --resume {self.run_dir}"
                )
                return "interrupted"
            self._end_epoch()
            epochs_run += 1
            stop_now = cfg.stop_after_epochs is not None and epochs_run >= cfg.stop_after_epochs
            if self.epoch % cfg.save_every == 0 or self.epoch == cfg.epochs or stop_now:
                self._save_checkpoint()
            if stop_now and self.epoch < cfg.epochs:
                self._log(
                    f"stopped after {epochs_run} epochs; continue with --resume {self.run_dir}"
                )
                return "stopped"
        return "completed"

    # ----------------------------------------------------------------- end
    def _provenance(self) -> dict[str, Any]:
        return {
            "data": self.cfg.data,
            "val_fraction": self.cfg.val_fraction,
            "run_dir": str(self.run_dir),
        }

    def _finish(self) -> tuple[dict[str, Any], list[Path], Path | None]:
        cfg = self.cfg
        if cfg.bn_recalibrate:
            loader = make_loader(
                self.train_set,
                build_transform(self.spec, False),
                self.per_rank_batch,
                True,
                **self.loader_args,
            )
            set_epoch(loader, cfg.epochs)
            used = recalibrate_bn(self.eval_model, loader, cfg.bn_recalibrate_batches, self.ctx)
            self._log(f"batch-norm statistics recalibrated on {used} training batches")
        result = self._evaluate()
        final = {
            **result.to_dict(),
            "epochs": self.epoch,
            "bn_recalibrated": bool(cfg.bn_recalibrate),
        }
        model = full_model(self.model, self.mode)
        if not self.main:
            return final, [], None
        model_path = save_model(
            self.run_dir / "model.safetensors",
            model,
            self.spec,
            self.classes,
            extra={
                "epoch": self.epoch,
                "val_acc1": result.acc1,
                "val_acc5": result.acc5,
                **self._provenance(),
            },
        )
        if not cfg.plots:
            return final, [], model_path
        title = f"{cfg.model} on {self.train_set.name}"
        plots = [
            plot_curves(self.history, self.run_dir / "curves.png", title),
            plot_confusion(
                result.confusion,
                self.classes,
                self.run_dir / "confusion_matrix.png",
                f"{title}: validation top-1 {result.acc1:.1%}",
            ),
        ]
        return final, plots, model_path

    def _summary(
        self, status: str, final: dict, plots: list[Path], model_path: Path | None
    ) -> FitResult:
        speeds = [r["images_per_s"] for r in self.history if r.get("images_per_s")]
        result = FitResult(
            status=status,
            run_dir=self.run_dir,
            config=self.cfg,
            epochs_done=self.epoch,
            history=self.history,
            final=final,
            params=self.params,
            macs=self.macs,
            images_per_s=float(np.mean(speeds)) if speeds else 0.0,
            model_path=model_path,
            checkpoint=self.last_checkpoint,
            plots=plots,
            dataset=self._dataset_info(),
        )
        if self.main:
            summary = {
                k: str(v) if isinstance(v, Path) else v
                for k, v in dataclasses.asdict(result).items()
                if k not in ("config", "history", "plots")
            }
            summary["plots"] = [str(p) for p in plots]
            with atomic_write(self.run_dir / "summary.json") as f:
                json.dump(summary, f, indent=2, default=str)
        return result

    def _dataset_info(self) -> dict[str, Any]:
        return {
            "name": self.train_set.name,
            "train": len(self.train_set),
            "val": len(self.val_set),
            "classes": self.classes,
        }

    def _announce(self) -> None:
        cfg, spec = self.cfg, self.spec
        self._log(
            f"training {cfg.model}{' (small_input)' if cfg.small_input else ''} on {self.train_set.name}: "
            f"{len(self.train_set):,} training / {len(self.val_set):,} validation images, "
            f"{spec.in_chans}x{spec.image_size}x{spec.image_size}, {len(self.classes)} classes\n"
            f"{self.params:,} parameters, {self.macs / 1e6:.1f} M multiply-adds per image; "
            f"{cfg.epochs} epochs of {self.steps_per_epoch} steps, batch {cfg.batch_size}"
            f"{f' over {self.ctx.world} processes' if self.ctx.distributed else ''}, {cfg.optimizer} lr {cfg.lr:g}, "
            f"{cfg.schedule} schedule, on {self.ctx.device}\nrun directory: {self.run_dir}"
        )

    def run(self) -> FitResult:
        """Train the remaining epochs, then (if complete) evaluate and write the final model and plots."""
        self._announce()
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            status = self._loop()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if self.metrics is not None:
                self.metrics.close()
        final, plots, model_path = ({}, [], None) if status != "completed" else self._finish()
        return self._summary(status, final, plots, model_path)
