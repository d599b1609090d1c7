"""``shufflenet convert --from {megvii,torchvision} IN OUT``: published checkpoint -> shufflenet model file.

The output (``.safetensors`` with JSON metadata, see :mod:`shufflenet.model_file`) records the architecture and
the input convention of the weights, so ``evaluate``, ``predict`` and ``export`` use it directly. The input is
read with ``torch.load(weights_only=True)``: nothing in it is executed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..interop.releases import RELEASES, convert_release
from ..interop.torch_files import load_torch_state_dict
from ..model_file import save_model
from .common import check_output_file, command_parser
from .main import command

PROG = "shufflenet convert"


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        PROG,
        "Convert a published checkpoint (.pth) into a shufflenet model file (.safetensors). "
        "Sources: " + "; ".join(f"{k}: {v}" for k, v in RELEASES.items()),
    )
    p.add_argument(
        "--from", dest="source", required=True, choices=sorted(RELEASES), help="checkpoint layout"
    )
    p.add_argument("input", type=Path, help="the published checkpoint (torch.save file)")
    p.add_argument("output", type=Path, help="model file to write (.safetensors)")
    p.add_argument(
        "--class-names",
        type=Path,
        default=None,
        help="text file with one class name per line, stored in the model file",
    )
    return p


def _read_class_names(path: Path, num_classes: int) -> list[str]:
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != num_classes:
        raise ValueError(
            f"{str(path)!r} lists {len(names)} class names; the model has {num_classes} classes"
        )
    return names


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_output_file(args.output, "output")
    state = load_torch_state_dict(args.input)
    converted = convert_release(state, args.source, file_name=args.input.name)
    model, spec = converted.model, converted.input_spec
    num_classes = model.num_classes
    class_names = _read_class_names(args.class_names, num_classes) if args.class_names else None
    with torch.no_grad():  # the converted model must run; a quick smoke test at a small size
        out = model(torch.zeros(1, spec.in_chans, 64, 64))
    if out.shape != (1, num_classes):
        raise RuntimeError(f"converted model gives output shape {tuple(out.shape)}")
    save_model(args.output, model, input_spec=spec, class_names=class_names, extra=converted.extra)
    cfg = model.model_cfg
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"read {args.input}: {converted.description}, {len(state)} tensors, {num_classes} classes"
    )
    print(f"arch {cfg['arch']} {cfg['kwargs']}")
    print(f"{n_params:,} parameters")
    print(
        f"input: {spec.channel_order}, pixel scale {spec.scale:g}, mean {spec.mean}, std {spec.std}, "
        f"resize {spec.resize_size} -> crop {spec.image_size}"
    )
    print(f"wrote {args.output}")
    return 0
