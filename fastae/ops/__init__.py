"""Fused functional ops, registered with torch.library (torch.ops.fastae.*).

Each op runs on one of several backends: ``triton``, ``cuda`` (fastae._C built with CUDA),
``cpu`` (fastae._C's C++ kernels) and ``torch`` (plain PyTorch, the oracle the others are
tested against). ``auto`` (the default) picks the fastest available for the device.
"""

from fastae.ops._backend import BACKENDS, available_backends, backend, current_backend
from fastae.ops.gdn import gdn
from fastae.ops.linear import ACTIVATIONS, linear_act
from fastae.ops.mlp import fused_mlp
from fastae.ops.mono_conv import mono_conv
from fastae.ops.loss import KINDS, REDUCTIONS, gaussian_kl, linear_bce_loss, reconstruction_loss

__all__ = [
    "ACTIVATIONS", "BACKENDS", "KINDS", "REDUCTIONS", "available_backends", "backend", "current_backend",
    "fused_mlp", "gaussian_kl", "gdn", "linear_act", "linear_bce_loss", "mono_conv", "reconstruction_loss",
]
