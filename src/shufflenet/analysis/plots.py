"""Figures of the analyses (matplotlib, Agg backend), written atomically as PNG."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..utils.atomic import atomic_path  # noqa: E402
from .correlation import LayerCorrelation  # noqa: E402
from .filters import FilterGroups  # noqa: E402

__all__ = [
    "save_figure",
    "plot_correlation_panels",
    "plot_flow_panels",
    "plot_filter_groups",
    "plot_bars",
    "plot_share_controls",
    "plot_gap_vs_groups",
]


def save_figure(fig: plt.Figure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically and close it.

    The image is stored with a 256-colour palette (heat maps of noisy matrices are several times smaller
    that way, and figures stay small enough to keep in a repository).
    """
    from PIL import Image

    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as img:
        pal = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    with atomic_path(path) as tmp:
        pal.save(tmp, format="PNG", optimize=True)
    return path


def _mark_groups(ax: plt.Axes, rows: int, cols: int, groups: int) -> None:
    if groups <= 1:
        return
    for k in range(1, groups):
        ax.axhline(k * rows / groups - 0.5, color="tab:red", lw=0.6, alpha=0.8)
        ax.axvline(k * cols / groups - 0.5, color="tab:red", lw=0.6, alpha=0.8)


def plot_correlation_panels(
    panels: Sequence[tuple[str, LayerCorrelation]],
    path: str | os.PathLike[str],
    vmax: float | None = None,
    ncols: int | None = None,
) -> Path:
    """One heat map of ``|whitened cross-covariance|`` per (title, result), group boundaries in red.

    Rows are ``layer_a``'s channels, columns ``layer_b``'s; brighter = more correlated. ``vmax`` defaults to
    the 99th percentile over all panels, shared so that panels compare.
    """
    mats = [np.abs(r.matrix) for _, r in panels]
    if vmax is None:
        vmax = float(np.percentile(np.concatenate([m.ravel() for m in mats]), 99)) or 1.0
    ncols = ncols or len(panels)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.0 * ncols, 3.3 * nrows), squeeze=False, constrained_layout=True
    )
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    for ax, (title, res), m in zip(axes.ravel(), panels, mats):
        ax.imshow(m, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        g = res.block.groups if res.block is not None else 1
        _mark_groups(ax, *m.shape, g)
        score = (
            ""
            if res.block is None
            else f"\nin-block {res.block.share:.2f} (chance {res.block.chance:.2f})"
        )
        ax.set_title(f"{title}{score}", fontsize=8)
        ax.set_xlabel(f"{res.layer_b} ({m.shape[1]})", fontsize=7)
        ax.set_ylabel(f"{res.layer_a} ({m.shape[0]})", fontsize=7)
        ax.tick_params(labelsize=6)
    return save_figure(fig, path)


def plot_flow_panels(
    panels: Sequence[tuple[str, np.ndarray]],
    path: str | os.PathLike[str],
    ncols: int,
    suptitle: str = "",
) -> Path:
    """Heat maps of (C_out, G) flow matrices: rows output channels, columns input groups. Black is exactly
    zero (no path); any nonzero influence is shown from dark red (weak) to yellow (the row's strongest)."""
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(2.0 * ncols + 0.6, 3.1 * nrows),
        squeeze=False,
        constrained_layout=True,
    )
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    for ax, (title, mat) in zip(axes.ravel(), panels):
        m = np.asarray(mat, dtype=float)
        peak = m.max(axis=1, keepdims=True)
        m = np.divide(m, peak, out=np.zeros_like(m), where=peak > 0)
        m = np.where(m > 0, 0.3 + 0.7 * m, 0.0)  # keep weak but nonzero links visible
        ax.imshow(m, cmap="magma", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks(range(m.shape[1]))
        ax.set_xlabel("input group", fontsize=7)
        ax.set_ylabel("output channel", fontsize=7)
        ax.tick_params(labelsize=6)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return save_figure(fig, path)


def _filter_tile(w: np.ndarray, channel_order: str) -> np.ndarray:
    """(C_in, kh, kw) -> an (kh, kw, 3) or (kh, kw) image in [0, 1], zero at 0.5."""
    peak = float(np.abs(w).max()) or 1.0
    t = 0.5 + 0.5 * w / peak
    if w.shape[0] == 3:
        t = t[::-1] if channel_order == "BGR" else t
        return np.transpose(t, (1, 2, 0))
    return t.mean(axis=0)


def plot_filter_groups(
    fg: FilterGroups,
    path: str | os.PathLike[str],
    channel_order: str = "RGB",
    per_row: int = 8,
) -> Path:
    """The filters of ``fg`` as an image grid, one panel per group, each filter scaled to its own maximum
    (grey = 0), with the group's mean colour fraction in the panel title."""
    slices = fg.group_slices()
    fig, axes = plt.subplots(
        1, len(slices), figsize=(3.2 * len(slices), 3.6), squeeze=False, constrained_layout=True
    )
    kh, kw = fg.weights.shape[2:]
    pad = 1
    for ax, (k, s) in zip(axes[0], enumerate(slices)):
        ws = fg.weights[s]
        n = ws.shape[0]
        rows = -(-n // per_row)
        colour = fg.weights.shape[1] == 3
        canvas = np.ones(
            (rows * (kh + pad) + pad, per_row * (kw + pad) + pad, *((3,) if colour else ()))
        )
        for i in range(n):
            r, c = divmod(i, per_row)
            y, x = pad + r * (kh + pad), pad + c * (kw + pad)
            canvas[y : y + kh, x : x + kw] = _filter_tile(ws[i], channel_order)
        ax.imshow(canvas, cmap=None if colour else "gray", vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
        title = f"group {k}: filters {s.start}-{s.stop - 1}"
        if fg.colour is not None:
            title += f"\nmean colour fraction {fg.colour[s].mean():.2f}"
        ax.set_title(title, fontsize=8)
    fig.suptitle(
        f"{fg.layer}: {fg.weights.shape[0]} filters of {kh}x{kw}, {fg.groups} groups", fontsize=9
    )
    return save_figure(fig, path)


def plot_bars(
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    path: str | os.PathLike[str],
    ylabel: str,
    title: str = "",
) -> Path:
    """Grouped bar chart: one group of bars per label, one bar per series."""
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 3.2), constrained_layout=True)
    for i, (name, vals) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_share_controls(
    labels: Sequence[str],
    trained: Sequence[float],
    untrained: Sequence[float],
    untrained_sd: Sequence[float | None],
    chance: Sequence[float],
    path: str | os.PathLike[str],
    title: str = "",
    excess_interval: Sequence[tuple[float, float] | None] | None = None,
) -> Path:
    """In-block share per label (a layer pair or a model): trained and untrained bars side by side, the
    untrained bar with its standard deviation over init seeds, and the chance level ``1/g`` as a black tick.

    Above each pair of bars: the learned excess (trained - untrained), with its bootstrap interval when
    ``excess_interval`` gives one.
    """
    x = np.arange(len(labels))
    width = 0.38
    fig, ax = plt.subplots(figsize=(1.5 * len(labels) + 2.5, 3.4), constrained_layout=True)
    ax.bar(x - width / 2, trained, width, label="trained", color="tab:blue")
    err = [0.0 if e is None else e for e in untrained_sd]
    ax.bar(
        x + width / 2,
        untrained,
        width,
        yerr=err,
        capsize=3,
        label="untrained (sd over init seeds)",
        color="tab:gray",
    )
    for i, c in enumerate(chance):
        ax.plot(
            [i - width, i + width],
            [c, c],
            color="black",
            lw=1.5,
            label="chance 1/g" if i == 0 else None,
        )
    intervals = excess_interval or [None] * len(labels)
    top = max([*trained, *untrained, *chance]) if len(labels) else 1.0
    for i, (t, u, ci) in enumerate(zip(trained, untrained, intervals)):
        text = f"{t - u:+.3f}" + ("" if ci is None else f"\n[{ci[0]:+.3f}, {ci[1]:+.3f}]")
        ax.text(i, max(t, u) + 0.02 * top, text, ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylim(0, top * 1.25)
    ax.set_ylabel("in-block share of |correlation|", fontsize=8)
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="upper right")
    return save_figure(fig, path)


def plot_gap_vs_groups(
    ours: dict[str, dict[int, tuple[tuple[float, float | None], Sequence[float]]]],
    published: dict[str, dict[int, float]],
    path: str | os.PathLike[str],
    title: str = "",
) -> Path:
    """Error gap (points) against the number of groups: per series of ours ``{g: ((mean, se), per-seed
    values)}`` a line with standard-error bars and the single seeds as dots; per published series ``{g: gap}``
    open squares. A dotted line marks 0 (no effect)."""
    fig, ax = plt.subplots(figsize=(5.0, 3.4), constrained_layout=True)
    ax.axhline(0.0, color="black", lw=0.8, ls=":")
    for i, (name, by_g) in enumerate(ours.items()):
        gs = sorted(by_g)
        means = [by_g[g][0][0] for g in gs]
        ses = [by_g[g][0][1] or 0.0 for g in gs]
        colour = f"C{i}"
        ax.errorbar(gs, means, yerr=ses, marker="o", capsize=3, color=colour, label=f"ours {name}")
        for g in gs:
            seeds = list(by_g[g][1])
            ax.scatter([g] * len(seeds), seeds, s=10, color=colour, alpha=0.4, zorder=3)
    for i, (name, by_g) in enumerate(published.items()):
        if by_g:
            gs = sorted(by_g)
            ax.plot(
                gs, [by_g[g] for g in gs], "s", mfc="none", color=f"C{i + len(ours)}", label=name
            )
    all_g = sorted({g for by_g in ours.values() for g in by_g})
    ax.set_xticks(all_g)
    ax.set_xlabel("groups g", fontsize=8)
    ax.set_ylabel("error without - with shuffle (points)", fontsize=8)
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
