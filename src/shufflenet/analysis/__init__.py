"""Evidence about filter groups and channel shuffle: layer costs, inter-layer correlation, information flow,
first-layer filters, and the experiment reports built from them."""

from .conv_cost import ARRANGEMENTS, ArrangementCost, ConvGeometry, conv_costs, conv_output_side

__all__ = ["ARRANGEMENTS", "ArrangementCost", "ConvGeometry", "conv_costs", "conv_output_side"]
