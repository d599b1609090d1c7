"""``reproduce shuffle``: ShuffleNet with and without channel shuffle (ShuffleNet Table 3), on CIFAR-10.

Small widths (0.25x by default) with the CIFAR stem (``small_input``: stride-1 stem, no max pool), g = 1, 2, 3,
4 and 8, each trained with ``shuffle="shuffle"`` and ``shuffle="none"`` from the same seed on the same images,
for several seeds: the gap (error without minus with shuffle) is paired per seed and reported as its mean and
standard error over seeds. g = 1 is the control: a shuffle of one group is the identity, so the two models are
one function; it is trained once per seed, and the run checks that the no-shuffle model given the trained
weights computes the same outputs (its gap is 0 by construction). The paper's gap is on ImageNet; here the
question is whether the sign and the growth with g show up. A structural companion: the measured information
flow through an untrained stage 3.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from ...data import default_spec
from ...models import create_model, shufflenet_v1_name
from .. import published as pub
from ..flow import measured_flow
from ..outputs import write_csv, write_json
from ..plots import plot_flow_panels, plot_gap_vs_groups
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

__all__ = ["ShuffleConfig", "run_shuffle"]


@dataclasses.dataclass
class ShuffleConfig(TrainingExperiment):
    """Options of ``reproduce shuffle``."""

    widths: tuple[float, ...] = option((0.25,), "ShuffleNet width multipliers")
    groups: tuple[int, ...] = option(
        (1, 2, 3, 4, 8), "ShuffleNet group counts (1: the control, where shuffle is the identity)"
    )
    seeds: tuple[int, ...] = option(
        (0, 1, 2), "training seeds (initialisation, order, augmentation); the subset uses --seed"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.widths, self.groups = tuple(self.widths), tuple(self.groups)
        if not self.widths or any(not w > 0 for w in self.widths):
            raise ValueError(f"widths={list(self.widths)} must be positive numbers")
        if not self.groups or any(
            isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in self.groups
        ):
            raise ValueError(f"groups={list(self.groups)} must be positive integers")
        self.seeds = tuple(self.seeds)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={list(self.seeds)} must be distinct, at least one")


def _flow_panel(g: int, width: float, shuffle: str, in_chans: int) -> tuple[str, np.ndarray, float]:
    torch.manual_seed(0)
    model = create_model(
        shufflenet_v1_name(g, width),
        num_classes=10,
        small_input=True,
        shuffle=shuffle,
        in_chans=in_chans,
    )
    # Stage 3 (stages[1]): every 1x1 conv in it is grouped (stage 2's first one is dense, Table 1).
    flow = measured_flow(model.stages[1], model.stage_channels[0], g, input_size=(4, 4))
    share = float((flow > 0).all(axis=1).mean())
    return f"g={g}, {shuffle}", flow, share


def _same_function(trained: torch.nn.Module, other: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether ``other`` given ``trained``'s weights computes exactly ``trained``'s outputs on ``x``."""
    other.load_state_dict(trained.state_dict())
    with torch.no_grad():
        return bool(torch.equal(trained.cpu().eval()(x), other.eval()(x)))


def _mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (None for one value)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None)


