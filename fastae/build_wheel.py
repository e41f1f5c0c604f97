"""Build the fastae wheel for this environment and smoke-test it in a fresh virtual environment.

    python -m fastae.build_wheel                 # sdist -> wheel from the sdist -> fresh venv test
    python -m fastae.build_wheel --from-tree     # wheel straight from (a copy of) the checkout
    python -m fastae.build_wheel --cuda 1        # FASTAE_CUDA=1: a CUDA wheel or an error

The wheel is built against the torch of this interpreter (``pip wheel --no-build-isolation``) and
is named for it: ``fastae-0.1.0+cpu.torch2.13-cp310-abi3-linux_x86_64.whl`` or ``+cu130.torch2.13``.
The smoke test makes a venv, installs the same torch into it (``--torch-spec``, ``--pip-arg
--index-url=...``), then the wheel's other requirements and the wheel, and runs ``fastae info
--check`` plus a check that fastae._C is loaded and reports the wheel's version, from a directory
outside the checkout.

Run as a script (``python fastae/build_wheel.py ci-...``), it also holds the steps the wheel
matrix runs inside the manylinux container (see [tool.cibuildwheel] in pyproject.toml):
``ci-before-all`` installs the CUDA toolkit of FASTAE_VARIANT (cpu, cu126, cu128, cu130) and
``ci-install-torch`` installs torch (FASTAE_TORCH_VERSION) from that variant's PyTorch index.
This file imports only the standard library at the top, so those steps run before fastae exists.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TORCH_INDEX = "https://download.pytorch.org/whl/{variant}"
CUDA_REPO = "https://developer.download.nvidia.com/compute/cuda/repos/rhel{rhel}/x86_64/cuda-rhel{rhel}.repo"
# What compiling fastae._C against torch's CUDA headers needs (ATen/cuda/CUDAContext.h pulls in
# cuBLAS, cuBLASLt, cuSPARSE and cuSOLVER headers), and cublasLt to link.
CUDA_PACKAGES = ("cuda-nvcc", "cuda-cudart-devel", "cuda-cccl", "cuda-nvrtc-devel", "cuda-nvtx", "cuda-profiler-api",
                 "libcublas-devel", "libcusparse-devel", "libcusolver-devel", "libcurand-devel")
# nvcc rejects host compilers newer than it knows: CUDA 12.6 stops at GCC 13, and the manylinux
# image's default toolset may be newer. (12.8 takes GCC 14, 13.0 GCC 15.)
HOST_GCC_TOOLSET = {"cu126": 13}
SMOKE = r"""
import importlib.metadata, json, sys
import torch, fastae
info = fastae.build_info()
available = fastae.ops.available_backends()
report = {"fastae_file": fastae.__file__, "version": importlib.metadata.version("fastae"), "build_info": info,
          "backends": {k: v[0] for k, v in available.items()}}
print(json.dumps(report, indent=2, default=str))
problems = []
if not fastae.__file__.startswith(sys.prefix):
    problems.append(f"fastae was imported from {fastae.__file__}, not from the venv {sys.prefix}")
if not info["loaded"]:
    problems.append(f"fastae._C is not loaded: {info['load_error']}")
if info.get("version") != report["version"]:
    problems.append(f"fastae._C records version {info.get('version')} but the installed wheel is {report['version']}")
if not available["cpu"][0]:
    problems.append(f"the cpu backend is unavailable: {available['cpu'][1]}")
if info.get("cuda") and torch.cuda.is_available() and not available["cuda"][0]:
    problems.append(f"a CUDA build on a machine with a GPU, but the cuda backend is unavailable: {available['cuda'][1]}")
for p in problems:
    print("SMOKE FAIL:", p)
