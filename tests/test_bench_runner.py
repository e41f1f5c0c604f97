"""fastae.bench's cases and runner: rows and their ratios, targets, the codec suite's cases, and
the bench/ pytest-benchmark adapter read back by the report. Speeds are never asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastae.bench import report
from fastae.bench.cases import Case, Notes, ratio_target
from fastae.bench.runner import add_ratios, build_cases, judge, make_row, run_case
from fastae.bench.timing import Settings
from tests.test_bench_cli import bench

ROOT = Path(__file__).resolve().parents[1]
in_checkout = pytest.mark.skipif(not (ROOT / "bench").is_dir(), reason="bench/ is not here (an sdist, not a checkout)")


def _stats(t):
    return {"median_s": t, "q1_s": t, "q3_s": t, "iqr_s": 0.0, "min_s": t, "repeats": 5, "first_s": t}


def test_ratios_come_from_the_cases_own_baselines_and_targets_only_judge_fastae_on_cuda():
    case = Case("ops", "linear_act relu fwd+bwd 4096x784->128 float32", ("fastae-cuda", "eager", "compile"),
                setup=None, dtype="float32", flops=1e9,
                target=ratio_target("≥1.25x eager, ≥1.0x compile", eager=1.25, compile=1.0))
    pk = {"matmul_tflops": {"float32": 1.0}, "copy_gbps": 100.0}
    rows = [make_row(case, "fastae-cuda", _stats(0.002), pk), make_row(case, "eager", _stats(0.003), pk),
            make_row(case, "compile", _stats(0.0018), pk)]
    add_ratios(rows)
    assert rows[0]["ratio_vs_eager"] == pytest.approx(1.5) and rows[0]["ratio_vs_compile"] == pytest.approx(0.9)
    assert rows[1]["ratio_vs_eager"] == 1.0 and rows[0]["ratio_vs_addmm_activation"] is None
    assert rows[0]["tflops"] == pytest.approx(0.5) and rows[0]["frac_of_peak"] == pytest.approx(0.5)
    judge(case, rows, "cpu")
    assert all(r["target"] is None and r["met"] is None for r in rows)  # targets are GPU targets
    judge(case, rows, "cuda")
    assert rows[0]["target"] == "≥1.25x eager, ≥1.0x compile" and rows[0]["met"] is False  # 0.9x compile
    assert rows[1]["target"] is None and rows[2]["met"] is None  # baselines are not judged


@in_checkout
def test_a_row_has_every_field_of_the_schema():
    """The results JSON's row fields (schema fastae-bench/1), as stored runs have them."""
    stored = json.loads((ROOT / "bench" / "results" / "codec-bench-cpu-2026-11-24.json").read_text())["rows"][0]
    row = make_row(Case("losses", "x", ("eager",), setup=None, bytes=1e6), "eager", _stats(0.001), None)
    assert list(row) == list(stored)
    assert row["gbps"] == pytest.approx(1.0) and row["frac_of_peak"] is None  # no peaks measured


def test_codec_suite_without_a_shipped_model_still_measures_the_entropy_coder(tmp_path, monkeypatch):
    from fastae.codec import model_file

    monkeypatch.setattr(model_file, "WEIGHTS_DIR", tmp_path)  # an install whose weights/ folder is empty
    notes = Notes()
    cases = build_cases(["codec"], "cpu", quick=True, notes=notes)
    assert [c.name for c in cases] == ["entropy coder encode 160x1536 symbols", "entropy coder decode 160x1536 symbols",
                                       "entropy coder encode 245760x1 symbols", "entropy coder decode 245760x1 symbols"]
    assert any("no shipped codec model" in n for n in notes)
    for case in cases[1::2]:  # decoding, per channel and per latent: the symbols came back at setup
        rows = run_case(case, "cpu", Settings(warmup=1, min_time=0.01, min_repeats=2))
        for r in rows:
            assert r["error"] is None and r["rates"]["Msymbols/s"] > 0, r
            assert 0 < r["extra"]["bits_per_symbol"] < 16
    fastae_bits = {r["impl"]: r["extra"]["bits_per_symbol"]
                   for r in run_case(cases[0], "cpu", Settings(warmup=1, min_time=0.01, min_repeats=2))}
    if "constriction" in fastae_bits:  # the same tables: the same rate within a few bytes
        assert fastae_bits["constriction"] == pytest.approx(fastae_bits["fastae-rans"], abs=0.01)


