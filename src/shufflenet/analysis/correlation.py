"""Inter-layer correlation of filter responses (Deep Roots, Ioannou et al. CVPR 2017, Sec. 5 and Fig. 7).

Every spatial position of every image is one sample of a layer's responses: a vector of its ``C`` channels.
The two layers' responses are centred and ZCA-whitened separately, and the covariance between the two
whitened layers is a ``C_a x C_b`` matrix; its absolute value is the heat map (brighter = more correlated).
When the maps differ in size, the smaller one is upsampled to the larger by nearest neighbour, so that each
sample pairs a position of the larger map with the position covering it in the smaller one.

Memory stays bounded: the data is streamed and only the sums ``n``, ``sum x``, ``sum y``, ``sum x x^T``,
``sum y y^T`` and ``sum x y^T`` are kept (float64, around a shift taken from the first batch to avoid
cancellation), never the activations.

How block-diagonal the matrix is: with ``g`` groups (rows and columns cut into ``g`` equal parts), the share of
the total absolute correlation that falls inside the ``g`` diagonal blocks, against ``1/g``, the share of
entries those blocks cover (what a structureless matrix would give). ``score = (share - 1/g) / (1 - 1/g)``
is 0 for no structure and 1 for a perfectly block-diagonal matrix.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..utils import torch_threads
from .layers import capture_outputs, find_module, first_conv

__all__ = [
    "CrossMoments",
    "zca_matrix",
    "whitened_cross_covariance",
    "block_diagonality",
    "BlockScore",
    "LayerCorrelation",
    "layer_correlation",
    "paired_samples",
    "pair_groups",
    "StreamedMoments",
    "stream_pair_moments",
    "correlation_from_moments",
]


class CrossMoments:
    """Streaming first and second moments of paired samples ``x`` (n, dx) and ``y`` (n, dy)."""

    def __init__(self, dim_x: int, dim_y: int, device: torch.device | str | None = None) -> None:
        self.dim_x, self.dim_y = dim_x, dim_y
        kw = {"dtype": torch.float64, "device": device}
        self.n = 0
        self._shift_x: torch.Tensor | None = None
        self._shift_y: torch.Tensor | None = None
        self._sx = torch.zeros(dim_x, **kw)
        self._sy = torch.zeros(dim_y, **kw)
        self._sxx = torch.zeros(dim_x, dim_x, **kw)
        self._syy = torch.zeros(dim_y, dim_y, **kw)
        self._sxy = torch.zeros(dim_x, dim_y, **kw)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add ``n`` paired samples: ``x`` (n, dim_x), ``y`` (n, dim_y)."""
        if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x {tuple(x.shape)} and y {tuple(y.shape)} must be (n, dx) and (n, dy)"
            )
        if x.shape[1] != self.dim_x or y.shape[1] != self.dim_y:
            raise ValueError(
                f"expected {self.dim_x} and {self.dim_y} features, got {x.shape[1]} and {y.shape[1]}"
            )
        x = x.to(self._sx.device, torch.float64)
        y = y.to(self._sy.device, torch.float64)
        if self._shift_x is None:
            self._shift_x, self._shift_y = x.mean(0), y.mean(0)
        x, y = x - self._shift_x, y - self._shift_y
        self.n += x.shape[0]
        self._sx += x.sum(0)
        self._sy += y.sum(0)
        self._sxx += x.T @ x
        self._syy += y.T @ y
        self._sxy += x.T @ y

    @classmethod
    def merged(cls, parts: Sequence[CrossMoments]) -> CrossMoments:
        """One set of moments holding every sample of ``parts`` (taken around the first part's shift).

        A part's sums around its own shift ``s`` move to the common shift ``t`` with ``d = s - t``:
        ``sum(x - t) = sum(x - s) + n d`` and
        ``sum (x - t)(y - t')^T = sum (x - s)(y - s')^T + S_x e^T + d S_y^T + n d e^T`` (``e = s' - t'``).
        """
        parts = [p for p in parts if p.n > 0]
        if not parts:
            raise ValueError("no samples to merge: every part is empty")
        first = parts[0]
        out = cls(first.dim_x, first.dim_y, device=first._sx.device)
        out._shift_x, out._shift_y = first._shift_x.clone(), first._shift_y.clone()
        for p in parts:
            if (p.dim_x, p.dim_y) != (out.dim_x, out.dim_y):
                raise ValueError(
                    f"cannot merge moments of {p.dim_x}x{p.dim_y} and {out.dim_x}x{out.dim_y} features"
                )
            d, e = p._shift_x - out._shift_x, p._shift_y - out._shift_y
            out.n += p.n
            out._sx += p._sx + p.n * d
            out._sy += p._sy + p.n * e
            out._sxx += (
                p._sxx + torch.outer(p._sx, d) + torch.outer(d, p._sx) + p.n * torch.outer(d, d)
            )
            out._syy += (
                p._syy + torch.outer(p._sy, e) + torch.outer(e, p._sy) + p.n * torch.outer(e, e)
            )
            out._sxy += (
                p._sxy + torch.outer(p._sx, e) + torch.outer(d, p._sy) + p.n * torch.outer(d, e)
            )
        return out

    def _check(self) -> None:
        if self.n < 2:
            raise ValueError(f"need at least 2 samples to estimate a covariance, have {self.n}")

    @property
    def mean_x(self) -> torch.Tensor:
        self._check()
        return self._shift_x + self._sx / self.n

    @property
    def mean_y(self) -> torch.Tensor:
        self._check()
        return self._shift_y + self._sy / self.n

    def _cov(self, s_ab: torch.Tensor, s_a: torch.Tensor, s_b: torch.Tensor) -> torch.Tensor:
        self._check()
        return s_ab / self.n - torch.outer(s_a / self.n, s_b / self.n)

    @property
    def cov_xx(self) -> torch.Tensor:
        """(dx, dx) covariance (normalised by n)."""
        return self._cov(self._sxx, self._sx, self._sx)

    @property
    def cov_yy(self) -> torch.Tensor:
        return self._cov(self._syy, self._sy, self._sy)

    @property
    def cov_xy(self) -> torch.Tensor:
        """(dx, dy) cross-covariance (normalised by n)."""
        return self._cov(self._sxy, self._sx, self._sy)


