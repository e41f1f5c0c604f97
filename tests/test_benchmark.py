"""`fastae bench` (fastae/benchmark.py) and bench/readme_table.py: the timing core, the rows and
their ratios, the JSON, the CLI on a few tiny cases, and the README section. Speeds themselves
are never asserted — only relations a noisy machine keeps."""

import argparse
import json
import time

import pytest
import torch

from fastae import benchmark as fb
from tests._util import bench_script


def _readme_table():
    return bench_script("readme_table")


def _bench(argv):
    """Run `fastae bench ARGV` through add_parser, as fastae.cli would."""
    parser = argparse.ArgumentParser(prog="fastae")
    fb.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *argv])
    args.argv = ["bench", *argv]
    return args.func(args)


# ---------------------------------------------------------------------------------------------- timing


def test_measure_times_a_known_sleep():
    m = fb.measure(lambda: time.sleep(0.01), "cpu", warmup=1, min_time=0.05, min_repeats=3)
    assert m["repeats"] >= 3
    assert 0.01 <= m["min_s"] <= m["q1_s"] <= m["median_s"] <= m["q3_s"]
    assert m["iqr_s"] == pytest.approx(m["q3_s"] - m["q1_s"])
    assert m["first_s"] >= 0.01


def test_measure_repeats_until_min_time_and_within_bounds():
    calls = []
    m = fb.measure(lambda: calls.append(1), "cpu", warmup=2, min_time=100.0, min_repeats=3, max_repeats=7)
    assert m["repeats"] == 7 and len(calls) == 2 + 7  # max_repeats caps a min_time it cannot reach
    m = fb.measure(lambda: None, "cpu", warmup=0, min_time=0.0, min_repeats=4)
    assert m["repeats"] == 4  # min_time reached at once: min_repeats still holds


def test_measure_a_larger_copy_takes_longer():
    small, big = torch.randn(2**18), torch.randn(2**24)
    small_out, big_out = torch.empty_like(small), torch.empty_like(big)
    # One thread: with two, a copy waits at the barrier for a thread another process has
    # preempted, and on a busy machine every size then takes one scheduler slice.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t_small = fb.measure(lambda: small_out.copy_(small), "cpu", min_time=0.02, min_repeats=5)["median_s"]
        t_big = fb.measure(lambda: big_out.copy_(big), "cpu", min_time=0.02, min_repeats=5)["median_s"]
    finally:
        torch.set_num_threads(threads)
    assert t_big > 4 * t_small  # 64x the bytes: holds on a loaded machine too


# ---------------------------------------------------------------------------------------------- rows


def test_ratios_come_from_the_cases_own_baselines_and_targets_only_judge_fastae_on_cuda():
    case = fb.Case("ops", "linear_act relu fwd+bwd 4096x784->128 float32", ("fastae-cuda", "eager", "compile"),
                   setup=None, dtype="float32", flops=1e9,
                   target=fb._ratio_target("≥1.25x eager, ≥1.0x compile", eager=1.25, compile=1.0))
    pk = {"matmul_tflops": {"float32": 1.0}, "copy_gbps": 100.0}
    stats = lambda t: {"median_s": t, "q1_s": t, "q3_s": t, "iqr_s": 0.0, "min_s": t, "repeats": 5,  # noqa: E731
                       "first_s": t}
    rows = [fb._row(case, "fastae-cuda", stats(0.002), pk, "cuda"), fb._row(case, "eager", stats(0.003), pk, "cuda"),
            fb._row(case, "compile", stats(0.0018), pk, "cuda")]
    fb._add_ratios(rows)
    assert rows[0]["ratio_vs_eager"] == pytest.approx(1.5) and rows[0]["ratio_vs_compile"] == pytest.approx(0.9)
    assert rows[1]["ratio_vs_eager"] == 1.0 and rows[0]["ratio_vs_addmm_activation"] is None
    assert rows[0]["tflops"] == pytest.approx(0.5) and rows[0]["frac_of_peak"] == pytest.approx(0.5)
    fb._judge(case, rows, "cpu")
    assert all(r["target"] is None and r["met"] is None for r in rows)  # targets are GPU targets
    fb._judge(case, rows, "cuda")
    assert rows[0]["target"] == "≥1.25x eager, ≥1.0x compile" and rows[0]["met"] is False  # 0.9x compile
    assert rows[1]["target"] is None and rows[2]["met"] is None  # baselines are not judged


