"""Builds the native extension fastae._C.

The C++ CPU ops (csrc/*.cpp) are always built. The CUDA ops (csrc/cuda/*.cu) are added when
torch is a CUDA build and nvcc is found, or as forced by FASTAE_CUDA=0|1. MAX_JOBS bounds the
parallel compile and TORCH_CUDA_ARCH_LIST picks the GPU architectures, as for any torch extension.
The build is recorded in fastae/_build_info.py, which fastae checks at import.
"""

import glob
import json
import os
import shutil
from pathlib import Path

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).parent.resolve()


def _nvcc():
    if CUDA_HOME and (Path(CUDA_HOME) / "bin" / "nvcc").exists():
        return str(Path(CUDA_HOME) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _with_cuda():
    flag = os.environ.get("FASTAE_CUDA", "auto").strip().lower()
    if flag not in ("auto", "0", "1"):
        raise SystemExit(f"FASTAE_CUDA must be 0, 1 or auto, got {flag!r}")
    if flag == "0":
        return False
    if flag == "1":
        if torch.version.cuda is None:
            raise SystemExit(f"FASTAE_CUDA=1 but torch {torch.__version__} is a CPU build; install a CUDA build of torch")
        if _nvcc() is None:
            raise SystemExit("FASTAE_CUDA=1 but nvcc was not found; set CUDA_HOME or put nvcc on PATH")
        return True
    return torch.version.cuda is not None and _nvcc() is not None


def _version():
    for line in (ROOT / "fastae" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip("\"'")
    raise SystemExit("fastae/__init__.py has no __version__")


WITH_CUDA = _with_cuda()
os.chdir(ROOT)  # relative source paths, whatever directory pip runs us from
sources = sorted(glob.glob("csrc/*.cpp"))
# -fopenmp: at::parallel_for is inline and runs serially in code compiled without it.
cxx_flags = ["-O3", "-fopenmp", "-DPy_LIMITED_API=0x03090000"]
link_flags = ["-fopenmp"]
if WITH_CUDA:
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    extension = CUDAExtension(
        "fastae._C",
        sources,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]},
        libraries=["cublasLt"],
        extra_link_args=link_flags,
        py_limited_api=True,
    )
else:
    extension = CppExtension(
        "fastae._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags, py_limited_api=True
    )

BUILD_INFO = {
    "fastae": _version(),
    "torch": torch.__version__,
    "cuda": torch.version.cuda if WITH_CUDA else None,
    "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if WITH_CUDA else None,
    "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
}
(ROOT / "fastae" / "_build_info.py").write_text(
    '"""Written by setup.py: what fastae._C was built against."""\n\nBUILD_INFO = '
    + json.dumps(BUILD_INFO, indent=4).replace("null", "None").replace("true", "True").replace("false", "False")
    + "\n"
)

setup(
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
