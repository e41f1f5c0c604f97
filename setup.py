"""Builds the native extension fastae._C and gives the build its version.

The C++ CPU ops (csrc/*.cpp) are always built. The CUDA ops (csrc/cuda/*.cu) are added when
torch is a CUDA build and nvcc is found, or as forced by FASTAE_CUDA=0|1 (1 without a CUDA torch
or without nvcc is an error before anything compiles). MAX_JOBS bounds the parallel compile
(ninja is used when it is on PATH). TORCH_CUDA_ARCH_LIST picks the GPU architectures; unset, a
CUDA build gets the wheel list (8.0;8.6;8.9;9.0;10.0;12.0+PTX, less what this nvcc lacks), not
torch's "the GPUs of this machine".

The version is fastae.__version__ plus a local label naming what the extension was built for,
e.g. 0.1.0+cpu.torch2.13 or 0.1.0+cu130.torch2.13 (FASTAE_LOCAL_VERSION overrides it; "none"
drops it); the sdist carries the bare version. The build is recorded in fastae/_build_info.py
(beside the built extension: in the wheel, or in the source tree for an editable install), which
fastae.build_info() reports and fastae checks at import. The rules live in fastae/_buildtools.py.
"""

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension, get_cxx_compiler

ROOT = Path(__file__).parent.resolve()
PY_LIMITED_API = "cp310"  # torch compiles py_limited_api extensions with Py_LIMITED_API=0x030A0000


def _load_buildtools():
    spec = importlib.util.spec_from_file_location("_fastae_buildtools", ROOT / "fastae" / "_buildtools.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bt = _load_buildtools()


def _fail(message):
    raise SystemExit(f"fastae build: {message}")


def _nvcc():
    if CUDA_HOME and (Path(CUDA_HOME) / "bin" / "nvcc").exists():
        return str(Path(CUDA_HOME) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _output(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _describe_compiler(cxx):
    return bt.describe_compiler(_output([cxx, "--version"]), _output([cxx, "-dumpfullversion", "-dumpversion"]))


def _cuda_setup(nvcc):
    """(nvcc version, TORCH_CUDA_ARCH_LIST) for a CUDA build; sets the arch list when unset."""
    try:
        nvcc_version = bt.parse_nvcc_version(_output([nvcc, "--version"]))
    except bt.BuildError as e:
        _fail(e)
    if bt.cuda_major(nvcc_version) != bt.cuda_major(torch.version.cuda):
        _fail(f"nvcc {nvcc_version} ({nvcc}) is CUDA {bt.cuda_major(nvcc_version)} but torch {torch.__version__} "
              f"was built with CUDA {torch.version.cuda}; point CUDA_HOME at a CUDA {bt.cuda_major(torch.version.cuda)} "
              "toolkit, or install the torch for this CUDA")
    supported = bt.parse_gpu_archs(_output([nvcc, "--list-gpu-arch"])) or None
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if not arch_list:
        try:
            arch_list = bt.default_arch_list(nvcc_version, supported)
        except bt.BuildError as e:
            _fail(e)
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list  # read by torch's BuildExtension
    else:
        bad = bt.unsupported_archs(arch_list, nvcc_version, supported)
        if bad:
            _fail(f"TORCH_CUDA_ARCH_LIST={arch_list!r}: nvcc {nvcc_version} cannot compile for {', '.join(bad)}"
                  + (f" (it supports {', '.join(supported)})" if supported else ""))
    return nvcc_version, arch_list


# `setup.py sdist` (what build_sdist runs) needs neither the CUDA decision nor the local label:
# the sdist is source for any variant, versioned with the bare public version.
IS_SDIST = "sdist" in sys.argv[1:]
PUBLIC_VERSION = bt.public_version((ROOT / "fastae" / "__init__.py").read_text())
try:
    WITH_CUDA = False if IS_SDIST else bt.use_cuda(os.environ.get("FASTAE_CUDA"), torch.__version__,
                                                   torch.version.cuda, _nvcc())
    VERSION = PUBLIC_VERSION if IS_SDIST else bt.dist_version(
        PUBLIC_VERSION, torch.__version__, torch.version.cuda if WITH_CUDA else None,
        os.environ.get("FASTAE_LOCAL_VERSION"))
except bt.BuildError as e:
    _fail(e)
if not IS_SDIST and not WITH_CUDA and torch.version.cuda and os.environ.get("FASTAE_CUDA", "auto") == "auto":
    print(f"fastae build: torch is CUDA {torch.version.cuda} but nvcc was not found, so this is a CPU-only build "
          "(set CUDA_HOME, or FASTAE_CUDA=1 to make this an error)", file=sys.stderr)
NVCC_VERSION, CUDA_ARCH_LIST = _cuda_setup(_nvcc()) if WITH_CUDA else (None, None)

os.chdir(ROOT)  # relative source paths, whatever directory pip runs us from
sources = sorted(glob.glob("csrc/*.cpp"))
# -fopenmp: at::parallel_for is inline and runs serially in code compiled without it.
cxx_flags = ["-O3", "-fopenmp"]
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


class BuildExt(BuildExtension):
    """torch's BuildExtension that also records the build in fastae/_build_info.py and replaces an
    in-place extension atomically (a process running the old one keeps its mapping intact)."""

    compiler_description = "unknown"

    def build_extensions(self):
        cxx = get_cxx_compiler() if self.use_ninja else self.compiler.compiler_so[0]
        BuildExt.compiler_description = _describe_compiler(cxx)
        super().build_extensions()

    def run(self):
        super().run()
        info = {
            "fastae": PUBLIC_VERSION,
            "version": VERSION,
            "variant": bt.variant(torch.version.cuda if WITH_CUDA else None),
            "torch": torch.__version__,
            "cuda": torch.version.cuda if WITH_CUDA else None,
            "nvcc": NVCC_VERSION,
            "cuda_arch_list": CUDA_ARCH_LIST,
            "compiler": BuildExt.compiler_description,
            "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
            "py_limited_api": PY_LIMITED_API,
            "platform": sysconfig.get_platform(),
        }
        text = bt.render_build_info(info)
        targets = [Path(self.build_lib) / "fastae" / "_build_info.py"]
        if self.inplace:
            targets.append(ROOT / "fastae" / "_build_info.py")
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            _replace(target, lambda tmp: tmp.write_text(text))

    def copy_extensions_to_source(self):
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            fullname = self.get_ext_fullname(ext.name)
            filename = self.get_ext_filename(fullname)
            package_dir = build_py.get_package_dir(".".join(fullname.split(".")[:-1]))
            built = Path(self.build_lib) / filename
            _replace(Path(package_dir) / Path(filename).name, lambda tmp: shutil.copy2(built, tmp))


def _replace(target, write):
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


setup(
    version=VERSION,
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExt.with_options(use_ninja=shutil.which("ninja") is not None)},
    options={"bdist_wheel": {"py_limited_api": PY_LIMITED_API}},
)