sys.exit(1 if problems else 0)
"""


def _say(message):
    print(f"[build_wheel] {message}", flush=True)


def _run(cmd, dry_run=False, **kwargs):
    shown = ["<script>" if i and cmd[i - 1] == "-c" else str(c) for i, c in enumerate(cmd)]
    _say("$ " + " ".join(shown))
    if not dry_run:
        subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def _source(arg):
    for candidate in ([Path(arg)] if arg else [HERE.parent, Path.cwd()]):
        candidate = candidate.resolve()
        if (candidate / "setup.py").exists() and (candidate / "fastae" / "_buildtools.py").exists():
            return candidate
    raise SystemExit("build_wheel: no fastae source tree found (a directory with setup.py and fastae/); "
                     "run from a checkout or pass --source")


SNAPSHOT_IGNORE = shutil.ignore_patterns(".git", "build", "dist", "runs", "*.egg-info", "__pycache__", "*.so", "*.pyc",
                                        "_build_info.py", ".pytest_cache", ".benchmarks", ".venv*", "venv")


def snapshot(source, dest):
    """Copy the source tree (less VCS data and build outputs) to ``dest``: the build then neither
    writes into the checkout nor sees files changing under it."""
    shutil.copytree(source, dest, ignore=SNAPSHOT_IGNORE, symlinks=True)
    return dest


def build_sdist(source, out):
    """Build the sdist of ``source`` into ``out`` with setuptools' PEP 517 hook; its path."""
    code = "import sys; from setuptools import build_meta as b; print('SDIST=' + b.build_sdist(sys.argv[1]))"
    result = subprocess.run([sys.executable, "-c", code, str(out)], cwd=source, capture_output=True, text=True)
    if result.returncode:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit("build_wheel: building the sdist failed")
    name = [line for line in result.stdout.splitlines() if line.startswith("SDIST=")][-1][len("SDIST="):]
    return out / name


def build_wheel(tree, out):
    """``pip wheel --no-build-isolation`` of ``tree`` into ``out``; the wheel's path."""
    started = time.time()
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", out, tree],
         env=_clean_env())
    wheels = [w for w in out.glob("fastae-*.whl") if w.stat().st_mtime >= started - 1]
    if not wheels:
        raise SystemExit(f"build_wheel: pip wheel wrote no fastae wheel into {out}")
    return max(wheels, key=lambda w: w.stat().st_mtime)


