"""Backend registry: what this install can run, which backend an op call uses, and the
``backend(name)`` context that forces one."""

import contextlib
import contextvars
import functools
import os

import torch

from fastae import _native

BACKENDS = ("triton", "cuda", "cpu", "torch")

# What `auto` tries, in order, per device type; the first available backend wins. On CPU the C++
# kernels beat torch.compile on the losses and run level with eager on linear_act (matmul-bound;
# bench/results/cpu-2core-2026-11-24.json). The GPU order is not yet measured on a GPU.
# fused_mlp (784-128-64-128-784, relu x3 + sigmoid, fp32, 1 thread on the 2 shared cores, load
# average ~13; `fastae bench --suite train --cases fused_mlp`, 2026-12-02, and the op timed alone):
# cpu (one C++ call for the network) against the torch backend at batch 256: forward 1.95 / 3.78 ms,
# backward 3.19 / 6.56 ms; fwd+bwd against eager nn.Sequential 0.90x at batch 256 (within the run's
# ±10% spread), 1.18x at 4096, 1.16x at 65536. No crossover to the torch backend at any measured
# shape, so `auto` stays cpu on the CPU for every shape.
_AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}

_selected = contextvars.ContextVar("fastae_backend", default="auto")


def triton_interpret():
    """True when Triton kernels run in the interpreter on CPU tensors (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton_status():
    try:
        import triton
    except ImportError:
        return False, "triton is not installed (pip install 'fastae[triton]')"
    if triton_interpret():
        return True, f"triton {triton.__version__} in the interpreter on CPU tensors (TRITON_INTERPRET=1)"
    if torch.cuda.is_available():
        return True, f"triton {triton.__version__} on CUDA"
    return False, "no CUDA device; set TRITON_INTERPRET=1 to run the Triton kernels on CPU tensors (slow, for tests)"


def _cuda_status():
    if not _native.LOADED:
        return False, _native.LOAD_ERROR
    if not _native.has_kernel("linear_act_fwd", "CUDA"):
        return False, f"fastae._C was built without CUDA (against torch {_native.BUILD_INFO['torch']})"
    if not torch.cuda.is_available():
        return False, "fastae._C has CUDA kernels but no CUDA device is available"
    return True, f"fastae._C CUDA kernels (CUDA {_native.BUILD_INFO['cuda']})"


def _cpu_status():
    if not _native.LOADED:
        return False, _native.LOAD_ERROR
    return True, "fastae._C C++ kernels"


@functools.cache
def _status(name):
    if name == "torch":
        return True, f"plain PyTorch {torch.__version__} (the oracle)"
    return {"triton": _triton_status, "cuda": _cuda_status, "cpu": _cpu_status}[name]()


def available_backends():
    """``{name: (available, reason)}`` for every backend; the reason says why one is unavailable."""
    return {name: _status(name) for name in BACKENDS}


def _check_name(name):
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown fastae backend {name!r}; expected one of {('auto',) + BACKENDS}")
    if name != "auto" and not _status(name)[0]:
        raise RuntimeError(f"fastae backend {name!r} is not available: {_status(name)[1]}")


@contextlib.contextmanager
def backend(name):
    """Force the backend of fastae ops called inside the block (``"auto"`` restores the default).

    Raises ValueError for an unknown name and RuntimeError, with the reason, for an unavailable
    one. Under torch.compile the backend is fixed when the op is traced.
    """
    _check_name(name)
    token = _selected.set(name)
    try:
        yield
    finally:
        _selected.reset(token)


def current_backend():
    """The backend forced by the innermost ``backend(...)`` block, or ``"auto"``."""
    return _selected.get()


def _runs_on(name, device):
    if name == "torch":
        return True
    if name == "triton":
        return device.type == "cuda" or (device.type == "cpu" and triton_interpret())
    return device.type == name


def resolve(device):
    """The concrete backend an op on ``device`` uses now."""
    name = _selected.get()
    if name == "auto":
        for candidate in _AUTO_ORDER.get(device.type, ()):
            if _status(candidate)[0]:
                return candidate
        return "torch"
    if not _runs_on(name, device):
        hint = " (or set TRITON_INTERPRET=1 to run Triton on CPU tensors)" if name == "triton" else ""
        raise ValueError(f"fastae backend {name!r} cannot run on {device.type} tensors{hint}")
    return name
