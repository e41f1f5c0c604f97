"""Modules over fastae's fused ops."""

from fastae.nn.integer import (IntegerCheckerboardContext, IntegerConv2d, IntegerConvTranspose2d,
                               IntegerHyperSynthesis)
from fastae.nn.linear import FusedLinear, FusedMLP
from fastae.nn.loss import GaussianKL, ReconstructionLoss
from fastae.nn.mono_conv import MonoConv2d, MonoConvTranspose2d
from fastae.nn.subpixel import SubpixelConvTranspose2d

__all__ = ["FusedLinear", "FusedMLP", "GaussianKL", "ReconstructionLoss",
           "IntegerCheckerboardContext", "IntegerConv2d", "IntegerConvTranspose2d", "IntegerHyperSynthesis",
           "MonoConv2d", "MonoConvTranspose2d",
           "SubpixelConvTranspose2d"]
