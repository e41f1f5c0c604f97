"""Loads the native extension fastae._C, or records why it could not be loaded.

fastae works without it: the backends that need it report themselves unavailable with the
reason, and the triton and torch backends keep working. An extension built for another torch
(major.minor) or another CUDA major is not loaded at all (loading it could crash the process):
a BuildMismatchWarning says so and names the wheel to install.
"""

import warnings

import torch

from fastae import __version__ as _PUBLIC_VERSION
from fastae._buildtools import build_mismatch


class BuildMismatchWarning(RuntimeWarning):
    """fastae._C is installed but was built for another torch or CUDA, so it is not loaded."""


_LOAD_ERROR = None
try:
    from fastae._build_info import BUILD_INFO
except ImportError:
    BUILD_INFO = None
    _LOAD_ERROR = "fastae._C was not built (install fastae with `pip install --no-build-isolation -e .`)"


_INSTALLED = object()


def check_build(info=None, torch_version=None, torch_cuda=_INSTALLED):
    """None when the extension described by ``info`` (default: this install's BUILD_INFO) may be
    loaded beside the installed torch (or a torch ``torch_version`` with CUDA ``torch_cuda``,
    None for a CPU torch), else the reason it must not be, naming the wheel to install."""
    info = BUILD_INFO if info is None else info
    torch_version = str(torch.__version__ if torch_version is None else torch_version)
    torch_cuda = torch.version.cuda if torch_cuda is _INSTALLED else torch_cuda
    return build_mismatch(info, torch_version, torch_cuda, _PUBLIC_VERSION)


def _load():
    if BUILD_INFO is None:
        return None
    mismatch = check_build()
    if mismatch:
        warnings.warn(mismatch, BuildMismatchWarning, stacklevel=2)
        return mismatch
    try:
        from fastae import _C  # noqa: F401  (importing registers the fastae_C ops)
    except (ImportError, OSError) as e:
        error = f"fastae._C failed to load: {e}"
        warnings.warn(error, BuildMismatchWarning, stacklevel=2)
        return error
    return None


if _LOAD_ERROR is None:
    _LOAD_ERROR = _load()

LOADED = _LOAD_ERROR is None
LOAD_ERROR = _LOAD_ERROR


def has_kernel(op, dispatch_key):
    """Whether fastae._C registered a kernel of ``fastae_C::op`` for ``dispatch_key`` ("CPU", "CUDA")
    (False for an op that this build does not define)."""
    if not LOADED:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastae_C::{op}", dispatch_key)
    except RuntimeError:  # "operator fastae_C::op does not exist": built from older sources
        return False


def build_info():
    """How fastae._C was built: a dict with the fastae version (``fastae``: public; ``version``:
    the wheel's, with its ``+cpu.torch2.13`` / ``+cu130.torch2.13`` label), the torch, CUDA and
    nvcc versions it was built against (cuda and nvcc are None for a CPU-only build), the CUDA
    arch list, the compiler, the C++ ABI flag, and ``loaded`` / ``load_error`` saying whether it
    is in use here. Only ``loaded`` and ``load_error`` when it was never built."""
    info = dict(BUILD_INFO or {})
    info.update(loaded=LOADED, load_error=LOAD_ERROR)
    return info
