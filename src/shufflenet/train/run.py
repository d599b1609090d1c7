"""``fit(config)``: a whole training run, from data to the final evaluated model file.

Run directory (``OUTPUT/NAME/``): ``config.json`` (resolved), ``metrics.csv``/``metrics.jsonl``,
``curves.png``, ``confusion_matrix.png``, ``checkpoints/`` (resumable pairs), ``best.safetensors`` (best
validation top-1), ``model.safetensors`` (final weights, after batch-norm recalibration when asked) and
``summary.json``, and ``run.lock`` (held while a process trains into the directory, see
:mod:`.run_dir`). Only rank 0 writes.

Stopping: SIGINT or SIGTERM (Ctrl-C, a scheduler's preemption) finishes the current step, writes a checkpoint
and returns ``status="interrupted"`` (a second Ctrl-C aborts at once). A NaN or infinite loss stops before the
step is applied, and weights that became NaN or infinite are found at the end of the epoch; either way nothing
more is written and ``status="nonfinite"`` is returned: the newest checkpoint is the last good state, and no
non-finite model is ever saved as the result. ``stop_after_epochs`` returns ``status="stopped"`` after a checkpoint. A run resumed from any of these
(``config.resume``) ends with the same weights as one never stopped, on the same machine and settings.

The jobs of a run live in their own modules: the data and its loaders (:mod:`.loaders`), the model
(:mod:`.model`), the optimisation (:mod:`.optim`), the run directory (:mod:`.run_dir`), resuming
(:mod:`.resume`), one epoch and evaluation (:mod:`.engine`), checkpoint files (:mod:`.checkpoint`), and what
is reported (:mod:`.report`, :mod:`.metrics`). :class:`Trainer` ties them together and runs the epochs.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..data import set_epoch
from ..distributed import DistContext, init_distributed
from ..model_file import save_model
from .checkpoint import save_checkpoint, save_shard_state
from .config import TrainConfig, resolve
from .engine import EpochStats, EvalResult, evaluate, recalibrate_bn, train_one_epoch
from .loaders import prepare_data
from .metrics import MetricsWriter
from .model import build_model, check_outputs, describe_model, prepare_model
from .optim import build_optimisation
from .parallel_mode import full_model, resolve_parallel
from .report import (
    FitResult,
    announce_line,
    epoch_line,
    mean_speed,
    write_plots,
    write_summary,
)
from .resume import Progress, restore, training_state
from .run_dir import RunDirLock, check_output, create_run_dir, resume_run_dir

__all__ = ["CheckpointWriteError", "FitResult", "fit", "Trainer"]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written where it belongs (the message says where it went instead)."""


def fit(
    config: TrainConfig,
    *,
    train_set: Dataset | None = None,
    val_set: Dataset | None = None,
    model: nn.Module | None = None,
) -> FitResult:
    """Train ``config.model`` on ``config.data`` (see the module docstring); one call per process under DDP.

    ``train_set``/``val_set`` (both or neither): ready datasets to train and validate on instead of reading
    ``config.data`` (which then only names the data in the run's records). ``model``: a ready model (from
    :func:`shufflenet.create_model`, with as many outputs as the data has classes) trained in place instead
    of building ``config.model``. Everything else (schedule, non-finite stop, checkpoints, files) is the same.
    """
    config = resolve(config)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    ctx = init_distributed(config.device)
    try:
        return Trainer(config, ctx, train_set=train_set, val_set=val_set, model=model).run()
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


