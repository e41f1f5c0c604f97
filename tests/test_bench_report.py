"""fastae.bench.report and fastae.bench.plot: the stored results stay readable, the README section
is written between its markers and nowhere else, and the chart has what a reader needs (ratio
ticks, the 1.0x line, a value on every bar, the legend outside the data)."""

import json
from pathlib import Path

import pytest

from fastae.bench import report
from fastae.bench.cases import SCHEMA
from fastae.bench.plot import ratio_ticks, speedup_figure

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
stored = pytest.mark.skipif(not RESULTS.is_dir(), reason="bench/results is not here (an sdist, not a checkout)")


def _run(ts, device_type, suites, rows, name="NVIDIA H200"):
    return {"schema": SCHEMA, "device": {"type": device_type, "name": name, "driver": "570.1", "cuda": "12.8",
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


# ---------------------------------------------------------------------------------------------- stored results


@stored
def test_every_stored_benchmark_json_is_read_and_shown():
    """Each `fastae bench` and pytest-benchmark JSON in bench/results becomes rows the table,
    the markdown and the chart show; the other JSON there (codec RD results, provenance records)
    is refused with a message that says what was expected."""
    runs = []
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("schema") == SCHEMA or "benchmarks" in data:
            run = report.load_run(path)
            expected = len(data["rows"] if "rows" in data else data["benchmarks"])
            assert len(run["rows"]) == expected and run["rows"], path.name
            table, md = report.format_table(run), report.markdown([run])
            assert all(r["case"] in table and r["case"] in md for r in run["rows"]), path.name
            runs.append(run)
        else:
            with pytest.raises(ValueError, match="not a benchmark run"):
                report.load_run(path)
    assert {Path(r["_path"]).name for r in runs} >= {"codec-bench-cpu-2026-11-24.json", "cpu-2core-2026-11-24.json",
                                                     "entropy-coder-cpu-2026-11-24.json"}


@stored
def test_a_stored_pytest_benchmark_json_reads_as_rows_with_ratios_to_its_baselines():
    """cpu-2core-2026-11-24.json (written by the bench/ files before they were adapters): each
    group is a case, torch-eager / torch-compile are the baselines eager / compile, and a ratio is
    the baseline's median over the row's from the same file."""
    data = json.loads((RESULTS / "cpu-2core-2026-11-24.json").read_text())
    raw = {(b["group"], b["params"]["impl"]): b["stats"]["median"] for b in data["benchmarks"]}
    run = report.load_run(RESULTS / "cpu-2core-2026-11-24.json")
    rows = {(r["case"], r["impl"]): r for r in run["rows"]}
    assert run["device"] == {"type": "cpu", "name": "AMD EPYC", "cpu": "AMD EPYC", "python": "3.11.7"}
    fwd = rows[("fwd relu 4096x784->128 float32", "fastae-cpu")]
    assert fwd["suite"] == "ops" and fwd["dtype"] == "float32" and fwd["tflops"] > 0
    assert fwd["ratio_vs_eager"] == pytest.approx(raw[("fwd relu 4096x784->128 float32", "eager")]
                                                  / raw[("fwd relu 4096x784->128 float32", "fastae-cpu")])
    step = rows[("mlp-ae train step batch 4096 float32", "fastae+compile")]
    group = "mlp-ae train step batch 4096 float32"
    assert step["suite"] == "train" and step["rates"]["samples/s"] > 0
    assert step["ratio_vs_compile"] == pytest.approx(raw[(group, "torch-compile")] / raw[(group, "fastae-compile")])
    coder = report.load_run(RESULTS / "entropy-coder-cpu-2026-11-24.json")["rows"]
    assert sorted((r["case"], r["impl"]) for r in coder if "encode" in r["case"]) == [
        ("entropy coder encode", "constriction"), ("entropy coder encode per-channel", "fastae-rans"),
        ("entropy coder encode per-latent", "fastae-rans")]  # the layout, which the group does not name
    assert all(0 < r["extra"]["bits_per_symbol"] < 16 and r["rates"]["Msymbols/s"] > 0 for r in coder)
    peak = report.load_run(RESULTS / "cpu-2core-2026-11-24-peak-memory.json")["rows"]
    assert {r["impl"]: round(r["extra"]["peak_mb"]) for r in peak} == {"eager": 518, "fastae": 201}


@stored
def test_report_cli_prints_tables_markdown_and_refuses_other_json(tmp_path, capsys):
    assert report.main([str(RESULTS / "codec-bench-cpu-2026-11-24.json")]) == 0
    out = capsys.readouterr().out
    assert "== codec ==" in out and "entropy coder encode 160x1536 symbols" in out
    assert report.main([str(RESULTS / "cpu-2core-2026-11-24.json"), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| ops | fwd relu 256x784->128 float32 | eager |" in out and "No GPU run" in out
    assert report.main([str(RESULTS / "fastae-hyperprior-v1-provenance.json")]) == 2
    assert "not a benchmark run" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing.json")]) == 2
    assert "cannot read it" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- README


def test_readme_section_from_the_newest_gpu_run_between_the_markers(tmp_path):
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
    (results / "rd.json").write_text(json.dumps({"fastae": {}, "bd_rate": {}}))
    head = "# fastae\r\nintro line\n\n## Benchmarks\n\n<!-- bench-table:start -->\n"
    tail = "\n<!-- bench-table:end -->\n\nafter the table\n"
    readme = tmp_path / "README.md"
    readme.write_bytes((head + "old table\n| x |" + tail).encode())

    assert report.main(["--results", str(results), "--readme", str(readme)]) == 0
    text = readme.read_bytes().decode()
    assert text.startswith(head) and text.endswith(tail)  # byte for byte outside the markers
    section = text[len(head):-len(tail)]
    assert "old table" not in section and "NVIDIA H200" in section and "2026-12-02" in section
    assert "h200-new.json" in section and "h200-old.json" in section
    assert "python -m fastae.bench.report --readme README.md" in section
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
    assert report.main(["--results", str(results), "--readme", str(readme)]) == 0
    assert readme.read_bytes().decode() == text


def test_summary_section_gives_each_suites_geometric_mean_and_the_targeted_rows(tmp_path):
    run = _run("2026-12-02T10:00:00+00:00", "cuda", ["ops", "train"], [
        _r("ops", "a", "fastae-cuda", 1.0, 2.0, "≥1.25x eager", True),
        _r("ops", "a", "eager", 2.0, 1.0),
        _r("ops", "b", "fastae-cuda", 1.0, 0.5),
        _r("train", "step", "fastae", 1.0, 1.5)])
    run["rows"][0]["ratio_vs_compile"] = 4.0
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- bench-table:start -->\n<!-- bench-table:end -->\n")
    assert report.main([str(path), "--summary", "--readme", str(readme)]) == 0
    section = readme.read_text()
    assert "python -m fastae.bench.report --summary --readme README.md" in section and "<details>" not in section
    # ops: ratios 2.0 and 0.5 -> geometric mean 1.00x, one of two faster; compile only for one row.
    assert "| ops | fastae-cuda | 2 | 1.00x (0.50-2.00x) | 1 of 2 | 4.00x (4.00-4.00x) | 1 of 1 |" in section
    assert "| train | fastae | 1 | 1.50x (1.50-1.50x) | 1 of 1 |  |  |" in section
    assert "| eager |" not in section.split("Targets:")[0]  # baselines are not summarized
    assert "≥1.25x eager" in section  # the targeted row is listed


def test_readme_section_errors(tmp_path, capsys):
    (tmp_path / "cpu.json").write_text(json.dumps(_run("2026-12-03T10:00:00+00:00", "cpu", ["ops"],
                                                       [_r("ops", "cpu row", "eager", 1.0)], name="AMD EPYC")))
    assert report.main(["--results", str(tmp_path)]) == 1  # no GPU run
    assert "no GPU run" in capsys.readouterr().err
    assert report.main([str(tmp_path / "cpu.json"), "--markdown"]) == 0  # a named run of any device
    assert "No GPU run" in capsys.readouterr().out
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    assert report.main([str(tmp_path / "cpu.json"), "--readme", str(readme)]) == 2
    assert "expected exactly one <!-- bench-table:start -->" in capsys.readouterr().err
    assert readme.read_text() == "no markers here\n"


# ---------------------------------------------------------------------------------------------- chart


@pytest.mark.parametrize("lo, hi", [(0.12, 16.0), (0.6, 1.7), (0.9, 1.1), (0.03, 300.0), (1 / 1.6, 1.6)])
def test_ratio_ticks_are_few_ascending_within_the_axis_and_include_one(lo, hi):
    ticks = ratio_ticks(lo, hi)
    assert 1 in ticks and ticks == sorted(ticks) and all(lo <= t <= hi for t in ticks)
    assert 3 <= len(ticks) <= 9 or (hi / lo < 1.5 and len(ticks) >= 1)


@stored
def test_chart_of_a_stored_run_labels_every_bar_and_keeps_the_legend_outside():
    import matplotlib.pyplot as plt

    run = report.load_run(RESULTS / "cpu-2core-2026-11-24.json")
    fig = speedup_figure(run)
    try:
        fig.canvas.draw()
        axes = fig.axes
        assert [ax.get_title(loc="left").split(":")[0] for ax in axes] == ["ops", "losses", "train"]
        plotted = [r for r in run["rows"] if r["impl"] != "eager" and r.get("ratio_vs_eager")]
        labels = [t.get_text() for ax in axes for t in ax.texts]
        assert sorted(labels) == sorted(f"{r['ratio_vs_eager']:.2f}x" for r in plotted)  # a value on every bar
        for ax in axes:
            ticks = [t.get_text() for t in ax.get_xticklabels()]
            assert "1x" in ticks and len(ticks) >= 4 and all(t.endswith("x") for t in ticks)
            assert any(line.get_xdata()[0] == 1.0 and line.get_linestyle() == "--" for line in ax.lines)  # 1.0x line
            names = [t.get_text() for t in ax.get_yticklabels()]
            assert names and all(n in {r["case"] for r in plotted} for n in names)
        legend = axes[0].get_legend()
        renderer = fig.canvas.get_renderer()
        assert legend.get_window_extent(renderer).x0 >= axes[0].get_window_extent(renderer).x1  # beside the data
        assert {t.get_text() for t in legend.get_texts()} >= {"fastae-cpu", "compile", "eager PyTorch (1.0x)"}
    finally:
        plt.close(fig)


@stored
def test_chart_needs_a_ratio_to_eager():
    run = report.load_run(RESULTS / "codec-bench-cpu-2026-11-24.json")  # codec rows: no eager baseline
    with pytest.raises(ValueError, match="no row has a ratio to eager"):
        speedup_figure(run)
