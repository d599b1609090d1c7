"""``shufflenet export MODEL --onnx OUT``: a model -> ONNX, checked against ONNX Runtime on the spot.

The graph takes ``input`` of shape (batch, C, height, width), all dynamic, and gives ``logits``; batch norm is
folded into the convolutions and channel shuffles are Reshape-Transpose-Reshape. The model's input
convention is stored in the ONNX metadata (``shufflenet.input_spec``). The command fails (exit 1) when the
export fails, or when ONNX Runtime and PyTorch differ by more than ``--atol + --rtol * max|output|`` or give
non-finite outputs; a wrong argument is exit 2.

``--executorch OUT.pte`` (ExecuTorch program, every op delegated to XNNPACK, checked with the ExecuTorch runtime)
and ``--ncnn DIR`` (ncnn ``.param``/``.bin`` through pnnx, checked with ncnn) need the ``[mobile]`` extra; each
writes the input convention beside its files as JSON. Any of the three targets may be given, together or alone;
a layer an engine cannot take is exit 2 with the layer and engine named.
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
    add_int_option,
    add_model_argument,
    check_output_file,
    command_parser,
    resolve_cli_model,
)
from .main import CheckFailed, command

PROG = "shufflenet export"


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        PROG,
        "Export a model to ONNX (dynamic batch and spatial size, batch norm folded), ExecuTorch (XNNPACK) "
        "and/or ncnn, and compare each engine's runtime with PyTorch.",
    )
    add_model_argument(p)
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
    add_int_option(
        p,
        "--input-size",
        1,
        MAX_INPUT_SIZE,
        default=None,
        help="side of the example input, pixels; unset: the model's image size",
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


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.onnx is None and args.executorch is None and args.ncnn is None:
        raise ValueError("give at least one of --onnx OUT, --executorch OUT.pte, --ncnn DIR")
    if not (args.atol >= 0 and args.rtol >= 0):
        raise ValueError(f"--atol {args.atol} and --rtol {args.rtol} must be non-negative numbers")
    # before the work
    if args.onnx is not None:
        check_output_file(args.onnx, "--onnx")
    if args.executorch is not None:
        check_output_file(args.executorch, "--executorch")
    if args.ncnn is not None and args.ncnn.exists() and not args.ncnn.is_dir():
        raise ValueError(f"--ncnn {str(args.ncnn)!r} is a file; give a directory")
    resolved = resolve_cli_model(PROG, args.model, args.weights)
    failed: list[str] = []
    for flag, fn in (
        ("onnx", _export_onnx),
        ("executorch", _export_executorch),
        ("ncnn", _export_ncnn),
    ):
        if getattr(args, flag) is not None:
            try:
                fn(args, resolved)
            except CheckFailed as e:  # the other targets are still written and checked
                failed.append(str(e))
    if failed:
        raise CheckFailed("; ".join(failed))
    return 0


def _mobile_meta(resolved) -> dict:
    return {
        "arch": resolved.name,
        "arch_kwargs": resolved.arch_kwargs,
        "class_names": resolved.class_names,
    }


def _export_onnx(args: argparse.Namespace, resolved) -> None:
    dynamic_spatial = not args.static_size
    model, spec = resolved.model, resolved.input_spec
    size = args.input_size or spec.image_size
    try:
        export_onnx(
            model,
            args.onnx,
            input_size=size,
            in_chans=spec.in_chans,
            opset=args.opset,
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
    dynamic = summary.dynamic_input if dynamic_spatial else isinstance(summary.input_shape[0], str)
    if not dynamic:
        raise CheckFailed(f"input shape {summary.input_shape} is not dynamic")
    if args.no_check:
        return
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


def _export_executorch(args: argparse.Namespace, resolved) -> None:
    """``--executorch``: write the program and its sidecar, then compare the ExecuTorch runtime with PyTorch."""
    from ..deploy.executorch import check_executorch, export_executorch, sidecar_path

    model, spec = resolved.model, resolved.input_spec
    res = export_executorch(
        model,
        args.executorch,
        input_size=args.input_size or spec.image_size,
        in_chans=spec.in_chans,
        input_spec=spec,
        allow_outside=args.allow_outside,
        metadata=_mobile_meta(resolved),
    )
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
        return
    n, c, h, w = res.input_shape
    second = (2, c, h + 32, max(8, w - w // 4))  # another batch and a non-square size, as for ONNX
    check = check_executorch(model, res.data, input_spec=spec, other_shapes=(second,))
    shapes = ", ".join(dict.fromkeys("x".join(map(str, s)) for s in check.shapes))
    print(
        f"ExecuTorch runtime vs PyTorch on random inputs {shapes} (the second: the same export at that "
        f"shape): max abs difference {check.max_abs_diff:.3g} (max |output| {check.max_abs_output:.3g})"
    )
    if not check.ok(args.atol, args.rtol):
        raise CheckFailed(
            f"ExecuTorch differs above tolerance (atol {args.atol:g}, rtol {args.rtol:g})"
        )


def _export_ncnn(args: argparse.Namespace, resolved) -> None:
    """``--ncnn``: convert with pnnx, then compare ncnn with PyTorch (relative error <= 1e-3)."""
    from ..deploy.ncnn import check_ncnn, export_ncnn

    model, spec = resolved.model, resolved.input_spec
    size = args.input_size or spec.image_size
    res = export_ncnn(
        model,
        args.ncnn,
        input_size=size,
        in_chans=spec.in_chans,
        input_spec=spec,
        metadata=_mobile_meta(resolved),
    )
    print(
        f"wrote {res.param}, {res.bin} ({res.bin.stat().st_size / 1e6:.2f} MB, float32) and {res.sidecar}: "
        f"{sum(res.layers.values())} ncnn layers, {res.shuffles} channel shuffles as ShuffleChannel"
    )
    if args.no_check:
        return
    check = check_ncnn(model, res.param, res.bin, size, in_chans=spec.in_chans, input_spec=spec)
    shapes = ", ".join("x".join(map(str, s)) for s in check.shapes)
    print(
        f"ncnn vs PyTorch on random images {shapes}: max |difference| / max |output| = "
        f"{check.rel_error:.3g} (max abs difference {check.max_abs_diff:.3g})"
    )
    if not check.ok(1e-3):
        raise CheckFailed("ncnn differs by more than 1e-3 of max |output|")
