"""``shufflenet predict CHECKPOINT IMAGE...``: the most likely classes of each image.

Images (JPEG, PNG, ...) are preprocessed by the checkpoint's input convention (resize, centre crop,
channels, normalisation) exactly as in evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ..data.folder import UnreadableImage, read_image
from ..data.transforms import build_transform
from ..distributed import resolve_device
from ..model_file import load_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shufflenet predict",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="model file (.safetensors) written by `shufflenet train`")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--top-k", type=int, default=5, help="classes to print per image")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    return p


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        print(f"shufflenet predict: error: --top-k={args.top_k} must be >= 1", file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
        model, info = load_model(args.checkpoint, map_location=device)
    except (ValueError, FileNotFoundError) as e:
        print(f"shufflenet predict: error: {e}", file=sys.stderr)
        return 2
    transform = build_transform(info.input_spec, train=False)
    failed = 0
    for path in args.images:
        try:
            x = transform(read_image(path), torch.Generator())[None].to(device)  # (1, C, H, W)
        except (UnreadableImage, FileNotFoundError) as e:
            print(f"{path}: error: {e}", file=sys.stderr)
            failed += 1
            continue
        probs = model(x).float().softmax(1)[0]
        top = probs.topk(min(args.top_k, len(probs)))
        names = info.class_names or [str(i) for i in range(len(probs))]
        ranked = [(names[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())]
        if args.json:
            print(json.dumps({"image": path, "top": [{"class": c, "prob": p} for c, p in ranked]}))
        else:
            print(f"{path}: " + ", ".join(f"{c} ({p:.1%})" for c, p in ranked))
    return 1 if failed else 0
