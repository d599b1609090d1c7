"""Inter-layer correlation (Deep Roots): streaming sums against a direct two-pass numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import correlation_model, numpy_correlation

from shufflenet.analysis.correlation import (
    CrossMoments,
    block_diagonality,
    layer_correlation,
    paired_samples,
    zca_matrix,
)


@pytest.mark.parametrize("batch", [1, 3, 10])
def test_layer_correlation_matches_direct_numpy(batch: int) -> None:
    model = correlation_model()
    images = torch.randn(10, 3, 8, 8, dtype=torch.float64)
    batches = [(images[i : i + batch], torch.zeros(0)) for i in range(0, 10, batch)]
    res = layer_correlation(model, batches, "act", "b", eps=1e-3)
    expected = numpy_correlation(model, images)
    np.testing.assert_allclose(res.matrix, expected, rtol=1e-6, atol=1e-9)
    assert res.images == 10 and res.samples == 10 * 64
    assert res.shape_a == (8, 8, 8) and res.shape_b == (6, 4, 4)
    assert res.block is not None and res.block.groups == 2  # taken from layer b's conv


def test_layer_correlation_stops_at_max_images() -> None:
    model = correlation_model()
    images = torch.randn(10, 3, 8, 8, dtype=torch.float64)
    res = layer_correlation(model, [images[:4], images[4:]], "act", "b", max_images=6)
    np.testing.assert_allclose(
        res.matrix, numpy_correlation(model, images[:6]), rtol=1e-6, atol=1e-9
    )
    assert res.images == 6


def test_whitened_self_covariance_is_identity() -> None:
    """Correlating a layer with itself gives the identity (the whitened covariance), up to the regulariser."""
    model = correlation_model()
    res = layer_correlation(
        model, [torch.randn(20, 3, 8, 8, dtype=torch.float64)], "a", "a", eps=1e-9
    )
    np.testing.assert_allclose(res.matrix, np.eye(8), atol=1e-5)


def test_cross_moments_match_numpy_with_large_offset() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(1e4, 1.0, size=(500, 3))
    y = np.c_[x[:, :1] * 2 + rng.normal(size=(500, 1)), rng.normal(-3e3, 2.0, size=(500, 1))]
    mom = CrossMoments(3, 2)
    for i in range(0, 500, 77):
        mom.update(torch.from_numpy(x[i : i + 77]), torch.from_numpy(y[i : i + 77]))
    full = np.cov(np.c_[x, y].T, bias=True)
    np.testing.assert_allclose(mom.cov_xx.numpy(), full[:3, :3], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(mom.cov_xy.numpy(), full[:3, 3:], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(mom.mean_y.numpy(), y.mean(0), rtol=1e-12)


def test_zca_whitens() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 4))
    cov = torch.from_numpy(a @ a.T + np.eye(4))
    w = zca_matrix(cov, eps=0.0)
    np.testing.assert_allclose((w @ cov @ w).numpy(), np.eye(4), atol=1e-10)
    np.testing.assert_allclose(w.numpy(), w.numpy().T)  # ZCA: symmetric


def test_paired_samples_upsamples_smaller_map_by_nearest_neighbour() -> None:
    a = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    b = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    sa, sb = paired_samples(a, b)
    assert sa.shape == (16, 2) and sb.shape == (16, 1)
    # sample order is row-major over the 4x4 map; each 2x2 block takes one value of b
    assert sb[:, 0].tolist() == [1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]
    assert sa[5].tolist() == [5.0, 21.0]  # position (1, 1) of both channels


def test_block_diagonality_literal() -> None:
    m = np.array(
        [
            [3.0, 1.0, 0.0, 0.0],
            [-1.0, 3.0, 1.0, 0.0],
            [0.0, 0.0, 2.0, -2.0],
            [0.0, 2.0, 2.0, 1.0],
        ]
    )
    s = block_diagonality(m, 2)
    # inside: |3|+|1|+|-1|+|3| + |2|+|-2|+|2|+|1| = 15 of 18 in total
    assert s.share == pytest.approx(15 / 18) and s.chance == 0.5
    assert s.score == pytest.approx((15 / 18 - 0.5) / 0.5)
    assert block_diagonality(np.eye(6), 3).score == pytest.approx(1.0)
    assert block_diagonality(np.ones((6, 6)), 3).score == pytest.approx(0.0)
    assert block_diagonality(np.ones((6, 6)), 1).score is None


def test_block_diagonality_rejects_bad_groups() -> None:
    with pytest.raises(ValueError, match="groups=4"):
        block_diagonality(np.ones((6, 6)), 4)
    with pytest.raises(ValueError, match="groups=0"):
        block_diagonality(np.ones((6, 6)), 0)


def test_layer_correlation_errors() -> None:
    model = correlation_model()
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        layer_correlation(model, [torch.randn(2, 3, 8, 8, dtype=torch.float64)], "nope", "b")
    with pytest.raises(ValueError, match="empty"):
        layer_correlation(model, [], "a", "b")
    with pytest.raises(TypeError, match="image tensors"):
        layer_correlation(model, [{"x": 1}], "a", "b")
