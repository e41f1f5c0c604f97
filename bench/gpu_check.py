"""The one prepared command for a GPU machine: install fastae, check it, run the CUDA tests,
measure the codec and benchmark, each step under its own timeout, every result in one folder.

    python3 bench/gpu_check.py             # on the GPU machine (docs/gpu-runs.md has the exact call)
    python bench/gpu_check.py --dry-run    # the same steps on the CPU at tiny sizes (tests/test_gpu_check.py)
    python bench/gpu_check.py --prepare    # on the CPU machine, before: fill gpu-carry/ for the GPU machine

Steps, in this order:
  install  fastae from the carried CUDA wheel (gpu-carry/, made by --prepare) and the carried wheels
           of the test dependencies the machine lacks; else a wheel built there (MAX_JOBS=16); else
           the source tree without fastae._C (the triton and torch backends still run)
  info     `fastae info --check`: every backend against the torch oracle
  tests    `pytest -m cuda`: every test case that runs on CUDA (tests/conftest.py marks them)
  codec    images/s of the codec's batched encode/decode and compress/decompress at Kodak size,
           batches 1, 8, 32; files encoded on the GPU decoded on the CPU and the other way round,
           counting latents whose value or table choice differs from the encoder's
  bench    `fastae bench --device cuda`, one run per suite, at the shapes that fit what is left of
           the budget (the summary names what was left out)

A step that fails or runs out of time is recorded and the next one starts. The output folder
($OUT/gpu-check when OUT is set) holds at most 8 files, as the device tool returns them:
summary.md (one page), summary.json, log.txt (every command's output, also what a killed step
printed) and one `fastae bench` JSON per suite, named for bench/results/.

Only the standard library is imported at the top: the script runs before fastae is installed.
"""

import argparse
import ast
import datetime
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
STEPS = ("install", "info", "tests", "codec", "bench")
HARD_LIMIT_S = 540  # never past this, even after a build in place: the device tool's command limit is 600 s
MAX_OUTPUT_FILES = 8  # what the device tool returns from $OUT
# fastae[test] needs the first two and the GPU machine's image lacks them (it has torch, triton,
# numpy, safetensors, tqdm, pillow, pytest, pytest-benchmark, pytest-xdist, pytest-timeout,
# hypothesis, scipy, matplotlib ...); a build there needs setuptools>=77 (pyproject's license
# string) and torch 2.11 wants <82. --prepare downloads them for Python 3.12.
CARRIED_DISTRIBUTIONS = ("pytorch-msssim", "constriction", "setuptools>=77,<82")
BUILD_SETUPTOOLS = 77
KODAK_IMAGES = ("kodim01.png", "kodim04.png", "kodim15.png", "kodim23.png")  # kodim04 is portrait
CARRY_LIMIT_MB = 64  # the working tree and the carried paths together


# ================================================================================================ plans


@dataclass(frozen=True)
class BenchPart:
    """One `fastae bench` run: a suite, its options, its timeout and what of the suite it leaves out."""
    suite: str
    options: tuple
    budget: float
    leaves_out: str


@dataclass(frozen=True)
class Plan:
    """What a check runs: its device, seconds per step (the bench gets what is left of ``total``,
    at most its own), the tests, the codec's sizes and the bench runs."""
    device: str
    budgets: dict
    total: float
    pytest_args: tuple
    codec_size: tuple  # (height, width)
    codec_batches: tuple
    cross_images: int
    codec_timing: tuple  # (warm-up calls, at least this many timed calls, and this many seconds)
    bench: tuple


# Triton compiles and autotunes each linear_act kernel per activation, dtype and shape: 8 configs
# x 3 kernels, each compile about 5 s on the shared 2-core CPU machine (triton 3.6, sm_90): on the
# GPU machine count on seconds per case. The first run's bench is a small sample; a second run can
# name its own (--bench-part) with the budget to itself (docs/gpu-runs.md).
GPU_PLAN = Plan(
    device="cuda",
    budgets={"install": 60, "build": 300, "info": 45, "tests": 150, "codec": 60, "bench": 240},
    total=330,
    pytest_args=("-m", "cuda", "tests"),
    codec_size=(512, 768),  # Kodak, landscape (portrait images are transposed)
    codec_batches=(1, 8, 32),
    cross_images=4,
    codec_timing=(1, 3, 0.5),
    bench=(
        BenchPart("ops", ("--quick", "--cases", "relu fwd+bwd 4096x784->128"), 75,
                  "every other linear_act case: gelu, the layers 128->64, 64->128 and 128->784, forward only, "
                  "batches 256 and 65536, float16"),
        BenchPart("losses", ("--cases", "65536x"), 60,
                  "1024x1024 and 16384x1024 (reconstruction_loss, gaussian_kl); linear_bce_loss at batch 4096, 16384"),
        BenchPart("train", ("--cases", "mlp-ae train step batch 4096", "--cases", "fused_mlp 784-128-64-128-784 fwd",
                            "--dtype", "bfloat16"), 90,
                  "the MLP autoencoder at batch 256 and 65536 and in float32; the conv autoencoder; fused_mlp "
                  "in float32"),
        BenchPart("codec", ("--quick",), 45, "batch 32 (the codec step measures it) and the CPU rows"),
    ),
)

DRY_PLAN = Plan(
    device="cpu",
    budgets={"install": 120, "build": 1200, "info": 120, "tests": 120, "codec": 120, "bench": 240},
    total=600,
    pytest_args=("tests/test_device.py",),
    codec_size=(64, 96),
    codec_batches=(2,),
    cross_images=1,
    codec_timing=(0, 1, 0.0),
    bench=tuple(BenchPart(suite, ("--quick", "--cases", case, "--min-time", "0.01"), 60,
                          "the rest of the suite (dry run)")
                for suite, case in (("ops", "relu fwd 256x784->128"), ("codec", "entropy coder decode"))),
)

# The targets of issue 21, per bench suite (the bench judges its rows on CUDA) and for the codec step.
SUITE_TARGETS = {
    "ops": "linear_act fwd+bwd ≥1.25x eager and ≥1.0x torch.compile at batch ≥4096",
    "losses": "losses ≥2x eager and ≥85% of copy bandwidth (linear_bce_loss: ≥2x eager)",
    "train": "MLP-AE train step ≥2x eager; fused_mlp at batch 65536 in bf16: fwd ≥2x, fwd+bwd ≥1.5x eager",
    "codec": "codec batched encode and decode ≥500 Kodak images/s at batch > 1",
}
CODEC_OPS = ("encode", "decode", "compress_batch", "decompress_batch")
CODEC_TARGET = "codec ≥500 Kodak images/s, batched encode and decode"
CODEC_TARGET_IMAGES_S = 500


# ================================================================================================ running commands


@dataclass
class Command:
    rc: Optional[int]
    seconds: float
    timed_out: bool
    output: str


@dataclass
class Step:
    name: str
    status: str  # ok, failed, timeout, skipped, dropped (no time left); the bench also partial
    seconds: float = 0.0
    budget: float = 0.0
    detail: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class Check:
    """One run of the check: its plan, folders, clock, the steps' environment and their results."""
    plan: Plan
    out: Path
    work: Path
    carry: Path
    dry_run: bool
    install: bool  # False: the tree is staged as it is (a dry run without --install, --skip install)
    started: float
    deadline: float
    env: dict
    python: str = sys.executable
    probe: dict = field(default_factory=dict)
    fastae: dict = field(default_factory=dict)  # how fastae was installed, and what it reports
    steps: list = field(default_factory=list)
    stamp: str = ""

    @property
    def log(self) -> Path:
        return self.out / "log.txt"

    def left(self) -> float:
        return self.deadline - time.monotonic()


def say(text=""):
    print(text, flush=True)


