"""The convolution cost calculator against the worked example, closed forms and real modules."""

from __future__ import annotations

import pytest
from torch import nn

from shufflenet import profile
from shufflenet.analysis.conv_cost import ConvGeometry, conv_costs, conv_output_side
from shufflenet.cli import conv_cost as cli


def _by_name(rows):
    return {r.arrangement: r for r in rows}


def test_worked_example_7x7x3_with_128_filters() -> None:
    rows = _by_name(conv_costs(ConvGeometry(7, 7, 3, 128, 3, 3)))
    std = rows["standard"]
    assert std.output_shape == (5, 5, 128)
    assert std.params == 3_456 and std.macs == 25 * 3_456 and std.flops == 2 * 25 * 3_456


@pytest.mark.parametrize(
    ("size", "k", "s", "pad", "out"),
    [
        (7, 3, 1, "valid", 5),
        (7, 3, 1, "same", 7),
        (224, 3, 2, 1, 112),
        (227, 11, 4, 0, 55),
        (5, 5, 1, 0, 1),
    ],
)
def test_output_side(size: int, k: int, s: int, pad, out: int) -> None:
    assert conv_output_side(size, k, s, pad) == out


def _module_costs(module: nn.Module, c: int, side: int) -> tuple[int, int]:
    report = profile(module, (c, side, side))
    return report.params, report.macs


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_costs_equal_those_of_real_modules(groups: int) -> None:
    g = ConvGeometry(14, 14, 16, 32, 3, 3, stride=2, padding=1)
    rows = _by_name(conv_costs(g, groups=groups, bottleneck=8))
    grouped = nn.Conv2d(16, 32, 3, 2, 1, groups=groups, bias=False)
    assert (rows["grouped"].params, rows["grouped"].macs) == _module_costs(grouped, 16, 14)
    separable = nn.Sequential(
        nn.Conv2d(16, 16, 3, 2, 1, groups=16, bias=False), nn.Conv2d(16, 32, 1, bias=False)
    )
    assert (rows["depthwise-separable"].params, rows["depthwise-separable"].macs) == _module_costs(
        separable, 16, 14
    )
    unit = nn.Sequential(
        nn.Conv2d(16, 8, 1, groups=groups, bias=False),
        nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False),
        nn.Conv2d(8, 32, 1, groups=groups, bias=False),
    )
    got = rows["pointwise-group+shuffle"]
    assert (got.params, got.macs) == _module_costs(unit, 16, 14)
    assert all(r.output_shape == (7, 7, 32) for r in rows.values())


def test_shufflenet_unit_formula() -> None:
    """Zhang et al. 2017 Sec. 3.2: a ShuffleNet unit on c x h x w with bottleneck m costs hw(2cm/g + 9m)."""
    c, m, g, h, w = 240, 60, 3, 28, 28
    rows = _by_name(
        conv_costs(ConvGeometry(h, w, c, c, 3, 3, padding="same"), groups=g, bottleneck=m)
    )
    assert rows["pointwise-group+shuffle"].macs == h * w * (2 * c * m // g + 9 * m)


def test_impossible_arrangements_say_why() -> None:
    rows = _by_name(conv_costs(ConvGeometry(7, 7, 3, 128, 3, 3), groups=8))
    assert (
        rows["grouped"].params is None
        and "in_channels=3 is not divisible by groups=8" in rows["grouped"].reason
    )


def test_bad_geometry() -> None:
    with pytest.raises(ValueError, match="smaller than kernel"):
        ConvGeometry(2, 2, 3, 8, 3, 3)
    with pytest.raises(ValueError, match="padding"):
        ConvGeometry(7, 7, 3, 8, 3, 3, padding=-1)


def test_cli_prints_the_worked_example(capsys) -> None:
    assert cli.main(["--input", "7x7x3", "--filters", "128", "--kernel", "3"]) == 0
    out = capsys.readouterr().out
    assert "output 5x5x128" in out and "3,456" in out and "86,400" in out


def test_cli_rejects_malformed_input(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--input", "7x7", "--filters", "3"])
    assert "HxWxC" in capsys.readouterr().err