class Trainer:
    """One run: set up from a resolved configuration, then :meth:`run` trains, evaluates and writes."""

    def __init__(
        self,
        cfg: TrainConfig,
        ctx: DistContext,
        *,
        train_set: Dataset | None = None,
        val_set: Dataset | None = None,
        model: nn.Module | None = None,
    ) -> None:
        self.ctx = ctx
        self.main = ctx.is_main
        self.lock: RunDirLock | None = None
        if self.main:  # before any work: the output can be written, nobody trains into this run
            if cfg.resume:
                if resume_run_dir(cfg.resume).is_dir():
                    self.lock = RunDirLock(resume_run_dir(cfg.resume))
            else:
                check_output(cfg.output)
        try:
            self._setup(cfg, train_set, val_set, model)
        except BaseException:
            self.close()
            raise

    def _setup(
        self,
        cfg: TrainConfig,
        train_set: Dataset | None,
        val_set: Dataset | None,
        model: nn.Module | None,
    ) -> None:
        ctx = self.ctx
        if cfg.threads or ctx.local_world > 1:
            torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // ctx.local_world))
        _seed_everything(cfg.seed, cfg.deterministic)
        self.mode = resolve_parallel(cfg.parallel, ctx)
        ctx.shard_data = self.mode != "groups"
        cfg, self.data = prepare_data(cfg, ctx, train_set, val_set)
        self.classes, self.spec = self.data.classes, self.data.spec
        if model is None:
            small = self.spec.image_size <= 64
            model, small_input = build_model(cfg, len(self.classes), self.spec.in_chans, small)
            cfg = cfg.replace(small_input=small_input)
        else:
            check_outputs(model, len(self.classes))
            cfg = describe_model(cfg, model)
        self.cfg = cfg
        self.net = prepare_model(cfg, model, self.spec, self.mode, ctx)
        self.optim = build_optimisation(cfg, self.net.plain, self.data.steps_per_epoch, ctx.device)
        if cfg.resume:
            self.progress, self.run_dir = restore(
                cfg.resume, cfg, self.net, self.optim, self.mode, ctx
            )
        else:
            self.progress, self.run_dir = Progress(), create_run_dir(cfg, ctx)
        if self.main and self.lock is None:
            self.lock = RunDirLock(self.run_dir)
        self.last_eval: EvalResult | None = None
        self._stop = threading.Event()
        self.metrics = MetricsWriter(self.run_dir, cfg.tensorboard) if self.main else None

    def close(self) -> None:
        """Release the run directory (also done at the end of :meth:`run`)."""
        if self.lock is not None:
            self.lock.release()

    # ----------------------------------------------------------------- files
    def _log(self, msg: str) -> None:
        if self.main:
            tqdm.write(msg, file=sys.stdout)
            sys.stdout.flush()

    def _provenance(self) -> dict[str, Any]:
        return {
            "data": self.cfg.data,
            "val_fraction": self.cfg.val_fraction,
            "run_dir": str(self.run_dir),
        }

    def _save_model(self, name: str, model: nn.Module | None, extra: dict[str, Any]):
        if not self.main:
            return None
        return save_model(
            self.run_dir / name,
            model,
            self.spec,
            self.classes,
            extra={**extra, **self._provenance()},
        )

    def _save_checkpoint(self) -> None:
        model = full_model(self.net.model, self.mode)  # a collective in group-parallel mode
        directory = self.run_dir / "checkpoints"
        p = self.progress
        if self.mode == "groups":
            state = self.optim.optimizer.state_dict()
            save_shard_state(directory, p.epoch, p.step, self.ctx.rank, state)
            torch.distributed.barrier()  # every shard is on disk before the pair that names them
        if not self.main:
            return
        state = training_state(self.cfg, p, self.optim, self.mode, self.ctx)
        save = functools.partial(
            save_checkpoint,
            model=model,
            state=state,
            input_spec=self.spec,
            class_names=self.classes,
            keep=self.cfg.keep_checkpoints,
        )
        try:
            p.last_checkpoint = save(directory)
        except OSError as e:
            raise self._rescue(save, directory, e) from None

    def _rescue(self, save: Callable[[Path], Path], directory: Path, error: OSError) -> Exception:
        """The error to raise when ``directory`` cannot take a checkpoint, after saving it elsewhere."""
        reason = (
            "it is not a directory"
            if directory.exists() and not directory.is_dir()
            else f"{error.strerror or error}"
        )
        message = f"cannot write a checkpoint into {str(directory)!r}: {reason}"
        try:
            rescued = save(self.run_dir / "rescued-checkpoints")
        except OSError as e:
            return CheckpointWriteError(
                f"{message}; saving it elsewhere failed too ({e.strerror or e}): this epoch is lost"
            )
        return CheckpointWriteError(
            f"{message}; this epoch's checkpoint was saved as {str(rescued)!r}: repair "
            f"{str(directory)!r}, then continue with --resume {rescued}"
        )

    def _weights_finite(self) -> bool:
        """Whether every floating-point weight and statistic is finite, on every rank."""
        tensors = self.net.model.state_dict().values()
        bad = any(t.is_floating_point() and not torch.isfinite(t).all() for t in tensors)
        flag = torch.tensor([float(bad)], device=self.ctx.device)
        if self.ctx.distributed:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return not flag.item()

    # ----------------------------------------------------------------- loop
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._stop.set()
        self._log(
            f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint"
        )

    def _start_epoch(self) -> None:
        """Prepare epoch ``progress.epoch`` (from ``progress.step`` on, when resumed mid-epoch): position the
        loader. What changes with the epoch (e.g. a backbone frozen for the first epochs) belongs here, as a
        function of the epoch, so that a resumed run does the same."""
        set_epoch(self.data.train_loader, self.progress.epoch, self.progress.step)

    def _train_epoch(self) -> str | None:
        p, data = self.progress, self.data
        self._start_epoch()
        bar = tqdm(
            total=data.steps_per_epoch,
            initial=p.step,
            desc=f"epoch {p.epoch + 1}/{self.cfg.epochs}",
            disable=not (self.cfg.progress and self.main),
            leave=False,
            dynamic_ncols=True,
        )
        try:
            return train_one_epoch(
                self.net.model,
                data.train_loader,
                self.optim.optimizer,
                self.optim.scheduler,
                self.optim.criterion,
                self.ctx,
                p.stats,
                stop_requested=self._stop.is_set,
                amp_dtype=self.optim.amp_dtype,
                scaler=self.optim.scaler,
                channels_last=self.cfg.channels_last,
                max_steps=data.steps_per_epoch,
                bar=bar,
            )
        finally:
            bar.close()
            p.step = p.stats.steps

    def evaluate(self) -> EvalResult:
        """The model as it is now on the validation set (all ranks)."""
        self.last_eval = evaluate(
            self.net.eval_model,
            self.data.val_loader,
            len(self.classes),
            self.ctx,
            amp_dtype=self.optim.amp_dtype,
            channels_last=self.cfg.channels_last,
        )
        return self.last_eval

    def _end_epoch(self) -> None:
        p = self.progress
        row = {"epoch": p.epoch + 1, **p.stats.summary(self.ctx)}
        row["lr"] = self.optim.optimizer.param_groups[0]["lr"]
        row.update(self.evaluate().to_dict())
        row["epoch_seconds"] = p.stats.seconds
        skipped_examples = p.stats.skipped_examples
        p.history.append(row)
        p.epoch, p.step, p.stats = p.epoch + 1, 0, EpochStats()
        self._log(epoch_line(row, self.cfg.epochs))
        if row["skipped"] and skipped_examples:
            self._log(f"  unreadable, e.g.: {', '.join(skipped_examples)}")
        if row["val_acc1"] > p.best["val_acc1"]:  # the same on every rank
            p.best = {"val_acc1": row["val_acc1"], "epoch": row["epoch"]}
            model = full_model(self.net.model, self.mode)
            self._save_model("best.safetensors", model, {"epoch": row["epoch"]})
        if self.metrics is not None:
            self.metrics.write(p.history)

    def _loop(self) -> str:
        cfg, p, epochs_run = self.cfg, self.progress, 0
        while p.epoch < cfg.epochs:
            outcome = self._train_epoch()
            if outcome != "nonfinite" and not self._weights_finite():
                self._log(
                    f"stopped: the weights became NaN or infinite in epoch {p.epoch + 1} (by step "
                    f"{p.step}); nothing of this epoch was saved, the last good checkpoint is "
                    f"{p.last_checkpoint or 'none was written'}. Lower --lr or check the data."
                )
                return "nonfinite"
            if outcome == "nonfinite":
                where = p.last_checkpoint or "none was written"
                self._log(
                    f"stopped: the training loss became NaN or infinite at epoch {p.epoch + 1}, step "
                    f"{p.step + 1}; the last good checkpoint is {where}. Lower --lr or check the data."
                )
                return "nonfinite"
            if outcome == "stop":
                self._save_checkpoint()
                self._log(
                    f"interrupted; checkpoint {p.last_checkpoint}; continue with --resume {self.run_dir}"
                )
                return "interrupted"
            self._end_epoch()
            epochs_run += 1
            stop_now = cfg.stop_after_epochs is not None and epochs_run >= cfg.stop_after_epochs
            if p.epoch % cfg.save_every == 0 or p.epoch == cfg.epochs or stop_now:
                self._save_checkpoint()
            if stop_now and p.epoch < cfg.epochs:
                self._log(
                    f"stopped after {epochs_run} epochs; continue with --resume {self.run_dir}"
                )
                return "stopped"
        return "completed"

    # ----------------------------------------------------------------- end
    def _finish(self) -> FitResult:
        """Recalibrate batch norm when asked, evaluate, write the model file and the plots."""
        cfg, p, ran = self.cfg, self.progress, self.last_eval is not None
        if cfg.bn_recalibrate:
            loader = self.data.recalibration_loader(cfg.epochs)
            used = recalibrate_bn(self.net.eval_model, loader, cfg.bn_recalibrate_batches, self.ctx)
            self._log(f"batch-norm statistics recalibrated on {used} training batches")
            if not self._weights_finite():
                self._log(
                    "stopped: batch-norm recalibration gave NaN or infinite statistics; the final "
                    f"model was not saved, the last checkpoint is {p.last_checkpoint}"
                )
                return self._result("nonfinite")
        # the last epoch's evaluation is that of the final model unless the statistics changed since
        result = self.last_eval if ran and not cfg.bn_recalibrate else self.evaluate()
        final = {**result.to_dict(), "epochs": p.epoch, "bn_recalibrated": bool(cfg.bn_recalibrate)}
        model = full_model(self.net.model, self.mode)
        extra = {"epoch": p.epoch, "val_acc1": result.acc1, "val_acc5": result.acc5}
        model_path = self._save_model("model.safetensors", model, extra)
        plots = []
        if self.main and cfg.plots:
            title = f"{cfg.model} on {self.data.info()['name']}"
            plots = write_plots(self.run_dir, p.history, result, self.classes, title)
        return self._result("completed", final, plots, model_path)

    def _result(self, status: str, final=None, plots=None, model_path=None) -> FitResult:
        p = self.progress
        result = FitResult(
            status=status,
            run_dir=self.run_dir,
            config=self.cfg,
            epochs_done=p.epoch,
            history=p.history,
            final=final or {},
            params=self.net.params,
            macs=self.net.macs,
            images_per_s=mean_speed(p.history),
            model_path=model_path,
            checkpoint=p.last_checkpoint,
            plots=plots or [],
            dataset=self.data.info(),
            model=None if self.mode == "groups" else self.net.plain,
        )
        if self.main:
            write_summary(result)
        return result

    def run(self) -> FitResult:
        """Train the remaining epochs, then (if complete) evaluate and write the final model and plots."""
        where = f" over {self.ctx.world} processes" if self.ctx.distributed else ""
        self._log(
            announce_line(
                self.cfg,
                self.data.info(),
                self.spec.image_size,
                self.data.steps_per_epoch,
                self.net.params,
                self.net.macs,
                where,
            )
            + f", on {self.ctx.device}\nrun directory: {self.run_dir}"
        )
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            try:
                status = self._loop()
            finally:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)
                if self.metrics is not None:
                    self.metrics.close()
            return self._finish() if status == "completed" else self._result(status)
        finally:
            self.close()