def zca_matrix(cov: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """ZCA whitening matrix ``U diag((lambda + e)^-1/2) U^T`` of a (d, d) covariance.

    ``e = eps * trace(cov) / d`` (relative to the mean variance) keeps dead or redundant channels, whose
    variance is (near) zero, from being blown up.
    """
    cov = 0.5 * (cov + cov.T)
    # one thread: LAPACK's eigensolver on a few hundred dimensions is fastest on one thread, and on a busy
    # machine a second thread can make it 50 times slower
    with torch_threads(1):
        evals, evecs = torch.linalg.eigh(cov)
    reg = eps * float(torch.trace(cov)) / cov.shape[0]
    inv_sqrt = 1.0 / torch.sqrt(evals.clamp_min(0) + max(reg, 1e-12))
    return (evecs * inv_sqrt) @ evecs.T


def whitened_cross_covariance(moments: CrossMoments, eps: float = 1e-3) -> torch.Tensor:
    """``W_x C_xy W_y`` (dx, dy): the covariance of the ZCA-whitened ``x`` and ``y``."""
    return zca_matrix(moments.cov_xx, eps) @ moments.cov_xy @ zca_matrix(moments.cov_yy, eps)


@dataclasses.dataclass(frozen=True)
class BlockScore:
    """How much of a matrix's absolute mass lies in its ``groups`` diagonal blocks."""

    groups: int
    share: float  # share of sum |M| inside the diagonal blocks
    chance: float  # share of entries the blocks cover, 1/groups
    score: float | None  # (share - chance) / (1 - chance); None for groups == 1


def block_diagonality(matrix: np.ndarray | torch.Tensor, groups: int) -> BlockScore:
    """Share of ``sum |matrix|`` inside the ``groups`` equal diagonal blocks, against chance.

    Raises:
        ValueError: when the rows or columns are not divisible by ``groups``.
    """
    m = np.abs(np.asarray(matrix.detach().cpu() if isinstance(matrix, torch.Tensor) else matrix))
    if m.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {m.shape}")
    if isinstance(groups, bool) or not isinstance(groups, int | np.integer) or groups < 1:
        raise ValueError(f"groups={groups!r} must be a positive integer")
    rows, cols = m.shape
    if rows % groups or cols % groups:
        raise ValueError(f"a {rows}x{cols} matrix cannot be cut into groups={groups} equal blocks")
    total = float(m.sum())
    r, c = rows // groups, cols // groups
    inside = sum(float(m[k * r : (k + 1) * r, k * c : (k + 1) * c].sum()) for k in range(groups))
    share = inside / total if total > 0 else float("nan")
    chance = 1.0 / groups
    score = None if groups == 1 else (share - chance) / (1.0 - chance)
    return BlockScore(int(groups), share, chance, score)


def paired_samples(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, Ca, Ha, Wa) and (N, Cb, Hb, Wb) -> samples (N*H*W, Ca) and (N*H*W, Cb) at the larger map's
    size, the smaller map upsampled by nearest neighbour."""
    if a.dim() != 4 or b.dim() != 4 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"layer outputs must be (N, C, H, W) with the same N, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    size = max(a.shape[-2:], b.shape[-2:], key=lambda s: s[0] * s[1])
    if tuple(a.shape[-2:]) != tuple(size):
        a = F.interpolate(a, size=tuple(size), mode="nearest")
    if tuple(b.shape[-2:]) != tuple(size):
        b = F.interpolate(b, size=tuple(size), mode="nearest")
    # (N, C, H, W) -> (N, H, W, C) -> (N*H*W, C)
    return a.permute(0, 2, 3, 1).reshape(-1, a.shape[1]), b.permute(0, 2, 3, 1).reshape(
        -1, b.shape[1]
    )


@dataclasses.dataclass
class LayerCorrelation:
    """Result of :func:`layer_correlation`. ``matrix`` is the (C_a, C_b) whitened cross-covariance."""

    layer_a: str
    layer_b: str
    shape_a: tuple[int, int, int]  # (C, H, W) of one image's response
    shape_b: tuple[int, int, int]
    images: int
    samples: int
    matrix: np.ndarray
    block: BlockScore | None
    eps: float

    def to_dict(self) -> dict[str, Any]:
        """Everything but the matrix, JSON-ready."""
        return {
            "layer_a": self.layer_a,
            "layer_b": self.layer_b,
            "shape_a": list(self.shape_a),
            "shape_b": list(self.shape_b),
            "images": self.images,
            "samples": self.samples,
            "eps": self.eps,
            "mean_abs": float(np.abs(self.matrix).mean()),
            "block": None if self.block is None else dataclasses.asdict(self.block),
        }


def _images_of(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(
        f"batches must be image tensors (N, C, H, W) or (images, labels) pairs, got {type(batch).__name__}"
    )


def default_groups(model: nn.Module, layer_b: str) -> int:
    """Groups of the first convolution of ``layer_b`` (1 if it has none)."""
    conv = first_conv(find_module(model, layer_b)[1])
    return 1 if conv is None else int(conv.groups)


def pair_groups(model: nn.Module, layer_a: str, layer_b: str) -> int:
    """Blocks to score the pair with: the groups of ``layer_b``'s first conv when it has several (its groups
    see disjoint blocks of ``layer_a``'s channels), else those of ``layer_a``'s (its outputs come in blocks
    that ``layer_b`` mixes), else 1.

    For NIN root-N: conv2c-conv3a and conv3a-conv3b give N/2, conv1c-conv2a and conv2a-conv2b give N.
    """
    g = default_groups(model, layer_b)
    return g if g > 1 else default_groups(model, layer_a)


@dataclasses.dataclass
class StreamedMoments:
    """What :func:`stream_pair_moments` collects: per model key and layer pair (as given), one
    :class:`CrossMoments` per chunk of consecutive images, the full layer names, and one image's response
    shapes (C, H, W)."""

    images: int
    chunks: dict[str, dict[tuple[str, str], list[CrossMoments]]]
    names: dict[str, dict[tuple[str, str], tuple[str, str]]]
    shapes: dict[str, dict[tuple[str, str], tuple[tuple[int, ...], tuple[int, ...]]]]

    def merged(
        self, key: str, pair: tuple[str, str], take: Sequence[int] | None = None
    ) -> CrossMoments:
        """The moments of all chunks (or of the chunks ``take``, repeats allowed: a bootstrap resample)."""
        parts = self.chunks[key][pair]
        return CrossMoments.merged(parts if take is None else [parts[i] for i in take])


def _check_pairs(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(f"layer pair {pair!r} must be two layer names (A, B)")
        out.append((pair[0], pair[1]))
    if not out:
        raise ValueError("give at least one layer pair")
    return out


@torch.no_grad()
def stream_pair_moments(
    models: Mapping[str, nn.Module],
    batches: Iterable[Any],
    pairs: Sequence[tuple[str, str]],
    max_images: int | None = None,
    chunk_images: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> StreamedMoments:
    """One pass over ``batches``: every batch goes through every model (eval mode) and adds the paired
    samples of every layer pair to that model's moments.

    Args:
        models: models keyed by a label (e.g. ``{"trained": m, "untrained-0": m0}``), all fed the same images.
        batches: image tensors (N, C, H, W) or ``(images, labels, ...)`` tuples, normalised as the models expect.
        pairs: ``(layer_a, layer_b)`` names (full dotted names or unique suffixes).
        max_images: stop after this many images.
        chunk_images: start new moments every this many images (for a bootstrap over images); ``None``: one
            chunk.
        device: where the models run (default: where the first model's parameters are).
    """
    pairs = _check_pairs(pairs)
    if not models:
        raise ValueError("give at least one model")
    if chunk_images is not None and (isinstance(chunk_images, bool) or chunk_images < 1):
        raise ValueError(f"chunk_images={chunk_images!r} must be a positive integer or None")
    if device is None:
        param = next(next(iter(models.values())).parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    layers = list(dict.fromkeys(name for pair in pairs for name in pair))
    models = {k: m.to(device).eval() for k, m in models.items()}
    names = {
        k: {p: (find_module(m, p[0])[0], find_module(m, p[1])[0]) for p in pairs}
        for k, m in models.items()
    }
    chunks: dict[str, dict[tuple[str, str], list[CrossMoments]]] = {
        k: {p: [] for p in pairs} for k in models
    }
    shapes: dict[str, dict[tuple[str, str], Any]] = {k: {} for k in models}
    images = 0
    bar = None
    if progress:
        bar = tqdm(total=max_images, unit="img", desc="correlation")
    with contextlib.ExitStack() as stack:
        outs = {k: stack.enter_context(capture_outputs(m, layers)) for k, m in models.items()}
        for batch in batches:
            x = _images_of(batch)
            if max_images is not None:
                x = x[: max_images - images]
            if x.shape[0] == 0:
                break
            x = x.to(device)
            # images [lo, hi) of this batch fall into chunk c
            cuts = _chunk_cuts(images, x.shape[0], chunk_images)
            for key, model in models.items():
                model(x)
                for pair in pairs:
                    a, b = outs[key][pair[0]], outs[key][pair[1]]
                    shapes[key][pair] = (tuple(a.shape[1:]), tuple(b.shape[1:]))
                    sa, sb = paired_samples(a, b)
                    per_image = sa.shape[0] // x.shape[0]
                    store = chunks[key][pair]
                    for c, lo, hi in cuts:
                        if c == len(store):
                            store.append(CrossMoments(sa.shape[1], sb.shape[1], device=device))
                        rows = slice(lo * per_image, hi * per_image)
                        store[c].update(sa[rows], sb[rows])
            images += x.shape[0]
            if bar is not None:
                bar.update(x.shape[0])
            if max_images is not None and images >= max_images:
                break
    if bar is not None:
        bar.close()
    if images == 0:
        raise ValueError("no images: the batches were empty")
    return StreamedMoments(images, chunks, names, shapes)


def _chunk_cuts(seen: int, count: int, chunk: int | None) -> list[tuple[int, int, int]]:
    """(chunk index, first, end) of a batch's images ``[0, count)`` when ``seen`` images came before."""
    if chunk is None:
        return [(0, 0, count)]
    cuts, lo = [], 0
    while lo < count:
        c = (seen + lo) // chunk
        hi = min(count, (c + 1) * chunk - seen)
        cuts.append((c, lo, hi))
        lo = hi
    return cuts


def correlation_from_moments(
    moments: CrossMoments,
    layer_a: str,
    layer_b: str,
    shapes: tuple[tuple[int, ...], tuple[int, ...]],
    images: int,
    groups: int,
    eps: float = 1e-3,
) -> LayerCorrelation:
    """The :class:`LayerCorrelation` of streamed moments, scored with ``groups`` blocks (none for 1)."""
    matrix = whitened_cross_covariance(moments, eps).cpu().numpy()
    block = block_diagonality(matrix, groups) if groups > 1 else None
    return LayerCorrelation(
        layer_a, layer_b, shapes[0], shapes[1], images, moments.n, matrix, block, eps
    )


def layer_correlation(
    model: nn.Module,
    batches: Iterable[Any],
    layer_a: str,
    layer_b: str,
    groups: int | None = None,
    max_images: int | None = None,
    eps: float = 1e-3,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> LayerCorrelation:
    """Deep Roots inter-layer correlation between the outputs of ``layer_a`` and ``layer_b``.

    Args:
        model: run in eval mode on ``device`` (default: where its parameters are).
        batches: iterable of image tensors (N, C, H, W) or ``(images, labels)`` pairs, already normalised
            as the model expects (a ``DataLoader`` works).
        layer_a, layer_b: layer names (full dotted names or unique suffixes, e.g. ``"conv2c"``).
        groups: blocks for the block-diagonality score; default: the groups of ``layer_b``'s first conv
            (for NIN root-N and ``conv2c``/``conv3a``, N/2). ``None`` score when the result is 1.
        max_images: stop after this many images.
        eps: ZCA regulariser relative to the mean variance (see :func:`zca_matrix`).
        progress: show a tqdm bar.
    """
    pair = (layer_a, layer_b)
    groups = default_groups(model, layer_b) if groups is None else groups
    streamed = stream_pair_moments(
        {"model": model}, batches, [pair], max_images, None, device, progress
    )
    name_a, name_b = streamed.names["model"][pair]
    return correlation_from_moments(
        streamed.merged("model", pair),
        name_a,
        name_b,
        streamed.shapes["model"][pair],
        streamed.images,
        groups,
        eps,
    )
