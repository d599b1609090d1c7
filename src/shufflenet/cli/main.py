"""``shufflenet COMMAND ...``: dispatch to the module of each command.

Each command lives in its own module with ``build_parser()`` and ``main(argv)``; a module is imported only when
its command runs, so ``shufflenet --help`` is fast.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["COMMANDS", "main"]

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
    "export": ("shufflenet.cli.export", "export a checkpoint to ONNX, checked with ONNX Runtime"),
    "quantize": ("shufflenet.cli.quantize", "post-training int8 quantisation with a float32/int8 report"),
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from .. import __version__

        print(f"shufflenet {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, COMMANDS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        print(f"shufflenet: unknown command {command!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
