"""``shufflenet COMMAND ...``: dispatch to the module of each command.

Each command lives in its own module with ``build_parser()`` and ``main(argv)``; a module is imported only when
its command runs, so ``shufflenet --help`` is fast.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import importlib
import sys
from collections.abc import Callable

from .. import __version__

__all__ = [
    "COMMANDS",
    "EXIT_CODES",
    "CheckFailed",
    "UsageError",
    "command",
    "exit_code",
    "main",
    "report_error",
    "run_command",
]

# command -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("shufflenet.cli.list_models", "list registered models"),
    "profile": ("shufflenet.cli.profile", "parameters and multiply-adds per layer"),
    "conv-cost": (
        "shufflenet.cli.conv_cost",
        "cost of standard vs grouped vs separable convolution",
    ),
    "train": ("shufflenet.cli.train", "train a model (single process, DDP, or group-parallel)"),
    "evaluate": (
        "shufflenet.cli.evaluate",
        "top-1/top-5 accuracy and confusion matrix of a checkpoint",
    ),
    "predict": ("shufflenet.cli.predict", "top classes of images under a checkpoint"),
    "correlate": (
        "shufflenet.cli.correlate",
        "inter-layer filter-response correlation (Deep Roots)",
    ),
    "flow": (
        "shufflenet.cli.flow",
        "which channel groups reach which outputs, with/without shuffle",
    ),
    "filters": ("shufflenet.cli.filters", "first-layer filters by group, with a colour measure"),
    "reproduce": ("shufflenet.cli.reproduce", "run a paper experiment and write a Markdown report"),
    "bench": ("shufflenet.cli.bench", "inference latency across backends"),
    "export": (
        "shufflenet.cli.export",
        "export to ONNX, ExecuTorch or ncnn, checked against PyTorch",
    ),
    "quantize": (
        "shufflenet.cli.quantize",
        "post-training int8 quantisation with a float32/int8 report",
    ),
    "convert": (
        "shufflenet.cli.convert",
        "convert published checkpoints to shufflenet model files",
    ),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: shufflenet COMMAND [options]   (shufflenet COMMAND --help for details)", ""]
    lines += [f"  {c:<{width}}  {d}" for c, (_, d) in COMMANDS.items()]
    return "\n".join(lines)


class CheckFailed(Exception):  # noqa: N818 - it names the outcome, as the exit status does
    """A check the command ran did not pass (exit status 1): the message says which and by how much."""


class UsageError(ValueError):
    """A command-line argument is wrong (exit status 2)."""


#: exception type -> exit status, first match wins: 1 a failed check, 2 a user error, 130 interrupted.
#: (3, a non-finite loss, is returned by ``shufflenet train`` itself.) Anything else is a bug: traceback.
EXIT_CODES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int], ...] = (
    (CheckFailed, 1),
    (KeyboardInterrupt, 130),
    ((ValueError, TypeError, OSError, ImportError), 2),
)


def exit_code(error: BaseException) -> int | None:
    """The exit status for ``error`` (see :data:`EXIT_CODES`), or ``None`` when it is not a known kind."""
    for kinds, code in EXIT_CODES:
        if isinstance(error, kinds):
            return code
    return None


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError):  # str(KeyError) quotes its key only
        text = f"missing {text}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines)


def report_error(prog: str, error: BaseException) -> int:
    """Print ``error`` as one line ``PROG: error: ...`` on stderr; return its exit status."""
    code = exit_code(error)
    if code is None:
        raise error
    if code == 130:
        print(f"{prog}: interrupted", file=sys.stderr)
    else:
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
    return code


def _raise_usage_error(self: argparse.ArgumentParser, message: str):
    raise UsageError(f"{message} (see {self.prog} --help)")


@contextlib.contextmanager
def _usage_errors_as_exceptions():
    """While a command parses its arguments, argparse's errors raise :class:`UsageError` (one line on
    stderr, exit status 2) instead of printing the usage block and exiting."""
    saved = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _raise_usage_error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = saved


def run_command(prog: str, fn: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """``fn(argv)`` with every user error turned into one line on stderr and its exit status."""
    try:
        with _usage_errors_as_exceptions():
            return int(fn(argv) or 0)
    except SystemExit as e:  # --help, or a command that exits itself
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except BaseException as e:  # noqa: BLE001 - mapped by EXIT_CODES; others re-raised
        return report_error(prog, e)


def command(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorator for a command's ``main(argv)``: the same exit statuses and one-line errors when it is
    called directly (tests, scripts) as through ``shufflenet COMMAND``."""

    def wrap(fn: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(fn)
        def main(argv: list[str] | None = None) -> int:
            return run_command(prog, fn, list(sys.argv[1:] if argv is None else argv))

        return main

    return wrap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"shufflenet {__version__}")
        return 0
    command_name, rest = argv[0], argv[1:]
    if command_name not in COMMANDS:
        close = difflib.get_close_matches(command_name, COMMANDS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        print(
            f"shufflenet: error: unknown command {command_name!r}{hint} (shufflenet --help lists them)",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(COMMANDS[command_name][0])
    return run_command(f"shufflenet {command_name}", module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
