"""Cost of one convolution layer built four ways: standard, grouped, depthwise-separable, ShuffleNet unit.

For an input of ``H x W x c1`` and ``c2`` output channels with ``h x w`` filters, output side
``H' = floor((H + 2p - h) / s) + 1`` (same for ``W'``), and multiply-adds (MACs; FLOPs = 2 x MACs):

- standard: ``h w c1 c2`` weights, ``H' W' h w c1 c2`` MACs;
- grouped (g groups): ``h w (c1/g) c2`` weights, ``H' W' h w (c1/g) c2`` MACs (1/g of the standard);
- depthwise-separable (MobileNet, Xception): ``h x w`` depthwise then 1x1 pointwise: ``h w c1 + c1 c2``
  weights, ``H' W' (h w c1 + c1 c2)`` MACs;
- pointwise-group + shuffle (ShuffleNet unit, Zhang et al. 2017, Sec. 3.2): 1x1 group conv ``c1 -> m``,
  channel shuffle, ``h x w`` depthwise on ``m`` channels (carrying stride and padding), 1x1 group conv
  ``m -> c2``: ``c1 m / g + h w m + m c2 / g`` weights and ``H W c1 m / g + H' W' (h w m + m c2 / g)`` MACs.
  With ``c1 = c2 = c``, stride 1 and 3x3 this is the paper's ``hw(2cm/g + 9m)``. The bottleneck ``m``
  defaults to ``c2 / 4`` (the paper's ratio); the shuffle itself has no parameters or multiply-adds.

Biases are not counted (the worked example "128 filters of 3x3x3 have 3,456 weights" counts weights only).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ..ops.validate import check_positive_int

__all__ = ["ConvGeometry", "ArrangementCost", "conv_output_side", "conv_costs", "ARRANGEMENTS"]

Padding = int | Literal["valid", "same"]
ARRANGEMENTS = ("standard", "grouped", "depthwise-separable", "pointwise-group+shuffle")


def conv_output_side(size: int, kernel: int, stride: int = 1, padding: Padding = "valid") -> int:
    """Output side of a convolution: ``floor((size + 2 * pad - kernel) / stride) + 1``.

    ``padding``: a number of pixels per border, ``"valid"`` (0) or ``"same"`` (``(kernel - 1) // 2``, which
    keeps the side for odd kernels at stride 1).

    Raises:
        ValueError: when the padded input is smaller than the kernel.
    """
    pad = _padding_pixels(padding, kernel)
    if size + 2 * pad < kernel:
        raise ValueError(
            f"input side {size} with padding {pad} is smaller than kernel {kernel}: no output position"
        )
    return (size + 2 * pad - kernel) // stride + 1


def _padding_pixels(padding: Padding, kernel: int) -> int:
    if padding == "valid":
        return 0
    if padding == "same":
        return (kernel - 1) // 2
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding={padding!r} must be 'valid', 'same' or a pixel count >= 0")
    return padding


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """One layer's shape: input ``height x width x in_channels``, ``out_channels`` filters of ``kh x kw``."""

    height: int
    width: int
    in_channels: int
    out_channels: int
    kh: int
    kw: int
    stride: int = 1
    padding: Padding = "valid"

    def __post_init__(self) -> None:
        for name in ("height", "width", "in_channels", "out_channels", "kh", "kw", "stride"):
            check_positive_int(getattr(self, name), name)
        conv_output_side(self.height, self.kh, self.stride, self.padding)  # raises if no output
        conv_output_side(self.width, self.kw, self.stride, self.padding)

    @property
    def out_height(self) -> int:
        return conv_output_side(self.height, self.kh, self.stride, self.padding)

    @property
    def out_width(self) -> int:
        return conv_output_side(self.width, self.kw, self.stride, self.padding)


@dataclasses.dataclass(frozen=True)
class ArrangementCost:
    """Cost of one arrangement; ``params``/``macs`` are ``None`` (with ``reason``) when it is impossible."""

    arrangement: str
    output_shape: tuple[int, int, int]  # (H', W', c2)
    params: int | None
    macs: int | None
    detail: str = ""
    reason: str = ""

    @property
    def flops(self) -> int | None:
        return None if self.macs is None else 2 * self.macs


def _divisibility_problem(groups: int, **channels: int) -> str:
    for name, c in channels.items():
        if c % groups:
            return f"{name}={c} is not divisible by groups={groups}"
    return ""


def conv_costs(
    geometry: ConvGeometry, groups: int = 1, bottleneck: int | None = None
) -> list[ArrangementCost]:
    """Parameters (weights, no biases) and multiply-adds of the four :data:`ARRANGEMENTS`.

    Args:
        geometry: the layer's input, filters, stride and padding.
        groups: ``g`` of the grouped and pointwise-group arrangements.
        bottleneck: ``m``, the depthwise width of the ShuffleNet unit; default ``out_channels // 4``.
    """
    g = check_positive_int(groups, "groups")
    c1, c2, kh, kw = geometry.in_channels, geometry.out_channels, geometry.kh, geometry.kw
    ho, wo = geometry.out_height, geometry.out_width
    out_shape = (ho, wo, c2)
    positions_in, positions_out = geometry.height * geometry.width, ho * wo
    rows: list[ArrangementCost] = []

    std = kh * kw * c1 * c2
    rows.append(
        ArrangementCost("standard", out_shape, std, positions_out * std, f"{kh}x{kw}x{c1} x {c2}")
    )

    problem = _divisibility_problem(g, in_channels=c1, out_channels=c2)
    if problem:
        rows.append(ArrangementCost("grouped", out_shape, None, None, reason=problem))
    else:
        w = kh * kw * (c1 // g) * c2
        rows.append(
            ArrangementCost(
                "grouped",
                out_shape,
                w,
                positions_out * w,
                f"{g} group{'s' if g > 1 else ''} of {kh}x{kw}x{c1 // g}",
            )
        )

    dw, pw = kh * kw * c1, c1 * c2
    rows.append(
        ArrangementCost(
            "depthwise-separable",
            out_shape,
            dw + pw,
            positions_out * (dw + pw),
            f"{kh}x{kw} depthwise ({dw}) + 1x1 pointwise ({pw})",
        )
    )

    m = max(1, c2 // 4) if bottleneck is None else check_positive_int(bottleneck, "bottleneck")
    problem = _divisibility_problem(g, in_channels=c1, bottleneck=m, out_channels=c2)
    if problem:
        rows.append(
            ArrangementCost("pointwise-group+shuffle", out_shape, None, None, reason=problem)
        )
    else:
        first, depth, second = c1 * m // g, kh * kw * m, m * c2 // g
        macs = positions_in * first + positions_out * (depth + second)
        rows.append(
            ArrangementCost(
                "pointwise-group+shuffle",
                out_shape,
                first + depth + second,
                macs,
                f"1x1 g={g} to m={m} ({first}) + shuffle + {kh}x{kw} depthwise ({depth}) + 1x1 g={g} ({second})",
            )
        )
    return rows