def run_shuffle(opts: ShuffleConfig) -> dict:
    start = time.perf_counter()
    opts.out.mkdir(parents=True, exist_ok=True)
    widths, groups = opts.widths, opts.groups
    train_ds, test_ds = load_splits(opts)
    spec = default_spec(train_ds)
    probe = torch.randn(4, spec.in_chans, spec.image_size, spec.image_size)
    results: dict[str, dict] = {}
    control: dict[str, bool] = {}
    trained_g1: dict[tuple[float, int], torch.nn.Module] = {}

    def build(g: int, w: float, shuffle: str) -> torch.nn.Module:
        return create_model(
            shufflenet_v1_name(g, w),
            num_classes=len(train_ds.classes),
            in_chans=spec.in_chans,
            small_input=True,
            shuffle=shuffle,
        )

    for w in widths:
        for g in groups:
            for seed in opts.seeds:
                run_opts = dataclasses.replace(opts, seed=seed)
                for shuffle in ("shuffle", "none"):
                    key = f"{shufflenet_v1_name(g, w)}/{shuffle}/seed{seed}"
                    if g == 1 and shuffle == "none":  # the same function: check, do not retrain
                        same = _same_function(trained_g1[w, seed], build(g, w, "none"), probe)
                        control[key] = same
                        res = dict(results[f"{shufflenet_v1_name(g, w)}/shuffle/seed{seed}"])
                        res.update(shuffle="none", same_function_as_shuffle=same)
                        results[key] = res
                        continue
                    torch.manual_seed(seed)
                    model = build(g, w, shuffle)
                    # trained under this seed, saved recording the base options
                    res = train_save_measure(
                        model, train_ds, test_ds, opts, key, spec, train_opts=run_opts
                    )
                    res.update(
                        groups=g,
                        width=w,
                        shuffle=shuffle,
                        seed=seed,
                    )
                    res.pop("history", None)
                    results[key] = res
                    if g == 1:
                        trained_g1[w, seed] = model
    if not all(control.values()):
        bad = [k for k, ok in control.items() if not ok]
        raise RuntimeError(f"with one group, shuffle and no shuffle gave different outputs: {bad}")

    summary: dict[str, dict] = {}
    for w in widths:
        for g in groups:
            errs = {
                m: [
                    100 * (1 - results[f"{shufflenet_v1_name(g, w)}/{m}/seed{s}"]["test_top1"])
                    for s in opts.seeds
                ]
                for m in ("shuffle", "none")
            }
            gaps = [n - sh for n, sh in zip(errs["none"], errs["shuffle"])]
            summary[f"{w}/{g}"] = {
                "width": w,
                "groups": g,
                "err_shuffle": _mean_se(errs["shuffle"]),
                "err_none": _mean_se(errs["none"]),
                "gap": _mean_se(gaps),
                "gaps": gaps,
            }

    flows = [
        _flow_panel(g, widths[0], s, spec.in_chans) for g in groups for s in ("none", "shuffle")
    ]
    fig_flow = plot_flow_panels(
        [(f"{t}\n{100 * share:.0f}% of outputs see all", m) for t, m, share in flows],
        opts.out / "flow_stages.png",
        ncols=len(flows),
        suptitle=f"ShuffleNet {widths[0]}x, stage 3 (untrained): its output channels vs the g groups of its input",
    )

    def fmt(ms: tuple[float, float | None], sign: str = "") -> str:
        m, se = ms
        return f"{m:{sign}.2f}" + ("" if se is None else f" ± {se:.2f}")

    gap_rows = []
    for w in widths:
        for g in groups:
            row = summary[f"{w}/{g}"]
            paper = pub.SHUFFLENET_TABLE3.get((w, g))
            s1 = results[f"{shufflenet_v1_name(g, w)}/shuffle/seed{opts.seeds[0]}"]
            gap_rows.append(
                [
                    f"{w}x, g={g}" + (" (control)" if g == 1 else ""),
                    fmt(row["err_none"]),
                    fmt(row["err_shuffle"]),
                    fmt(row["gap"], "+"),
                    " / ".join(f"{x:+.2f}" for x in row["gaps"]),
                    f"{paper[0]:.1f}" if paper else "-",
                    f"{paper[1]:.1f}" if paper else "-",
                    f"{paper[0] - paper[1]:+.1f}" if paper else "-",
                    fmt_int(s1["params"]),
                    f"{s1['macs'] / 1e6:.1f}",
                ]
            )
    fig_gap = plot_gap_vs_groups(
        {
            f"{w}x": {g: (summary[f"{w}/{g}"]["gap"], summary[f"{w}/{g}"]["gaps"]) for g in groups}
            for w in widths
        },
        {
            f"{w}x, paper (ImageNet)": {
                g: pub.SHUFFLENET_TABLE3[w, g][0] - pub.SHUFFLENET_TABLE3[w, g][1]
                for g in groups
                if (w, g) in pub.SHUFFLENET_TABLE3
            }
            for w in widths
        },
        opts.out / "shuffle_gap.png",
        title=f"what channel shuffle buys: {len(opts.seeds)} seeds, mean ± standard error",
    )
    seconds = time.perf_counter() - start

    md = Markdown(
        f"Channel shuffle on and off (ShuffleNet Table 3) on {getattr(train_ds, 'name', opts.data)}"
    )
    md.p(
        "Claim: without channel shuffle, stacked pointwise group convolutions keep each group's information to "
        "itself; shuffling lets it flow between groups, and accuracy improves, more so with more groups "
        "(Zhang et al., CVPR 2018, Sec. 4.1.2)."
    )
    md.h2("Ours against published")
    md.table(
        [
            "model",
            "err % no shuffle (ours)",
            "err % shuffle (ours)",
            "gap (ours), mean ± SE",
            "gap per seed",
            "err % no shuffle (paper)",
            "err % shuffle (paper)",
            "gap (paper)",
            "params (ours)",
            "MMACs 32x32 (ours)",
        ],
        gap_rows,
    )
    md.p(
        f"Ours: {getattr(train_ds, 'name', opts.data)} test error (top-1) with the CIFAR stem at {spec.image_size}x{spec.image_size}; paper: ImageNet top-1 error at "
        "224x224. Only the sign and relative size of the gaps are comparable. Shuffle adds no parameters or "
        "multiply-adds, so each pair has identical counts."
    )
    first = next(iter(results.values()))
    se = binomial_se_points(first["test_top1"], first["test_images"])
    noise = (
        f"Seeds {', '.join(map(str, opts.seeds))} (initialisation, batch order and augmentation; the same "
        f"images for all). Errors: mean ± standard error over seeds; the gap is paired within each seed. For "
        f"scale, one error rate on {first['test_images']} test images has a binomial standard error of about "
        f"{se:.1f} points."
    )
    if control:
        noise += (
            " g = 1 is the control: shuffling one group is the identity, so the no-shuffle model is the same "
            "function (checked on the trained weights: identical outputs for every seed), trained once; its "
            "gap is 0 by construction."
        )
    md.p(noise)
    md.figure(
        fig_gap.name,
        "error gap (no shuffle minus shuffle) against the number of groups: ours (mean ± standard error over "
        "seeds, dots: single seeds) and published (ImageNet)",
    )
    md.h2("Information flow through one stage")
    md.figure(
        fig_flow.name,
        "measured flow through stage 3 (gradient of each output channel's sum w.r.t. each of the g groups of the "
        "stage's input channels); black = no path at all",
    )
    md.p(
        "Without shuffle the groups still meet where a stride-2 unit concatenates its pooled input with its "
        "branch (the channel ranges of the groups shift), so some outputs see several groups; with shuffle every "
        "output sees every group."
    )
    md.h2("How this was made")
    md.bullets(
        provenance(
            opts,
            seconds,
            [
                data_line(opts, train_ds, test_ds),
                training_line(opts, f"; {len(results) - len(control)} models trained"),
            ],
        )
    )
    md.write(opts.out / "report.md")
    out = {"options": opts.to_dict(), "results": results, "summary": summary}
    write_json(opts.out / "results.json", out)
    write_csv(
        opts.out / "results.csv",
        [
            {k: v[k] for k in ("width", "groups", "shuffle", "seed", "test_top1", "params", "macs")}
            | {"model": key}
            for key, v in results.items()
        ],
    )
    return out
