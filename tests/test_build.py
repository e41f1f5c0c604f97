"""Wheel builds: the version label, the CUDA arch list, the build record, the import-time check of
that record, the sdist, and the wheel-matrix configuration. Nothing here compiles; the end-to-end
wheel build runs only with FASTAE_TEST_WHEEL=1 (it takes minutes)."""

import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from packaging.version import Version

import fastae
from fastae import _buildtools as bt
from fastae import _native, build_wheel, cli

ROOT = Path(__file__).resolve().parents[1]
in_checkout = pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source checkout")

NVCC_13_VERSION = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2025 NVIDIA Corporation
Built on Wed_Aug_20_01:58:59_PM_PDT_2025
Cuda compilation tools, release 13.0, V13.0.88
Build cuda_13.0.r13.0/compiler.36424714_0
"""
NVCC_13_ARCHS = "compute_75\ncompute_80\ncompute_86\ncompute_87\ncompute_88\ncompute_89\ncompute_90\ncompute_100\n" \
                "compute_110\ncompute_103\ncompute_120\ncompute_121\n"


# ---------------------------------------------------------------- version label


@pytest.mark.parametrize("torch_version, cuda, label", [
    ("2.13.0+cpu", None, "cpu.torch2.13"),
    ("2.11.0+cu130", "13.0", "cu130.torch2.11"),
    ("2.13.1", "12.6", "cu126.torch2.13"),
    ("2.9.0+cu128", "12.8", "cu128.torch2.9"),
    ("2.10.0a0+git1234", "12.9", "cu129.torch2.10"),
])
def test_local_version_names_variant_and_torch(torch_version, cuda, label):
    assert bt.local_version(torch_version, cuda) == label
    version = Version(bt.dist_version("0.1.0", torch_version, cuda))
    assert version.public == "0.1.0" and version.local == label


def test_local_version_override():
    assert bt.dist_version("0.1.0", "2.13.0", None, override="none") == "0.1.0"
    assert bt.dist_version("0.1.0", "2.13.0", None, override="") == "0.1.0"
    assert bt.dist_version("0.1.0", "2.13.0", None, override="cu130.nightly") == "0.1.0+cu130.nightly"
    with pytest.raises(bt.BuildError, match="not a local version label"):
        bt.dist_version("0.1.0", "2.13.0", None, override="cu130-torch2.13")


def test_public_version_is_the_package_version():
    assert bt.public_version((ROOT / "fastae" / "__init__.py").read_text()) == fastae.__version__
    assert "+" not in fastae.__version__
    with pytest.raises(bt.BuildError):
        bt.public_version("VERSION = '1'")


@in_checkout
def test_setup_py_versions_the_build_and_refuses_bad_settings():
    def setup_version(**env):
        return subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, **env})

    expected = bt.dist_version(fastae.__version__, torch.__version__, None)  # CPU build: FASTAE_CUDA=0
    assert setup_version(FASTAE_CUDA="0").stdout.strip().splitlines()[-1] == expected
    assert setup_version(FASTAE_CUDA="0", FASTAE_LOCAL_VERSION="none").stdout.strip().splitlines()[-1] == "0.1.0"
    bad = setup_version(FASTAE_CUDA="yes")
    assert bad.returncode != 0 and "FASTAE_CUDA must be 0, 1 or auto" in bad.stderr
    if torch.version.cuda is None:
        forced = setup_version(FASTAE_CUDA="1")
        assert forced.returncode != 0 and "FASTAE_CUDA=1 but torch" in forced.stderr and "CPU build" in forced.stderr


# ---------------------------------------------------------------- CUDA decision and arch list


def test_use_cuda():
    assert bt.use_cuda("auto", "2.13.0", "13.0", "/usr/local/cuda/bin/nvcc") is True
    assert bt.use_cuda(None, "2.13.0", "13.0", None) is False  # auto without nvcc: CPU-only build
    assert bt.use_cuda("auto", "2.13.0", None, "/usr/local/cuda/bin/nvcc") is False
    assert bt.use_cuda("0", "2.13.0", "13.0", "/usr/local/cuda/bin/nvcc") is False
    assert bt.use_cuda("1", "2.13.0", "13.0", "/usr/local/cuda/bin/nvcc") is True
    with pytest.raises(bt.BuildError, match="FASTAE_CUDA=1 but nvcc was not found.*CUDA_HOME"):
        bt.use_cuda("1", "2.13.0", "13.0", None)
    with pytest.raises(bt.BuildError, match="FASTAE_CUDA=1 but torch 2.13.0\\+cpu is a CPU build"):
        bt.use_cuda("1", "2.13.0+cpu", None, "/usr/local/cuda/bin/nvcc")
    with pytest.raises(bt.BuildError, match="must be 0, 1 or auto"):
        bt.use_cuda("on", "2.13.0", "13.0", None)


def test_parse_nvcc():
    assert bt.parse_nvcc_version(NVCC_13_VERSION) == "13.0.88"
    assert bt.parse_nvcc_version("Cuda compilation tools, release 12.6") == "12.6"
    with pytest.raises(bt.BuildError):
        bt.parse_nvcc_version("command not found")
    assert bt.parse_gpu_archs(NVCC_13_ARCHS) == ["7.5", "8.0", "8.6", "8.7", "8.8", "8.9", "9.0", "10.0", "10.3",
                                                "11.0", "12.0", "12.1"]


@pytest.mark.parametrize("nvcc, supported, expected", [
    ("12.6.85", None, "8.0;8.6;8.9;9.0+PTX"),
    ("12.8.93", None, "8.0;8.6;8.9;9.0;10.0;12.0+PTX"),
    ("13.0.88", None, "8.0;8.6;8.9;9.0;10.0;12.0+PTX"),
    ("13.0.88", bt.parse_gpu_archs(NVCC_13_ARCHS), "8.0;8.6;8.9;9.0;10.0;12.0+PTX"),
    ("11.8.89", None, "8.0;8.6;8.9;9.0+PTX"),
    ("11.0.3", None, "8.0+PTX"),
])
def test_default_arch_list_follows_nvcc(nvcc, supported, expected):
    assert bt.default_arch_list(nvcc, supported) == expected


def test_arch_list_checked_against_nvcc():
    nvcc13 = bt.parse_gpu_archs(NVCC_13_ARCHS)
    assert bt.unsupported_archs("7.0;8.0;9.0+PTX", "13.0", nvcc13) == ["7.0"]  # CUDA 13 dropped Volta
    assert bt.unsupported_archs("7.0;8.0", "13.0") == ["7.0"]  # same, from the table
    assert bt.unsupported_archs("7.0 7.5", "12.6") == []
    assert bt.unsupported_archs("9.0;10.0;12.0+PTX", "12.6") == ["10.0", "12.0+PTX"]
    assert bt.unsupported_archs("Ampere;native;9.0a", "12.8") == []  # names are torch's to expand
    with pytest.raises(bt.BuildError, match="set TORCH_CUDA_ARCH_LIST"):
        bt.default_arch_list("13.0", ["7.5"])


@pytest.mark.skipif(not Path("/usr/local/cuda/bin/nvcc").exists() and not __import__("shutil").which("nvcc"),
                    reason="no nvcc here")
def test_default_arch_list_with_the_installed_nvcc():
    nvcc = __import__("shutil").which("nvcc") or "/usr/local/cuda/bin/nvcc"
    version = bt.parse_nvcc_version(subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout)
    supported = bt.parse_gpu_archs(subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True).stdout)
    archs = bt.default_arch_list(version, supported)
    assert archs.endswith("+PTX") and archs.startswith("8.0;")
    assert bt.unsupported_archs(archs, version, supported) == []


def test_describe_compiler():
    assert bt.describe_compiler("c++ (Debian 12.2.0-14+deb12u1) 12.2.0\nCopyright", "12.2.0\n") == "gcc 12.2.0"
    assert bt.describe_compiler("Ubuntu clang version 17.0.6 (9ubuntu1)\nTarget: x86_64", "17.0.6") == "clang 17.0.6"
    assert bt.describe_compiler("", "") == "unknown"


# ---------------------------------------------------------------- the build record


def _forged_info(**changes):
    info = {"fastae": fastae.__version__, "version": bt.dist_version(fastae.__version__, torch.__version__, None),
            "variant": "cpu", "torch": torch.__version__, "cuda": None, "nvcc": None, "cuda_arch_list": None,
            "compiler": "gcc 12.2.0", "cxx11_abi": True, "py_limited_api": "cp310", "platform": "linux-x86_64"}
    info.update(changes)
    return info


def test_build_info_is_written_and_read_back(tmp_path):
    info = _forged_info(cuda="13.0", nvcc="13.0.88", cuda_arch_list="8.0;8.6;8.9;9.0;10.0;12.0+PTX",
                        compiler="gcc 12.2.0 \"quoted\" 'null' true")
    path = tmp_path / "_build_info.py"
    path.write_text(bt.render_build_info(info))
    spec = importlib.util.spec_from_file_location("forged_build_info", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.BUILD_INFO == info


def test_build_info_of_this_install():
    info = fastae.build_info()
    assert {"loaded", "load_error"} <= set(info)
    if info.get("torch"):  # built: it matches the running torch, or it says why it is not loaded
        assert info["loaded"] == (_native.check_build() is None) or info["load_error"].startswith("fastae._C failed")
        for key in ("fastae", "torch", "cuda", "cuda_arch_list", "cxx11_abi"):
            assert key in info


# ---------------------------------------------------------------- the import-time check


def test_check_accepts_the_torch_it_was_built_for(monkeypatch):
    assert _native.check_build(_forged_info()) is None
    # patch release and local label do not matter, major.minor does
    monkeypatch.setattr(torch, "__version__", bt.major_minor(torch.__version__) + ".99+whatever")
    assert _native.check_build(_forged_info()) is None
    # a CPU build loads beside a CUDA torch (its CPU kernels work; the cuda backend says it is not built)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert _native.check_build(_forged_info()) is None


def test_check_rejects_another_torch(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    why = _native.check_build(_forged_info(torch="2.13.0+cpu"))
    assert why.startswith("fastae._C was built for torch 2.13.0+cpu but torch 2.11.0+cu130 is installed")
    assert f"fastae=={fastae.__version__}+cu130.torch2.11" in why
    assert "rebuild" in why and "triton and torch backends still work" in why


def test_check_rejects_another_cuda_major(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    why = _native.check_build(_forged_info(cuda="13.0", variant="cu130"))
    assert why.startswith("fastae._C was built for CUDA 13.0 (a +cu130 build) but torch")
    assert "uses CUDA 12.8" in why
    assert f"fastae=={fastae.__version__}+cu128.torch{bt.major_minor(torch.__version__)}" in why
    monkeypatch.setattr(torch.version, "cuda", "13.2")  # same major: fine
    assert _native.check_build(_forged_info(cuda="13.0")) is None
    monkeypatch.setattr(torch.version, "cuda", None)  # a CUDA wheel beside a CPU torch
    why = _native.check_build(_forged_info(cuda="13.0"))
    assert "is a CPU build" in why and f"+cpu.torch{bt.major_minor(torch.__version__)}" in why


def test_mismatch_at_import_warns_and_leaves_the_torch_backend_working():
    """A CUDA 13 build beside this torch, as if a +cu130 wheel were installed next to a CPU torch
    (or vice versa): a warning naming the wheel, fastae._C not loaded, the torch backend works,
    and `fastae info --check` fails."""
    cuda = "12.8" if torch.version.cuda and torch.version.cuda.startswith("13") else "13.0"
    code = (
        "import sys, types, torch\n"
        "m = types.ModuleType('fastae._build_info')\n"
        f"m.BUILD_INFO = {{'fastae': '0', 'torch': torch.__version__, 'cuda': {cuda!r}, 'cuda_arch_list': '9.0',"
        " 'cxx11_abi': True}\n"
        "sys.modules['fastae._build_info'] = m\n"
        "import fastae\n"
        "from fastae import cli\n"
        "ok, why = fastae.ops.available_backends()['cpu']\n"
        "y = fastae.ops.linear_act(torch.ones(2, 3), torch.ones(4, 3), None, 'relu')\n"
        "print('RESULT', ok, y.sum().item())\n"
        "sys.exit(cli.main(['info', '--check']))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "BuildMismatchWarning" in run.stderr and f"fastae._C was built for CUDA {cuda}" in run.stderr
    want = bt.wheel_spec(fastae.__version__, torch.__version__, torch.version.cuda)
    assert want in run.stderr
    assert "RESULT False 24.0" in run.stdout
    assert run.returncode == 1 and "fastae._C   FAIL" in run.stdout and "NOT loaded" in run.stdout


def test_info_prints_the_build(capsys, monkeypatch):
    info = dict(_forged_info(cuda="13.0", nvcc="13.0.88", cuda_arch_list="9.0+PTX", version="0.1.0+cu130.torch2.13"),
                loaded=True, load_error=None)
    line = cli._describe_build(info)
    assert line.startswith("0.1.0+cu130.torch2.13 built against torch")
    assert "CUDA 13.0 (archs 9.0+PTX), nvcc 13.0.88" in line and "gcc 12.2.0" in line and line.endswith("loaded")
    # a record from before the compiler was recorded still prints
    old = {"fastae": "0.1.0", "torch": "2.13.0", "cuda": None, "cuda_arch_list": None, "cxx11_abi": True,
           "loaded": True, "load_error": None}
    assert "CPU only" in cli._describe_build(old)


# ---------------------------------------------------------------- sdist and the wheel matrix


@in_checkout
def test_sdist_has_the_sources_and_no_build_outputs(tmp_path):
    tree = build_wheel.snapshot(ROOT, tmp_path / "tree")
    (tree / "fastae" / "_build_info.py").write_text("BUILD_INFO = {}\n")  # as an editable build leaves them
    (tree / "fastae" / "_C.abi3.so").write_bytes(b"\0")
    sdist = build_wheel.build_sdist(tree, tmp_path)
    assert sdist.name == f"fastae-{fastae.__version__}.tar.gz"
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for required in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "fastae/_buildtools.py",
                     "fastae/build_wheel.py", "csrc/ops.cpp", "csrc/activation.h", "csrc/cuda/linear_act.cu",
                     "kernels/__init__.py", "tests/test_build.py"):
        assert required in names, required
    weights = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "fastae" / "codec" / "weights").glob("*.*"))
    assert set(weights) <= names  # the shipped codec, once it is there
    assert not [n for n in names if n.endswith(".so") or n.endswith("_build_info.py") or "__pycache__" in n]


def test_ci_steps(capsys, monkeypatch):
    monkeypatch.setenv("FASTAE_VARIANT", "cu130")
    assert build_wheel.main(["ci-before-all", "--dry-run", "--rhel", "8"]) == 0
    out = capsys.readouterr().out
    assert "cuda-rhel8.repo" in out and "cuda-nvcc-13-0" in out and "libcublas-devel-13-0" in out
    assert "/usr/local/cuda-13.0 /usr/local/cuda" in out and "gcc-toolset" not in out
    monkeypatch.setenv("FASTAE_VARIANT", "cu126")
    build_wheel.main(["ci-before-all", "--dry-run", "--rhel", "8"])
    out = capsys.readouterr().out
    assert "cuda-nvcc-12-6" in out and "gcc-toolset-13-gcc-c++" in out
    monkeypatch.setenv("FASTAE_VARIANT", "cpu")
    build_wheel.main(["ci-before-all", "--dry-run"])
    assert "dnf" not in capsys.readouterr().out
    monkeypatch.setenv("FASTAE_VARIANT", "cu128")
    monkeypatch.setenv("FASTAE_TORCH_VERSION", "2.13.0")
    build_wheel.main(["ci-install-torch", "--build", "--dry-run"])
    out = capsys.readouterr().out
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" in out and "setuptools>=77" in out
    monkeypatch.setenv("FASTAE_VARIANT", "cu13")
    with pytest.raises(SystemExit):
        build_wheel.main(["ci-before-all", "--dry-run"])


@in_checkout
def test_wheel_matrix_configuration():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    yaml = pytest.importorskip("yaml")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["cibuildwheel"]
    assert config["build"] == [f"cp3{m}-manylinux_x86_64" for m in (10, 11, 12, 13)]
    assert "--no-build-isolation" in config["build-frontend"]["args"]
    linux = config["linux"]
    assert "ci-before-all" in linux["before-all"] and "ci-install-torch" in config["before-test"]
    assert {"FASTAE_VARIANT", "FASTAE_TORCH_VERSION", "FASTAE_CUDA"} <= set(linux["environment-pass"])
    repair = linux["repair-wheel-command"][0]
    for lib in ("libtorch.so", "libtorch_cpu.so", "libtorch_cuda.so", "libc10.so", "libc10_cuda.so",
                "'libcudart.so.*'", "'libcublasLt.so.*'"):
        assert f"--exclude {lib}" in repair, lib
    assert config["test-command"] == "fastae info --check"
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "wheels.yml").read_text())
    matrix = workflow["jobs"]["wheels"]["strategy"]["matrix"]["include"]
    assert [row["variant"] for row in matrix] == ["cpu", "cu126", "cu128", "cu130"]
    assert [row["fastae-cuda"] for row in matrix] == ["0", "1", "1", "1"]
    steps = workflow["jobs"]["wheels"]["steps"]
    assert any(step.get("uses", "").startswith("pypa/cibuildwheel@") for step in steps)


# ---------------------------------------------------------------- end to end (minutes: opt-in)


@in_checkout
@pytest.mark.skipif(os.environ.get("FASTAE_TEST_WHEEL") != "1", reason="builds and installs a wheel (minutes); "
                    "set FASTAE_TEST_WHEEL=1")
def test_wheel_builds_installs_and_passes_info_check(tmp_path):
    assert build_wheel.main(["--source", str(ROOT), "--out", str(tmp_path)]) == 0
    (wheel,) = tmp_path.glob("fastae-*.whl")
    assert wheel.name.startswith(f"fastae-{fastae.__version__}+")
    assert f".torch{bt.major_minor(torch.__version__)}-cp310-abi3-" in wheel.name
