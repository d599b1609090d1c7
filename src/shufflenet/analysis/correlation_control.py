"""The untrained control of the inter-layer correlation: how much block structure is learned.

A grouped convolution imposes part of the block-diagonal pattern before any training: the outputs of group
``k`` of ``conv3a`` are functions of block ``k`` of its input alone, so even random weights correlate them
with that block more than with the others. The same measurement on the same images for freshly initialised
models of the same architecture (several initialisation seeds) gives that architectural part, and the
**learned excess** is

    excess = share(trained) - mean over seeds of share(untrained)

where ``share`` is the in-block share of :func:`~shufflenet.analysis.correlation.block_diagonality` (chance:
``1/g``). Its spread comes from two sources, both reported: the standard deviation of the untrained shares
over initialisation seeds (and the standard error of their mean), and a paired bootstrap over images: the
images are cut into chunks of consecutive images, chunks are drawn with replacement, and the trained and
every untrained matrix are recomputed from the *same* drawn chunks (all from one pass of streaming sums, see
:func:`~shufflenet.analysis.correlation.stream_pair_moments`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models import create_model
from ..ops.validate import check_positive_int
from .correlation import (
    CrossMoments,
    LayerCorrelation,
    StreamedMoments,
    block_diagonality,
    correlation_from_moments,
    pair_groups,
    stream_pair_moments,
    whitened_cross_covariance,
)
from .layers import find_module

__all__ = [
    "NIN_PAIRS",
    "default_pairs",
    "untrained_factory",
    "ControlledCorrelation",
    "controlled_correlation",
]

# Layer pairs of NIN root-N measured by default: across the block boundary into each grouped layer, and
# from each grouped layer to the dense 1x1 layer that follows it in the same block.
NIN_PAIRS: tuple[tuple[str, str], ...] = (
    ("conv1c", "conv2a"),
    ("conv2a", "conv2b"),
    ("conv2c", "conv3a"),
    ("conv3a", "conv3b"),
)


def default_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """:data:`NIN_PAIRS` for a model that has those layers; otherwise a ``ValueError`` asking for pairs."""
    try:
        for a, b in NIN_PAIRS:
            find_module(model, a)
            find_module(model, b)
    except ValueError:
        raise ValueError(
            f"no default layer pairs for {type(model).__name__} (they exist for NIN: "
            f"{', '.join(f'{a}:{b}' for a, b in NIN_PAIRS)}); give the pairs (e.g. --pairs A:B)"
        ) from None
    return list(NIN_PAIRS)


def untrained_factory(model: nn.Module) -> Callable[[int], nn.Module]:
    """``seed -> fresh model``: the architecture of ``model`` (from its ``model_cfg``, which
    :func:`shufflenet.create_model` sets) initialised under ``torch.manual_seed(seed)``, without touching the
    caller's random state."""
    cfg = getattr(model, "model_cfg", None)
    if not cfg or "arch" not in cfg:
        raise ValueError(
            f"cannot rebuild an untrained {type(model).__name__}: it has no model_cfg (build it with "
            "shufflenet.create_model or load it from a model file)"
        )
    arch, kwargs = cfg["arch"], dict(cfg.get("kwargs", {}))

    def make(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return create_model(arch, **kwargs)

    return make


@dataclasses.dataclass
class ControlledCorrelation:
    """One layer pair of a trained model beside the same measurement on untrained models.

    ``excess`` is the trained in-block share minus the mean untrained one (``None`` when ``groups == 1``);
    ``seed_sd`` the standard deviation of the untrained shares over seeds, ``seed_se`` that over the square
    root of the number of seeds; ``bootstrap`` the paired bootstrap over image chunks (``resamples``,
    ``chunks``, ``sd`` and the 2.5/97.5 percentiles ``low``/``high`` of the excess), ``None`` without it.
    """

    pair: tuple[str, str]
    groups: int
    trained: LayerCorrelation
    untrained: list[LayerCorrelation]
    seeds: list[int]
    bootstrap: dict[str, Any] | None = None

    @property
    def chance(self) -> float:
        return 1.0 / self.groups

    @property
    def trained_share(self) -> float | None:
        return None if self.trained.block is None else self.trained.block.share

    @property
    def untrained_shares(self) -> list[float]:
        return [u.block.share for u in self.untrained if u.block is not None]

    @property
    def untrained_share(self) -> float | None:
        shares = self.untrained_shares
        return float(np.mean(shares)) if shares else None

    @property
    def excess(self) -> float | None:
        t, u = self.trained_share, self.untrained_share
        return None if t is None or u is None else t - u

    @property
    def seed_sd(self) -> float | None:
        shares = self.untrained_shares
        return float(np.std(shares, ddof=1)) if len(shares) > 1 else None

    @property
    def seed_se(self) -> float | None:
        sd = self.seed_sd
        return None if sd is None else sd / np.sqrt(len(self.untrained_shares))

    @property
    def learned_fraction(self) -> float | None:
        """Share of the above-chance structure that training added: excess / (trained - chance)."""
        t, e = self.trained_share, self.excess
        if t is None or e is None or t == self.chance:
            return None
        return e / (t - self.chance)

    def to_dict(self) -> dict[str, Any]:
        """The numbers (no matrices), JSON-ready."""
        return {
            "layer_a": self.trained.layer_a,
            "layer_b": self.trained.layer_b,
            "groups": self.groups,
            "chance": self.chance,
            "trained_share": self.trained_share,
            "untrained_shares": self.untrained_shares,
            "untrained_share": self.untrained_share,
            "seeds": list(self.seeds),
            "excess": self.excess,
            "seed_sd": self.seed_sd,
            "seed_se": self.seed_se,
            "learned_fraction": self.learned_fraction,
            "bootstrap": self.bootstrap,
            "trained": self.trained.to_dict(),
            "untrained": [u.to_dict() for u in self.untrained],
        }


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int | np.integer):
            raise TypeError(f"init seed {s!r} must be an integer")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"init seeds {seeds} must be distinct")
    return seeds


