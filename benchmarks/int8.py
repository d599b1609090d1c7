"""Int8 inference: the native int8 engine against the float32 native engine, ONNX Runtime int8 and torchao.

    python benchmarks/int8.py                                    # ShuffleNet 1x g=3, 224 px, batch 1 and 32, 2 threads
    python benchmarks/int8.py --model-file cifar.safetensors --data /path/to/cifar-10-batches-py
    python benchmarks/int8.py --quick                            # tiny settings: proves the pipeline runs

Steps: the float32 model (random weights with non-trivial batch norm statistics, or ``--model-file``), the same
``--calib-images`` calibration images for every int8 method (random images, or the training split of
``--data``), then:

- ``native-fp32``: ``optimize(model, "native")``;
- ``native-int8``: :func:`shufflenet.quantize` (MSE scales) -> int8 model file -> ``optimize(..., "native")``;
- ``ort-int8``: ONNX export (batch norm folded) quantised by ``onnxruntime.quantization.quantize_static``
  (QDQ, per-channel int8 weights, uint8 activations, MinMax calibration on the same images), run by ONNX
  Runtime (``ort-fp32``: the float ONNX model, for reference);
- ``torchao-int8``: torchao's PT2E flow with the X86 Inductor quantizer, compiled by ``torch.compile``, when it
  runs here (else the reason is printed).

Each backend is timed in its own process (no shared caches, thread pools or allocator state), one after the
other: warm-up, then calls until ``--seconds``; median latency and p10-p90. The script prints latency per
backend, the speed ratios (int8 native vs float32 native at each batch; vs ONNX Runtime int8) against the
targets (>= 2x each, measured on an otherwise idle machine), and accuracy: top-1 of float32 and of each int8
backend on ``--val-images`` images of ``--data`` with the top-1 agreement with float32 (without ``--data``:
agreement and logit error on random images). On a shared machine the numbers move; the ratios, measured
back to back, move less.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shufflenet import create_model, load_model, save_model
from shufflenet.deploy import optimize
from shufflenet.deploy.benchmark import system_info
from shufflenet.quantize import load_quantized, quantize, save_quantized

BACKENDS = ("native-fp32", "native-int8", "ort-fp32", "ort-int8", "torchao-int8")
INT8 = ("native-int8", "ort-int8", "torchao-int8")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model", default="shufflenet_v1_g3_x1_0", help="registered model (random weights)"
    )
    p.add_argument("--model-file", default=None, help="a trained float32 model file instead")
    p.add_argument(
        "--data",
        default=None,
        help="dataset for calibration and accuracy ('builtin' or a directory)",
    )
    p.add_argument(
        "--input-size", type=int, default=None, help="pixels (default: 224, or the model file's)"
    )
    p.add_argument("--batches", default="1,32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calib-images", type=int, default=512)
    p.add_argument("--val-images", type=int, default=1000)
    p.add_argument(
        "--seconds", type=float, default=10.0, help="timed seconds per backend and batch"
    )
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument(
        "--quick", action="store_true", help="0.25x g=3 at 64 px, batch 1 and 4, 1 s, 16 images"
    )
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.model = "shufflenet_v1_g3_x0_25" if a.model_file is None else a.model
        a.input_size = a.input_size or 64
        a.batches, a.seconds, a.calib_images, a.val_images = "1,4", 1.0, 16, 16
    return a


@torch.no_grad()
def _randomize(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.copy_(torch.randn(c, generator=g) * 0.3)
    return model.eval()


def _images(args, spec, train: bool, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` preprocessed images of ``--data`` (a fixed shuffle) with labels, or random images."""
    if args.data is None:
        g = torch.Generator().manual_seed(1 if train else 2)
        return torch.randn(n, spec.in_chans, spec.image_size, spec.image_size, generator=g), None
    from shufflenet.data import build_dataset, build_transform

    ds = build_dataset(args.data, train, 0.2, image_size=spec.image_size)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].tolist()
    tf = build_transform(spec, False)
    xs, ys = [], []
    for i in idx:
        img, label = ds[i]
        xs.append(tf(img, torch.Generator().manual_seed(i)))
        ys.append(label)
    return torch.stack(xs), torch.tensor(ys)


