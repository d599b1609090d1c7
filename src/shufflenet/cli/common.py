"""What the commands share: the one model argument, checks of output paths before any work, bounded numbers.

Every command that works on a model takes it as one positional argument, resolved by
:func:`shufflenet.factory.resolve_model`: a registered name, a shufflenet model file, a published Megvii v1 or
torchvision v2 checkpoint (converted in memory, with a note on stderr) or, with ``--weights``, a state dict for a
name. Errors are raised as exceptions and turned into one line and an exit status by :mod:`.main`.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from ..factory import ResolvedModel, resolve_model

__all__ = [
    "MAX_INPUT_SIZE",
    "add_int_option",
    "add_model_argument",
    "bounded_int",
    "check_output_dir",
    "check_output_file",
    "command_parser",
    "resolve_cli_model",
]

#: the largest input side any command accepts, pixels (a 4096x4096 image is 64 times ImageNet's 224x224 x 5)
MAX_INPUT_SIZE = 4096

MODEL_HELP = (
    "a registered model name (`shufflenet list`), a shufflenet model file, or a Megvii ShuffleNet v1 / "
    "torchvision ShuffleNet v2 checkpoint (converted in memory)"
)


def add_model_argument(parser: argparse.ArgumentParser, extra: str = "") -> None:
    """The positional ``model`` argument, and ``--weights`` (a state dict for a model name)."""
    parser.add_argument("model", help=MODEL_HELP + extra)
    parser.add_argument(
        "--weights",
        default=None,
        metavar="FILE",
        help="a plain state dict (.safetensors or torch.save) for the model NAME given as `model`",
    )


def bounded_int(name: str, low: int, high: int):
    """An argparse ``type``: an integer in ``[low, high]``, else an error naming ``name`` and the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} {text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} {value} must be between {low} and {high}")
        return value

    return parse


def add_int_option(p: argparse.ArgumentParser, flag: str, low: int, high: int, **kw: Any) -> None:
    """An integer option in ``[low, high]`` (:func:`bounded_int`, its errors naming ``flag``); ``kw``
    (``default``, ``help``) go to ``add_argument``."""
    p.add_argument(flag, type=bounded_int(flag, low, high), **kw)


def command_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A command's parser, its help showing every option's default."""
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


def resolve_cli_model(
    prog: str, spec: str, weights: str | None = None, **kwargs: Any
) -> ResolvedModel:
    """:func:`resolve_model` for a command: ``weights`` (``--weights``) needs ``spec`` to be a name; its notes
    (a conversion, a re-initialised classifier) are printed on stderr, one line each."""
    if weights is not None:
        if Path(spec).exists():
            raise ValueError(
                f"--weights {weights!r} is for a model name; {spec!r} is a file that holds its own weights"
            )
        spec, kwargs = weights, {"arch": spec, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the same text comes back in notes
        resolved = resolve_model(spec, **kwargs)
    for note in resolved.notes:
        print(f"{prog}: note: {note}", file=sys.stderr)
    return resolved


def check_output_file(path: str | os.PathLike[str], flag: str) -> Path:
    """``path`` can be written: its folder exists and is a folder, and it is not itself a folder."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a directory; give a file name")
    if not parent.exists():
        raise ValueError(f"{flag} {str(path)!r}: directory {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise ValueError(f"{flag} {str(path)!r}: {str(parent)!r} is a file, not a directory")
    return path


def check_output_dir(path: str | os.PathLike[str], flag: str) -> Path:
    """``path`` is a folder or can be created as one (no part of it is a regular file)."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise ValueError(f"{flag} {str(path)!r}: {str(part)!r} is a file, not a directory")
            break
    return path
