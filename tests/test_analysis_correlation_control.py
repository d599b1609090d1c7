"""Untrained control and learned excess of the inter-layer correlation, against direct numpy computations."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from shufflenet import create_model
from shufflenet.analysis.correlation import (
    CrossMoments,
    block_diagonality,
    pair_groups,
    stream_pair_moments,
)
from shufflenet.analysis.correlation_control import (
    NIN_PAIRS,
    controlled_correlation,
    default_pairs,
    untrained_factory,
)


def _tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return (
        nn.Sequential(
            OrderedDict(
                a=nn.Conv2d(3, 8, 3, padding=1),
                act=nn.ReLU(),
                pool=nn.AvgPool2d(2),
                b=nn.Conv2d(8, 6, 1, groups=2),
            )
        )
        .double()
        .eval()
    )


def _numpy_matrix(model: nn.Module, images: torch.Tensor, eps: float = 1e-3) -> np.ndarray:
    """All activations at once, nearest upsampling by repeating pixels, two-pass covariances, ZCA by eigh."""
    with torch.no_grad():
        a = model[:2](images).numpy()  # (N, 8, 8, 8)
        b = model(images).numpy()  # (N, 6, 4, 4)
    b = b.repeat(2, axis=2).repeat(2, axis=3)  # (N, 6, 8, 8)
    x = a.transpose(0, 2, 3, 1).reshape(-1, 8)
    y = b.transpose(0, 2, 3, 1).reshape(-1, 6)
    xc, yc = x - x.mean(0), y - y.mean(0)

    def whiten(z: np.ndarray) -> np.ndarray:
        cov = z.T @ z / len(z)
        lam, u = np.linalg.eigh(cov)
        e = eps * np.trace(cov) / cov.shape[0]
        return z @ (u @ np.diag(1 / np.sqrt(np.clip(lam, 0, None) + e)) @ u.T)

    return whiten(xc).T @ whiten(yc) / len(x)


def _numpy_share(m: np.ndarray, groups: int) -> float:
    m = np.abs(m)
    r, c = m.shape[0] // groups, m.shape[1] // groups
    mask = np.kron(np.eye(groups), np.ones((r, c)))  # literal block-diagonal mask
    return float((m * mask).sum() / m.sum())


def _batches(images: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images[i : i + size], torch.zeros(0)) for i in range(0, len(images), size)]


def test_untrained_control_and_excess_match_direct_numpy() -> None:
    trained = _tiny_model(100)
    images = torch.randn(12, 3, 8, 8, dtype=torch.float64)
    seeds = [0, 1, 2]
    res = controlled_correlation(
        trained, _batches(images, 5), [("act", "b")], seeds, make_untrained=_tiny_model
    )
    (r,) = res
    assert r.groups == 2 and r.chance == 0.5 and r.seeds == seeds
    np.testing.assert_allclose(
        r.trained.matrix, _numpy_matrix(trained, images), rtol=1e-6, atol=1e-9
    )
    shares = []
    for s, u in zip(seeds, r.untrained):
        expected = _numpy_matrix(_tiny_model(s), images)
        np.testing.assert_allclose(u.matrix, expected, rtol=1e-6, atol=1e-9)
        shares.append(_numpy_share(expected, 2))
    trained_share = _numpy_share(_numpy_matrix(trained, images), 2)
    assert r.trained_share == pytest.approx(trained_share, rel=1e-7)
    assert r.untrained_shares == pytest.approx(shares, rel=1e-7)
    assert r.excess == pytest.approx(trained_share - np.mean(shares), rel=1e-6, abs=1e-12)
    assert r.seed_sd == pytest.approx(np.std(shares, ddof=1), rel=1e-6)
    assert r.seed_se == pytest.approx(np.std(shares, ddof=1) / np.sqrt(3), rel=1e-6)
    assert r.learned_fraction == pytest.approx(
        (trained_share - np.mean(shares)) / (trained_share - 0.5), rel=1e-6
    )
    assert r.bootstrap is None
    d = r.to_dict()
    assert d["untrained_share"] == pytest.approx(np.mean(shares)) and d["chance"] == 0.5


def test_bootstrap_resample_is_the_matrix_of_the_drawn_images() -> None:
    """One resample: the excess recomputed from the drawn chunks equals the numpy excess on those images."""
    trained = _tiny_model(7)
    images = torch.randn(12, 3, 8, 8, dtype=torch.float64)
    (r,) = controlled_correlation(
        trained,
        _batches(images, 5),  # batches straddle the chunk boundaries (4 images per chunk)
        [("act", "b")],
        [3, 4],
        make_untrained=_tiny_model,
        max_images=12,
        bootstrap=1,
        chunks=3,
        bootstrap_seed=11,
    )
    take = np.random.default_rng(11).integers(0, 3, size=3)
    drawn = torch.cat([images[4 * c : 4 * c + 4] for c in take])
    t = _numpy_share(_numpy_matrix(trained, drawn), 2)
    u = [_numpy_share(_numpy_matrix(_tiny_model(s), drawn), 2) for s in (3, 4)]
    b = r.bootstrap
    assert b["chunks"] == 3 and b["resamples"] == 1 and b["sd"] == 0.0
    assert b["low"] == pytest.approx(t - np.mean(u), rel=1e-6, abs=1e-12)
    assert b["high"] == pytest.approx(b["low"])


def test_chunked_moments_merge_to_the_whole_sample() -> None:
    model = _tiny_model(0)
    images = torch.randn(10, 3, 8, 8, dtype=torch.float64) + 50.0  # far from zero: shifts matter
    streamed = stream_pair_moments(
        {"m": model}, _batches(images, 3), [("act", "b")], chunk_images=4
    )
    parts = streamed.chunks["m"][("act", "b")]
    assert [p.n for p in parts] == [4 * 64, 4 * 64, 2 * 64]
    whole = stream_pair_moments({"m": model}, [images], [("act", "b")]).merged("m", ("act", "b"))
    merged = CrossMoments.merged(parts)
    for name in ("cov_xx", "cov_yy", "cov_xy", "mean_x", "mean_y"):
        np.testing.assert_allclose(
            getattr(merged, name).numpy(), getattr(whole, name).numpy(), rtol=1e-9, atol=1e-9
        )
    # a resample with repeats is the moments of the images repeated
    twice = stream_pair_moments({"m": model}, [images[:4], images[:4]], [("act", "b")])
    np.testing.assert_allclose(
        streamed.merged("m", ("act", "b"), [0, 0]).cov_xy.numpy(),
        twice.merged("m", ("act", "b")).cov_xy.numpy(),
        rtol=1e-9,
        atol=1e-12,
    )


@pytest.mark.parametrize("groups", [2, 3, 4, 6, 12])
def test_chance_share_is_one_over_groups(groups: int) -> None:
    """The chance level is the blocks' share of the entries: 1/g, the mean share of structureless matrices."""
    rng = np.random.default_rng(groups)
    shares = [block_diagonality(rng.normal(size=(24, 36)), groups).share for _ in range(200)]
    assert block_diagonality(np.ones((24, 36)), groups).share == pytest.approx(1 / groups)
    assert block_diagonality(np.ones((24, 36)), groups).chance == 1 / groups
    assert np.mean(shares) == pytest.approx(1 / groups, abs=4 * np.std(shares) / np.sqrt(200))


