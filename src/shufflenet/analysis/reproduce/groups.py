"""``reproduce groups``: NIN root-1/2/4/8/16 on CIFAR-10 (Deep Roots, Table 1 and Fig. 7).

Each variant is trained from the same seed on the same images, then measured: top-1 accuracy on the test
images and on as many training images without augmentation (the gap), parameters, multiply-adds, CPU latency
(interleaved, batch 1) and the inter-layer correlation of four layer pairs (``conv2c``-``conv3a``, whose N/2
filter groups should leave a block-diagonal trace in root-N, and three more), beside the same measurement on
untrained models of each architecture (several initialisation seeds): the learned excess. The in-block share
of every ``conv2c``-``conv3a`` matrix is also computed at the other models' group counts, so that each root-N
can be compared with the dense network at the same block size.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ...data import Subset, build_transform, default_spec, make_loader
from ...data.subsets import balanced_subset
from ...deploy.benchmark import interleaved_latency
from ...distributed import DistContext
from ...models import create_model
from ...train.engine import evaluate
from .. import published as pub
from ..correlation_control import NIN_PAIRS
from ..correlation_report import correlation_section, root_correlations
from ..outputs import write_csv, write_json
from ..plots import plot_bars
from .common import (
    Markdown,
    TrainingExperiment,
    binomial_se_points,
    data_line,
    fmt_int,
    load_splits,
    option,
    provenance,
    train_save_measure,
    training_line,
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
    init_seeds: tuple[int, ...] = option(
        (0, 1, 2), "init seeds of the untrained control models of every root"
    )
    bootstrap: int = option(
        100, "resamples of the bootstrap of the learned excess over chunks of images (0: none)"
    )
    train_eval_images: int | None = option(
        None,
        "training images (class-balanced, no augmentation) evaluated for the train/test gap; None: as many "
        "as test images",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.roots = tuple(self.roots)
        bad = [r for r in self.roots if isinstance(r, bool) or not isinstance(r, int) or r < 1]
        if bad or not self.roots:
            raise ValueError(f"roots={list(self.roots)} must be positive integers (1 = dense NIN)")
        if self.corr_images < 1:
            raise ValueError(f"corr_images={self.corr_images} must be a positive integer")
        self.init_seeds = tuple(self.init_seeds)
        if len(set(self.init_seeds)) != len(self.init_seeds) or not self.init_seeds:
            raise ValueError(f"init_seeds={list(self.init_seeds)} must be distinct, at least one")
        if (
            isinstance(self.bootstrap, bool)
            or not isinstance(self.bootstrap, int)
            or self.bootstrap < 0
        ):
            raise ValueError(f"bootstrap={self.bootstrap!r} must be a non-negative integer")
        n = self.train_eval_images
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"train_eval_images={n!r} must be a positive integer or None")


def _name(root: int) -> str:
    return "nin_cifar10" if root == 1 else f"nin_root{root}"


def _train_top1(model: torch.nn.Module, train_ds, spec, opts: GroupsConfig, count: int) -> dict:
    """Top-1 on ``count`` class-balanced training images, evaluated like the test images (no augmentation)."""
    subset = Subset(train_ds, balanced_subset(train_ds.targets, count, opts.seed))
    loader = make_loader(subset, build_transform(spec, False), 2 * opts.batch_size, False)
    res = evaluate(
        model, loader, len(train_ds.classes), DistContext(device=torch.device(opts.device))
    )
    return {"train_top1": res.acc1, "train_images": res.count}


def run_groups(opts: GroupsConfig) -> dict:
    start = time.perf_counter()
    opts.out.mkdir(parents=True, exist_ok=True)
    roots = opts.roots
    train_ds, test_ds = load_splits(opts)
    spec = default_spec(train_ds)
    corr_loader = make_loader(test_ds, build_transform(spec, False), 2 * opts.batch_size, False)
    models, results = {}, {}
    for root in roots:
        torch.manual_seed(opts.seed)
        model = create_model(_name(root), num_classes=len(train_ds.classes), in_chans=spec.in_chans)
        res = train_save_measure(model, train_ds, test_ds, opts, _name(root), spec)
        res.update(_train_top1(model, train_ds, spec, opts, opts.train_eval_images or len(test_ds)))
        models[root], results[root] = model.cpu().eval(), res
    corr_start = time.perf_counter()
    corr = root_correlations(
        models,
        corr_loader,
        NIN_PAIRS,
        opts.init_seeds,
        max_images=opts.corr_images,
        bootstrap=opts.bootstrap,
        device=opts.device,
        progress=opts.progress,
    )
    corr_seconds = time.perf_counter() - corr_start
    latency = interleaved_latency(
        {r: m for r, m in models.items()},
        (1, spec.in_chans, spec.image_size, spec.image_size),
        rounds=30,
        threads=1,
    )
    for r in roots:
        results[r]["cpu_ms"] = latency[r]
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
                f"{100 * res['train_top1']:.2f}",
                f"{100 * (res['train_top1'] - res['test_top1']):+.2f}",
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
            "test top-1 % (ours)",
            "train top-1 % (ours)",
            "train - test, points",
            "test top-1 % (published)",
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
        f"Our accuracies: {len(train_ds)} training images, {opts.epochs} epoch(s); test top-1 on "
        f"{base['test_images']} test images, train top-1 on {base['train_images']} training images "
        "(class-balanced, evaluated like the test images: no augmentation); published: full CIFAR-10, full "
        "schedule. Published multiply-adds include one per bias (1,418). CPU latency: median of 30 interleaved "
        "runs (and the fastest), batch 1, one thread, on a shared machine (the published column is another "
        "machine and batch)."
    )
    accs = [100 * results[r]["test_top1"] for r in roots]
    md.p(
        f"At this budget the accuracies span {max(accs) - min(accs):.1f} points ({min(accs):.1f}-{max(accs):.1f}%); "
        f"root-{roots[-1]} has {results[roots[-1]]['params'] / results[roots[0]]['params']:.0%} of the parameters "
        f"and {results[roots[-1]]['macs'] / results[roots[0]]['macs']:.0%} of the multiply-adds of root-{roots[0]}. "
        f"One seed per model; the standard error of each accuracy on {base['test_images']} test images is about "
        f"{binomial_se_points(base['test_top1'], base['test_images']):.1f} points."
    )
    numbers = correlation_section(md, corr, opts.out, images=opts.corr_images)
    cross = numbers["cross_block"]
    for r in roots:
        results[r]["correlation"] = numbers["pairs"][str(r)]
        if str(r) in cross:
            results[r]["in_block_share"] = dict(
                zip(cross[str(r)]["blocks"], cross[str(r)]["trained"])
            )
            results[r]["in_block_share_untrained"] = dict(
                zip(cross[str(r)]["blocks"], cross[str(r)]["untrained"])
            )
    md.h2("Accuracy")
    md.figure(
        fig_acc.name,
        f"top-1 accuracy: ours ({opts.budget} budget, {len(train_ds)} training images) and published (full CIFAR-10)",
    )
    seconds = time.perf_counter() - start
    md.h2("How this was made")
    md.bullets(
        provenance(
            opts,
            seconds,
            [
                data_line(opts, train_ds, test_ds),
                f"correlation: {opts.corr_images} test images, every position a sample, ZCA regulariser 1e-3 x "
                f"mean variance; untrained controls with init seeds {', '.join(map(str, opts.init_seeds))}; "
                f"bootstrap: {opts.bootstrap} resamples of 10 image chunks; {corr_seconds / 60:.1f} min for all "
                "models",
                training_line(opts),
                "training time per model (min): "
                + ", ".join(f"root-{r} {results[r]['seconds'] / 60:.1f}" for r in roots),
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
                "train_top1": results[r]["train_top1"],
                "params": results[r]["params"],
                "macs": results[r]["macs"],
                "cpu_ms_median": results[r]["cpu_ms"]["median_ms"],
                **{
                    f"in_block_share_g{g}": v
                    for g, v in results[r].get("in_block_share", {}).items()
                },
                **{
                    f"in_block_share_g{g}_untrained": v
                    for g, v in results[r].get("in_block_share_untrained", {}).items()
                },
            }
            for r in roots
        ],
    )
    return out