def controlled_correlation(
    model: nn.Module,
    batches: Iterable[Any],
    pairs: Sequence[tuple[str, str]] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    make_untrained: Callable[[int], nn.Module] | None = None,
    groups: int | Mapping[tuple[str, str], int] | None = None,
    max_images: int | None = None,
    eps: float = 1e-3,
    bootstrap: int = 0,
    chunks: int = 10,
    bootstrap_seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> list[ControlledCorrelation]:
    """Inter-layer correlation of ``model`` and of untrained models of its architecture, per layer pair.

    Args:
        model: the trained model.
        batches: as for :func:`~shufflenet.analysis.correlation.layer_correlation`; streamed once, every batch
            going through the trained and every untrained model.
        pairs: ``(layer_a, layer_b)`` names; default :func:`default_pairs`.
        seeds: initialisation seeds of the untrained models (may be empty: no control).
        make_untrained: ``seed -> model``; default :func:`untrained_factory` of ``model``.
        groups: blocks to score with, one for all pairs or per pair; default :func:`pair_groups`.
        bootstrap: resamples of the paired bootstrap over image chunks (0: none).
        chunks: image chunks for the bootstrap (at least 2), of ``ceil(max_images / chunks)`` images each
            (a bootstrap needs ``max_images``; fewer chunks when the batches hold fewer images).
    """
    pairs = default_pairs(model) if pairs is None else [tuple(p) for p in pairs]
    seeds = _check_seeds(seeds)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise ValueError(f"bootstrap={bootstrap!r} must be a non-negative integer")
    chunk_images = None
    if bootstrap:
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 2:
            raise ValueError(f"chunks={chunks!r} must be an integer >= 2 for a bootstrap")
        if max_images is None:
            raise ValueError(
                "a bootstrap over images needs max_images (to cut the images into chunks)"
            )
        chunk_images = -(-max_images // chunks)
    if not seeds and bootstrap:
        raise ValueError("a bootstrap of the learned excess needs at least one init seed")
    if groups is not None and not isinstance(groups, Mapping):
        check_positive_int(groups, "groups")
    make = make_untrained or (untrained_factory(model) if seeds else None)
    param = next(model.parameters(), None)
    models = {"trained": model}
    for s in seeds:  # untrained models compute in the trained model's dtype
        fresh = make(s)
        models[f"untrained-{s}"] = fresh if param is None else fresh.to(param.dtype)
    streamed = stream_pair_moments(
        models, batches, pairs, max_images, chunk_images, device, progress
    )
    rng = np.random.default_rng(bootstrap_seed)
    out = []
    for pair in pairs:
        if groups is None:
            g = pair_groups(model, *pair)
        elif isinstance(groups, Mapping):
            g = groups.get(pair) or pair_groups(model, *pair)
        else:
            g = groups

        res = ControlledCorrelation(
            pair=pair,
            groups=g,
            trained=_measure(streamed, "trained", pair, g, eps),
            untrained=[_measure(streamed, f"untrained-{s}", pair, g, eps) for s in seeds],
            seeds=seeds,
        )
        if bootstrap and g > 1:
            res.bootstrap = _bootstrap(streamed, pair, seeds, g, eps, bootstrap, rng)
        out.append(res)
    return out


def _measure(
    streamed: StreamedMoments, key: str, pair: tuple[str, str], groups: int, eps: float
) -> LayerCorrelation:
    return correlation_from_moments(
        streamed.merged(key, pair),
        *streamed.names[key][pair],
        streamed.shapes[key][pair],
        streamed.images,
        groups,
        eps,
    )


def _share(moments: CrossMoments, groups: int, eps: float) -> float:
    return block_diagonality(whitened_cross_covariance(moments, eps).cpu().numpy(), groups).share


def _bootstrap(
    streamed: StreamedMoments,
    pair: tuple[str, str],
    seeds: Sequence[int],
    groups: int,
    eps: float,
    resamples: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Paired bootstrap of the excess: the same drawn chunks for the trained and every untrained model."""
    n = len(streamed.chunks["trained"][pair])
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 image chunks, the images filled {n}")
    excess = np.empty(resamples)
    for r in range(resamples):
        take = rng.integers(0, n, size=n)
        trained = _share(streamed.merged("trained", pair, take), groups, eps)
        untrained = [
            _share(streamed.merged(f"untrained-{s}", pair, take), groups, eps) for s in seeds
        ]
        excess[r] = trained - float(np.mean(untrained))
    return {
        "resamples": resamples,
        "chunks": n,
        "sd": float(np.std(excess, ddof=1)) if resamples > 1 else 0.0,
        "low": float(np.percentile(excess, 2.5)),
        "high": float(np.percentile(excess, 97.5)),
    }
