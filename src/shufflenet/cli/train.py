"""``shufflenet train``: train a model; every option is a field of :class:`~shufflenet.train.TrainConfig`.

With no arguments: the main job, a small ShuffleNet on the bundled digits (about a minute on 2 CPU cores),
evaluated at the end. ``--resume RUN_DIR`` continues a run with its saved configuration (options given
alongside override it, e.g. ``--epochs``); one process at a time trains into a run directory. ``--nproc N``
relaunches itself through torchrun for DDP.

Exit status: 0 done (or stopped by ``--stop-after-epochs``), 2 a user error (one line on stderr, before any
work where possible), 3 the loss or the weights became NaN or infinite (nothing non-finite is saved), 130
interrupted (a checkpoint was written).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing

from ..distributed import launch
from ..train.checkpoint import resume_config
from ..train.config import TrainConfig
from ..train.run import CheckpointWriteError, fit

_EXIT = {"completed": 0, "stopped": 0, "interrupted": 130, "nonfinite": 3}


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _base_type(annotation: typing.Any) -> type:
    """``int | None`` -> ``int``, ``dict[str, Any]`` -> ``dict``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_origin(annotation) or annotation


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shufflenet train",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = (
            "auto"
            if default is None
            else json.dumps(default)
            if isinstance(default, dict)
            else default
        )
        help_text = f"{f.metadata['help']} (default: {shown})"
        kind = _base_type(hints[f.name])
        # Every default is None, so that what the user gave is known (it overrides a resumed configuration).
        if kind is bool:
            p.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            p.add_argument(
                flag,
                type=_json_dict if kind is dict else kind,
                choices=f.metadata.get("choices"),
                default=None,
                help=help_text,
                metavar=f.name.upper(),
            )
    return p


def _report(result) -> str:
    final, cfg, ds = result.final, result.config, result.dataset
    lines = [
        "",
        f"model       {cfg.model}{' (small_input)' if cfg.small_input else ''}, "
        f"{result.params:,} parameters, {result.macs / 1e6:.2f} M multiply-adds per "
        f"{cfg.in_chans}x{cfg.image_size}x{cfg.image_size} image",
        f"data        {ds['name']}: {ds['train']:,} training / {ds['val']:,} validation images, "
        f"{len(ds['classes'])} classes (chance {1 / len(ds['classes']):.1%})",
        f"accuracy    validation top-1 {final['val_acc1']:.2%}, top-5 {final['val_acc5']:.2%}, "
        f"loss {final['val_loss']:.4f} after {result.epochs_done} epochs",
        f"speed       {result.images_per_s:,.0f} training images/s (mean over epochs)",
        f"run         {result.run_dir}",
    ]
    lines += [f"  plot      {p}" for p in result.plots]
    lines.append(f"  model     {result.model_path}")
    lines.append(f"next        shufflenet evaluate {result.model_path}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    try:
        if "resume" in given:
            cfg = resume_config(given.pop("resume"), **given)
        else:
            cfg = TrainConfig(**given)
        if cfg.nproc > 1 and "LOCAL_RANK" not in os.environ:
            return launch(cfg.nproc, argv)
        result = fit(cfg)
    except (ValueError, FileNotFoundError, CheckpointWriteError) as e:
        print(f"shufflenet train: error: {e}", file=sys.stderr)
        return 2
    if result.status == "completed" and int(os.environ.get("RANK", "0")) == 0:
        print(_report(result))
    return _EXIT[result.status]
