"""``reproduce groups``: NIN root-1/2/4/8/16 on CIFAR-10 (Deep Roots, Table 1 and Fig. 7).

Each variant is trained from the same seed on the same images, then measured: top-1 accuracy, parameters,
multiply-adds, CPU latency (interleaved, batch 1) and the inter-layer correlation of ``conv2c`` and ``conv3a``
(whose N/2 filter groups should leave a block-diagonal trace in root-N). The in-block share of every
correlation matrix is also computed at the other models' group counts, so that each root-N can be compared
with the dense network at the same block size.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ...complexity import profile
from ...data import build_transform, default_spec, make_loader
from ...models import create_model
from .. import published as pub
from ..correlation import block_diagonality, layer_correlation
from ..latency import interleaved_latency
from ..outputs import write_csv, write_json
from ..plots import plot_bars, plot_correlation_panels
from .common import (
    Markdown,
    TrainingExperiment,
    binomial_se_points,
    data_line,
    fmt_int,
    load_splits,
    maybe_save,
    option,
    provenance,
    train_eval,
)

__all__ = ["GroupsConfig", "run_groups", "DEFAULT_ROOTS"]

DEFAULT_ROOTS = (1, 2, 4, 8, 16)


@dataclasses.dataclass
class GroupsConfig(TrainingExperiment):
    """Options of ``reproduce groups``."""

    roots: tuple[int, ...] = option(
        DEFAULT_ROOTS, "NIN roots (the paper's 16-group panel is root 32)"
    )
    corr_images: int | None = option(
        None, "test images for the correlation panels; None: from --budget"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.roots = tuple(self.roots)
        bad = [r for r in self.roots if isinstance(r, bool) or not isinstance(r, int) or r < 1]
        if bad or not self.roots:
            raise ValueError(f"roots={list(self.roots)} must be positive integers (1 = dense NIN)")
        if self.corr_images < 1:
            raise ValueError(f"corr_images={self.corr_images} must be a positive integer")


def _name(root: int) -> str:
    return "nin_cifar10" if root == 1 else f"nin_root{root}"


def run_groups(opts: GroupsConfig) -> dict:
    start = time.perf_counter()
    opts.out.mkdir(parents=True, exist_ok=True)
    roots = opts.roots
    train_ds, test_ds = load_splits(opts)
    spec = default_spec(train_ds)
    models, results, corr = {}, {}, {}
    for root in roots:
        torch.manual_seed(opts.seed)
        model = create_model(_name(root), num_classes=len(train_ds.classes), in_chans=spec.in_chans)
        res = train_eval(model, train_ds, test_ds, opts, _name(root))
        maybe_save(model, opts, _name(root), spec, train_ds.classes)
        rep = profile(model, (spec.in_chans, spec.image_size, spec.image_size))
        res.update(params=rep.params, macs=rep.macs)
        corr_loader = make_loader(test_ds, build_transform(spec, False), 2 * opts.batch_size, False)
        corr[root] = layer_correlation(
            model, corr_loader, "conv2c", "conv3a", max_images=opts.corr_images, device=opts.device
        )
        res["correlation"] = corr[root].to_dict()
        models[root], results[root] = model.cpu().eval(), res
    latency = interleaved_latency(
        {r: m for r, m in models.items()},
        (1, spec.in_chans, spec.image_size, spec.image_size),
        rounds=30,
        threads=1,
    )
    block_sizes = sorted({max(1, r // 2) for r in roots} - {1})
    shares = {
        r: {g: block_diagonality(corr[r].matrix, g).share for g in block_sizes} for r in roots
    }
    for r in roots:
        results[r]["cpu_ms"] = latency[r]
        results[r]["in_block_share"] = shares[r]

    fig_corr = plot_correlation_panels(
        [(f"root-{r}" if r > 1 else "root-1 (original)", corr[r]) for r in roots],
        opts.out / "correlation_panels.png",
    )
    fig_acc = plot_bars(
        [f"root-{r}" for r in roots],
        {
            "ours (top-1 %)": [100 * results[r]["test_top1"] for r in roots],
            "published (top-1 %)": [
                100 * pub.DEEP_ROOTS_NIN[r]["accuracy"] if r in pub.DEEP_ROOTS_NIN else 0
                for r in roots
            ],
        },
        opts.out / "accuracy.png",
        ylabel="CIFAR-10 top-1 accuracy (%)",
        title="NIN root-N",
    )
    seconds = time.perf_counter() - start

    md = Markdown(
        f"Filter groups in NIN on {getattr(train_ds, 'name', opts.data)} (Deep Roots root-N)"
    )
    md.p(
        "Claim: filter groups save parameters and computation at little or no cost in accuracy, and the "
        "network learns a block-diagonal structure of correlated filters (Ioannou et al., CVPR 2017)."
    )
    md.h2("Ours against published")
    rows = []
    for r in roots:
        p = pub.DEEP_ROOTS_NIN.get(r, {})
        res = results[r]
        rows.append(
            [
                f"root-{r}",
                f"{100 * res['test_top1']:.2f}",
                f"{100 * p['accuracy']:.2f}" if p else "-",
                fmt_int(res["params"]),
                fmt_int(p.get("params")),
                f"{res['macs'] / 1e6:.1f}",
                f"{p['macs'] / 1e6:.1f}" if p else "-",
                f"{res['cpu_ms']['median_ms']:.2f} / {res['cpu_ms']['min_ms']:.2f}",
                f"{p['cpu_ms']:.1f}" if p else "-",
            ]
        )
    md.table(
        [
            "model",
            "top-1 % (ours)",
            "top-1 % (published)",
            "params (ours)",
            "params (published)",
            "MMACs (ours)",
            "MMACs (published)",
            "CPU ms, median / min (ours)",
            "CPU ms (published)",
        ],
        rows,
    )
    base = results[roots[0]]
    md.p(
        f"Our accuracies: {len(train_ds)} training images, {opts.epochs} epoch(s); published: full "
        "CIFAR-10, full schedule. Published multiply-adds include one per bias (1,418). CPU latency: median of "
        "30 interleaved runs (and the fastest), batch 1, one thread, on a shared machine (the published column is "
        "another machine and batch)."
    )
    accs = [100 * results[r]["test_top1"] for r in roots]
    md.p(
        f"At this budget the accuracies span {max(accs) - min(accs):.1f} points ({min(accs):.1f}-{max(accs):.1f}%); "
        f"root-{roots[-1]} has {results[roots[-1]]['params'] / results[roots[0]]['params']:.0%} of the parameters "
        f"and {results[roots[-1]]['macs'] / results[roots[0]]['macs']:.0%} of the multiply-adds of root-{roots[0]}. "
        f"One seed per model; the standard error of each accuracy on {base['test_images']} test images is about "
        f"{binomial_se_points(base['test_top1'], base['test_images']):.1f} points."
    )
    md.h2("Inter-layer correlation, conv2c vs conv3a")
    md.figure(
        fig_corr.name,
        "|covariance of the ZCA-whitened responses| of conv2c (rows) and conv3a (columns) on test images; "
        "red lines: conv3a's filter groups (N/2 for root-N)",
    )
    share_rows = []
    for r in roots:
        share_rows.append([f"root-{r}", *(f"{shares[r][g]:.3f}" for g in block_sizes)])
    share_rows.append(["chance", *(f"{1 / g:.3f}" for g in block_sizes)])
    md.table(["model", *(f"in-block share, {g} blocks" for g in block_sizes)], share_rows)
    md.p(
        "Each entry: the share of the matrix's total absolute value inside the diagonal blocks for that block "
        "count. A model's own structure is the column g = N/2; the root-1 row is the dense baseline at the same "
        "block size. The score (share - chance)/(1 - chance) is in results.json."
    )
    own = [(r, r // 2) for r in roots if r // 2 in block_sizes]
    if own and 1 in roots:
        md.p(
            "At its own block count: "
            + "; ".join(
                f"root-{r} {shares[r][g]:.3f} vs root-1 {shares[1][g]:.3f} ({g} blocks, chance {1 / g:.3f})"
                for r, g in own
            )
            + "."
        )
    md.h2("Accuracy")
    md.figure(
        fig_acc.name,
        f"top-1 accuracy: ours ({opts.budget} budget, {len(train_ds)} training images) and published (full CIFAR-10)",
    )
    md.h2("How this was made")
    md.bullets(
        provenance(
            opts,
            seconds,
            [
                data_line(opts, train_ds, test_ds),
                f"correlation: {opts.corr_images} test images, every position a sample, ZCA regulariser 1e-3 x mean variance",
                "training: SGD, Nesterov momentum 0.9, weight decay 5e-4, 10% linear warm-up then cosine decay, "
                "random crop (4 px padding) and horizontal flip (shufflenet.train.fit)",
                f"first model trained in {base['seconds'] / 60:.1f} min",
            ],
        )
    )
    md.write(opts.out / "report.md")
    out = {"options": opts.to_dict(), "results": {str(r): v for r, v in results.items()}}
    write_json(opts.out / "results.json", out)
    write_csv(
        opts.out / "results.csv",
        [
            {
                "model": _name(r),
                "test_top1": results[r]["test_top1"],
                "params": results[r]["params"],
                "macs": results[r]["macs"],
                "cpu_ms_median": results[r]["cpu_ms"]["median_ms"],
                **{f"in_block_share_g{g}": shares[r][g] for g in block_sizes},
            }
            for r in roots
        ],
    )
    return out
