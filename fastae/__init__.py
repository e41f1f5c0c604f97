"""fastae: autoencoders on fused kernels.

    import fastae
    y = fastae.ops.linear_act(x, weight, bias, activation="gelu")
    mlp = fastae.nn.FusedMLP([784, 128, 64], activation="relu")
"""

__version__ = "0.1.0"

from fastae._native import build_info  # noqa: E402
from fastae import nn, ops  # noqa: E402

__all__ = ["__version__", "build_info", "nn", "ops"]
