"""Modules over fastae's fused ops."""

from fastae.nn.linear import FusedLinear, FusedMLP

__all__ = ["FusedLinear", "FusedMLP"]
