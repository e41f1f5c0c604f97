"""Loads the native extension fastae._C, or records why it could not be loaded.

fastae works without it: the backends that need it report themselves unavailable with the
reason, and the triton and torch backends keep working.
"""

import torch

_LOAD_ERROR = None
try:
    from fastae._build_info import BUILD_INFO
except ImportError:
    BUILD_INFO = None
    _LOAD_ERROR = "fastae._C was not built (install fastae with `pip install --no-build-isolation -e .`)"


def _major_minor(version):
    return ".".join(version.split("+")[0].split(".")[:2])


def _load():
    if BUILD_INFO is None:
        return None
    built, have = _major_minor(BUILD_INFO["torch"]), _major_minor(torch.__version__)
    if built != have:
        return (
            f"fastae._C was built for torch {BUILD_INFO['torch']} but torch {torch.__version__} is installed; "
            f"rebuild fastae against this torch (pip install --no-build-isolation --force-reinstall .)"
        )
    try:
        from fastae import _C  # noqa: F401  (importing registers the fastae_C ops)
    except (ImportError, OSError) as e:
        return f"fastae._C failed to load: {e}"
    return None


if _LOAD_ERROR is None:
    _LOAD_ERROR = _load()

LOADED = _LOAD_ERROR is None
LOAD_ERROR = _LOAD_ERROR


def has_kernel(op, dispatch_key):
    """Whether fastae._C registered a kernel of ``fastae_C::op`` for ``dispatch_key`` ("CPU", "CUDA")."""
    return LOADED and torch._C._dispatch_has_kernel_for_dispatch_key(f"fastae_C::{op}", dispatch_key)


def build_info():
    """How fastae._C was built: a dict with the fastae, torch and CUDA versions it was built
    against (cuda is None for a CPU-only build), the CUDA arch list, the C++ ABI flag, and
    ``loaded`` / ``load_error`` saying whether it is in use here."""
    info = dict(BUILD_INFO or {})
    info.update(loaded=LOADED, load_error=LOAD_ERROR)
    return info
