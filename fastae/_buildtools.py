"""How fastae's native extension is versioned, built and checked: the pure logic, standard library only.

setup.py loads this file by path (fastae itself cannot be imported before it is built),
fastae._native uses it for the import-time check, and fastae.build_wheel for the wheel build, so
the rules live in one place and the tests can call them without compiling anything.

Version scheme: a wheel is ``<public>+<variant>.torch<major>.<minor>`` where ``variant`` is
``cpu`` or ``cu<CUDA major><CUDA minor>`` (what the extension was compiled for), e.g.
``0.1.0+cpu.torch2.13`` or ``0.1.0+cu130.torch2.13``. The sdist carries the public version.
"""

import pprint
import re

# What a CUDA wheel is compiled for when TORCH_CUDA_ARCH_LIST is not set: Ampere (8.0, 8.6),
# Ada (8.9), Hopper (9.0), Blackwell datacenter (10.0) and consumer (12.0), each kept only when
# the nvcc doing the build supports it; the last kept arch also gets PTX, so newer GPUs can JIT.
WHEEL_CUDA_ARCHS = ("8.0", "8.6", "8.9", "9.0", "10.0", "12.0")

# First nvcc release that can compile for an arch, and last one for the archs CUDA has dropped;
# used only when `nvcc --list-gpu-arch` cannot be asked.
_ARCH_FIRST_NVCC = {"8.0": (11, 0), "8.6": (11, 1), "8.7": (11, 4), "8.9": (11, 8), "9.0": (11, 8),
                    "10.0": (12, 8), "10.3": (12, 9), "11.0": (13, 0), "12.0": (12, 8), "12.1": (12, 9)}
_ARCH_LAST_NVCC = {"3.5": (11, 8), "3.7": (11, 8), "5.0": (12, 9), "5.2": (12, 9), "5.3": (12, 9),
                   "6.0": (12, 9), "6.1": (12, 9), "6.2": (12, 9), "7.0": (12, 9), "7.2": (12, 9),
                   "10.1": (12, 9)}

_LOCAL_RE = re.compile(r"^[a-z0-9]+(?:\.[a-z0-9]+)*$")
_ARCH_RE = re.compile(r"^(\d+)\.(\d+)(a|f)?(\+PTX)?$")


class BuildError(Exception):
    """A build setting or environment that cannot work; the message says how to fix it."""


def public_version(init_source):
    """The ``__version__ = "..."`` string of fastae/__init__.py, given that file's text."""
    m = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", init_source, re.M)
    if not m:
        raise BuildError("fastae/__init__.py has no __version__")
    return m.group(1)


def major_minor(version):
    """``"2.13.0+cu130"`` -> ``"2.13"``."""
    return ".".join(version.split("+")[0].split(".")[:2])


def cuda_major(cuda_version):
    return None if not cuda_version else cuda_version.split(".")[0]


def variant(cuda_version):
    """The wheel variant: ``"cpu"`` without CUDA, ``"cu130"`` for CUDA 13.0, ``"cu126"`` for 12.6."""
    if not cuda_version:
        return "cpu"
    parts = cuda_version.split(".")
    return f"cu{parts[0]}{parts[1] if len(parts) > 1 else '0'}"


def local_version(torch_version, cuda_version):
    """The local version label of a build: ``"cu130.torch2.13"``, ``"cpu.torch2.13"``."""
    return f"{variant(cuda_version)}.torch{major_minor(torch_version)}"


def dist_version(public, torch_version, cuda_version, override=None):
    """The version a wheel (or editable install) carries.

    ``override`` is FASTAE_LOCAL_VERSION: unset (None) for the automatic label, ``""`` or
    ``"none"`` for the bare public version (an index such as PyPI refuses local versions), or
    a label of its own (letters, digits and dots)."""
    if override is None:
        return f"{public}+{local_version(torch_version, cuda_version)}"
    override = override.strip().lower()
    if override in ("", "none"):
        return public
    if not _LOCAL_RE.match(override):
        raise BuildError(f"FASTAE_LOCAL_VERSION={override!r} is not a local version label "
                         "(letters, digits and dots, e.g. cu130.torch2.13)")
    return f"{public}+{override}"


def wheel_spec(public, torch_version, cuda_version):
    """What to ``pip install`` for a torch: ``fastae==0.1.0+cu130.torch2.13``."""
    return f"fastae=={public}+{local_version(torch_version, cuda_version)}"


def use_cuda(flag, torch_version, torch_cuda, nvcc):
    """Whether to build the CUDA ops, from FASTAE_CUDA (``flag``: "0", "1", "auto" or None),
    torch's CUDA version (None for a CPU torch) and the path of nvcc (None when not found).
    FASTAE_CUDA=1 that cannot be honoured raises BuildError before anything is compiled."""
    flag = (flag or "auto").strip().lower()
    if flag not in ("auto", "0", "1"):
        raise BuildError(f"FASTAE_CUDA must be 0, 1 or auto, got {flag!r}")
    if flag == "0":
        return False
    if flag == "1":
        if torch_cuda is None:
            raise BuildError(f"FASTAE_CUDA=1 but torch {torch_version} is a CPU build; install a CUDA build "
                             "of torch (e.g. pip install torch --index-url https://download.pytorch.org/whl/cu130)")
        if nvcc is None:
            raise BuildError("FASTAE_CUDA=1 but nvcc was not found; install the CUDA toolkit "
                             f"(CUDA {torch_cuda}, as torch) and set CUDA_HOME or put nvcc on PATH")
        return True
    return torch_cuda is not None and nvcc is not None


