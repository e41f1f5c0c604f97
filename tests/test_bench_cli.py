"""`fastae bench` (fastae/bench/cli.py) on a few tiny cases: the rows and their ratios, the JSON,
the table and the chart. Speeds are never asserted."""

import argparse
import json

import pytest
import torch

import fastae
from fastae.bench.cli import add_parser


def bench(argv):
    """Run `fastae bench ARGV` through add_parser, as fastae.cli would."""
    parser = argparse.ArgumentParser(prog="fastae")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *argv])
    args.argv = ["bench", *argv]
    return args.func(args)


def test_cli_runs_tiny_cases_writes_json_table_and_plot(tmp_path, capsys):
    out, plot = tmp_path / "r.json", tmp_path / "speedups.png"
    cases = ["linear_act relu fwd 256x784->128", "linear_act relu fwd+bwd 256x784->128",
             "reconstruction_loss mse fwd+bwd 1024x1024", "mlp-ae train step batch 256"]
    argv = ["--quick", "--device", "cpu", "--suite", "ops,losses,train", "--min-time", "0.01", "--no-progress",
            "--output", str(out), "--plot", str(plot)] + [a for c in cases for a in ("--cases", c)]
    assert bench(argv) == 0
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
    assert any("interpreter" in n for n in result["notes"]) or not fastae.ops.available_backends()["triton"][0]
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
        bench(["--suite", "nope", "--no-progress"])
    with pytest.raises(ValueError, match="no case"):
        bench(["--quick", "--device", "cpu", "--suite", "ops", "--cases", "no such case", "--no-progress",
               "--no-peaks"])
    with pytest.raises(ValueError, match="unknown dtype"):
        bench(["--quick", "--device", "cpu", "--dtype", "float64", "--no-progress", "--no-peaks"])
    with pytest.raises(ValueError, match="unknown activation"):
        bench(["--quick", "--device", "cpu", "--activations", "swish", "--no-progress", "--no-peaks"])
    with pytest.raises(ValueError, match="no suite named"):
        bench(["--suite", "", "--no-progress"])
    with pytest.raises(ValueError, match="the codec suite has no eager rows"):
        bench(["--suite", "codec", "--plot", "p.png", "--no-progress"])


def test_fastae_cli_has_the_bench_command(capsys):
    from fastae import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0 and "--suite" in capsys.readouterr().out
    assert cli.main(["bench", "--suite", "nope", "--no-progress"]) == 2  # a user error: one line, no traceback
    err = capsys.readouterr().err
    assert "unknown suite 'nope'" in err and "Traceback" not in err
