"""``reproduce alexnet-groups``: the two-group AlexNet's conv1 filters by group (Krizhevsky et al. 2012,
Sec. 6.1 and Fig. 3: one group colour-agnostic, the other colour-specific).

conv1 is dense; its 96 filters are split by the two groups of conv2 that consume them (0-47, 48-95). The
network is trained on the given data at ``image_size`` (64 by default, the images upsampled: AlexNet needs at
least 63 pixels) and the colour fraction of every filter is compared between the groups, before and after
training, and for the learned change ``trained - initial`` (which a short run leaves small against the random
initial filters).

Initialisation for a short run without batch norm: conv1 from N(0, 0.01) as in the paper (Sec. 5), so that
what it learns is not buried under the initial noise; the other layers Kaiming-normal (the paper's N(0, 0.01)
everywhere does not start learning within a few epochs), biases 0. Peak learning rate 0.01 per 64 images
(the paper's 0.01 per 128).
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ...complexity import profile
from ...data import default_spec
from ...models import create_model
from .. import published as pub
from ..filters import colour_fraction, filter_groups
from ..outputs import write_csv, write_json
from ..plots import plot_filter_groups
from .common import (
    Markdown,
    TrainingExperiment,
    data_line,
    fmt_int,
    load_splits,
    maybe_save,
    option,
    provenance,
    train_eval,
)

__all__ = ["AlexNetGroupsConfig", "run_alexnet_groups", "short_run_init", "ALEXNET_LR"]

ALEXNET_LR = 0.01
MIN_SIDE = 63  # 11x11/4 conv and three unpadded 3x3/2 max pools


@dataclasses.dataclass
class AlexNetGroupsConfig(TrainingExperiment):
    """Options of ``reproduce alexnet-groups``."""

    image_size: int = option(64, f"input side in pixels (at least {MIN_SIDE})")

    default_lr: ClassVar[float] = ALEXNET_LR

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
            raise TypeError(f"image_size={self.image_size!r} must be an integer")
        if self.image_size < MIN_SIDE:
            raise ValueError(
                f"image_size={self.image_size} is too small for AlexNet: at least {MIN_SIDE} pixels"
            )


def short_run_init(model: nn.Module, conv1_std: float = 0.01) -> None:
    """conv1 weights from N(0, ``conv1_std``); other conv/linear weights Kaiming-normal; the classifier's last
    layer N(0, 0.01); all biases 0."""
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    for m in layers:
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    nn.init.normal_(layers[0].weight, 0.0, conv1_std)
    nn.init.normal_(layers[-1].weight, 0.0, 0.01)


def _spread(values: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation, standard error of the mean and quartiles of per-filter values."""
    v = np.asarray(values, dtype=float)
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {
        "mean": float(v.mean()),
        "sd": sd,
        "se": sd / np.sqrt(len(v)),
        "q25": float(np.percentile(v, 25)),
        "q75": float(np.percentile(v, 75)),
    }