def parse_nvcc_version(text):
    """``"13.0.88"`` from the output of ``nvcc --version``."""
    m = re.search(r"\bV(\d+\.\d+(?:\.\d+)*)", text) or re.search(r"release (\d+\.\d+)", text)
    if not m:
        raise BuildError(f"cannot read the CUDA version from nvcc --version: {text.strip()[:200]!r}")
    return m.group(1)


def parse_gpu_archs(text):
    """The archs of ``nvcc --list-gpu-arch`` output (``compute_75`` ... ``compute_120``) as
    ``["7.5", ..., "12.0"]``, sorted numerically."""
    nums = sorted({int(n) for n in re.findall(r"compute_(\d+)", text)})
    return [f"{n // 10}.{n % 10}" for n in nums]


def _version_tuple(version):
    return tuple(int(p) for p in re.findall(r"\d+", version)[:2])


def _arch_key(arch):
    major, minor = arch.split(".")
    return int(major), int(minor)


def nvcc_supports(arch, nvcc_version, supported=None):
    """Whether nvcc ``nvcc_version`` compiles for ``arch`` ("9.0"); ``supported`` is what
    ``nvcc --list-gpu-arch`` said, when it could be asked."""
    if supported is not None:
        return arch in supported
    have = _version_tuple(nvcc_version)
    first, last = _ARCH_FIRST_NVCC.get(arch), _ARCH_LAST_NVCC.get(arch)
    return (first is None or have >= first) and (last is None or have <= last)


def default_arch_list(nvcc_version, supported=None):
    """TORCH_CUDA_ARCH_LIST for a wheel: WHEEL_CUDA_ARCHS that this nvcc supports, PTX on the last.
    CUDA 12.6: ``8.0;8.6;8.9;9.0+PTX``; CUDA 12.8 and 13.0: ``8.0;8.6;8.9;9.0;10.0;12.0+PTX``."""
    archs = [a for a in WHEEL_CUDA_ARCHS if nvcc_supports(a, nvcc_version, supported)]
    if not archs:
        raise BuildError(f"nvcc {nvcc_version} supports none of {', '.join(WHEEL_CUDA_ARCHS)}; "
                         "set TORCH_CUDA_ARCH_LIST")
    archs[-1] += "+PTX"
    return ";".join(archs)


def unsupported_archs(arch_list, nvcc_version, supported=None):
    """The entries of a TORCH_CUDA_ARCH_LIST that this nvcc cannot compile for. Names torch
    expands itself ("Ampere", "native") are left to torch."""
    bad = []
    for entry in arch_list.replace(" ", ";").split(";"):
        m = _ARCH_RE.match(entry.strip())
        if m and not nvcc_supports(f"{m.group(1)}.{m.group(2)}", nvcc_version, supported):
            bad.append(entry.strip())
    return bad


def describe_compiler(version_text, full_version):
    """``"gcc 12.2.0"`` / ``"clang 17.0.6"`` from ``$CXX --version`` (first line) and
    ``$CXX -dumpfullversion``."""
    first = (version_text or "").strip().splitlines()[0] if (version_text or "").strip() else ""
    full = (full_version or "").strip()
    if "clang" in first.lower():
        m = re.search(r"clang version (\S+)", first)
        return f"clang {m.group(1) if m else full}".strip()
    if "icpx" in first.lower() or "intel" in first.lower():
        return f"intel {full}".strip()
    if first or full:
        return f"gcc {full}".strip() if full else first
    return "unknown"


def render_build_info(info):
    """The text of fastae/_build_info.py for a BUILD_INFO dict (python literals only)."""
    return ('"""Written by setup.py when it built fastae._C: what it was built against."""\n\n'
            "BUILD_INFO = " + pprint.pformat(info, sort_dicts=False, width=100) + "\n")


def build_mismatch(info, torch_version, torch_cuda, public=None):
    """None when an extension described by ``info`` (BUILD_INFO) can be loaded beside this torch,
    else the reason it must not be, naming the wheel to install instead: a torch major.minor
    other than the one it was built against, or a CUDA build beside a torch of another CUDA
    major (or a CPU torch). A CPU build beside a CUDA torch is fine (its CPU ops work)."""
    public = public or info.get("fastae") or "<version>"
    built_torch, built_cuda = info["torch"], info.get("cuda")
    install = wheel_spec(public, torch_version, torch_cuda)
    fix = (f"install the fastae wheel built for this torch ({install}, from the fastae wheel index), "
           f"or rebuild fastae against this torch (from a checkout: pip install --no-build-isolation -e .; "
           f"from the sdist: pip install --no-build-isolation --no-deps --force-reinstall fastae-{public}.tar.gz)")
    what = "the cpu and cuda backends are off; the triton and torch backends still work"
    if major_minor(built_torch) != major_minor(torch_version):
        return (f"fastae._C was built for torch {built_torch} but torch {torch_version} is installed, "
                f"so it is not loaded ({what}). To fix: {fix}")
    if built_cuda and cuda_major(built_cuda) != cuda_major(torch_cuda):
        have = f"uses CUDA {torch_cuda}" if torch_cuda else "is a CPU build"
        return (f"fastae._C was built for CUDA {built_cuda} (a +{variant(built_cuda)} build) but torch "
                f"{torch_version} {have}, so it is not loaded ({what}). To fix: {fix}")
    return None
