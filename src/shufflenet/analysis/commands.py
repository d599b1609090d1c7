"""The work behind ``shufflenet correlate``, ``flow`` and ``filters``: compute, then write figures and numbers.

Each function writes into ``out_dir`` (created if needed) a PNG figure, a JSON file with the numbers and the
resolved configuration, and (where there is a matrix) a CSV of it; it returns the paths written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..data import build_transform, make_loader
from ..data.subsets import dataset_split
from ..factory import resolve_model
from .correlation import LayerCorrelation
from .correlation_control import ControlledCorrelation, controlled_correlation, default_pairs
from .filters import FilterGroups, filter_groups
from .flow import chain_layers, gconv_stack, measured_flow, structural_flow
from .layers import find_module, first_conv
from .outputs import write_csv, write_json, write_matrix_csv
from .plots import (
    plot_correlation_panels,
    plot_filter_groups,
    plot_flow_panels,
    plot_share_controls,
)

__all__ = [
    "correlate_checkpoint",
    "write_controlled_correlation",
    "flow_report",
    "gconv_stack_flow",
    "filters_report",
]


def _pair_tag(r: ControlledCorrelation) -> str:
    return f"{r.trained.layer_a.split('.')[-1]}-{r.trained.layer_b.split('.')[-1]}"


def write_controlled_correlation(
    results: Sequence[ControlledCorrelation],
    out_dir: str | os.PathLike[str],
    title: str,
    config: dict[str, Any],
) -> dict[str, Path]:
    """``correlation.png`` (heat maps: each pair trained and untrained with the first init seed),
    ``shares.png`` (in-block share trained / untrained / chance per pair, when a pair has groups and there is
    a control), ``correlation.json`` (numbers + config) and ``correlation_A-B.csv`` (each trained matrix)."""
    out = Path(out_dir)
    panels: list[tuple[str, LayerCorrelation]] = []
    for r in results:
        panels.append((f"{title} {_pair_tag(r)}: trained", r.trained))
        if r.untrained:
            panels.append((f"untrained (init seed {r.seeds[0]})", r.untrained[0]))
    paths = {
        "figure": plot_correlation_panels(
            panels, out / "correlation.png", ncols=2 if results[0].untrained else 1
        )
    }
    scored = [r for r in results if r.excess is not None]
    if scored:
        paths["shares"] = plot_share_controls(
            [f"{_pair_tag(r)}\n(g={r.groups})" for r in scored],
            [r.trained_share for r in scored],
            [r.untrained_share for r in scored],
            [r.seed_sd for r in scored],
            [r.chance for r in scored],
            out / "shares.png",
            title=f"{title}: in-block share, trained vs untrained ({len(scored[0].seeds)} init seeds)",
            excess_interval=[
                None if r.bootstrap is None else (r.bootstrap["low"], r.bootstrap["high"])
                for r in scored
            ],
        )
    paths["json"] = write_json(
        out / "correlation.json",
        {"config": config, "pairs": [r.to_dict() for r in results]},
    )
    for r in results:
        paths[f"matrix {_pair_tag(r)}"] = write_matrix_csv(
            out / f"correlation_{_pair_tag(r)}.csv", r.trained.matrix, row_label=r.trained.layer_a
        )
    return paths


def correlate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str],
    pairs: Sequence[tuple[str, str]] | None,
    out_dir: str | os.PathLike[str],
    split: str = "test",
    max_images: int | None = 2000,
    batch_size: int = 100,
    groups: int | None = None,
    eps: float = 1e-3,
    seeds: Sequence[int] = (0, 1, 2),
    bootstrap: int = 0,
    chunks: int = 10,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[list[ControlledCorrelation], dict[str, Path]]:
    """Load a model (``checkpoint``: anything :func:`shufflenet.factory.resolve_model` takes: a model file, a
    published checkpoint, a name), stream ``max_images`` images of ``data`` through it and through untrained
    models of its architecture (one per init seed in ``seeds``), and write the correlation of every layer pair
    (default: :data:`~shufflenet.analysis.correlation_control.NIN_PAIRS` for NIN) with the learned excess."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} must be 'train' or 'test'")
    resolved = resolve_model(checkpoint)
    model, arch, spec = resolved.model.to(device), resolved.name, resolved.input_spec
    pairs = default_pairs(model) if pairs is None else pairs  # fail before reading any data
    ds = dataset_split(data, train=split == "train", count=max_images)
    loader = make_loader(ds, build_transform(spec, False), batch_size, False)
    results = controlled_correlation(
        model,
        loader,
        pairs,
        seeds,
        groups=groups,
        max_images=max_images,
        eps=eps,
        bootstrap=bootstrap,
        chunks=chunks,
        device=device,
        progress=progress,
    )
    config = {
        "checkpoint": str(checkpoint),
        "arch": arch,
        "data": str(data),
        "split": split,
        "max_images": max_images,
        "pairs": [list(r.pair) for r in results],
        "groups": groups,
        "eps": eps,
        "init_seeds": list(seeds),
        "bootstrap": bootstrap,
        "chunks": chunks,
    }
    return results, write_controlled_correlation(results, out_dir, arch, config)


