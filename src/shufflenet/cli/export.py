"""``shufflenet export CHECKPOINT --onnx OUT``: model file -> ONNX, checked against ONNX Runtime on the spot.

The graph takes ``input`` of shape (batch, C, height, width), all dynamic, and gives ``logits``; batch norm is
folded into the convolutions and channel shuffles are Reshape-Transpose-Reshape. The model file's input
convention is stored in the ONNX metadata (``shufflenet.input_spec``). The command fails (exit 1) when ONNX
Runtime and PyTorch differ by more than ``--atol + --rtol * max|output|``.

``--executorch OUT.pte`` (ExecuTorch program, every op delegated to XNNPACK, checked with the ExecuTorch runtime)
and ``--ncnn DIR`` (ncnn ``.param``/``.bin`` through pnnx, checked with ncnn) need the ``[mobile]`` extra; each
writes the input convention beside its files as JSON. Any of the three may be given, together or alone.
"""

from __future__ import annotations

import argparse
import sys
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
from ..model_file import load_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shufflenet export",
        description="Export a shufflenet model file to ONNX (dynamic batch and spatial size, batch norm "
        "folded) and compare ONNX Runtime with PyTorch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", type=Path, help="model file (.safetensors) written by shufflenet")
    p.add_argument("--onnx", type=Path, default=None, help="ONNX file to write")
    p.add_argument(
        "--executorch",
        type=Path,
        default=None,
        metavar="OUT.pte",
        help="ExecuTorch program to write (XNNPACK delegate, fixed input shape: batch 1 at --input-size); "
        "the input convention goes to OUT.pte.json",
    )
    p.add_argument(
        "--ncnn",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory for model.ncnn.param / .bin / .json, converted by pnnx (any image size)",
    )
    p.add_argument(
        "--allow-outside",
        action="store_true",
        help="--executorch: keep a program in which some ops stay outside the XNNPACK delegate "
        "(default: refuse it, naming the layers)",
    )
    p.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="side of the example input, pixels; unset: the model file's image size",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        help=f"ONNX opset, written exactly or refused: 11-20 with the TorchScript exporter, 18 or newer with "
        f"dynamo; unset: {DEFAULT_OPSET} with TorchScript, the dynamo exporter's own default with dynamo",
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.onnx is None and args.executorch is None and args.ncnn is None:
        print(
            "shufflenet export: give at least one of --onnx OUT, --executorch OUT.pte, --ncnn DIR",
            file=sys.stderr,
        )
        return 2
    if args.input_size is not None and args.input_size < 1:
        print(
            f"shufflenet export: --input-size {args.input_size} must be positive", file=sys.stderr
        )
        return 2
    try:
        model, info = load_model(args.checkpoint)
    except (OSError, ValueError) as e:
        print(f"shufflenet export: {e}", file=sys.stderr)
        return 1
    status = 0
    if args.onnx is not None:
        status = max(status, _export_onnx(args, model, info))
    if args.executorch is not None:
        status = max(status, _export_executorch(args, model, info))
    if args.ncnn is not None:
        status = max(status, _export_ncnn(args, model, info))
    return status


def _mobile_meta(model, info) -> dict:
    return {"arch": info.arch, "arch_kwargs": info.arch_kwargs, "class_names": info.class_names}


