"""Modules over fastae's fused ops."""

from fastae.nn.linear import FusedLinear, FusedMLP
from fastae.nn.loss import GaussianKL, ReconstructionLoss

__all__ = ["FusedLinear", "FusedMLP", "GaussianKL", "ReconstructionLoss"]