def _kill(proc):
    """End ``proc`` and everything it started (its own process group): SIGTERM, then SIGKILL to
    whatever is left of the group, also when the leader went first."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    proc.wait()


def run_command(check: Check, cmd, timeout: float, cwd=None, env=None) -> Command:
    """Run ``cmd`` with its output appended to log.txt (kept whatever happens), killed with all it
    started after ``timeout`` seconds; its output is read back from the log."""
    cmd = [str(c) for c in cmd]
    with open(check.log, "ab") as log:
        log.write(f"\n===== $ {shlex.join(cmd)}\n===== cwd {cwd or os.getcwd()}, timeout {timeout:.0f} s\n".encode())
        log.flush()  # the command writes to the file itself, after the header
        start = log.tell()
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env or check.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=max(timeout, 1)), False
        except subprocess.TimeoutExpired:
            _kill(proc)
            rc, timed_out = proc.returncode, True
        seconds = time.monotonic() - t0
    with open(check.log, "rb") as log:
        log.seek(start)
        output = log.read().decode("utf-8", "replace")
    with open(check.log, "ab") as log:
        log.write(f"===== exit {rc}{', killed at its timeout' if timed_out else ''}, {seconds:.1f} s\n".encode())
    return Command(rc, seconds, timed_out, output)


def python_json(check: Check, code: str, *args, timeout: float = 120) -> dict:
    """Run ``code`` (with ``args``) in the steps' Python and environment; the JSON object its last
    output line prints, or {"error": ...}."""
    result = run_command(check, [check.python, "-c", code, *args], timeout, cwd=check.work)
    lines = [line for line in result.output.splitlines() if line.startswith("{")]
    if result.rc != 0 or not lines:
        tail = result.output.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {result.rc}{' (timeout)' if result.timed_out else ''}: {tail[0][:300]}"}
    return json.loads(lines[-1])


# ================================================================================================ the machine

PROBE = r"""
import json, platform
out = {"python": platform.python_version()}
try:
    import torch
    out.update(torch=torch.__version__, cuda=torch.version.cuda, gpu=torch.cuda.is_available(),
               devices=torch.cuda.device_count())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_gb=round(p.total_memory / 2**30, 1),
                   sms=p.multi_processor_count)
except Exception as e:
    out["torch_error"] = f"{type(e).__name__}: {e}"
try:
    import triton
    out["triton"] = triton.__version__
except Exception:
    out["triton"] = None
print(json.dumps(out))
"""

VERIFY = r"""
import importlib.metadata, json, torch, fastae
try:
    version = importlib.metadata.version("fastae")
except importlib.metadata.PackageNotFoundError:
    version = None
print(json.dumps({"file": fastae.__file__, "dist_version": version, "build": fastae.build_info(),
                  "backends": {k: list(v) for k, v in fastae.ops.available_backends().items()}}))
"""


def probe(check: Check) -> dict:
    info = python_json(check, PROBE)
    info["driver"] = None
    if shutil.which("nvidia-smi"):
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            pass
    info["cpus"] = os.cpu_count()
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=30)
        info["commit"] = head.stdout.strip() if head.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def device_tag(probe_info: dict, device: str) -> str:
    """A file-name word for the device: "NVIDIA H200" -> "h200"; "cpu" on the CPU."""
    if device != "cuda" or not probe_info.get("name"):
        return "cpu"
    name = re.sub(r"^nvidia\s+", "", probe_info["name"].strip(), flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def buildtools():
    """fastae/_buildtools.py (standard library only), loaded by path: fastae may not be importable yet."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_fastae_buildtools", REPO / "fastae" / "_buildtools.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ================================================================================================ step: install


def _tree_files(root: Path):
    """The source files under ``root`` (build outputs and caches left out), sorted."""
    skip = re.compile(r"(^|/)(__pycache__|\.pytest_cache)(/|$)|\.(pyc|so)$|(^|/)_build_info\.py$")
    return sorted(p for p in root.rglob("*") if p.is_file() and not skip.search(p.relative_to(root).as_posix()))


def native_hash(repo: Path = REPO) -> str:
    """sha256 of what fastae._C is compiled from: csrc/, setup.py and fastae/_buildtools.py."""
    h = hashlib.sha256()
    for path in [*_tree_files(repo / "csrc"), repo / "setup.py", repo / "fastae" / "_buildtools.py"]:
        h.update(path.relative_to(repo).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def package_files(repo: Path = REPO) -> dict:
    """{path in the wheel: path in the tree} of the package's files: fastae/ and kernels/ (as fastae/kernels/)."""
    return {f"{inside}/{p.relative_to(repo / folder).as_posix()}": p
            for folder, inside in (("fastae", "fastae"), ("kernels", "fastae/kernels"))
            for p in _tree_files(repo / folder)}


def wheel_build_info(wheel: Path) -> dict:
    with zipfile.ZipFile(wheel) as z:
        text = z.read("fastae/_build_info.py").decode()
    return ast.literal_eval(text.split("BUILD_INFO = ", 1)[1])


def wheel_differs(wheel: Path, repo: Path = REPO) -> list:
    """The package files in which ``wheel`` and the tree differ (missing on either side, or other bytes)."""
    tree = package_files(repo)
    with zipfile.ZipFile(wheel) as z:
        inside = {n for n in z.namelist() if n.startswith("fastae/") and not n.endswith("/")
                  and not re.search(r"(\.so|/_build_info\.py)$", n)}
        differ = sorted(n for n in inside & set(tree) if z.read(n) != tree[n].read_bytes())
    return sorted(set(tree) ^ inside) + differ


def carried_wheel(carry: Path) -> Optional[Path]:
    wheels = sorted(carry.glob("fastae-*.whl"))
    if len(wheels) > 1:
        raise ValueError(f"{carry} holds {len(wheels)} fastae wheels ({', '.join(w.name for w in wheels)}); "
                         "expected one (run --prepare again)")
    return wheels[0] if wheels else None


def wheel_verdict(wheel: Optional[Path], manifest: dict, torch_version: str, torch_cuda: Optional[str],
                  repo: Path = REPO):
    """How to use the carried ``wheel`` beside this torch and tree: ("wheel", why) to install it,
    ("extension", why) to run the tree with the wheel's fastae._C (the Python sources changed since it
    was built, csrc/ did not), or ("build", why)."""
    if wheel is None:
        return "build", "no fastae wheel in the carry folder"
    info = wheel_build_info(wheel)
    mismatch = buildtools().build_mismatch(info, torch_version, torch_cuda)
    if mismatch:
        return "build", f"{wheel.name} does not fit this torch: {mismatch.split(', so it is not loaded')[0]}"
    if not info.get("cuda") and torch_cuda:
        return "build", f"{wheel.name} is a CPU build; this torch has CUDA {torch_cuda}"
    if manifest.get("native_hash") != native_hash(repo):
        why = "no carry.json says what it was built from" if "native_hash" not in manifest else \
            "csrc/ (or setup.py) changed since it was built"
        return "build", f"{wheel.name}: {why}"
    changed = wheel_differs(wheel, repo)
    if changed:
        return "extension", (f"{len(changed)} package file(s) changed since {wheel.name} was built "
                             f"({', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}): running the tree "
                             "with the wheel's fastae._C (csrc/ is unchanged)")
    return "wheel", f"{wheel.name} matches this torch and the tree"


def stage_tree(check: Check, extension) -> Path:
    """A copy of the tree's package in work/src (kernels/ as fastae/kernels, as the wheel lays it out)
    with the compiled extension of ``extension``: "tree" (what the tree holds), a wheel, or None (none)."""
    src = check.work / "src"
    shutil.rmtree(src, ignore_errors=True)
    keep = shutil.ignore_patterns("__pycache__", "*.pyc") if extension == "tree" else \
        shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "_build_info.py")
    shutil.copytree(REPO / "fastae", src / "fastae", ignore=keep)
    shutil.copytree(REPO / "kernels", src / "fastae" / "kernels", ignore=keep)
    if isinstance(extension, Path):
        with zipfile.ZipFile(extension) as z:
            for name in z.namelist():
                if re.fullmatch(r"fastae/(_C[^/]*\.so|_build_info\.py)", name):
                    (src / name).write_bytes(z.read(name))
    check.env["PYTHONPATH"] = str(src)
    return src