def _export_executorch(args: argparse.Namespace, model, info) -> int:
    """``--executorch``: write the program and its sidecar, then compare the ExecuTorch runtime with PyTorch."""
    from ..deploy.executorch import check_executorch, export_executorch, sidecar_path
    from ..deploy.fold import NotSupportedError

    size = args.input_size or info.input_spec.image_size
    try:
        res = export_executorch(
            model,
            args.executorch,
            input_size=size,
            input_spec=info.input_spec,
            allow_outside=args.allow_outside,
            metadata=_mobile_meta(model, info),
        )
    except (ImportError, NotSupportedError, ValueError) as e:
        print(f"shufflenet export: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.executorch} ({res.nbytes / 1e6:.2f} MB, ExecuTorch, input {list(res.input_shape)} "
        f"float32 NCHW) and {sidecar_path(args.executorch)}"
    )
    outside = ", ".join(f"{k} x{v}" for k, v in sorted(res.outside.items())) or "none"
    print(
        f"XNNPACK: {res.delegates} delegate(s) holding {res.delegated} ops; nodes outside the delegate: "
        f"{res.outside_count} ({outside})"
    )
    if args.no_check:
        return 0
    n, c, h, w = res.input_shape
    second = (2, c, h + 32, max(8, w - w // 4))  # another batch and a non-square size, as for ONNX
    check = check_executorch(model, res.data, input_spec=info.input_spec, other_shapes=(second,))
    shapes = ", ".join(dict.fromkeys("x".join(map(str, s)) for s in check.shapes))
    print(
        f"ExecuTorch runtime vs PyTorch on random inputs {shapes} (the second: the same export at that "
        f"shape): max abs difference {check.max_abs_diff:.3g} (max |output| {check.max_abs_output:.3g})"
    )
    if not check.ok(args.atol, args.rtol):
        print(
            f"shufflenet export: ExecuTorch differs above tolerance (atol {args.atol:g}, rtol {args.rtol:g})",
            file=sys.stderr,
        )
        return 1
    return 0


def _export_ncnn(args: argparse.Namespace, model, info) -> int:
    """``--ncnn``: convert with pnnx, then compare ncnn with PyTorch (relative error <= 1e-3)."""
    from ..deploy.fold import NotSupportedError
    from ..deploy.ncnn import check_ncnn, export_ncnn

    size = args.input_size or info.input_spec.image_size
    try:
        res = export_ncnn(
            model,
            args.ncnn,
            input_size=size,
            input_spec=info.input_spec,
            metadata=_mobile_meta(model, info),
        )
    except (ImportError, NotSupportedError, ValueError) as e:
        print(f"shufflenet export: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {res.param}, {res.bin} ({res.bin.stat().st_size / 1e6:.2f} MB, float32) and {res.sidecar}: "
        f"{sum(res.layers.values())} ncnn layers, {res.shuffles} channel shuffles as ShuffleChannel"
    )
    if args.no_check:
        return 0
    check = check_ncnn(model, res.param, res.bin, size, input_spec=info.input_spec)
    shapes = ", ".join("x".join(map(str, s)) for s in check.shapes)
    print(
        f"ncnn vs PyTorch on random images {shapes}: max |difference| / max |output| = "
        f"{check.rel_error:.3g} (max abs difference {check.max_abs_diff:.3g})"
    )
    if not check.ok(1e-3):
        print("shufflenet export: ncnn differs by more than 1e-3 of max |output|", file=sys.stderr)
        return 1
    return 0


def _export_onnx(args: argparse.Namespace, model, info) -> int:
    dynamic_spatial = not args.static_size
    try:
        size = args.input_size or info.input_spec.image_size
        in_chans = info.input_spec.in_chans
        export_onnx(
            model,
            args.onnx,
            input_size=size,
            in_chans=in_chans,
            opset=args.opset,
            exporter=args.exporter,
            fallback=False,
            dynamic_spatial=dynamic_spatial,
            metadata=onnx_metadata(model, info.input_spec),
        )
        summary = summarize_onnx(args.onnx)
    except ValueError as e:  # an opset or size this export refuses
        print(f"shufflenet export: {e}", file=sys.stderr)
        return 2
    except (OSError, ImportError, RuntimeError) as e:
        print(f"shufflenet export: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.onnx} ({args.onnx.stat().st_size / 1e6:.2f} MB, opset {summary.opset}, "
        f"exporter {args.exporter}): input {summary.input_shape}, "
        f"output {summary.output_shape}"
    )
    print(
        f"BatchNormalization nodes: {summary.batchnorm_nodes}; channel shuffles as "
        f"Reshape-Transpose-Reshape: {summary.shuffles} (of {summary.transposes} Transpose nodes)"
    )
    dynamic = summary.dynamic_input if dynamic_spatial else isinstance(summary.input_shape[0], str)
    if not dynamic:
        print(
            f"shufflenet export: input shape {summary.input_shape} is not dynamic", file=sys.stderr
        )
        return 1
    if args.no_check:
        return 0
    try:
        check = check_onnx(
            model,
            args.onnx,
            input_size=size,
            in_chans=in_chans,
            dynamic_spatial=dynamic_spatial,
            input_spec=info.input_spec,
        )
    except RuntimeError as e:
        print(f"shufflenet export: {e}", file=sys.stderr)
        return 1
    print(check.describe())
    if check.nonfinite:
        print(
            f"shufflenet export: the outputs are not finite ({check.nonfinite} values); "
            "the model's weights or the export are broken",
            file=sys.stderr,
        )
        return 1
    if not check.ok(args.atol, args.rtol):
        print(
            f"shufflenet export: difference above tolerance (atol {args.atol:g}, rtol {args.rtol:g})",
            file=sys.stderr,
        )
        return 1
    return 0
