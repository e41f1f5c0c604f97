"""bench/gpu_check.py: its dry run end to end (so the GPU run cannot rot), and the decisions it
takes on the GPU machine: which fastae to run, what the tests printed, which targets were met."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
gc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gc)  # a script, not a package: loaded by path


def _run_dry(tmp_path, *options):
    from PIL import Image

    carry = tmp_path / "carry"
    (carry / "kodak").mkdir(parents=True)
    for name, size in (("a.png", (100, 70)), ("b.png", (70, 100))):  # a landscape and a portrait image
        Image.radial_gradient("L").resize(size).convert("RGB").save(carry / "kodak" / name)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OUT", None)
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out),
                          "--carry", str(carry), "--work", str(tmp_path / "work"), *options],
                         capture_output=True, text=True, env=env, timeout=600)
    return run, out


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_what_the_device_tool_returns(tmp_path):
    run, out = _run_dry(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    stamp = json.loads((out / "summary.json").read_text())["stamp"]
    assert re.fullmatch(r"cpu-\d{4}-\d\d-\d\d", stamp)
    assert files == sorted(["summary.md", "summary.json", "log.txt", f"{stamp}-ops.json", f"{stamp}-codec.json"])
    assert len(files) <= gc.MAX_OUTPUT_FILES and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files)

    summary = json.loads((out / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == list(gc.STEPS)
    assert {n: s["status"] for n, s in steps.items()} == {"install": "skipped", "info": "ok", "tests": "ok",
                                                          "codec": "ok", "bench": "ok"}
    assert summary["fastae"]["build"]["loaded"] and summary["fastae"]["file"].startswith(str(tmp_path / "work"))
    assert steps["info"]["data"]["cases"] > 0 and steps["info"]["data"]["failed"] == []
    counts = steps["tests"]["data"]["counts"]
    assert counts["passed"] > 0 and "failed" not in counts and counts["skipped"] >= 1  # the hand-marked cuda test

    codec = steps["codec"]["data"]
    assert codec["images"].startswith(str(tmp_path / "carry" / "kodak"))
    assert [r["batch"] for r in codec["batches"]] == list(gc.DRY_PLAN.codec_batches)
    for row in codec["batches"]:
        assert row["bpp"] > 0
        for op in gc.CODEC_OPS:
            assert row[op]["images_per_s"] == pytest.approx(row["batch"] / row[op]["median_s"])
    [cross] = codec["cross"]
    assert cross["images"] == gc.DRY_PLAN.cross_images and cross["latents"] > 0 and cross["tables"] == cross["latents"]
    assert (cross["values_differ"], cross["side_differ"], cross["tables_differ"], cross["errors"]) == (0, 0, 0, [])
    assert cross["pixels"] == 3 * 64 * 96 and cross["max_pixel_diff"] == 0

    parts = steps["bench"]["data"]["parts"]
    assert [p["suite"] for p in parts] == [p.suite for p in gc.DRY_PLAN.bench]
    assert all(p["status"] == "ok" for p in parts)
    for p in parts:
        result = json.loads((out / p["file"]).read_text())
        assert result["schema"] == "fastae-bench/1" and result["device"]["type"] == "cpu"
        assert result["suites"] == [p["suite"]] and result["rows"] and not any(r["error"] for r in result["rows"])
    assert [t["status"] for t in summary["targets"]] == ["not measured"] * (len(gc.SUITE_TARGETS) + 1)

    text = (out / "summary.md").read_text()
    for name in gc.STEPS:
        assert f"| {name} | {steps[name]['status']} |" in text
    for target in [*gc.SUITE_TARGETS.values(), gc.CODEC_TARGET]:
        assert f"| {target} | **not measured** |" in text
    log = (out / "log.txt").read_text()
    assert "fastae.cli info --check" in log and "measure-codec" in log and "===== exit 0" in log
    assert "fastae GPU check on cpu (dry run)" in run.stdout and text in run.stdout


def test_a_full_output_folder_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.json").write_text("{}")
    with pytest.raises(SystemExit, match="output folder .* is not empty"):
        gc.main(["--dry-run", "--out", str(tmp_path / "out")])


def test_a_bad_step_budget_is_named():
    with pytest.raises(SystemExit, match="--step-budget 'tset=5': expected STEP=SECONDS"):
        gc.main(["--dry-run", "--step-budget", "tset=5"])


def test_a_command_past_its_timeout_is_killed_with_what_it_started_and_its_output_kept(tmp_path):
    check = gc.Check(gc.DRY_PLAN, tmp_path, tmp_path, tmp_path, True, False, time.monotonic(), time.monotonic() + 60,
                     dict(os.environ))
    result = gc.run_command(check, ["sh", "-c", "sleep 60 & echo child $!; sleep 60"], 3)
    assert result.timed_out and result.rc == -signal.SIGTERM and result.seconds < 20
    child = int(re.search(r"^child (\d+)$", result.output, re.M).group(1))
    stat = Path(f"/proc/{child}/stat")

    def alive():  # gone, or a zombie not yet reaped, is not alive
        try:
            return stat.read_text().split(")")[-1].split()[0] not in "ZX"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:  # a signalled process may take a moment to end under load
        time.sleep(0.1)
    assert not alive()
    assert "exit -15, killed at its timeout" in (tmp_path / "log.txt").read_text()


PLAIN = """\
tests/test_a.py::test_x[cuda-fp32] PASSED                                [ 33%]
tests/test_a.py::test_x[triton-a b] FAILED                               [ 66%]
tests/test_a.py::test_y SKIPPED (needs a CUDA device)                    [100%]
FAILED tests/test_a.py::test_x[triton-a b] - AssertionError
==================== 1 failed, 1 passed, 1 skipped in 3.21s ====================
"""

XDIST = """\
created: 16/16 workers
[gw3] [ 12%] PASSED tests/test_a.py::test_x[cuda-fp32]
[gw0] [ 25%] ERROR tests/test_a.py::test_z[triton]
[gw1] [ 37%] XFAIL tests/test_a.py::test_w
"""


def test_parse_pytest_counts_plain_and_xdist_output_also_when_cut_short():
    plain = gc.parse_pytest(PLAIN)
    assert plain["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert plain["failed"] == ["tests/test_a.py::test_x[triton-a b]"]
    assert plain["summary"] == "1 failed, 1 passed, 1 skipped"
    xdist = gc.parse_pytest(XDIST)  # killed before pytest's closing line
    assert xdist == {"counts": {"passed": 1, "error": 1, "xfail": 1}, "failed": ["tests/test_a.py::test_z[triton]"],
                     "summary": None}


def _fake_repo(root):
    (root / "fastae").mkdir(parents=True)
    (root / "fastae" / "__init__.py").write_text("__version__ = '0.1.0'\n")
    (root / "fastae" / "_buildtools.py").write_text("# rules\n")
    (root / "kernels").mkdir()
    (root / "kernels" / "__init__.py").write_text("# kernels\n")
    (root / "csrc").mkdir()
    (root / "csrc" / "ops.cpp").write_text("// ops\n")
    (root / "setup.py").write_text("# setup\n")
    return root


def _fake_wheel(path, repo, torch="2.11.0+cu130", cuda="13.0"):
    info = {"fastae": "0.1.0", "version": "0.1.0+cu130.torch2.11", "torch": torch, "cuda": cuda,
            "cuda_arch_list": "9.0", "cxx11_abi": True}
    with zipfile.ZipFile(path, "w") as z:
        for name, source in gc.package_files(repo).items():
            z.writestr(name, source.read_bytes())
        z.writestr("fastae/_build_info.py", f"BUILD_INFO = {info!r}\n")
        z.writestr("fastae/_C.abi3.so", b"\x7fELF")
        z.writestr("fastae-0.1.0+cu130.torch2.11.dist-info/METADATA", "Name: fastae\n")
    return path


def test_the_carried_wheel_is_installed_only_when_it_fits_the_torch_and_the_tree(tmp_path):
    repo = _fake_repo(tmp_path / "repo")
    wheel = _fake_wheel(tmp_path / "fastae-0.1.0+cu130.torch2.11-cp310-abi3-linux_x86_64.whl", repo)
    manifest = {"native_hash": gc.native_hash(repo)}
    assert gc.wheel_verdict(wheel, manifest, "2.11.0+cu130", "13.0", repo)[0] == "wheel"
    assert gc.wheel_verdict(wheel, manifest, "2.11.0", "13.2", repo)[0] == "wheel"  # same CUDA major
    assert gc.wheel_verdict(None, manifest, "2.11.0", "13.0", repo) == ("build", "no fastae wheel in the carry folder")
    verdict, why = gc.wheel_verdict(wheel, manifest, "2.13.0+cu130", "13.0", repo)
    assert verdict == "build" and "built for torch 2.11.0+cu130 but torch 2.13.0+cu130 is installed" in why
    assert gc.wheel_verdict(wheel, manifest, "2.11.0+cu128", "12.8", repo)[0] == "build"
    assert "no carry.json" in gc.wheel_verdict(wheel, {}, "2.11.0", "13.0", repo)[1]

    (repo / "kernels" / "loss.py").write_text("# a new kernel file\n")
    (repo / "fastae" / "__init__.py").write_text("__version__ = '0.1.0'  # changed\n")
    verdict, why = gc.wheel_verdict(wheel, manifest, "2.11.0", "13.0", repo)
    assert verdict == "extension" and "2 package file(s) changed" in why
    assert gc.wheel_differs(wheel, repo) == ["fastae/kernels/loss.py", "fastae/__init__.py"]
    (repo / "csrc" / "ops.cpp").write_text("// a fix\n")
    verdict, why = gc.wheel_verdict(wheel, manifest, "2.11.0", "13.0", repo)
    assert verdict == "build" and "csrc/ (or setup.py) changed" in why

    cpu_wheel = _fake_wheel(tmp_path / "cpu.whl", repo, cuda=None)
    assert "is a CPU build" in gc.wheel_verdict(cpu_wheel, {"native_hash": gc.native_hash(repo)}, "2.11.0", "13.0",
                                                repo)[1]


def test_native_hash_follows_the_compiled_sources_only(tmp_path):
    repo = _fake_repo(tmp_path / "repo")
    before = gc.native_hash(repo)
    (repo / "fastae" / "__init__.py").write_text("# python only\n")
    (repo / "csrc" / "__pycache__").mkdir()
    (repo / "csrc" / "ops.o.so").write_bytes(b"build output")
    assert gc.native_hash(repo) == before
    (repo / "setup.py").write_text("# another build\n")
    assert gc.native_hash(repo) != before


def _row(case, met, eager, compile_=None, frac=None, impl="fastae-triton"):
    return {"case": case, "impl": impl, "target": "≥1.25x eager, ≥1.0x compile", "met": met,
            "ratio_vs_eager": eager, "ratio_vs_compile": compile_, "frac_of_peak": frac, "rates": {}}


def test_targets_are_met_only_when_every_judged_row_is_and_name_the_worst_row():
    rows = [_row("a 4096", True, 1.5, 1.1), _row("b 4096", False, 1.1, 0.8, impl="fastae-cuda")]
    judged = gc._judge_rows("linear_act", rows, "ops")
    assert judged["status"] == "missed"
    assert judged["measured"] == ("1 of 2 rows met; lowest: 1.10x eager (b 4096, fastae-cuda); "
                                  "0.80x compile (b 4096, fastae-cuda)")
    assert gc._judge_rows("linear_act", rows[:1], "ops")["status"] == "met"
    assert gc._judge_rows("x", [_row("c", None, None)], "ops")["status"] == "not measured"  # the row failed
    assert gc._judge_rows("x", [rows[0], _row("c", None, None)], "ops")["status"] == "incomplete"
    assert gc._judge_rows("x", [], "ops")["status"] == "not measured"
    assert gc._judge_rows("x", None, "losses")["measured"] == "no losses bench results"
    losses = gc._judge_rows("losses", [_row("mse", True, 2.5, frac=0.91)], "losses")
    assert losses["measured"].endswith("2.50x eager (mse, fastae-triton); 91% of peak (mse, fastae-triton)")


def _codec_row(batch, per_image):
    return {"batch": batch, **{op: {"images_per_s": per_image * batch} for op in gc.CODEC_OPS}}


def test_codec_best_takes_the_batched_rows():
    row = _codec_row
    assert gc.codec_best({"batches": [row(1, 100), row(8, 60), row(32, 20)]})["encode"] == 640
    assert gc.codec_best({"batches": [row(1, 100)]})["decode"] == 100


def test_device_tag():
    assert gc.device_tag({"name": "NVIDIA H200"}, "cuda") == "h200"
    assert gc.device_tag({"name": "NVIDIA H100 80GB HBM3"}, "cuda") == "h100-80gb-hbm3"
    assert gc.device_tag({"name": "NVIDIA H200"}, "cpu") == gc.device_tag({}, "cuda") == "cpu"


PRETEND_GPU = """
import json, os
import pytest
import torch
torch.cuda.is_available = lambda: True  # before tests/conftest.py reads it


