"""Fused functional ops, registered with torch.library (torch.ops.fastae.*).

Each op runs on one of several backends: ``triton``, ``cuda`` (fastae._C built with CUDA),
``cpu`` (fastae._C's C++ kernels) and ``torch`` (plain PyTorch, the oracle the others are
tested against). ``auto`` (the default) picks the fastest available for the device.
"""

from fastae.ops._backend import BACKENDS, available_backends, backend, current_backend
from fastae.ops.linear import ACTIVATIONS, linear_act

__all__ = ["ACTIVATIONS", "BACKENDS", "available_backends", "backend", "current_backend", "linear_act"]
