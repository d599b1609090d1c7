"""The correlation section of the root-N report: tables and figures from the controlled correlations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shufflenet import create_model
from shufflenet.analysis.correlation import block_diagonality
from shufflenet.analysis.correlation_report import correlation_section, root_correlations
from shufflenet.analysis.reproduce.common import Markdown


def test_correlation_section_numbers_and_figures(tmp_path) -> None:
    torch.manual_seed(5)
    models = {1: create_model("nin_cifar10"), 4: create_model("nin_root4")}
    images = [torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)]
    corr = root_correlations(models, images, seeds=[0, 1], max_images=6, bootstrap=2, chunks=2)
    md = Markdown("t")
    numbers = correlation_section(md, corr, tmp_path, images=6)
    key4 = numbers["pairs"]["4"]["conv2c-conv3a"]
    assert key4["groups"] == 2 and key4["chance"] == 0.5
    assert key4["excess"] == pytest.approx(
        key4["trained_share"] - np.mean(key4["untrained_shares"])
    )
    assert numbers["pairs"]["1"]["conv2c-conv3a"]["excess"] is None  # dense: no own block count
    assert [numbers["pairs"]["4"][p]["groups"] for p in numbers["pairs"]["4"]] == [4, 4, 2, 2]
    cross = numbers["cross_block"]
    assert cross["4"]["blocks"] == [2]
    assert cross["4"]["trained"][0] == pytest.approx(key4["trained_share"])
    (root1,) = [r for r in corr[1] if r.pair == ("conv2c", "conv3a")]
    expected = np.mean([block_diagonality(u.matrix, 2).share for u in root1.untrained])
    assert cross["1"]["untrained"][0] == pytest.approx(expected)
    text = "\n".join(md.lines)
    assert "learned excess" in text and f"{key4['excess']:+.3f}" in text
    assert text.count("| root-4 | conv") == 4  # every pair of the grouped model
    for name in ("correlation_panels.png", "correlation_shares.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