@pytest.hookimpl(hookwrapper=True)
def pytest_collection_modifyitems(items):
    backends = {i.nodeid: i.callspec.params.get("backend") if hasattr(i, "callspec") else None for i in items}
    yield  # conftest marks, then -m deselects
    with open(os.environ["FASTAE_COLLECTED"], "w") as f:
        json.dump({"all": backends, "selected": [i.nodeid for i in items]}, f)
"""


def _collect(tmp_path, files, pretend_gpu):
    plugin = PRETEND_GPU if pretend_gpu else PRETEND_GPU.replace("torch.cuda.is_available = lambda: True", "")
    (tmp_path / "pretend_gpu.py").write_text(plugin)
    dump = tmp_path / "collected.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "FASTAE_COLLECTED": str(dump)}
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "pretend_gpu", "-p",
                          "no:cacheprovider", "-m", "cuda", *files], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    found = json.loads(dump.read_text())
    return found["all"], set(found["selected"])


@pytest.mark.slow
def test_the_cuda_marker_selects_every_case_that_runs_on_cuda_and_nothing_else(tmp_path):
    by_hand = "tests/test_device.py::test_cuda_index_beyond_the_machine"
    collected, selected = _collect(tmp_path, ["tests/test_device.py", "tests/test_gaussian_kl.py"], pretend_gpu=True)
    on_cuda = {n for n, backend in collected.items() if backend in ("cuda", "triton")} | {by_hand}
    assert len(on_cuda) > 10 and "tests/test_device.py::test_cuda_without_a_gpu[cuda]" in collected
    assert selected == on_cuda
    # Without CUDA the triton cases run in the interpreter on the CPU: only the test marked by hand is left.
    assert _collect(tmp_path, ["tests/test_device.py"], pretend_gpu=False)[1] == {by_hand}
