"""The inter-layer correlation section of the NIN root-N report: trained against untrained, per layer pair.

:func:`root_correlations` measures every root-N model (and its untrained control) on the same images;
:func:`correlation_section` adds tables and figures to a Markdown report and returns the numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import nn

from .correlation import block_diagonality
from .correlation_control import NIN_PAIRS, ControlledCorrelation, controlled_correlation
from .plots import plot_correlation_panels, plot_share_controls

__all__ = ["root_correlations", "correlation_section", "KEY_PAIR"]

# The pair of Deep Roots' correlation figure: conv3a's N/2 groups each read one block of conv2c's outputs.
KEY_PAIR = ("conv2c", "conv3a")


# The learned share excess / (trained - chance) is shown only where the trained share is this far above
# chance; nearer, the ratio of two small, noisy numbers means nothing.
_MIN_ABOVE_CHANCE = 0.01


class _Doc(Protocol):
    def h2(self, text: str) -> None: ...
    def p(self, text: str) -> None: ...
    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...
    def figure(self, path: str, caption: str) -> None: ...


def root_correlations(
    models: Mapping[int, nn.Module],
    batches: Iterable[Any],
    pairs: Sequence[tuple[str, str]] = NIN_PAIRS,
    seeds: Sequence[int] = (0, 1, 2),
    max_images: int | None = None,
    bootstrap: int = 0,
    chunks: int = 10,
    device: str | None = None,
    progress: bool = False,
) -> dict[int, list[ControlledCorrelation]]:
    """:func:`~shufflenet.analysis.correlation_control.controlled_correlation` of every root-N model (keyed
    by N) on the same ``batches`` (iterated once per model, e.g. a ``DataLoader``)."""
    return {
        root: controlled_correlation(
            model,
            batches,
            pairs,
            seeds,
            max_images=max_images,
            bootstrap=bootstrap,
            chunks=chunks,
            device=device,
            progress=progress,
        )
        for root, model in models.items()
    }


def _by_pair(
    results: Sequence[ControlledCorrelation], pair: tuple[str, str]
) -> ControlledCorrelation:
    for r in results:
        if tuple(r.pair) == tuple(pair):
            return r
    raise ValueError(f"no result for the layer pair {pair}; have {[r.pair for r in results]}")


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _label(root: int) -> str:
    return "root-1 (original)" if root == 1 else f"root-{root}"


def correlation_section(
    md: _Doc,
    corr: Mapping[int, Sequence[ControlledCorrelation]],
    out_dir: str | Path,
    key_pair: tuple[str, str] = KEY_PAIR,
    images: int | None = None,
) -> dict[str, Any]:
    """Write the figures into ``out_dir`` and the correlation section into ``md``; return the numbers.

    Figures: ``correlation_panels.png`` (``key_pair`` of every root, trained over untrained),
    ``correlation_shares.png`` (its in-block share, trained / untrained / chance, per root). Tables: every pair
    of every grouped root at its own block count (trained, untrained, excess with its spreads), and the
    ``key_pair`` matrices of every root scored at every root's block count, trained and untrained.
    """
    out = Path(out_dir)
    roots = list(corr)
    key = {r: _by_pair(corr[r], key_pair) for r in roots}
    seeds = next(iter(key.values())).seeds
    tag = f"{key_pair[0]} vs {key_pair[1]}"
    md.h2(f"Inter-layer correlation, trained and untrained ({tag} and three more pairs)")
    md.p(
        "A grouped layer imposes part of the block structure before any training: each of its groups reads "
        "one block of its input, so even random weights correlate that block with the group's outputs. Every "
        f"measurement below is therefore repeated, on the same {images or 'test'} images, for untrained models "
        f"of the same architecture ({len(seeds)} initialisation seeds: {', '.join(map(str, seeds))}); the "
        "**learned excess** is the trained in-block share minus the mean untrained one."
    )
    panels = []
    for r in roots:
        panels.append((f"{_label(r)} trained", key[r].trained))
    for r in roots:
        if key[r].untrained:
            panels.append((f"{_label(r)} untrained", key[r].untrained[0]))
    fig_panels = plot_correlation_panels(panels, out / "correlation_panels.png", ncols=len(roots))
    md.figure(
        fig_panels.name,
        f"|covariance of the ZCA-whitened responses| of {key_pair[0]} (rows) and {key_pair[1]} (columns); top "
        f"row trained, bottom row untrained (init seed {seeds[0] if seeds else '-'}); red lines: the blocks "
        f"of {key_pair[1]}'s filter groups",
    )
    scored = [r for r in roots if key[r].excess is not None]
    numbers: dict[str, Any] = {"pairs": {}, "cross_block": {}}
    if scored:
        fig_shares = plot_share_controls(
            [f"{_label(r)}\n(g={key[r].groups})" for r in scored],
            [key[r].trained_share for r in scored],
            [key[r].untrained_share for r in scored],
            [key[r].seed_sd for r in scored],
            [key[r].chance for r in scored],
            out / "correlation_shares.png",
            title=f"{tag}: in-block share at each model's own block count",
            excess_interval=[
                None
                if key[r].bootstrap is None
                else (key[r].bootstrap["low"], key[r].bootstrap["high"])
                for r in scored
            ],
        )
        md.figure(
            fig_shares.name,
            "in-block share: trained (blue), untrained (grey, standard deviation over init seeds), chance "
            "1/g (black); above the bars the learned excess and its 95% bootstrap interval over images",
        )
    rows = []
    for r in roots:
        for c in corr[r]:
            numbers["pairs"].setdefault(str(r), {})[f"{c.pair[0]}-{c.pair[1]}"] = c.to_dict()
            if c.excess is None:
                continue
            boot = c.bootstrap
            rows.append(
                [
                    _label(r),
                    f"{c.pair[0]}-{c.pair[1]}",
                    c.groups,
                    f"{c.chance:.3f}",
                    f"{c.trained_share:.3f}",
                    f"{c.untrained_share:.3f} ± {_fmt(c.seed_sd)}",
                    f"{c.excess:+.3f}",
                    "-" if boot is None else f"{boot['low']:+.3f} to {boot['high']:+.3f}",
                    _fmt(c.learned_fraction, ".0%")
                    if c.trained_share - c.chance >= _MIN_ABOVE_CHANCE
                    else "-",
                ]
            )
    md.table(
        [
            "model",
            "layer pair",
            "blocks g",
            "chance 1/g",
            "trained",
            "untrained (mean ± sd over seeds)",
            "learned excess",
            "95% bootstrap over images",
            "learned share of the above-chance structure",
        ],
        rows,
    )
    md.p(
        "In-block share: the share of the matrix's total absolute value inside the g diagonal blocks (g: the "
        "groups of the pair's grouped layer). The bootstrap redraws chunks of images with replacement and "
        "recomputes the trained and untrained matrices from the same draw; it covers the choice of images, "
        "the seed spread the choice of initialisation. Learned share: excess / (trained - chance), where the "
        f"trained share is at least {_MIN_ABOVE_CHANCE} above chance."
    )
    block_sizes = sorted({key[r].groups for r in roots if key[r].groups > 1})
    if block_sizes:
        cross = []
        for r in roots:
            t = [block_diagonality(key[r].trained.matrix, g).share for g in block_sizes]
            u = [
                float(np.mean([block_diagonality(m.matrix, g).share for m in key[r].untrained]))
                if key[r].untrained
                else None
                for g in block_sizes
            ]
            numbers["cross_block"][str(r)] = {"blocks": block_sizes, "trained": t, "untrained": u}
            cross.append([f"{_label(r)} trained", *(f"{s:.3f}" for s in t)])
            cross.append([f"{_label(r)} untrained", *(_fmt(s) for s in u)])
        cross.append(["chance", *(f"{1 / g:.3f}" for g in block_sizes)])
        md.table(["model", *(f"{tag}, {g} blocks" for g in block_sizes)], cross)
        md.p(
            "Each matrix scored at every model's block count: a model's own structure is its column g = N/2, "
            "the dense root-1 rows are the baseline at the same block size."
        )
    return numbers