@pytest.mark.parametrize("groups", [2, 3, 6])
def test_controls_keep_chance_at_one_over_groups(groups: int) -> None:
    images = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    (r,) = controlled_correlation(
        _tiny_model(1), [images], [("b", "b")], [0, 1], make_untrained=_tiny_model, groups=groups
    )
    assert r.chance == pytest.approx(1 / groups)
    assert all(c.block.chance == pytest.approx(1 / groups) for c in [r.trained, *r.untrained])


def test_nin_pairs_and_their_groups() -> None:
    nin = create_model("nin_root8")
    assert default_pairs(nin) == list(NIN_PAIRS)
    assert [pair_groups(nin, a, b) for a, b in NIN_PAIRS] == [8, 8, 4, 4]
    dense = create_model("nin_cifar10")
    assert [pair_groups(dense, a, b) for a, b in NIN_PAIRS] == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="no default layer pairs"):
        default_pairs(_tiny_model(0))


def test_untrained_factory_rebuilds_the_architecture_without_touching_the_rng() -> None:
    model = create_model("nin_root4", num_classes=7)
    make = untrained_factory(model)
    before = torch.random.get_rng_state()
    a, b = make(3), make(3)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(3)
    ref = create_model("nin_root4", num_classes=7)
    for (n, p), q, r in zip(
        a.state_dict().items(), b.state_dict().values(), ref.state_dict().values()
    ):
        assert torch.equal(p, q) and torch.equal(p, r), n
    assert a.conv3c.out_channels == 7 and a.layer_groups == {"conv2a": 4, "conv3a": 2}
    with pytest.raises(ValueError, match="no model_cfg"):
        untrained_factory(_tiny_model(0))


def test_controlled_correlation_rejects_bad_arguments() -> None:
    images = [torch.randn(4, 3, 8, 8, dtype=torch.float64)]
    m = _tiny_model(0)
    kw = {"make_untrained": _tiny_model}
    with pytest.raises(ValueError, match="needs max_images"):
        controlled_correlation(m, images, [("a", "b")], [0], bootstrap=5, **kw)
    with pytest.raises(ValueError, match="must be distinct"):
        controlled_correlation(m, images, [("a", "b")], [0, 0], **kw)
    with pytest.raises(ValueError, match="chunks=1"):
        controlled_correlation(
            m, images, [("a", "b")], [0], bootstrap=5, chunks=1, max_images=4, **kw
        )
    with pytest.raises(ValueError, match="groups=0"):
        controlled_correlation(m, images, [("a", "b")], [0], groups=0, **kw)
    with pytest.raises(ValueError, match="two layer names"):
        controlled_correlation(m, images, [("a",)], [0], **kw)