def gconv_stack_flow(channels: int, groups: int, depth: int, shuffle: bool) -> list[dict[str, Any]]:
    """Structural and measured flow after each layer of a stack of pointwise group convolutions."""
    stack = gconv_stack(channels, groups, depth, shuffle)
    layers = chain_layers(stack)
    conv_ends = [i + 1 for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    out = []
    for d, end in enumerate(conv_ends, start=1):
        prefix = nn.Sequential(*layers[:end])
        out.append(
            {
                "depth": d,
                "shuffle": shuffle,
                "structural": structural_flow(prefix, channels, groups),
                "measured": measured_flow(prefix, channels, groups, input_size=(4, 4)),
            }
        )
    return out


def _summarise(structural: np.ndarray | None, measured: np.ndarray) -> dict[str, Any]:
    support = measured > 0
    out = {
        "measured": measured.tolist(),
        "outputs_seeing_all_groups": int(support.all(axis=1).sum()),
        "outputs": int(measured.shape[0]),
        "mean_groups_seen": float(support.sum(axis=1).mean()),
    }
    if structural is not None:
        out["structural"] = structural.astype(int).tolist()
        out["measured_support_equals_structural"] = bool((support == structural).all())
    return out


def flow_report(
    out_dir: str | os.PathLike[str],
    model: nn.Module | None = None,
    module_name: str | None = None,
    input_groups: int | None = None,
    channels: int = 24,
    groups: int = 3,
    depth: int = 3,
    input_size: int = 8,
    label: str = "",
) -> dict[str, Path]:
    """Flow heat maps: of the pointwise-group-conv stack (``model=None``: with and without shuffle, after
    each layer), or of ``model``'s submodule ``module_name`` (measured; structural too when it is a chain)."""
    out = Path(out_dir)
    panels: list[tuple[str, np.ndarray]] = []
    record: dict[str, Any] = {}
    if model is None:
        for shuffle in (False, True):
            for row in gconv_stack_flow(channels, groups, depth, shuffle):
                tag = "shuffle" if shuffle else "no shuffle"
                panels.append((f"{tag}, after {row['depth']} GConv", row["measured"]))
                record[f"{tag.replace(' ', '_')}_depth{row['depth']}"] = _summarise(
                    row["structural"], row["measured"]
                )
        config = {"stack": {"channels": channels, "groups": groups, "depth": depth}}
        ncols = depth
        suptitle = f"{depth} stacked 1x1 group convs, {channels} channels, g={groups}: rows output channels"
    else:
        if module_name is None:
            raise ValueError("module_name is required with a model (e.g. 'stages.1')")
        full, module = find_module(model, module_name)
        conv = first_conv(module)
        if conv is None:
            raise ValueError(f"module {full!r} has no convolution to take the input channels from")
        g = input_groups or max(
            (
                m.groups
                for m in module.modules()
                if isinstance(m, nn.Conv2d) and m.groups < m.in_channels
            ),
            default=1,
        )
        measured = measured_flow(module, conv.in_channels, g, input_size=(input_size, input_size))
        try:
            structural = structural_flow(module, conv.in_channels, g)
        except (TypeError, ValueError):
            structural = None
        panels.append((f"{label or 'model'}: {full}", measured))
        record[full] = _summarise(structural, measured)
        config = {"model": label, "module": full, "input_groups": g, "input_size": input_size}
        ncols = 1
        suptitle = f"{label} {full}: output channels vs {g} input channel groups (measured)"
    return {
        "figure": plot_flow_panels(panels, out / "flow.png", ncols=ncols, suptitle=suptitle),
        "json": write_json(out / "flow.json", {"config": config, "flow": record}),
    }


def filters_report(
    model: nn.Module,
    layer: str,
    out_dir: str | os.PathLike[str],
    groups: int | None = None,
    channel_order: str = "RGB",
    config: dict[str, Any] | None = None,
) -> tuple[FilterGroups, dict[str, Path]]:
    """``filters.png`` (grid by group), ``filters.json`` (per-group colour), ``filters.csv`` (per filter)."""
    fg = filter_groups(model, layer, groups)
    out = Path(out_dir)
    rows = []
    for k, s in enumerate(fg.group_slices()):
        for i in range(s.start, s.stop):
            row: dict[str, Any] = {
                "filter": i,
                "group": k,
                "norm": float(np.linalg.norm(fg.weights[i])),
            }
            if fg.colour is not None:
                row["colour_fraction"] = float(fg.colour[i])
            rows.append(row)
    paths = {
        "figure": plot_filter_groups(fg, out / "filters.png", channel_order),
        "json": write_json(out / "filters.json", {"config": config or {}, "summary": fg.summary()}),
        "csv": write_csv(out / "filters.csv", rows),
    }
    return fg, paths
