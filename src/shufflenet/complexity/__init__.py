"""Exact accounting of parameters and multiply-adds (MACs; FLOPs = 2 x MACs)."""

from .handlers import HANDLERS, conv_macs, register_handler
from .profile import ComplexityReport, LayerCost, profile

__all__ = ["HANDLERS", "ComplexityReport", "LayerCost", "conv_macs", "profile", "register_handler"]