def test_cli_runs_tiny_cases_writes_json_table_and_plot(tmp_path, capsys):
    out, plot = tmp_path / "r.json", tmp_path / "speedups.png"
    cases = ["linear_act relu fwd 256x784->128", "linear_act relu fwd+bwd 256x784->128",
             "reconstruction_loss mse fwd+bwd 1024x1024", "mlp-ae train step batch 256"]
    argv = ["--quick", "--device", "cpu", "--suite", "ops,losses,train", "--min-time", "0.01", "--no-progress",
            "--output", str(out), "--plot", str(plot)] + [a for c in cases for a in ("--cases", c)]
    assert _bench(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert {"schema", "device", "command", "timestamp", "peaks", "rows", "notes", "suites", "timing"} <= set(result)
    dev = result["device"]
    assert dev["type"] == "cpu" and dev["torch"] == torch.__version__ and dev["fastae"] and dev["threads"] >= 1
    assert {"name", "cpu", "driver", "cuda", "triton"} <= set(dev)
    assert result["command"].startswith("fastae bench --quick") and result["timestamp"].endswith("+00:00")
    assert result["peaks"]["matmul_tflops"]["float32"] > 0 and result["peaks"]["copy_gbps"] > 0
    rows = result["rows"]
    assert {r["case"].rsplit(" ", 1)[0] for r in rows} >= {"linear_act relu fwd 256x784->128",
                                                            "reconstruction_loss mse fwd+bwd 1024x1024"}
    assert all(r["error"] is None and r["median_ms"] > 0 and r["repeats"] >= 1 for r in rows), rows
    assert not any(r["impl"] == "fastae-triton" for r in rows)  # the interpreter is not a speed
    assert not any("compile" in r["impl"] for r in rows)  # --quick on the CPU
    assert any("interpreter" in n for n in result["notes"]) or not fb.fastae.ops.available_backends()["triton"][0]
    assert any("torch.compile rows" in n for n in result["notes"])
    by_case = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["impl"]] = r
    for case, impls in by_case.items():
        eager = impls["eager"]["median_ms"]
        for r in impls.values():
            assert r["ratio_vs_eager"] == pytest.approx(eager / r["median_ms"]), case
            assert r["target"] is None and r["met"] is None  # CPU: no target judged
    fwd = by_case["linear_act relu fwd 256x784->128 float32"]
    assert {"eager", "addmm_activation"} <= set(fwd) and any(i.startswith("fastae-") for i in fwd)
    assert fwd["eager"]["ratio_vs_addmm_activation"] == pytest.approx(
        fwd["addmm_activation"]["median_ms"] / fwd["eager"]["median_ms"])
    assert "addmm_activation" not in by_case["linear_act relu fwd+bwd 256x784->128 float32"]  # no backward
    loss = by_case["reconstruction_loss mse fwd+bwd 1024x1024 float32"]["eager"]
    assert loss["gbps"] == pytest.approx(3 * 2**20 * 4 / (loss["median_ms"] / 1e3) / 1e9)
    assert loss["frac_of_peak"] == pytest.approx(loss["gbps"] / result["peaks"]["copy_gbps"])
    train = by_case["mlp-ae train step batch 256 float32"]
    assert set(train) == {"fastae", "eager"}
    assert train["fastae"]["rates"]["samples/s"] == pytest.approx(256 / (train["fastae"]["median_ms"] / 1e3))
    assert "linear_act relu fwd 256x784->128 float32" in printed and "vs eager" in printed
    assert f"wrote {out}" in printed
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown suite"):
        _bench(["--suite", "nope", "--no-progress"])
    with pytest.raises(ValueError, match="no case"):
        _bench(["--quick", "--device", "cpu", "--suite", "ops", "--cases", "no such case", "--no-progress",
                "--no-peaks"])
    with pytest.raises(ValueError, match="unknown dtype"):
        _bench(["--quick", "--device", "cpu", "--dtype", "float64", "--no-progress", "--no-peaks"])
    with pytest.raises(ValueError, match="no suite named"):
        _bench(["--suite", "", "--no-progress"])
    with pytest.raises(ValueError, match="the codec suite has no eager rows"):
        _bench(["--suite", "codec", "--plot", "p.png", "--no-progress"])


