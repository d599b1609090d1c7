"""Training checkpoints: a model file plus a sidecar with everything else needed to resume exactly.

A checkpoint is a pair in ``RUN/checkpoints/``, named after its position in training
(``e0003s000000``: 3 epochs done, 0 steps into the 4th; names sort in training order):

- ``NAME.safetensors``: the weights, a model file of :func:`shufflenet.checkpoint.save_model`, so that
  ``evaluate``, ``predict`` and ``export`` read it directly;
- ``NAME.state.pt``: optimiser, scheduler and gradient-scaler state, position (epoch, step), partial epoch
  totals, metric history, best accuracy, the resolved configuration and the random-number-generator states of
  Python, NumPy and torch. Written with ``torch.save`` and read with ``torch.load(weights_only=True)``, which
  rebuilds tensors and plain containers only: loading never runs code from the file.

Both are written atomically (sidecar first); a random token written into both ties a pair together, so a
pair from two different saves is never resumed. Only the newest ``keep`` pairs are kept.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.spec import InputSpec
from ..model_file import read_info, save_model
from ..utils.atomic import atomic_path
from .config import TrainConfig

__all__ = [
    "STATE_FORMAT",
    "checkpoint_name",
    "save_checkpoint",
    "load_state",
    "find_checkpoint",
    "get_rng_state",
    "set_rng_state",
    "resume_config",
    "save_shard_state",
    "load_shard_state",
]

STATE_FORMAT = "shufflenet.train-state/1"
_NAME = re.compile(r"^e(\d{4,})s(\d{6,})\.state\.pt$")


def checkpoint_name(epoch: int, step: int) -> str:
    """``e{epochs done}s{steps into the next epoch}``."""
    return f"e{epoch:04d}s{step:06d}"


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states as tensors and plain containers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the legacy global one)
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module,
    state: dict[str, Any],
    *,
    input_spec: InputSpec,
    class_names: list[str],
    keep: int = 2,
) -> Path:
    """Write the pair for ``state["epoch"]``/``state["step"]`` atomically; returns the model file's path."""
    directory = Path(directory)
    name = checkpoint_name(state["epoch"], state["step"])
    token = uuid.uuid4().hex
    with atomic_path(directory / f"{name}.state.pt") as tmp:
        torch.save({**state, "format": STATE_FORMAT, "token": token}, tmp)
    model_path = save_model(
        directory / f"{name}.safetensors",
        model,
        input_spec=input_spec,
        class_names=class_names,
        extra={"checkpoint_token": token, "epoch": state["epoch"], "step": state["step"]},
    )
    for old_model, _ in _pairs(directory)[:-keep]:
        stem = old_model.name[: -len(".safetensors")]
        for p in directory.glob(f"{stem}.*"):  # the pair and any per-rank shards
            p.unlink(missing_ok=True)
    return model_path


def _shard_path(directory: Path, name: str, rank: int) -> Path:
    return directory / f"{name}.rank{rank}.optim.pt"


def save_shard_state(
    directory: str | os.PathLike[str], epoch: int, step: int, rank: int, obj: Any
) -> Path:
    """One rank's own state (a group-parallel rank's optimiser shard) for the checkpoint at epoch/step;
    written before the pair so that a complete pair implies complete shards."""
    path = _shard_path(Path(directory), checkpoint_name(epoch, step), rank)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def load_shard_state(model_path: str | os.PathLike[str], rank: int) -> Any:
    """What :func:`save_shard_state` wrote for ``rank`` beside the model file ``model_path``."""
    model_path = Path(model_path)
    path = _shard_path(model_path.parent, model_path.name[: -len(".safetensors")], rank)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(model_path)!r} has no state for rank {rank} ({path.name})"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{str(path)!r} is not a readable training-state shard: {e}") from None


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a sidecar; a missing, truncated or foreign file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training state {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle and unpickling-policy errors all mean "not our file"
        raise ValueError(
            f"{str(path)!r} is not a readable shufflenet training state (truncated, or another kind of "
            f"file?): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{str(path)!r} is not a shufflenet training state (format {found!r}, expected {STATE_FORMAT!r})"
        )
    return state


def _pairs(directory: Path) -> list[tuple[Path, Path]]:
    """Complete (model, state) pairs in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    out = []
    for p in sorted(directory.iterdir()):
        if _NAME.match(p.name):
            model = p.with_name(p.name[: -len(".state.pt")] + ".safetensors")
            if model.is_file():
                out.append((model, p))
    return out


def _pair_of(path: Path) -> tuple[Path, Path]:
    if path.name.endswith(".state.pt"):
        return path.with_name(path.name[: -len(".state.pt")] + ".safetensors"), path
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".state.pt")
    raise ValueError(
        f"{str(path)!r} is neither a run directory nor a checkpoint (.safetensors or .state.pt) file"
    )


def _check_pair(model_path: Path, state_path: Path) -> dict[str, Any]:
    state = load_state(state_path)
    token = read_info(model_path).extra.get("checkpoint_token")
    if token != state["token"]:
        raise ValueError(
            f"{str(model_path)!r} and {str(state_path)!r} come from different saves (token {token!r} != "
            f"{state['token']!r}); resume from another checkpoint of the run"
        )
    return state


def _candidates(directory: Path) -> list[tuple[Path, Path]]:
    """Every (model, state) pair named by a state file in ``directory``, newest first; the model file may be
    missing (a save killed between the two writes)."""
    states = [p for p in directory.iterdir() if _NAME.match(p.name)]
    return [_pair_of(p) for p in sorted(states, reverse=True)]


def find_checkpoint(
    path: str | os.PathLike[str], on_skip: Callable[[str], None] | None = None
) -> tuple[Path, Path, dict[str, Any]]:
    """The ``(model file, state file, state)`` to resume from.

    ``path`` is either file of a pair, or a run directory or its ``checkpoints/`` directory: then the newest
    pair that reads back whole. A newer pair that does not (left half-written by a kill, damaged, or from two
    different saves) is passed over for the one before, and ``on_skip`` is called with a line saying which
    file was skipped and why.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"nothing to resume at {str(path)!r}: no such file or directory")
    if not path.is_dir():
        model_path, state_path = _pair_of(path)
        return model_path, state_path, _check_pair(model_path, state_path)
    directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    pairs = _candidates(directory)
    if not pairs:
        raise FileNotFoundError(
            f"no checkpoint (NAME.safetensors + NAME.state.pt) in {str(directory)!r}"
        )
    errors = []
    for model_path, state_path in pairs:
        try:
            if not model_path.is_file():
                raise ValueError(
                    f"{str(model_path)!r} is missing (a save interrupted between its two files?)"
                )
            found = model_path, state_path, _check_pair(model_path, state_path)
        except (ValueError, FileNotFoundError) as e:
            errors.append(str(e))
            continue
        if errors and on_skip is not None:
            for skipped, error in zip(pairs, errors):
                on_skip(f"skipped checkpoint {skipped[1].name[: -len('.state.pt')]}: {error}")
        return found
    raise ValueError(f"no readable checkpoint in {str(directory)!r}: " + "; ".join(errors))


def resume_config(path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
    """The configuration saved with the checkpoint at ``path`` (see :func:`find_checkpoint`), with
    ``overrides`` applied and ``resume`` set: what continuing that run means. ``stop_after_epochs`` applies
    to one invocation, so it is cleared unless given again."""
    _, _, state = find_checkpoint(path)
    changes = {"stop_after_epochs": None, **overrides, "resume": str(path)}
    return TrainConfig.from_dict(state["config"]).replace(**changes)