def run_alexnet_groups(opts: AlexNetGroupsConfig) -> dict:
    start = time.perf_counter()
    opts.out.mkdir(parents=True, exist_ok=True)
    size = opts.image_size
    train_ds, test_ds = load_splits(opts)
    spec = default_spec(train_ds, size)  # what training uses at this size
    torch.manual_seed(opts.seed)
    model = create_model("alexnet_g2", num_classes=len(train_ds.classes), in_chans=spec.in_chans)
    short_run_init(model)
    before = filter_groups(model, "conv1")
    res = train_eval(model, train_ds, test_ds, opts, "alexnet_g2", image_size=size)
    maybe_save(model, opts, "alexnet_g2", spec, train_ds.classes)
    after = filter_groups(model.cpu(), "conv1")
    change = dataclasses.replace(
        after,
        weights=after.weights - before.weights,
        colour=None if after.colour is None else colour_fraction(after.weights - before.weights),
    )
    rep = profile(model, (spec.in_chans, size, size))
    fig = plot_filter_groups(after, opts.out / "conv1_filters.png", spec.channel_order)
    fig0 = plot_filter_groups(before, opts.out / "conv1_filters_init.png", spec.channel_order)
    fig_change = plot_filter_groups(
        change, opts.out / "conv1_filters_change.png", spec.channel_order
    )
    seconds = time.perf_counter() - start

    rows, record = [], {}
    for label, fg in (
        ("at initialisation", before),
        ("trained", after),
        ("learned change", change),
    ):
        s = fg.summary()
        record[label] = s
        if "per_group" in s:
            spread = [_spread(fg.colour[sl]) for sl in fg.group_slices()]
            for g, sp in zip(s["per_group"], spread):
                g.update(sp)
            g0, g1 = s["per_group"]
            rows.append(
                [
                    label,
                    *(
                        f"{sp['mean']:.3f} ± {sp['sd']:.3f} ({sp['q25']:.2f}-{sp['q75']:.2f})"
                        for sp in spread
                    ),
                    f"{abs(g0['mean_colour_fraction'] - g1['mean_colour_fraction']):.3f}",
                    f"{spread[0]['mean'] - spread[1]['mean']:+.3f} ± "
                    f"{(spread[0]['se'] ** 2 + spread[1]['se'] ** 2) ** 0.5:.3f}",
                ]
            )
    md = Markdown("AlexNet's two filter groups: conv1 filters by group")
    md.p(
        "Claim (Krizhevsky et al. 2012, Sec. 6.1): the kernels feeding one GPU's half of the network are "
        "largely colour-agnostic, those feeding the other half largely colour-specific, in every run."
    )
    if after.colour is None:
        md.p(
            "The data is single-channel, so the colour measure does not apply; the filters are shown by group."
        )
    else:
        md.h2(
            "Colour fraction per group (0 = grey, 1 = purely chromatic; random filters give about 2/3)"
        )
        md.table(
            [
                "conv1",
                "group 0 (filters 0-47): mean ± sd (quartiles)",
                "group 1 (filters 48-95): mean ± sd (quartiles)",
                "|difference|",
                "group 0 - group 1 ± standard error",
            ],
            rows,
        )
        md.p(
            "Spread over the filters of each group: the standard deviation and the quartiles of the per-filter "
            "colour fractions; the standard error of the difference of the group means treats the filters as "
            "independent samples."
        )
        n = after.weights.shape[0] // after.groups
        grey = [int((after.colour[s] < 0.2).sum()) for s in after.group_slices()]
        grey_change = [int((change.colour[s] < 0.2).sum()) for s in after.group_slices()]
        md.p(
            f"Nearly grey (colour fraction below 0.2), of {n} per group: trained filters {grey[0]} and "
            f"{grey[1]}; learned changes {grey_change[0]} and {grey_change[1]} (groups 0 and 1). A split like "
            "the paper's shows one group far greyer than the other; a short, low-resolution run need not "
            "produce it, and which group ends up grey is arbitrary."
        )
    md.figure(
        fig.name,
        "trained conv1 filters, one panel per conv2 group (each filter scaled to its own range)",
    )
    md.figure(fig_change.name, "what training changed: trained minus initial filters, by group")
    md.figure(fig0.name, "the same filters at initialisation")
    md.h2("The network")
    md.table(
        ["", "params", "MMACs", "top-1 %", "input"],
        [
            ["ours", fmt_int(rep.params), f"{rep.macs / 1e6:.1f}", f"{100 * res['test_top1']:.2f}", f"{size}x{size}, {len(train_ds.classes)} classes"],
            ["published (ImageNet)", fmt_int(pub.DEEP_ROOTS_ALEXNET[2]["params"]), f"{pub.DEEP_ROOTS_ALEXNET[2]['macs'] / 1e6:.1f}", f"{100 * pub.DEEP_ROOTS_ALEXNET[2]['top1']:.2f}", "224x224, 1000 classes"],
        ],
    )  # fmt: skip
    md.h2("How this was made")
    md.bullets(
        provenance(
            opts,
            seconds,
            [
                data_line(opts, train_ds, test_ds, f", upsampled to {size}x{size}"),
                "training: SGD, Nesterov momentum 0.9, weight decay 5e-4 on conv/linear weights, dropout 0.5, "
                f"{opts.warmup:.0%} linear warm-up then cosine decay, random crop and horizontal flip; conv1 "
                "initialised from N(0, 0.01), the other layers Kaiming-normal",
            ],
        )
    )
    md.write(opts.out / "report.md")
    out = {
        "options": opts.to_dict(),
        "test_top1": res["test_top1"],
        "train": res,
        "filters": record,
    }
    write_json(opts.out / "results.json", out)
    if after.colour is not None:
        per_group = after.weights.shape[0] // after.groups
        write_csv(
            opts.out / "conv1_colour.csv",
            [
                {
                    "filter": i,
                    "group": i // per_group,
                    "colour_init": float(before.colour[i]),
                    "colour_trained": float(after.colour[i]),
                    "colour_change": float(change.colour[i]),
                }
                for i in range(after.weights.shape[0])
            ],
        )
    return out
