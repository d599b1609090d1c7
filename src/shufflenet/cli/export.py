"""``shufflenet export MODEL --onnx OUT``: a model -> ONNX, checked against ONNX Runtime on the spot.

The graph takes ``input`` of shape (batch, C, height, width), all dynamic, and gives ``logits``; batch norm is
folded into the convolutions and channel shuffles are Reshape-Transpose-Reshape. The model's input
convention is stored in the ONNX metadata (``shufflenet.input_spec``). The command fails (exit 1) when the
export fails, or when ONNX Runtime and PyTorch differ by more than ``--atol + --rtol * max|output|`` or give
non-finite outputs; a wrong argument is exit 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..deploy.onnx import (
    DEFAULT_EXPORTER,
    DEFAULT_OPSET,
    EXPORTERS,
    check_onnx,
    export_onnx,
    onnx_metadata,
    summarize_onnx,
)
from .common import (
    MAX_INPUT_SIZE,
    add_model_argument,
    bounded_int,
    check_output_file,
    resolve_cli_model,
)
from .main import CheckFailed, command

PROG = "shufflenet export"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Export a model to ONNX (dynamic batch and spatial size, batch norm "
        "folded) and compare ONNX Runtime with PyTorch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_argument(p)
    p.add_argument("--onnx", type=Path, required=True, help="ONNX file to write")
    p.add_argument(
        "--input-size",
        type=bounded_int("--input-size", 1, MAX_INPUT_SIZE),
        default=None,
        help="side of the example input, pixels; unset: the model's image size",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        help=f"ONNX opset; unset: {DEFAULT_OPSET} (the dynamo exporter may write a newer one)",
    )
    p.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default=DEFAULT_EXPORTER,
        help="'auto': TorchScript unless the model has adaptive pooling to a fixed size, then dynamo",
    )
    p.add_argument(
        "--dynamo",
        dest="exporter",
        action="store_const",
        const="dynamo",
        help="same as --exporter dynamo (the torch.export-based exporter)",
    )
    p.add_argument(
        "--no-dynamo",
        dest="exporter",
        action="store_const",
        const="torchscript",
        help="same as --exporter torchscript",
    )
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance of the check")
    p.add_argument("--rtol", type=float, default=1e-4, help="tolerance relative to max |output|")
    p.add_argument(
        "--static-size",
        action="store_true",
        help="fix height and width to --input-size (only the batch stays dynamic); for models whose "
        "pooling is not global, such as AlexNet",
    )
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    return p


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.atol >= 0 and args.rtol >= 0):
        raise ValueError(f"--atol {args.atol} and --rtol {args.rtol} must be non-negative numbers")
    check_output_file(args.onnx, "--onnx")  # before the work
    dynamic_spatial = not args.static_size
    resolved = resolve_cli_model(PROG, args.model, args.weights)
    model, spec = resolved.model, resolved.input_spec
    size = args.input_size or spec.image_size
    try:
        export_onnx(
            model,
            args.onnx,
            input_size=size,
            in_chans=spec.in_chans,
            opset=DEFAULT_OPSET if args.opset is None else args.opset,
            exporter=args.exporter,
            fallback=False,
            dynamic_spatial=dynamic_spatial,
            metadata=onnx_metadata(model, spec),
        )
    except RuntimeError as e:
        raise CheckFailed(str(e)) from e
    summary = summarize_onnx(args.onnx)
    print(
        f"wrote {args.onnx} ({args.onnx.stat().st_size / 1e6:.2f} MB, opset {summary.opset}, "
        f"exporter {args.exporter}): input {summary.input_shape}, output {summary.output_shape}"
    )
    print(
        f"BatchNormalization nodes: {summary.batchnorm_nodes}; channel shuffles as "
        f"Reshape-Transpose-Reshape: {summary.shuffles} (of {summary.transposes} Transpose nodes)"
    )
    if args.opset is not None and summary.opset != args.opset:
        print(f"note: opset {args.opset} was asked for; the exporter wrote opset {summary.opset}")
    dynamic = summary.dynamic_input if dynamic_spatial else isinstance(summary.input_shape[0], str)
    if not dynamic:
        raise CheckFailed(f"input shape {summary.input_shape} is not dynamic")
    if args.no_check:
        return 0
    try:
        check = check_onnx(
            model,
            args.onnx,
            input_size=size,
            in_chans=spec.in_chans,
            dynamic_spatial=dynamic_spatial,
            input_spec=spec,
        )
    except RuntimeError as e:
        raise CheckFailed(str(e)) from e
    print(check.describe())
    if check.nonfinite:
        raise CheckFailed(
            f"the outputs are not finite ({check.nonfinite} values); the model's weights or the export "
            "are broken"
        )
    if not check.ok(args.atol, args.rtol):
        raise CheckFailed(f"difference above tolerance (atol {args.atol:g}, rtol {args.rtol:g})")
    return 0
