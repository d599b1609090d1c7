"""``shufflenet predict MODEL IMAGE...``: the most likely classes of each image.

Images (JPEG, PNG, ...) are preprocessed by the model's input convention (resize, centre crop,
channels, normalisation) exactly as in evaluation. Classes are printed by name: those stored with the model, or
the ImageNet labels (tench, goldfish, ...) for a 1000-class model.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ..data.evaluation import readable_class_names
from ..data.folder import UnreadableImage, read_image
from ..data.transforms import build_transform
from ..distributed import resolve_device
from .common import add_int_option, add_model_argument, command_parser, resolve_cli_model
from .main import command

PROG = "shufflenet predict"


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(PROG, __doc__.split("\n\n", 1)[1])
    add_model_argument(p)
    p.add_argument("images", nargs="+", help="image files")
    add_int_option(p, "--top-k", 1, 100_000, default=5, help="classes to print per image")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    return p


@command(PROG)
@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    resolved = resolve_cli_model(PROG, args.model, args.weights)
    model = resolved.model.to(device)
    transform = build_transform(resolved.input_spec, train=False)
    names = readable_class_names(resolved.class_names, model.num_classes)
    failed = 0
    for path in args.images:
        try:
            x = transform(read_image(path), torch.Generator())[None].to(device)  # (1, C, H, W)
        except (UnreadableImage, FileNotFoundError) as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            failed += 1
            continue
        probs = model(x).float().softmax(1)[0]
        top = probs.topk(min(args.top_k, len(probs)))
        ranked = [(names[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())]
        if args.json:
            print(json.dumps({"image": path, "top": [{"class": c, "prob": p} for c, p in ranked]}))
        else:
            print(f"{path}: " + ", ".join(f"{c} ({p:.1%})" for c, p in ranked))
    return 2 if failed else 0  # an unreadable image is a user error