MISSING = r"""
import importlib.metadata, json, sys
missing = []
for name in sys.argv[1:]:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        missing.append(name)
print(json.dumps({"missing": missing}))
"""


def missing_distributions(check: Check, names) -> list:
    """Which of the distributions ``names`` the steps' Python lacks (all of them if it cannot tell)."""
    return python_json(check, MISSING, *names).get("missing", list(names))


def _dist_name(wheel: Path) -> str:
    return wheel.name.split("-")[0].lower().replace("_", "-")


def pip_install(check: Check, args, timeout) -> Command:
    return run_command(check, [check.python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-cache-dir",
                               "--disable-pip-version-check", *args], timeout, cwd=check.work)


def cuda_build_env(python: str, work: Path) -> dict:
    """What compiling fastae._C against a pip-installed CUDA torch needs besides nvcc: CUDA_HOME
    (the toolkit nvcc belongs to), and cuBLASLt's header and library from torch's nvidia wheels when
    the toolkit lacks them (csrc/cuda links cublasLt; the wheels ship only libcublasLt.so.N)."""
    env = {}
    home = os.environ.get("CUDA_HOME")
    if not home and Path("/usr/local/cuda/bin/nvcc").exists():  # torch would guess from PATH: /usr/local/bin/nvcc
        home = env["CUDA_HOME"] = "/usr/local/cuda"
    if home and Path(home, "include", "cublasLt.h").exists():
        return env
    found = subprocess.run([python, "-c", "import nvidia, json; print(json.dumps(list(nvidia.__path__)))"],
                           capture_output=True, text=True, timeout=120)
    roots = [Path(p) for p in json.loads(found.stdout)] if found.returncode == 0 else []
    headers = [h for r in roots for h in r.glob("*/include/cublasLt.h")]
    libraries = sorted(lib for r in roots for lib in r.glob("*/lib/libcublasLt.so*"))
    if headers:
        env["CPATH"] = os.pathsep.join(filter(None, [str(headers[0].parent), os.environ.get("CPATH")]))
    if libraries:
        links = work / "cublas-link"
        links.mkdir(parents=True, exist_ok=True)
        (links / "libcublasLt.so").unlink(missing_ok=True)
        (links / "libcublasLt.so").symlink_to(libraries[0])
        env["LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(links), os.environ.get("LIBRARY_PATH")]))
    return env


def build_wheel(python: str, out: Path, work: Path, arch: str, jobs: int, run=None, timeout=None) -> Optional[Path]:
    """A CUDA wheel of the tree built with ``python``'s torch by fastae/build_wheel.py (from a copy of
    the tree: nothing is written into it), into ``out``. ``run(cmd, timeout, env)`` runs the build
    (default: subprocess.run, output shown); None when it failed."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(cuda_build_env(python, work), TORCH_CUDA_ARCH_LIST=arch, MAX_JOBS=str(jobs), FASTAE_CUDA="1",
               PATH=os.pathsep.join([str(Path(python).parent), os.environ.get("PATH", "")]))  # its venv's ninja
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("fastae-*.whl"))
    cmd = [python, REPO / "fastae" / "build_wheel.py", "build", "--source", REPO, "--cuda", "1", "--from-tree",
           "--no-test", "--out", out]
    if run is None:
        ok = subprocess.run([str(c) for c in cmd], env=env).returncode == 0
    else:
        ok = run(cmd, timeout, env).rc == 0
    new = set(out.glob("fastae-*.whl")) - before
    return max(new, key=lambda w: w.stat().st_mtime) if ok and new else None


def step_install(check: Check, budget: float) -> Step:
    if not check.install:
        stage_tree(check, "tree")
        check.fastae.update(how="the tree, staged with its own fastae._C", wheel=None)
        return _verified(check, Step("install", "skipped", detail="not installing (--dry-run without --install, "
                                                                  "or --skip install): the tree as it is"))
    t0 = time.monotonic()
    deadline = t0 + budget
    notes = []
    carried = sorted((check.carry / "wheels").glob("*.whl"))
    missing = missing_distributions(check, [_dist_name(w) for w in carried]) if carried else []
    if missing:
        wheels = [w for w in carried if _dist_name(w) in missing]
        result = pip_install(check, wheels, deadline - time.monotonic())
        notes.append(f"carried wheels {'installed' if result.rc == 0 else 'FAILED to install'}: {', '.join(missing)}")
    manifest = {}
    if (check.carry / "carry.json").exists():
        manifest = json.loads((check.carry / "carry.json").read_text())
        check.fastae["carried_from"] = manifest.get("commit")
    wheel = carried_wheel(check.carry)
    verdict, why = wheel_verdict(wheel, manifest, check.probe.get("torch", ""), check.probe.get("cuda"))
    notes.append(why)
    if verdict == "build":
        notes += ensure_setuptools(check, carried)
        build_t0 = time.monotonic()
        jobs = min(16, os.cpu_count() or 1)
        say(f"  building a wheel here (MAX_JOBS={jobs}, up to {check.plan.budgets['build']:.0f} s): {why}")
        wheel = build_wheel(check.python, check.work / "dist", check.work, "9.0", jobs,
                            lambda cmd, timeout, env: run_command(check, cmd, timeout, cwd=check.work, env=env),
                            min(check.plan.budgets["build"], HARD_LIMIT_S - (time.monotonic() - check.started) - 60))
        spent = time.monotonic() - build_t0
        deadline += spent  # a build costs its own time: the other steps keep theirs, up to the hard limit
        check.deadline = min(check.deadline + spent, check.started + HARD_LIMIT_S)
        notes.append(f"built {wheel.name} in {spent:.0f} s" if wheel else f"the build FAILED after {spent:.0f} s "
                                                                          "(log.txt has its output)")
        verdict = "wheel" if wheel else "none"
    if verdict == "wheel":
        result = pip_install(check, ["--force-reinstall", wheel], max(deadline - time.monotonic(), 30))
        if result.rc == 0:
            check.env.pop("PYTHONPATH", None)
        else:
            notes.append(f"pip install {wheel.name} FAILED (exit {result.rc})")
            verdict = "none"
    if verdict == "extension":
        stage_tree(check, wheel)
    if verdict == "none":
        stage_tree(check, None)
        notes.append("running the tree without fastae._C: the cpu and cuda backends are off")
    check.fastae.update(how={"wheel": "wheel installed", "extension": "tree + the wheel's fastae._C",
                             "none": "tree, no fastae._C"}[verdict], wheel=wheel.name if wheel else None)
    return _verified(check, Step("install", "ok" if verdict in ("wheel", "extension") else "failed",
                                 time.monotonic() - t0, budget, "; ".join(notes)))


def ensure_setuptools(check: Check, carried) -> list:
    """Install the carried setuptools when the one here is too old to build fastae; notes on what was done."""
    have = python_json(check, "import json, setuptools; print(json.dumps({'version': setuptools.__version__}))")
    version = have.get("version", "0")
    if int(re.match(r"\d*", version).group() or 0) >= BUILD_SETUPTOOLS:
        return []
    wheel = next((w for w in carried if _dist_name(w) == "setuptools"), None)
    if wheel is None:
        return [f"setuptools {version} is older than {BUILD_SETUPTOOLS} and none is carried: the build will fail"]
    result = pip_install(check, [wheel], 120)
    return [f"setuptools {version} -> {wheel.name.split('-')[1]}" + ("" if result.rc == 0 else " FAILED")]


def _verified(check: Check, step: Step) -> Step:
    """``step`` with what fastae reports once installed; failed when fastae._C is not loaded or, on a
    GPU, a CUDA backend is unavailable."""
    info = python_json(check, VERIFY)
    check.fastae.update(info)
    if "error" in info:
        step.status, step.detail = "failed", f"{step.detail}; import fastae failed: {info['error']}"
        return step
    build, backends = info["build"], info["backends"]
    problems = [] if build.get("loaded") else [f"fastae._C not loaded: {build.get('load_error')}"]
    if check.fastae.get("how") == "wheel installed" and Path(info["file"]).is_relative_to(REPO):
        problems.append(f"fastae was imported from the tree ({info['file']}), not from the installed wheel")
    if check.plan.device == "cuda":
        problems += [f"{name} backend unavailable: {backends[name][1]}" for name in ("cuda", "triton")
                     if not backends[name][0]]
    if problems and step.status == "ok":
        step.status = "failed"
    step.detail = "; ".join([step.detail, f"fastae {build.get('version', info['dist_version'])} from {info['file']}",
                             *problems])
    return step


# ================================================================================================ step: info


def step_info(check: Check, budget: float) -> Step:
    result = run_command(check, [check.python, "-m", "fastae.cli", "info", "--check"], budget, cwd=check.work)
    checks = re.findall(r"^  (\S+ +\S+ +\S+ +\S+) +[-+.\w]+  (ok|FAIL.*)$", result.output, re.M)
    failed = [f"{case} {verdict}" for case, verdict in checks if verdict != "ok"]
    summary = next((line for line in result.output.splitlines() if line.startswith("self-check:")), None)
    status = "timeout" if result.timed_out else ("ok" if result.rc == 0 else "failed")
    detail = f"{summary or 'no self-check line'}; {len(checks)} cases checked"
    if result.timed_out:
        detail = f"killed at {budget:.0f} s after {len(checks)} cases ({len(failed)} failed)"
    return Step("info", status, result.seconds, budget, detail, {"cases": len(checks), "failed": failed[:30]})


# ================================================================================================ step: tests

_OUTCOMES = "PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS"
_XDIST_LINE = re.compile(rf"^\[gw\d+\] \[\s*\d+%\] ({_OUTCOMES}) (.+)$")
_PLAIN_LINE = re.compile(rf"^(.+::.+?) ({_OUTCOMES})(?: .*)?\s+\[\s*\d+%\]$")
_SUMMARY_LINE = re.compile(r"^=+ (.*\d+ (?:passed|failed|error|errors|skipped|deselected).*) in [\d.]+s.* =+$")


def parse_pytest(output: str) -> dict:
    """Counts per outcome and the failed node ids from ``pytest -v`` output (plain or pytest-xdist),
    also when the run was cut short; ``summary`` is pytest's closing line when it got that far."""
    counts, failed = {}, []
    for line in output.splitlines():
        m = _XDIST_LINE.match(line)
        outcome, node = (m.group(1), m.group(2)) if m else (None, None)
        if m is None and (m := _PLAIN_LINE.match(line)):
            node, outcome = m.group(1), m.group(2)
        if outcome:
            counts[outcome.lower()] = counts.get(outcome.lower(), 0) + 1
            if outcome in ("FAILED", "ERROR"):
                failed.append(node.strip())
    summary = next((m.group(1) for line in output.splitlines() if (m := _SUMMARY_LINE.match(line))), None)
    return {"counts": counts, "failed": failed, "summary": summary}


def stage_tests(check: Check) -> Path:
    """The tests, the bench scripts they load and the pytest configuration, copied out of the tree:
    run there, `import fastae` finds the installed fastae, not the tree's uncompiled sources."""
    suite = check.work / "suite"
    shutil.rmtree(suite, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
    shutil.copytree(REPO / "tests", suite / "tests", ignore=ignore)
    shutil.copytree(REPO / "bench", suite / "bench", ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", suite / "pyproject.toml")
    return suite


def step_tests(check: Check, budget: float) -> Step:
    suite = stage_tests(check)
    lacking = set(missing_distributions(check, ["pytest-xdist", "pytest-timeout"]))
    cmd = [check.python, "-m", "pytest", *check.plan.pytest_args, "-v", "-rfE", "--tb=short", "-p", "no:cacheprovider"]
    if check.plan.device == "cuda" and "pytest-xdist" not in lacking:
        cmd += ["-n", str(min(16, os.cpu_count() or 1))]  # Triton compiles and autotunes each kernel: in parallel
    if "pytest-timeout" not in lacking:
        cmd += ["--timeout", "120"]  # one hung test fails alone
    result = run_command(check, cmd, budget, cwd=suite)
    parsed = parse_pytest(result.output)
    counts = ", ".join(f"{n} {k}" for k, n in sorted(parsed["counts"].items())) or "no test ran"
    if result.timed_out:
        status, detail = "timeout", f"killed at {budget:.0f} s: {counts} by then"
    elif result.rc == 0:
        status, detail = "ok", parsed["summary"] or counts
    else:
        why = {1: "tests failed", 2: "interrupted or a usage error", 3: "internal error", 4: "usage error",
               5: "no test selected"}.get(result.rc, f"exit {result.rc}")
        status, detail = "failed", f"{why}: {parsed['summary'] or counts}"
    return Step("tests", status, result.seconds, budget, detail, parsed)


# ================================================================================================ step: codec


def step_codec(check: Check, budget: float) -> Step:
    results = check.work / "codec.json"
    results.unlink(missing_ok=True)
    plan = check.plan
    kodak = check.carry / "kodak"
    cmd = [check.python, Path(__file__).resolve(), "measure-codec", "--device", plan.device,
           "--size", f"{plan.codec_size[0]}x{plan.codec_size[1]}", "--batches", ",".join(map(str, plan.codec_batches)),
           "--cross", plan.cross_images, "--timing", ",".join(map(str, plan.codec_timing)), "--json", results]
    if kodak.is_dir():
        cmd += ["--images", kodak]
    result = run_command(check, cmd, budget, cwd=check.work)
    if not results.exists():
        status = "timeout" if result.timed_out else "failed"
        return Step("codec", status, result.seconds, budget, f"no results (exit {result.rc}); see log.txt")
    data = json.loads(results.read_text())
    problems = [f"{c['from']}->{c['to']}: {c['values_differ']} latent values and {c['tables_differ']} table "
                f"choices differ, {len(c['errors'])} files failed" for c in data["cross"]
                if c["values_differ"] or c["tables_differ"] or c["errors"]]
    best = codec_best(data)
    detail = ", ".join(f"{op} {_rate(v)} images/s" for op, v in best.items())
    detail += f" (best batch > 1); cross-device: {'; '.join(problems) if problems else 'identical latents and tables'}"
    return Step("codec", "ok" if result.rc == 0 and not problems else "failed", result.seconds, budget, detail, data)


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def codec_best(data: dict) -> dict:
    """The best images/s of each operation over the batches > 1 (over all batches when there is none)."""
    rows = [r for r in data["batches"] if r["batch"] > 1] or data["batches"]
    return {op: max(r[op]["images_per_s"] for r in rows) for op in CODEC_OPS}


def _timed(fn, device, warmup: int, repeats: int, min_time: float) -> tuple:
    """(the median seconds of ``fn()`` after ``warmup`` calls, of at least ``repeats`` calls and
    ``min_time`` seconds; what its last call returned)."""
    import torch

    result = None

    def once():
        nonlocal result
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

    first = [once() for _ in range(warmup)]
    times = []
    while len(times) < repeats or (sum(times) < min_time and len(times) < 50):
        times.append(once())
    times.sort()
    return {"median_s": times[len(times) // 2], "first_s": (first or times)[0], "repeats": len(times)}, result


def _images(folder, n: int, height: int, width: int):
    """uint8 [n, 3, H, W]: the PNGs of ``folder`` (cycled; portrait ones transposed; centre crops), or
    synthetic smooth images when ``folder`` is None."""
    import numpy as np
    import torch

    if folder is None:
        g = torch.Generator().manual_seed(0)
        low = torch.rand(n, 3, max(height // 32, 2), max(width // 32, 2), generator=g)
        x = torch.nn.functional.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
        return ((x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1) * 255).round().to(torch.uint8)
    from PIL import Image

    paths = sorted(Path(folder).glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"--images {folder}: no PNG images")
    out = []
    for i in range(n):
        with Image.open(paths[i % len(paths)]) as img:
            a = np.asarray(img.convert("RGB"))
        if a.shape[0] > a.shape[1]:
            a = a.transpose(1, 0, 2)
        if a.shape[0] < height or a.shape[1] < width:
            raise ValueError(f"{paths[i % len(paths)]}: {a.shape[1]} x {a.shape[0]} is smaller than {width} x {height}")
        top, left = (a.shape[0] - height) // 2, (a.shape[1] - width) // 2
        out.append(torch.from_numpy(np.ascontiguousarray(a[top:top + height, left:left + width])).permute(2, 0, 1))
    return torch.stack(out)


def cross_device(encoder, decoder, x) -> tuple:
    """Files of the images ``x`` encoded by ``encoder``, read by ``decoder`` (a codec on another
    device): how many latents (values, hyper-latents) and table choices differ from the encoder's,
    and how far the decoded pixels are from the encoder's own decoding. Also the encoder's latents."""
    import torch

    from fastae.codec import CodecError
    from fastae.codec.api import MAX_PIXELS

    with torch.inference_mode():
        latents, index = encoder._encode(x.to(encoder.device), encoder.quality)
        files = [encoder._pack(latents, index, i, x.shape[1], 8) for i in range(x.shape[0])]
        reference = encoder.decode(latents).cpu()
    out = {"from": encoder.device.type, "to": decoder.device.type, "images": x.shape[0], "latents": 0,
           "values_differ": 0, "side_differ": 0, "tables": 0, "tables_differ": 0, "pixels": 0, "pixels_differ": 0,
           "max_pixel_diff": 0, "bytes": sum(map(len, files)), "errors": []}
    for i, data in enumerate(files):
        try:
            _, got, y_hat = decoder._read(data, MAX_PIXELS)
        except CodecError as e:
            out["errors"].append(f"image {i}: {e}")
            continue
        want = latents.values[i:i + 1].cpu()
        out["latents"] += want.numel()
        out["values_differ"] += int((got.values.cpu() != want).sum())
        with torch.inference_mode():
            if got.side is not None:
                out["side_differ"] += int((got.side.cpu() != latents.side[i:i + 1].cpu()).sum())
                _, scales, _ = decoder.layout.parameters(got.side, lambda means, scales: got.values)
                chosen = decoder.layout.gaussian.index(scales).cpu()
                out["tables"] += chosen.numel()
                out["tables_differ"] += int((chosen != index[i:i + 1].cpu()).sum())
            pixels = decoder._synthesize(y_hat, got.quality, got.height, got.width, torch.uint8).cpu()
        diff = (pixels.int() - reference[i:i + 1].int()).abs()
        out["pixels"] += diff.numel()
        out["pixels_differ"] += int((diff > 0).sum())
        out["max_pixel_diff"] = max(out["max_pixel_diff"], int(diff.max()))
    return out, latents


def measure_codec(device: str, size: tuple, batches: tuple, cross: int, timing: tuple, images=None) -> dict:
    """The codec step's measurements (runs in its own process: ``gpu_check.py measure-codec``)."""
    import torch

    import fastae

    dev = torch.device(device)
    codec = fastae.load_codec(device=device)
    height, width = size
    x = _images(images, max(max(batches), cross), height, width)
    out = {"device": device, "model": codec.model_id, "quality": codec.quality, "height": height, "width": width,
           "images": f"{images} (centre crops)" if images else "synthetic", "batches": [], "cross": []}
    for batch in batches:
        xb = x[:batch].contiguous()
        on_device = xb.to(dev)
        row = {"batch": batch}
        row["encode"], latents = _timed(lambda: codec.encode(on_device), dev, *timing)
        row["decode"], _ = _timed(lambda: codec.decode(latents), dev, *timing)
        row["compress_batch"], files = _timed(lambda: codec.compress_batch(xb), dev, *timing)
        row["decompress_batch"], _ = _timed(lambda: codec.decompress_batch(files), dev, *timing)
        for op in CODEC_OPS:
            row[op]["images_per_s"] = batch / row[op]["median_s"]
        row["bpp"] = 8 * sum(map(len, files)) / (batch * height * width)
        out["batches"].append(row)
    if dev.type == "cpu":  # a dry run: one direction is the other
        out["cross"] = [cross_device(codec, codec, x[:cross])[0]]
        out["encoders_differ"], out["encoders_latents"] = 0, 0
        return out
    cpu = fastae.load_codec(device="cpu")
    here, lat_here = cross_device(codec, cpu, x[:cross])
    there, lat_there = cross_device(cpu, codec, x[:cross])
    out["cross"] = [here, there]
    # Not a requirement (the analysis transform is float): how often the two devices' encoders agree.
    out["encoders_differ"] = int((lat_here.values.cpu() != lat_there.values.cpu()).sum())
    out["encoders_latents"] = lat_here.values.numel()
    return out


def codec_main(argv) -> int:
    p = argparse.ArgumentParser(prog="gpu_check.py measure-codec", description=measure_codec.__doc__)
    p.add_argument("--device", required=True)
    p.add_argument("--size", required=True, help="HxW")
    p.add_argument("--batches", required=True, help="comma list")
    p.add_argument("--cross", type=int, required=True, help="images encoded on each device for the cross-device check")
    p.add_argument("--timing", required=True, help="warm-up calls, timed calls (at least), seconds (at least)")
    p.add_argument("--images", help="a folder of PNGs (default: synthetic images)")
    p.add_argument("--json", required=True)
    a = p.parse_args(argv)
    height, width = (int(v) for v in a.size.split("x"))
    warmup, repeats, min_time = a.timing.split(",")
    result = measure_codec(a.device, (height, width), tuple(int(b) for b in a.batches.split(",")), a.cross,
                           (int(warmup), int(repeats), float(min_time)), a.images)
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    for row in result["batches"]:
        print(f"batch {row['batch']:3d}: " + ", ".join(
            f"{op} {_rate(row[op]['images_per_s'])} images/s" for op in CODEC_OPS))
    for c in result["cross"]:
        print(f"{c['from']} -> {c['to']}: {c['values_differ']} of {c['latents']} latent values, "
              f"{c['tables_differ']} of {c['tables']} table choices differ; pixels: {c['pixels_differ']} differ, "
              f"max {c['max_pixel_diff']}; {len(c['errors'])} files failed")
    return 0


# ================================================================================================ step: bench


def bench_file(check: Check, suite: str) -> Path:
    return check.out / f"{check.stamp}-{suite}.json"


def step_bench(check: Check, budget: float) -> Step:
    t0 = time.monotonic()
    deadline = t0 + budget
    parts = []
    for part in check.plan.bench:
        left = deadline - time.monotonic()
        entry = {"suite": part.suite, "options": list(part.options), "leaves_out": part.leaves_out, "file": None,
                 "seconds": 0.0}
        if left < 10:
            parts.append({**entry, "status": "dropped", "detail": f"no time left ({left:.0f} s)"})
            continue
        timeout = min(part.budget, left)
        output = bench_file(check, part.suite)
        output.unlink(missing_ok=True)
        cmd = [check.python, "-m", "fastae.cli", "bench", "--suite", part.suite, "--device", check.plan.device,
               "--no-progress", "--output", output, *part.options]
        result = run_command(check, cmd, timeout, cwd=check.work)
        entry["seconds"] = result.seconds
        if not output.exists():
            status = "timeout" if result.timed_out else "failed"
            parts.append({**entry, "status": status,
                          "detail": f"killed at {timeout:.0f} s" if result.timed_out else f"exit {result.rc}"})
            continue
        run = json.loads(output.read_text())
        errors = [r for r in run["rows"] if r.get("error")]
        entry.update(file=output.name, rows=len(run["rows"]), errors=len(errors), targets=run.get("targets"),
                     error_rows=[f"{r['case']} [{r['impl']}]: {r['error']}" for r in errors[:10]])
        parts.append({**entry, "status": "ok" if result.rc == 0 and not errors else "failed",
                      "detail": f"{len(run['rows'])} rows, {len(errors)} failed"})
    ok = sum(p["status"] == "ok" for p in parts)
    status = "ok" if ok == len(parts) else ("failed" if ok == 0 else "partial")
    detail = "; ".join(f"{p['suite']} {p['status']}" for p in parts)
    return Step("bench", status, time.monotonic() - t0, budget, detail, {"parts": parts})


# ================================================================================================ summary


def judge_targets(check: Check) -> list:
    """Each target of issue 21: met / missed / not measured, with the measured numbers."""
    rows_by_suite = {}
    for part in next((s.data["parts"] for s in check.steps if s.name == "bench" and s.data), []):
        if part.get("file"):
            run = json.loads((check.out / part["file"]).read_text())
            rows_by_suite[part["suite"]] = [r for r in run["rows"] if r.get("target")]
    out = []
    for suite, text in SUITE_TARGETS.items():
        out.append(_judge_rows(text, rows_by_suite.get(suite), suite))
    codec = next((s for s in check.steps if s.name == "codec" and s.data), None)
    if codec is None or check.plan.device != "cuda" or (codec.data["height"], codec.data["width"]) != (512, 768):
        out.append({"target": CODEC_TARGET, "status": "not measured",
                    "measured": "needs the codec step on CUDA at Kodak size"})
    else:
        best = codec_best(codec.data)
        met = best["encode"] >= CODEC_TARGET_IMAGES_S and best["decode"] >= CODEC_TARGET_IMAGES_S
        out.append({"target": CODEC_TARGET, "status": "met" if met else "missed",
                    "measured": f"encode {_rate(best['encode'])}, decode {_rate(best['decode'])} images/s (best "
                                f"batch > 1; compress_batch {_rate(best['compress_batch'])}, decompress_batch "
                                f"{_rate(best['decompress_batch'])})"})
    return out


def _judge_rows(text, rows, suite) -> dict:
    """A target judged over ``rows`` (fastae's rows of a suite that carry it; None: no results):
    missed when a row missed it, met when every row met it, incomplete when some rows failed."""
    if rows is None:
        return {"target": text, "status": "not measured", "measured": f"no {suite} bench results"}
    if not rows:
        return {"target": text, "status": "not measured", "measured": "no row was judged (targets are judged on CUDA)"}
    met = sum(r["met"] is True for r in rows)
    missed = sum(r["met"] is False for r in rows)
    lowest = []
    for key, unit in (("ratio_vs_eager", "x eager"), ("ratio_vs_compile", "x compile"), ("frac_of_peak", " of peak")):
        measured = [r for r in rows if r.get(key) is not None]
        if measured:
            worst = min(measured, key=lambda r: r[key])
            value = f"{100 * worst[key]:.0f}%" if key == "frac_of_peak" else f"{worst[key]:.2f}"
            lowest.append(f"{value}{unit} ({worst['case']}, {worst['impl']})")
    rates = [r for r in rows if (r.get("rates") or {}).get("images/s")]
    if rates:
        worst = min(rates, key=lambda r: r["rates"]["images/s"])
        lowest.append(f"{worst['rates']['images/s']:.0f} images/s ({worst['case']})")
    status = "missed" if missed else "met" if met == len(rows) else "incomplete" if met else "not measured"
    return {"target": text, "status": status,
            "measured": f"{met} of {len(rows)} rows met" + (f"; lowest: {'; '.join(lowest)}" if lowest else "")}


def summary_json(check: Check) -> dict:
    return {
        "schema": "fastae-gpu-check/1",
        "mode": "dry run (CPU)" if check.dry_run else "GPU",
        "device": check.plan.device,
        "stamp": check.stamp,
        "elapsed_s": time.monotonic() - check.started,
        "budget_s": check.plan.total,
        "environment": check.probe,
        "fastae": check.fastae,
        "steps": [{"name": s.name, "status": s.status, "seconds": round(s.seconds, 1), "budget": s.budget,
                   "detail": s.detail, "data": s.data} for s in check.steps],
        "targets": judge_targets(check),
        "files": sorted(p.name for p in check.out.iterdir()),
    }


def summary_markdown(check: Check, data: dict) -> str:
    env = data["environment"]
    fastae = check.fastae.get("how", "?") + (f", {check.fastae['wheel']}" if check.fastae.get("wheel") else "")
    if check.fastae.get("carried_from"):
        fastae += f" (carried from commit {check.fastae['carried_from'][:12]})"
    lines = [f"# fastae GPU check: {env.get('name') or 'no GPU'}, {data['stamp'][-10:]} ({data['mode']})", "",
             f"torch {env.get('torch')} (CUDA {env.get('cuda')}), triton {env.get('triton')}, driver "
             f"{env.get('driver')}, Python {env.get('python')}, {env.get('cpus')} CPUs; tree "
             f"{env.get('commit') or 'not a git checkout'}; fastae: {fastae}. {data['elapsed_s']:.0f} s in all "
             f"(budget {data['budget_s']:.0f} s).", "",
             "| step | status | time | budget | result |", "|---|---|---|---|---|"]
    for s in data["steps"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} s | {s['budget']:.0f} s | "
                     f"{s['detail'].replace('|', '/')} |")
    lines += ["", "## Targets (issue 21)", "", "| target | status | measured |", "|---|---|---|"]
    lines += [f"| {t['target']} | **{t['status']}** | {t['measured'].replace('|', '/')} |" for t in data["targets"]]
    steps = {s["name"]: s for s in data["steps"]}
    codec = steps.get("codec", {}).get("data")
    if codec:
        lines += ["", f"## Codec on {codec['device']}: {codec['model']} q{codec['quality']}, "
                      f"{codec['height']}x{codec['width']}, {codec['images']}", "",
                  "| batch | encode | decode | compress_batch | decompress_batch | bpp |", "|---|---|---|---|---|---|"]
        for r in codec["batches"]:
            rates = [f"{_rate(r[op]['images_per_s'])}/s" for op in CODEC_OPS]
            lines.append(f"| {r['batch']} | {' | '.join(rates)} | {r['bpp']:.3f} |")
        lines.append("")
        for c in codec["cross"]:
            lines.append(f"- encoded on {c['from']}, decoded on {c['to']}: {c['images']} images, "
                         f"{c['values_differ']} of {c['latents']} latent values and {c['tables_differ']} of "
                         f"{c['tables']} table choices differ ({c['side_differ']} hyper-latents); pixels: "
                         f"{c['pixels_differ']} of {c['pixels']} differ, by at most {c['max_pixel_diff']}"
                         + (f"; FAILED: {'; '.join(c['errors'][:3])}" if c["errors"] else ""))
        if codec["encoders_latents"]:
            lines.append(f"- the two devices' encoders (float analysis) gave different values for "
                         f"{codec['encoders_differ']} of {codec['encoders_latents']} latents of the same images")
    bench = steps.get("bench", {}).get("data", {}).get("parts")
    if bench:
        lines += ["", "## Bench runs", "", "| suite | status | time | file | left out |", "|---|---|---|---|---|"]
        for p in bench:
            left = p["leaves_out"] if p["status"] == "ok" else f"everything ({p['detail']})"
            lines.append(f"| {p['suite']} | {p['status']} | {p['seconds']:.0f} s | {p['file'] or '-'} | {left} |")
        lines += [f"- {p['suite']}: {p['errors']} rows failed: {'; '.join(p['error_rows'][:3])}"
                  for p in bench if p.get("errors")]
    tests = steps.get("tests", {}).get("data", {})
    if tests.get("failed"):
        lines += ["", f"## Failed tests ({len(tests['failed'])}; log.txt has each one's output)", ""]
        lines += [f"- `{n}`" for n in tests["failed"][:25]] + (["- ..."] if len(tests["failed"]) > 25 else [])
    lines += ["", f"Files in {check.out}: {', '.join(data['files'])}."]
    return "\n".join(lines) + "\n"


def write_summary(check: Check) -> str:
    (check.out / "summary.md").touch()
    (check.out / "summary.json").touch()
    data = summary_json(check)
    text = summary_markdown(check, data)
    (check.out / "summary.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (check.out / "summary.md").write_text(text)
    return text


# ================================================================================================ the check

STEP_FUNCTIONS = {"install": step_install, "info": step_info, "tests": step_tests, "codec": step_codec,
                  "bench": step_bench}


def budget_table(check: Check, skip) -> str:
    plan = check.plan
    wheel = carried_wheel(check.carry) if check.carry.is_dir() else None
    kodak = sorted((check.carry / "kodak").glob("*.png")) if (check.carry / "kodak").is_dir() else []
    does = {
        "install": (f"{wheel.name if wheel else 'no carried wheel'} from {check.carry} (a build here: up to "
                    f"{plan.budgets['build']:.0f} s more)") if check.install else "the tree as it is, staged",
        "info": "fastae info --check",
        "tests": "pytest " + " ".join(plan.pytest_args),
        "codec": (f"{len(kodak)} carried images" if kodak else "synthetic images") +
                 f" at {plan.codec_size[0]}x{plan.codec_size[1]}, batches {', '.join(map(str, plan.codec_batches))}; "
                 f"cross-device decoding of {plan.cross_images}",
        "bench": ", ".join(f"{p.suite} ({p.budget:.0f} s)" for p in plan.bench) + f", in what is left of "
                                                                                    f"{plan.total:.0f} s",
    }
    lines = [f"fastae GPU check on {plan.device}{' (dry run)' if check.dry_run else ''}: {len(STEPS) - len(skip)} "
             f"steps in {plan.total:.0f} s (a build in place adds its time; never past {HARD_LIMIT_S} s)",
             f"  {'step':<8} {'budget':>8}  does"]
    for name in STEPS:
        budget = "skipped" if name in skip and name != "install" else f"{plan.budgets[name]:.0f} s"
        lines.append(f"  {name:<8} {budget:>8}  {does[name]}")
    lines.append(f"  output: {check.out}")
    return "\n".join(lines)


def make_plan(args) -> Plan:
    """The GPU plan or the dry run's, with the budgets and bench runs the options change."""
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    budgets = dict(plan.budgets)
    for item in args.step_budget:
        name, _, seconds = item.partition("=")
        if name not in budgets or not seconds.replace(".", "", 1).isdigit():
            raise SystemExit(f"gpu_check: --step-budget {item!r}: expected STEP=SECONDS with STEP one of "
                             f"{', '.join(budgets)}")
        budgets[name] = float(seconds)
    plan = replace(plan, budgets=budgets, total=args.budget or plan.total)
    if args.bench_part:
        parts = tuple(_bench_part(item, budgets["bench"]) for item in args.bench_part)
        if len({p.suite for p in parts}) < len(parts):
            raise SystemExit("gpu_check: --bench-part names a suite twice; each suite's runs write one file")
        plan = replace(plan, bench=parts)
    return plan


def run_check(args) -> int:
    plan = make_plan(args)
    out = Path(args.out) if args.out else (Path(os.environ["OUT"]) / "gpu-check" if os.environ.get("OUT")
                                           else Path(tempfile.mkdtemp(prefix="fastae-gpu-check-")))
    out.mkdir(parents=True, exist_ok=True)
    stale = [p.name for p in out.iterdir()]
    if stale:
        raise SystemExit(f"gpu_check: the output folder {out} is not empty ({', '.join(stale[:5])}); "
                         "name an empty or new one with --out")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="fastae-gpu-check-work-"))
    work.mkdir(parents=True, exist_ok=True)
    # The same steps from a shell or from the tests (whose conftest sets TRITON_INTERPRET on a CPU).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "TRITON_INTERPRET")}
    env.update(PYTHONUNBUFFERED="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    if plan.device == "cuda":
        env["TRITON_PRINT_AUTOTUNING"] = "1"  # log.txt then shows each autotuning's time and the config it chose
    started = time.monotonic()
    skip = set(args.skip)
    check = Check(plan, out.resolve(), work.resolve(), Path(args.carry).resolve(), args.dry_run,
                  (args.install or not args.dry_run) and "install" not in skip, started, started + plan.total, env)
    check.log.touch()
    check.probe = probe(check)
    if plan.device == "cuda" and not check.probe.get("gpu"):
        raise SystemExit(f"gpu_check: no CUDA device here (torch {check.probe.get('torch')}: "
                         f"{check.probe.get('torch_error', 'torch.cuda.is_available() is False')}); "
                         "on a machine without a GPU run --dry-run")
    check.stamp = f"{device_tag(check.probe, plan.device)}-{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}"
    say(budget_table(check, skip))
    for name in STEPS:
        if name in skip and name != "install":  # a skipped install still stages the tree
            check.steps.append(Step(name, "skipped", detail="--skip"))
            continue
        budget = plan.budgets[name] if name == "install" else min(plan.budgets[name], check.left())
        if budget < 10:
            check.steps.append(Step(name, "dropped", budget=max(budget, 0), detail="no time left in the budget"))
            continue
        say(f"\n[{time.monotonic() - started:5.0f} s] {name}: up to {budget:.0f} s")
        try:
            step = STEP_FUNCTIONS[name](check, budget)
        except Exception as e:  # noqa: BLE001  (a broken step is a result; the next steps still run)
            step = Step(name, "failed", detail=f"gpu_check error: {type(e).__name__}: {e}")
            if name == "install":
                stage_tree(check, None)
        check.steps.append(step)
        say(f"[{time.monotonic() - started:5.0f} s] {name}: {step.status} in {step.seconds:.0f} s: {step.detail}")
        write_summary(check)
    text = write_summary(check)
    files = sorted(check.out.iterdir())
    if len(files) > MAX_OUTPUT_FILES:
        say(f"gpu_check: {len(files)} files in {check.out}; the device tool returns {MAX_OUTPUT_FILES}")
    say("\n" + text)
    return 0 if all(s.status in ("ok", "skipped") for s in check.steps) else 1


# ================================================================================================ --prepare


def tree_size(repo: Path = REPO) -> int:
    """Bytes of what the device tool sends of the repository: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum((repo / os.fsdecode(name)).stat().st_size for name in listed
               if name and (repo / os.fsdecode(name)).is_file())


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def ensure_torch_venv(venv: Path, torch_version: str) -> tuple:
    """(the python of ``venv``, its torch version, its CUDA version): torch ``torch_version`` with CUDA
    and what a build needs, installed on first use (torch's CUDA wheels are several GB)."""
    python = venv / "bin" / "python"
    query = "import torch, setuptools; print(torch.__version__, torch.version.cuda, setuptools.__version__)"
    have = subprocess.run([str(python), "-c", query], capture_output=True, text=True) if python.exists() else None
    if have is None or have.returncode != 0 or not have.stdout.startswith(torch_version):
        if not python.exists():
            say(f"making {venv} (torch {torch_version} with CUDA: several GB)")
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # setuptools>=77 reads pyproject's license string; torch 2.11 wants setuptools<82.
        subprocess.run([str(python), "-m", "pip", "install", f"torch=={torch_version}", "setuptools>=77,<82", "wheel",
                        "ninja", "numpy"], check=True)
        have = subprocess.run([str(python), "-c", query], capture_output=True, text=True, check=True)
    version, cuda, _ = have.stdout.split()
    if cuda == "None":
        raise SystemExit(f"gpu_check --prepare: torch {version} in {venv} is a CPU build; the GPU machine's is CUDA "
                         f"13: install the CUDA build there (pip install torch=={torch_version} from PyPI is CUDA 13)")
    say(f"torch {version} (CUDA {cuda}) in {venv}")
    return str(python), version, cuda


def download_wheels(dest: Path, names) -> list:
    """cp312 manylinux wheels of ``names`` (without their requirements: the GPU machine has those)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                             "manylinux2014_x86_64", "manylinux1_x86_64")]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--python-version=3.12", "--implementation=cp", *platforms, "-d", str(dest), *names], check=True)
    return sorted(p.name for p in dest.glob("*.whl"))


def kodak_folder(given) -> Path:
    """``given``, or the first shared/data/kodak in a folder above the repository (../shared beside
    a checkout, ../../shared beside a worktree)."""
    if given:
        return Path(given)
    found = next((d / "shared" / "data" / "kodak" for d in REPO.parents if (d / "shared" / "data" / "kodak").is_dir()),
                 None)
    if found is None:
        raise SystemExit(f"gpu_check --prepare: no shared/data/kodak above {REPO}; name the Kodak folder with --kodak")
    return found


def build_carried_wheel(python: str, carry: Path, arch: str, jobs: int, torch_version: str) -> tuple:
    """Build the CUDA wheel into ``carry`` (replacing any other), check what it records and write
    carry.json; (the wheel, its build record)."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    built_from = native_hash()  # before the build: the sources it compiles
    with tempfile.TemporaryDirectory(prefix="fastae-prepare-") as tmp:
        t0 = time.monotonic()
        say(f"building the CUDA wheel (TORCH_CUDA_ARCH_LIST={arch}, MAX_JOBS={jobs}): many minutes on 2 cores")
        wheel = build_wheel(python, Path(tmp) / "dist", Path(tmp), arch, jobs)
        if wheel is None:
            raise SystemExit("gpu_check --prepare: the wheel build failed (its output is above)")
        info = wheel_build_info(wheel)
        problems = [f"{key} {info.get(key)!r}, expected {want}" for key, want, ok in (
            ("torch", torch_version, str(info.get("torch", "")).startswith(torch_version)),
            ("cuda", "13.x", str(info.get("cuda", "")).startswith("13.")),
            ("cuda_arch_list", arch, info.get("cuda_arch_list") == arch)) if not ok]
        if problems:
            raise SystemExit(f"gpu_check --prepare: {wheel.name} records {'; '.join(problems)}")
        for old in carry.glob("fastae-*.whl"):
            old.unlink()
        wheel = Path(shutil.copy2(wheel, carry / wheel.name))
        say(f"built {wheel.name} in {time.monotonic() - t0:.0f} s: {info}")
    (carry / "carry.json").write_text(json.dumps({"commit": commit.strip() or None, "native_hash": built_from,
                                                  "wheel": wheel.name, "build_info": info}, indent=1) + "\n")
    return wheel, info


def prepare(args) -> int:
    carry = Path(args.carry).resolve()
    carry.mkdir(parents=True, exist_ok=True)
    source = kodak_folder(args.kodak)
    missing = [name for name in KODAK_IMAGES if not (source / name).is_file()]
    if missing:
        raise SystemExit(f"gpu_check --prepare: {source} lacks {', '.join(missing)} (--kodak names the Kodak folder)")
    python, torch_version, torch_cuda = ensure_torch_venv(Path(args.torch_venv), args.torch)
    manifest = json.loads((carry / "carry.json").read_text()) if (carry / "carry.json").exists() else {}
    wheel = carried_wheel(carry)
    verdict, why = wheel_verdict(wheel, manifest, torch_version, torch_cuda)
    if args.rebuild or verdict != "wheel" or manifest.get("build_info", {}).get("cuda_arch_list") != args.arch:
        say(f"the carried wheel will be (re)built: {'--rebuild' if args.rebuild else why}")
        wheel, info = build_carried_wheel(python, carry, args.arch, args.jobs, args.torch)
        manifest = json.loads((carry / "carry.json").read_text())
    else:
        say(f"{why}: not rebuilt (--rebuild to force)")
    wheels = download_wheels(carry / "wheels", CARRIED_DISTRIBUTIONS)
    kodak = carry / "kodak"
    shutil.rmtree(kodak, ignore_errors=True)
    kodak.mkdir()
    for name in KODAK_IMAGES:
        shutil.copyfile(source / name, kodak / name)
    manifest.update(wheels=wheels, kodak=list(KODAK_IMAGES),
                    prepared=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    (carry / "carry.json").write_text(json.dumps(manifest, indent=1) + "\n")
    carried, tree = folder_size(carry), tree_size()
    say(f"\n{carry}: {carried / 2**20:.1f} MiB ({wheel.name} {wheel.stat().st_size / 2**20:.1f} MiB; "
        f"{', '.join(wheels)}; {len(KODAK_IMAGES)} Kodak images from {source})")
    say(f"working tree {tree / 2**20:.1f} MiB + carry {carried / 2**20:.1f} MiB = {(tree + carried) / 2**20:.1f} MiB "
        f"of the device tool's {CARRY_LIMIT_MB} MiB")
    if tree + carried > CARRY_LIMIT_MB * 2**20:
        raise SystemExit(f"gpu_check --prepare: {(tree + carried) / 2**20:.1f} MiB is over the {CARRY_LIMIT_MB} MiB "
                         "the device tool carries")
    if not carry.is_relative_to(REPO):
        say(f"note: {carry} is outside {REPO}: the device tool carries only paths inside the repository")
    return 0


# ================================================================================================ CLI


def _bench_part(item: str, budget: float) -> BenchPart:
    """``SUITE=OPTIONS`` (--bench-part) as a BenchPart."""
    suite, _, options = item.partition("=")
    if suite not in SUITE_TARGETS or not options.strip():
        raise SystemExit(f"gpu_check: --bench-part {item!r}: expected SUITE=OPTIONS with SUITE one of "
                         f"{', '.join(SUITE_TARGETS)}, e.g. \"ops=--quick --cases fwd+bwd\"")
    return BenchPart(suite, tuple(shlex.split(options)), budget, f"what `{options.strip()}` leaves out")


def _steps(text):
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in STEPS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown step(s) {', '.join(bad)}; expected some of {', '.join(STEPS)}")
    return names


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["measure-codec"]:
        return codec_main(argv[1:])
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="See docs/gpu-runs.md.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    mode.add_argument("--prepare", action="store_true", help="on the CPU machine: fill the carry folder")
    p.add_argument("--carry", default=str(REPO / "gpu-carry"), help="the carry folder (default gpu-carry/)")
    p.add_argument("--out", help="output folder, empty or new (default $OUT/gpu-check when OUT is set, else a new "
                                 "temporary folder)")
    p.add_argument("--work", help="scratch folder (default: a new temporary folder)")
    p.add_argument("--install", action="store_true", help="--dry-run: run the install step too, into this "
                                                          "interpreter's environment (use a scratch venv)")
    p.add_argument("--skip", type=_steps, default=[], help=f"comma list of steps to leave out ({', '.join(STEPS)})")
    p.add_argument("--budget", type=float, help="seconds for the whole check (default: GPU 330, dry run 600)")
    p.add_argument("--step-budget", action="append", default=[], metavar="STEP=SECONDS",
                   help="one step's timeout (repeatable; also build=SECONDS for a build in place)")
    p.add_argument("--bench-part", action="append", default=[], metavar="SUITE=OPTIONS",
                   help="instead of the plan's bench runs, `fastae bench --suite SUITE OPTIONS` (repeatable; one "
                        "per suite: each writes the suite's file), e.g. \"ops=--quick --cases fwd+bwd\"")
    p.add_argument("--torch-venv", default="/work/venv-cu211", help="--prepare: the venv with the GPU machine's torch")
    p.add_argument("--torch", default="2.11.0", help="--prepare: the GPU machine's torch version")
    p.add_argument("--arch", default="9.0", help="--prepare: TORCH_CUDA_ARCH_LIST (9.0: H100, H200)")
    p.add_argument("--jobs", type=int, default=2, help="--prepare: MAX_JOBS of the build")
    p.add_argument("--kodak", help="--prepare: the Kodak folder to take the images from (default: "
                                   "shared/data/kodak in a folder above the repository)")
    p.add_argument("--rebuild", action="store_true", help="--prepare: build the wheel even when the carried one "
                                                          "is up to date")
    args = p.parse_args(argv)
    if args.prepare:
        return prepare(args)
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