def wheel_requirements(wheel):
    """The Requires-Dist lines of a wheel that apply without extras."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if "extra ==" not in r.replace('"', "").replace("'", "")]


def _requirement_name(req):
    return re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0].lower()


def smoke_test(wheel, venv, torch_spec, pip_args=()):
    """Install ``wheel`` beside ``torch_spec`` in a new venv at ``venv`` and check it; raises on failure."""
    _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", *pip_args]
    env = _clean_env()
    _run([*pip, torch_spec], env=env)
    others = [r for r in wheel_requirements(wheel) if _requirement_name(r) != "torch"]
    if others:
        _run([*pip, *others], env=_clean_env())
    _run([*pip, "--no-deps", wheel], env=env)
    _run([python, "-m", "pip", "check"], env=env)
    with tempfile.TemporaryDirectory(prefix="fastae-smoke-") as cwd:  # away from the checkout
        _run([venv / "bin" / "fastae", "info", "--check"], cwd=cwd, env=env)
        _run([python, "-c", SMOKE], cwd=cwd, env=env)


def _extract(sdist, dest):
    with tarfile.open(sdist) as tar:
        try:
            tar.extractall(dest, filter="data")
        except TypeError:  # a Python without tarfile filters (before 3.10.12 / 3.11.4)
            tar.extractall(dest)


def cmd_build(args):
    source = _source(args.source)
    out = Path(args.out).resolve() if args.out else source / "dist"
    out.mkdir(parents=True, exist_ok=True)
    if args.cuda is not None:
        os.environ["FASTAE_CUDA"] = args.cuda
    import torch

    torch_spec = args.torch_spec or f"torch=={torch.__version__}"
    with tempfile.TemporaryDirectory(prefix="fastae-wheel-") as tmp:
        tmp = Path(tmp)
        sdist = None
        tree = snapshot(source, tmp / "tree")
        if not args.from_tree:
            sdist = build_sdist(tree, out)
            _say(f"sdist: {sdist}")
            _extract(sdist, tmp / "sdist")
            tree = next((tmp / "sdist").iterdir())
        wheel = build_wheel(tree, out)
        _say(f"wheel: {wheel}")
        if not args.no_test:
            smoke_test(wheel, Path(args.venv).resolve() if args.venv else tmp / "venv", torch_spec, args.pip_arg)
            _say(f"smoke test passed: {wheel.name} in a fresh venv beside {torch_spec}")
    print(json.dumps({"sdist": str(sdist) if sdist else None, "wheel": str(wheel), "tested": not args.no_test}))
    return 0


def cmd_ci_before_all(args):
    """Install the CUDA toolkit of FASTAE_VARIANT in a manylinux (AlmaLinux / RHEL) container."""
    variant = os.environ.get("FASTAE_VARIANT", "cpu") or "cpu"
    if variant == "cpu":
        _say("FASTAE_VARIANT=cpu: no CUDA toolkit to install")
        return 0
    if not (variant.startswith("cu") and variant[2:].isdigit() and len(variant) >= 5):
        raise SystemExit(f"FASTAE_VARIANT must be cpu or cuXYZ (cu126, cu128, cu130), got {variant!r}")
    major, minor = variant[2:-1], variant[-1]
    rhel = args.rhel or _rhel_major()
    packages = [f"{p}-{major}-{minor}" for p in CUDA_PACKAGES]
    toolset = HOST_GCC_TOOLSET.get(variant)
    if toolset:
        packages.append(f"gcc-toolset-{toolset}-gcc-c++")
    _run(["dnf", "install", "-y", "dnf-plugins-core"], dry_run=args.dry_run)
    _run(["dnf", "config-manager", "--add-repo", CUDA_REPO.format(rhel=rhel)], dry_run=args.dry_run)
    _run(["dnf", "install", "-y", "--setopt=install_weak_deps=False", *packages], dry_run=args.dry_run)
    _run(["ln", "-sfn", f"/usr/local/cuda-{major}.{minor}", "/usr/local/cuda"], dry_run=args.dry_run)
    if toolset:
        _say(f"nvcc for {variant} needs GCC {toolset} as host compiler: set "
             f"NVCC_PREPEND_FLAGS='-ccbin /opt/rh/gcc-toolset-{toolset}/root/usr/bin/g++'")
    return 0


def _rhel_major():
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "8"
    for line in text.splitlines():
        if line.startswith("VERSION_ID="):
            return line.split("=", 1)[1].strip('"').split(".")[0]
    return "8"


def cmd_ci_install_torch(args):
    """pip install torch (FASTAE_TORCH_VERSION, default the newest) from FASTAE_VARIANT's index,
    and with --build the build requirements for a --no-build-isolation build."""
    variant = os.environ.get("FASTAE_VARIANT", "cpu") or "cpu"
    version = os.environ.get("FASTAE_TORCH_VERSION", "")
    spec = f"torch=={version}" if version else "torch"
    pip = [sys.executable, "-m", "pip", "install"]
    if args.build:
        _run([*pip, "setuptools>=77", "wheel", "ninja"], dry_run=args.dry_run)
    _run([*pip, spec, "--index-url", TORCH_INDEX.format(variant=variant)], dry_run=args.dry_run)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastae.build_wheel", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="build", choices=["build", "ci-before-all", "ci-install-torch"])
    parser.add_argument("--source", help="fastae source tree (default: the checkout this file is in, or .)")
    parser.add_argument("--out", help="where the sdist and wheel go (default: SOURCE/dist)")
    parser.add_argument("--cuda", choices=["0", "1", "auto"], help="FASTAE_CUDA for the build (default: as set, else auto)")
    parser.add_argument("--from-tree", action="store_true",
                        help="build the wheel from (a copy of) the source tree, not from its sdist")
    parser.add_argument("--no-test", action="store_true", help="build only; no fresh-venv smoke test")
    parser.add_argument("--venv", help="make the test venv here and keep it (default: a temporary one)")
    parser.add_argument("--torch-spec", help="torch requirement for the test venv (default: torch==<this torch>)")
    parser.add_argument("--pip-arg", action="append", default=[],
                        help="extra pip install argument for the test venv, e.g. --pip-arg=--index-url=URL")
    parser.add_argument("--dry-run", action="store_true", help="ci-*: print the commands, run nothing")
    parser.add_argument("--build", action="store_true", help="ci-install-torch: also setuptools, wheel, ninja")
    parser.add_argument("--rhel", help="ci-before-all: RHEL major of the CUDA repository (default: from /etc/os-release)")
    args = parser.parse_args(argv)
    return {"build": cmd_build, "ci-before-all": cmd_ci_before_all, "ci-install-torch": cmd_ci_install_torch}[
        args.command](args)


if __name__ == "__main__":
    sys.exit(main())
