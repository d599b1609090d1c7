"""Reading state dicts from ``torch.save`` files (``.pth``, ``.pt``, ``.pth.tar``) without executing code.

Such files are pickles. They are opened with ``torch.load(weights_only=True)``, whose unpickler only rebuilds
tensors and plain containers and refuses anything else, so a file that needs arbitrary code to load is
rejected with an error instead of being run.

Common wrappers are removed: ``{"state_dict": ...}`` (Megvii, many training scripts), ``{"model": ...}`` and
``{"model_state_dict": ...}``, and a ``module.`` prefix on every key (``nn.DataParallel`` /
``DistributedDataParallel``) or ``_orig_mod.`` (``torch.compile``).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_torch_state_dict", "unwrap_state_dict", "TORCH_SUFFIXES"]

TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin", ".mdl", ".pkl")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")


def load_torch_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict stored in the ``torch.save`` file ``path``, unwrapped (see the module docstring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a tensor-only pickle, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{str(path)!r} cannot be loaded as plain tensors: it is no shufflenet model file, and "
            f"torch.load(weights_only=True) refused it ({_reason(e)}); code from a file is never run here"
        ) from e
    except Exception as e:  # the unpickler raises many types on damaged or foreign files
        raise ValueError(
            f"{str(path)!r} is not a readable torch.save file ({type(e).__name__}: {_reason(e)})"
        ) from e
    return unwrap_state_dict(obj, source=str(path))


def _reason(e: BaseException) -> str:
    """The informative line of a loader's error (torch's weights-only refusal spans several paragraphs;
    its ``WeightsUnpickler error:`` line says what was refused), so that messages stay one line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else line)
    return lines[0] if lines else type(e).__name__


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Remove checkpoint wrappers and the ``module.``/``_orig_mod.`` key prefix; check every value is a tensor."""
    for _ in range(3):  # at most a few nested wrappers
        if isinstance(obj, Mapping) and not _all_tensors(obj):
            inner = next(
                (obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None
            )
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{source} holds no state dict (got {type(obj).__name__})")
    if not _all_tensors(obj):
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:5]
        raise ValueError(
            f"{source} is not a state dict: entries {bad} are not tensors "
            f"(top-level keys: {list(obj)[:8]})"
        )
    state = {str(k): v for k, v in obj.items()}
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _all_tensors(d: Mapping) -> bool:
    return all(isinstance(v, torch.Tensor) for v in d.values())