def prepare(args, d: Path) -> dict:
    """Float model file, int8 model file, float and int8 ONNX files, calibration and validation images."""
    from shufflenet.data.spec import InputSpec

    if args.model_file:
        model, info = load_model(args.model_file)
        spec = info.input_spec
        if args.input_size:
            spec = InputSpec(**{**spec.to_dict(), "image_size": args.input_size})
    else:
        model = _randomize(create_model(args.model))
        spec = InputSpec(image_size=args.input_size or 224)
    save_model(d / "fp32.safetensors", model, input_spec=spec)
    calib, _ = _images(args, spec, True, args.calib_images)
    val, labels = _images(args, spec, False, args.val_images)
    torch.save({"calib": calib, "val": val, "labels": labels}, d / "images.pt")
    t0 = time.perf_counter()
    q = quantize(model, calib)
    save_quantized(d / "int8.safetensors", q, input_spec=spec)
    out = {"quantize_seconds": time.perf_counter() - t0, "image_size": spec.image_size}
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from shufflenet.deploy.onnx import export_onnx

        export_onnx(model, d / "fp32.onnx", input_size=spec.image_size)
        quant_pre_process(str(d / "fp32.onnx"), str(d / "fp32-pre.onnx"), skip_symbolic_shape=True)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter(calib.split(1))

            def get_next(self):
                x = next(self.it, None)
                return None if x is None else {"input": x.numpy()}

        quantize_static(
            str(d / "fp32-pre.onnx"), str(d / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - reported, the other backends still run
        out["onnx_error"] = f"{type(e).__name__}: {e}"
    return out


def _build(name: str, d: Path, threads: int):
    """The callable of one backend (in the worker process)."""
    torch.set_num_threads(threads)
    if name == "native-fp32":
        model, _ = load_model(d / "fp32.safetensors")
        return optimize(model, "native", threads=threads, strict=True)
    if name == "native-int8":
        q, _ = load_quantized(d / "int8.safetensors")
        return optimize(q, "native", threads=threads, strict=True)
    if name in ("ort-fp32", "ort-int8"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        path = d / ("fp32.onnx" if name == "ort-fp32" else "int8.onnx")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        iname = sess.get_inputs()[0].name
        return lambda x: torch.from_numpy(sess.run(None, {iname: x.numpy()})[0])
    if name == "torchao-int8":
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        model, _ = load_model(d / "fp32.safetensors")
        calib = torch.load(d / "images.pt", weights_only=True)["calib"]
        ex = (calib[:2],)
        dyn = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
        gm = torch.export.export(model.eval(), ex, dynamic_shapes=dyn).module()
        quantizer = xiq.X86InductorQuantizer().set_global(
            xiq.get_default_x86_inductor_quantization_config()
        )
        prepared = prepare_pt2e(gm, quantizer)
        with torch.no_grad():
            for x in calib.split(32):
                prepared(x)
        compiled = torch.compile(convert_pt2e(prepared))
        return lambda x: compiled(x)
    raise ValueError(f"unknown backend {name!r}")


def worker(args) -> None:
    d = Path(args.dir)
    images = torch.load(d / "images.pt", weights_only=True)
    out: dict = {"backend": args.worker, "batch": args.batch}
    try:
        fn = _build(args.worker, d, args.threads)
        with torch.inference_mode():
            val = images["val"]
            out["logits"] = torch.cat([fn(x) for x in val.split(max(args.batch, 8))]).tolist()
            x = images["val"][: args.batch]
            if x.shape[0] < args.batch:
                x = x.repeat((args.batch + x.shape[0] - 1) // x.shape[0], 1, 1, 1)[: args.batch]
            for _ in range(3):
                fn(x)
            times = []
            t_end = time.perf_counter() + args.seconds
            while time.perf_counter() < t_end or len(times) < 5:
                t = time.perf_counter()
                fn(x)
                times.append(time.perf_counter() - t)
        q = np.percentile(times, [10, 50, 90])
        out.update(
            ms=float(q[1] * 1e3), p10=float(q[0] * 1e3), p90=float(q[2] * 1e3), calls=len(times)
        )
    except Exception as e:  # noqa: BLE001 - one line to the parent
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    print("RESULT " + json.dumps(out))


def _run_worker(name: str, batch: int, args, d: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--dir", str(d), "--batch", str(batch),
           "--threads", str(args.threads), "--seconds", str(args.seconds)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=os.environ.copy())
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"backend": name, "batch": batch, "error": f"worker exited {proc.returncode}: {tail}"}


def _accuracy(results: list[dict], labels: torch.Tensor | None) -> list[str]:
    by = {
        r["backend"]: torch.tensor(r["logits"])
        for r in results
        if "logits" in r and r["batch"] == results[0]["batch"]
    }
    ref = by.get("native-fp32")
    if ref is None:
        return ["(no float32 result to compare with)"]
    lines = [
        "| backend | top-1 | top-1 agreement with float32 | max abs logit difference |",
        "|---|---|---|---|",
    ]
    for name, logits in by.items():
        top1 = f"{(logits.argmax(1) == labels).float().mean():.2%}" if labels is not None else "-"
        agree = (logits.argmax(1) == ref.argmax(1)).float().mean()
        diff = (logits - ref).abs().max()
        lines.append(f"| {name} | {top1} | {agree:.2%} | {diff:.3g} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.worker:
        worker(args)
        return 0
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    batches = tuple(int(b) for b in args.batches.split(","))
    sys0 = system_info()
    with tempfile.TemporaryDirectory(prefix="sn-int8-") as tmp:
        d = Path(tmp)
        prep = prepare(args, d)
        print(f"prepared in {d}: {json.dumps(prep)}")
        results = []
        for batch in batches:
            for name in backends:
                if name.startswith("ort") and "onnx_error" in prep:
                    results.append({"backend": name, "batch": batch, "error": prep["onnx_error"]})
                    continue
                r = _run_worker(name, batch, args, d)
                results.append(r)
                msg = (
                    f"{r['ms']:.3f} ms (p10-p90 {r['p10']:.3f}-{r['p90']:.3f})"
                    if "ms" in r
                    else r["error"]
                )
                print(f"batch {batch:3d}  {name:13s} {msg}")
        labels = torch.load(d / "images.pt", weights_only=True)["labels"]
    lines = [f"load average before {sys0.get('loadavg')}, after {system_info().get('loadavg')}", ""]
    lines += ["| batch | " + " | ".join(backends) + " |", "|---" * (len(backends) + 1) + "|"]
    ms = {(r["backend"], r["batch"]): r.get("ms") for r in results}
    for b in batches:
        lines.append(
            f"| {b} | "
            + " | ".join(f"{ms[(n, b)]:.3f}" if ms.get((n, b)) else "-" for n in backends)
            + " |"
        )
    lines += ["", "Speed ratios (higher: int8 native faster; target >= 2.0 on an idle machine):"]
    for b in batches:
        for other in ("native-fp32", "ort-int8", "torchao-int8"):
            a, o = ms.get(("native-int8", b)), ms.get((other, b))
            if a and o:
                ok = "met" if o / a >= 2.0 else "not met"
                lines.append(f"  batch {b}: native-int8 vs {other}: {o / a:.2f}x ({ok})")
    lines += ["", *(_accuracy(results, labels))]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"prepare": prep, "results": results, "system": sys0}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