@pytest.mark.parametrize("kind", ["factorized", "hyperprior"])
def test_codec_suite_with_a_codec_file(tmp_path, kind):
    from fastae.codec.model_file import export_codec
    from fastae.models.codec import CODEC_MODELS

    model = CODEC_MODELS[kind](N=8, M=8, lambdas=(0.01, 0.1))
    weights = export_codec(model, tmp_path / "tiny.safetensors", model_id="tiny")
    out = tmp_path / "codec.json"
    assert bench(["--quick", "--device", "cpu", "--suite", "codec", "--codec-weights", str(weights),
                  "--cases", "compress batch 2", "--min-time", "0.01", "--no-progress", "--no-peaks",
                  "--output", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    from fastae._device import cpu_has_bf16

    impls = ["fastae-cpu", "fastae-cpu-float32"] if cpu_has_bf16() else ["fastae-cpu"]  # auto, and the fp32 path
    assert [(r["case"], r["impl"]) for r in rows] == [(f"codec {op} batch 2 256x384 q2", impl)
                                                       for op in ("compress", "decompress") for impl in impls]
    for r in rows:  # the batched methods reproduce Codec.compress / decompress, or the row says so
        assert r["error"] is None
        assert r["extra"]["bpp"] > 0
        assert r["rates"]["images/s"] == pytest.approx(2 / (r["median_ms"] / 1e3))
        assert r["rates"]["MB/s"] == pytest.approx(r["rates"]["images/s"] * 256 * 384 * 3 / 1e6)
    # images that are not there: the rows say why and the run fails
    assert bench(["--quick", "--device", "cpu", "--suite", "codec", "--codec-weights", str(weights),
                  "--images", str(tmp_path / "none"), "--cases", "compress batch 2", "--min-time", "0.01",
                  "--no-progress", "--no-peaks"]) == 1


@in_checkout
def test_pytest_bench_adapter_rows_read_back_by_the_report(tmp_path):
    """`pytest bench/test_losses.py --benchmark-json`: pytest-benchmark times the cases of the losses
    suite, and the report reads its JSON as rows with the case's names and figures."""
    out = tmp_path / "pb.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FASTAE_BENCH_QUICK": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "bench/test_losses.py",
                           "--benchmark-only", "-k", "mse and (eager or fastae)", "--benchmark-min-rounds=2",
                           f"--benchmark-json={out}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    raw = {b["extra_info"]["impl"]: b for b in json.loads(out.read_text())["benchmarks"]}
    run = report.load_run(out)
    assert run["source"] == "pytest-benchmark" and run["device"]["type"] == "cpu" and run["suites"] == ["losses"]
    rows = {r["impl"]: r for r in run["rows"]}
    assert set(rows) == set(raw) and "eager" in rows and len(rows) >= 2
    for impl, r in rows.items():
        median = raw[impl]["stats"]["median"]
        assert r["case"] == "reconstruction_loss mse fwd+bwd 1024x1024 float32" and r["suite"] == "losses"
        assert r["median_ms"] == pytest.approx(median * 1e3)
        assert r["gbps"] == pytest.approx(3 * 2**20 * 4 / median / 1e9)
        assert r["ratio_vs_eager"] == pytest.approx(raw["eager"]["stats"]["median"] / median)
    assert "reconstruction_loss mse" in report.format_table(run)


def test_adapter_params_skip_with_the_reason_when_no_case_matches():
    from fastae.bench import adapter

    (param,) = adapter.params("losses", match="no such case", device="cpu")
    assert param.values == (None, None) and "no losses case matches 'no such case'" in param.marks[0].kwargs["reason"]
    cases = adapter.params("train", match="mlp-ae", device="cpu", quick=True)
    assert [p.id for p in cases] == [f"{i}-mlp-ae_train_step_batch_256_float32"
                                     for i in ("fastae", "fastae+compile", "eager", "compile")]


def test_entropy_coder_cases_code_the_symbols_they_time():
    """The coder's input: symbols within each table's size, and the per-latent layout is the same
    symbols with a table index each."""
    from fastae.bench.codec import coder_data

    symbols, cdfs, index = coder_data()
    sizes = (cdfs < 65536).sum(1)
    assert symbols.shape == (160, 1536) and (symbols >= 0).all() and (symbols < sizes[:, None]).all()
    assert np.array_equal(index, np.arange(160))


def test_codec_suite_times_the_classic_codecs_of_the_same_image(tmp_path):
    """Batch 1 compress / decompress rows: fastae beside WebP (and AVIF, JPEG XL where Pillow has
    them), each with the bits per pixel of what it wrote for the same image."""
    import io

    import numpy as np
    from PIL import Image

    from fastae.bench import codec as bench_codec
    from fastae.codec import load_codec
    from fastae.codec.model_file import export_codec
    from fastae.models.codec import CODEC_MODELS

    model = CODEC_MODELS["factorized"](N=8, M=8, lambdas=(0.01, 0.1))
    weights = export_codec(model, tmp_path / "tiny.safetensors", model_id="tiny")
    out = tmp_path / "codec.json"
    assert bench(["--quick", "--device", "cpu", "--suite", "codec", "--codec-weights", str(weights),
                  "--cases", "press batch 1", "--min-time", "0.01", "--no-progress", "--no-peaks",
                  "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["case"].split()[1], r["impl"]): r for r in result["rows"]}
    available = [n for n in bench_codec.CLASSIC if bench_codec._reference_missing(n) is None]
    assert "webp" in available
    image = bench_codec._synthetic_images(1, 256, 384)[0]
    rgb = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    for name in available:
        for op in ("compress", "decompress"):
            assert rows[(op, name)]["error"] is None
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=bench_codec._FORMATS[name], **bench_codec.CLASSIC[name])
        assert rows[("compress", name)]["extra"]["bpp"] == pytest.approx(8 * len(buf.getvalue()) / (256 * 384))
    fastae_file = load_codec(quality=2, weights=weights).compress(rgb)
    assert rows[("compress", "fastae-cpu")]["extra"]["bpp"] == pytest.approx(8 * len(fastae_file) / (256 * 384))
    assert any("classic codecs" in n for n in result["notes"])