def test_codec_suite_without_a_shipped_model_still_measures_the_entropy_coder(tmp_path, monkeypatch):
    from fastae.codec import image

    monkeypatch.setattr(image, "WEIGHTS_DIR", tmp_path)  # an install whose weights/ folder is empty
    notes = fb._Notes()
    cases = fb.build_cases(["codec"], "cpu", quick=True, notes=notes)
    assert [c.name.split(" ")[:3] for c in cases] == [["entropy", "coder", "encode"], ["entropy", "coder", "decode"]]
    assert any("no shipped codec model" in n for n in notes)
    rows = fb.run_case(cases[1], "cpu", fb.Settings(warmup=1, min_time=0.01, min_repeats=2))
    assert rows[0]["error"] is None and rows[0]["rates"]["Msymbols/s"] > 0
    assert 0 < rows[0]["extra"]["bits_per_symbol"] < 16


@pytest.mark.parametrize("kind", ["factorized", "hyperprior"])
def test_codec_suite_with_a_codec_file(tmp_path, kind):
    from fastae.codec.image import export_codec
    from fastae.models.codec import CODEC_MODELS

    model = CODEC_MODELS[kind](N=8, M=8, lambdas=(0.01, 0.1))
    weights = export_codec(model, tmp_path / "tiny.safetensors", model_id="tiny")
    out = tmp_path / "codec.json"
    assert _bench(["--quick", "--device", "cpu", "--suite", "codec", "--codec-weights", str(weights),
                   "--cases", "compress batch 2", "--min-time", "0.01", "--no-progress", "--no-peaks",
                   "--output", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["case"] for r in rows] == ["codec compress batch 2 256x384 q2", "codec decompress batch 2 256x384 q2"]
    for r in rows:  # the batched methods reproduce Codec.compress / decompress, or the row says so
        assert r["error"] is None and r["impl"] == "fastae-cpu"
        assert r["rates"]["images/s"] == pytest.approx(2 / (r["median_ms"] / 1e3))
        assert r["rates"]["MB/s"] == pytest.approx(r["rates"]["images/s"] * 256 * 384 * 3 / 1e6)
    # images that are not there: the rows say why and the run fails
    assert _bench(["--quick", "--device", "cpu", "--suite", "codec", "--codec-weights", str(weights),
                   "--images", str(tmp_path / "none"), "--cases", "compress batch 2", "--min-time", "0.01",
                   "--no-progress", "--no-peaks"]) == 1


# ---------------------------------------------------------------------------------------------- README table


def _run(ts, device_type, suites, rows, name="NVIDIA H200"):
    return {"schema": fb.SCHEMA, "device": {"type": device_type, "name": name, "driver": "570.1", "cuda": "12.8",
                                            "torch": "2.13.0", "triton": "3.9.0", "fastae": "0.1.0",
                                            "cpu": "Xeon", "threads": 16},
            "command": "fastae bench --device cuda", "timestamp": ts, "suites": suites, "quick": False,
            "peaks": {"matmul_tflops": {"float32": 51.2, "bfloat16": 700.0}, "matmul_n": 8192, "copy_gbps": 3900.0},
            "rows": rows, "notes": ["a note"]}


def _r(suite, case, impl, ms, eager=None, target=None, met=None, gbps=None):
    return {"suite": suite, "case": case, "impl": impl, "dtype": "float32", "median_ms": ms, "q1_ms": ms,
            "q3_ms": ms, "iqr_ms": 0.0, "spread_pct": 0.0, "repeats": 25, "first_call_ms": ms, "flops": None,
            "bytes": None, "tflops": None, "gbps": gbps, "frac_of_peak": None, "rates": {}, "extra": {},
            "ratio_vs_eager": eager, "ratio_vs_compile": None, "ratio_vs_addmm_activation": None,
            "target": target, "met": met, "error": None}


def test_readme_table_writes_the_newest_gpu_run_between_the_markers(tmp_path):
    rt = _readme_table()
    results = tmp_path / "results"
    results.mkdir()
    new = _run("2026-12-02T10:00:00+00:00", "cuda", ["ops", "losses"], [
        _r("ops", "linear_act relu fwd+bwd 4096x784->128 bfloat16", "fastae-cuda", 0.1, 1.5,
           "≥1.25x eager, ≥1.0x compile", True),
        _r("ops", "linear_act relu fwd+bwd 4096x784->128 bfloat16", "eager", 0.15, 1.0),
        _r("losses", "reconstruction_loss mse fwd+bwd 1024x1024 float32", "fastae-cuda", 0.01, 1.8,
           "≥2x eager, ≥85% of copy GB/s", False, gbps=3000.0)])
    old = _run("2026-12-01T10:00:00+00:00", "cuda", ["train", "ops"], [
        _r("train", "mlp-ae train step batch 4096 float32", "fastae", 1.0, 2.5, "≥2x eager", True),
        _r("ops", "stale ops row", "eager", 1.0)])
    cpu = _run("2026-12-03T10:00:00+00:00", "cpu", ["ops"], [_r("ops", "cpu row", "eager", 1.0)], name="AMD EPYC")
    other_gpu = _run("2026-11-30T10:00:00+00:00", "cuda", ["codec"], [_r("codec", "other gpu row", "fastae-cuda", 1.0)],
                     name="NVIDIA A100")
    for name, run in {"h200-new.json": new, "h200-old.json": old, "cpu.json": cpu, "a100.json": other_gpu}.items():
        (results / name).write_text(json.dumps(run))
    (results / "pytest-benchmark.json").write_text(json.dumps({"machine_info": {}, "benchmarks": []}))
    head = "# fastae\r\nintro line\n\n## Benchmarks\n\n<!-- bench-table:start -->\n"
    tail = "\n<!-- bench-table:end -->\n\nafter the table\n"
    readme = tmp_path / "README.md"
    readme.write_bytes((head + "old table\n| x |" + tail).encode())

    assert rt.main(["--results", str(results), "--write", str(readme)]) == 0
    text = readme.read_bytes().decode()
    assert text.startswith(head) and text.endswith(tail)  # byte for byte outside the markers
    section = text[len(head):-len(tail)]
    assert "old table" not in section and "NVIDIA H200" in section and "2026-12-02" in section
    assert "h200-new.json" in section and "h200-old.json" in section
    assert "linear_act relu fwd+bwd 4096x784->128 bfloat16" in section
    assert "mlp-ae train step batch 4096 float32" in section  # a suite the newest run lacks, from the older one
    assert "stale ops row" not in section and "cpu row" not in section and "other gpu row" not in section
    assert "**MISSED**" in section and "| met |" in section and "≥2x eager, ≥85% of copy GB/s" in section
    assert "2 met, 1 missed" in section
    targets, everything = section.split("<details>")
    def count(part):
        return sum(line.startswith("| ") and not line.startswith("| suite") for line in part.splitlines())

    assert count(targets) == 3 and count(everything) == 4  # every targeted row, then every row of the chosen runs

    # Written twice: the same file.
    assert rt.main(["--results", str(results), "--write", str(readme)]) == 0
    assert readme.read_bytes().decode() == text


def test_readme_table_errors(tmp_path, capsys):
    rt = _readme_table()
    (tmp_path / "cpu.json").write_text(json.dumps(_run("2026-12-03T10:00:00+00:00", "cpu", ["ops"],
                                                       [_r("ops", "cpu row", "eager", 1.0)], name="AMD EPYC")))
    assert rt.main(["--results", str(tmp_path)]) == 1  # no GPU run
    assert "no GPU run" in capsys.readouterr().err
    assert rt.main([str(tmp_path / "cpu.json")]) == 0  # a named run of any device
    assert "No GPU run" in capsys.readouterr().out
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    assert rt.main([str(tmp_path / "cpu.json"), "--write", str(readme)]) == 2
    assert readme.read_text() == "no markers here\n"
