"""Keep freed memory in the process instead of handing it back to the OS (``keep_freed_memory``).

glibc's malloc serves an allocation above its mmap threshold (at most 32 MiB by its own rule) with
fresh pages from the kernel and returns them when the block is freed, and it trims the free top of
the heap. PyTorch's CPU allocator is malloc, so each large tensor the codec or a training step
makes anew -- every activation of a Kodak-sized image is 5-40 MB -- costs a page fault per 4 KiB
touched: 9,500 to 19,000 faults per Kodak image, measured. Raising the thresholds keeps those
pages in the process for the next tensor (2 to 171 faults per image) and makes the codec and the
train steps faster (docs/codec.md, "Memory kept between images"; docs/training.md). The price is
memory: up to ``trim`` bytes of free heap stay with the process.

The ``fastae`` command calls it first. In your own program call ``fastae.keep_freed_memory()``, or
start Python with glibc's environment variables ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_TOP_PAD_`` set. ``FASTAE_KEEP_FREED_MEMORY=0`` turns it
off for the command. Elsewhere than Linux with glibc it does nothing.
"""

import ctypes
import ctypes.util
import os
import platform

MIB = 1 << 20
# mallopt parameter numbers (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_ENV = {"MALLOC_MMAP_THRESHOLD_": _M_MMAP_THRESHOLD, "MALLOC_TRIM_THRESHOLD_": _M_TRIM_THRESHOLD,
        "MALLOC_TOP_PAD_": _M_TOP_PAD}


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def keep_freed_memory(mmap_threshold: int = 256 * MIB, trim: int = 1024 * MIB, top_pad: int = 64 * MIB) -> bool:
    """Serve allocations below ``mmap_threshold`` bytes from the heap and keep up to ``trim`` bytes
    of freed heap in the process (growing it ``top_pad`` bytes at a time), for this process and,
    through glibc's environment variables, the processes it starts (fastae's worker processes).
    Values above 2 GiB - 1 (mallopt's int) are capped there. Returns whether glibc accepted the
    settings (False elsewhere than Linux with glibc)."""
    for name, value in (("mmap_threshold", mmap_threshold), ("trim", trim), ("top_pad", top_pad)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 62:
            raise ValueError(f"keep_freed_memory: {name} must be a non-negative number of bytes, got {value!r}")
    libc = _glibc()
    if libc is None:
        return False
    values = {_M_MMAP_THRESHOLD: mmap_threshold, _M_TRIM_THRESHOLD: trim, _M_TOP_PAD: top_pad}
    accepted = [libc.mallopt(ctypes.c_int(param), ctypes.c_int(min(value, 2 ** 31 - 1))) == 1
                for param, value in values.items()]
    for name, param in _ENV.items():
        os.environ.setdefault(name, str(min(values[param], 2 ** 31 - 1)))
    return all(accepted)


def keep_freed_memory_unless_disabled() -> bool:
    """``keep_freed_memory()`` unless the environment sets FASTAE_KEEP_FREED_MEMORY=0 (for the CLI)."""
    if os.environ.get("FASTAE_KEEP_FREED_MEMORY", "1").strip() in ("0", "false", "no", "off"):
        return False
    return keep_freed_memory()
