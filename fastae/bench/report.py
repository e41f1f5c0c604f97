"""The report of benchmark runs: the console table ``fastae bench`` prints, the markdown table,
the README's benchmark section and the chart — from any results JSON of ``fastae bench --output``
(schema ``fastae-bench/1``) or of ``pytest bench --benchmark-json`` (read as the same rows).

    python -m fastae.bench.report bench/results/run.json             # the table
    python -m fastae.bench.report RUN.json --markdown                # markdown, every row
    python -m fastae.bench.report RUN.json --plot speedups.png       # the chart of ratios to eager
    python -m fastae.bench.report --readme README.md                 # the README section, newest GPU run
    python -m fastae.bench.report RUN.json --summary --readme README.md  # per-suite summary (the README's)

Without files, the runs are the newest CUDA run of ``fastae bench`` in ``--results`` (default
bench/results) and, for each suite it lacks, the newest older run on the same GPU that has it (a
full run may be split by ``--suite``). ``--readme`` replaces the text between
``<!-- bench-table:start -->`` and ``<!-- bench-table:end -->`` and leaves the rest of the file
byte for byte as it was.
"""

import argparse
import json
import re
import sys
from pathlib import Path

from fastae.bench.cases import BASELINES, SCHEMA, SUITES

START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
_CHECKOUT_RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
RESULTS = _CHECKOUT_RESULTS if _CHECKOUT_RESULTS.is_dir() else Path("bench") / "results"

# ---------------------------------------------------------------------------------------------- reading

# pytest-benchmark files written before the bench/ files were adapters over fastae.bench: their
# test names say the suite, and three impls had other names.
_OLD_SUITES = {"test_linear_act": "ops", "test_reconstruction_loss": "losses", "test_gaussian_kl": "losses",
               "test_linear_bce_loss": "losses", "test_mlp_ae_train_step": "train", "test_conv_ae_train_step": "train",
               "test_codec": "codec", "test_fastae_rans": "codec", "test_constriction": "codec"}
_OLD_IMPLS = {"torch-eager": "eager", "torch-compile": "compile", "fastae-compile": "fastae+compile"}
_FIGURES = {"suite", "case", "impl", "dtype", "device", "tflops_per_s", "GB_per_s", "peak_MB"}


def _param_text(value):
    return re.sub(r"^UNSERIALIZABLE\[(?:torch\.)?(.*)\]$", r"\1", str(value))


def _pytest_row(bench):
    """A results row from one pytest-benchmark entry: from its extra_info where the bench/ adapter
    wrote it, else from its group, params and test name."""
    info, params = bench.get("extra_info") or {}, bench.get("params") or {}
    case = info.get("case")
    if case is None:  # the group, plus any parameter it does not already name (the coder's layout)
        case = bench.get("group") or bench["name"]
        extra = [_param_text(v) for k, v in params.items() if k != "impl" and _param_text(v) not in case]
        case = " ".join([case, *extra])
    impl = info.get("impl") or _OLD_IMPLS.get(params.get("impl"), params.get("impl")) or bench["name"]
    dtype = info.get("dtype")
    if dtype is None and "dtype" in params:
        dtype = _param_text(params["dtype"])
    s = bench["stats"]
    t = s["median"]
    row = {"suite": info.get("suite") or _OLD_SUITES.get(bench["name"].split("[")[0], "other"), "case": case,
           "impl": impl, "dtype": dtype, "median_ms": t * 1e3, "q1_ms": s["q1"] * 1e3, "q3_ms": s["q3"] * 1e3,
           "iqr_ms": s["iqr"] * 1e3, "spread_pct": 100 * s["iqr"] / t if t else None, "repeats": s["rounds"],
           "first_call_ms": None, "flops": None, "bytes": None, "tflops": info.get("tflops_per_s"),
           "gbps": info.get("GB_per_s"), "frac_of_peak": None,
           "rates": {k.replace("_per_", "/"): v for k, v in info.items() if k not in _FIGURES and k.endswith("_per_s")},
           "extra": {k: v for k, v in info.items() if k not in _FIGURES and not k.endswith("_per_s")},
           **{f"ratio_vs_{b}": None for b in BASELINES}, "target": None, "met": None, "error": None}
    if "peak_MB" in info:
        row["extra"]["peak_mb"] = info["peak_MB"]
    return row


def _from_pytest_benchmark(data, path):
    from fastae.bench.runner import add_ratios

    rows = [_pytest_row(b) for b in data["benchmarks"]]
    for case in dict.fromkeys(r["case"] for r in rows):
        add_ratios([r for r in rows if r["case"] == case])
    machine = data.get("machine_info") or {}
    cpu = (machine.get("cpu") or {}).get("brand_raw") or machine.get("processor") or "CPU"
    gpus = {(b.get("extra_info") or {}).get("device") for b in data["benchmarks"]} - {None, "cpu"}
    gpu = " + ".join(sorted(gpus)) or None  # the adapter records a CUDA row's GPU; older files ran on the CPU
    commit = (data.get("commit_info") or {}).get("id")
    return {"schema": SCHEMA, "source": "pytest-benchmark",
            "device": {"type": "cuda" if gpu else "cpu", "name": gpu or cpu, "cpu": cpu,
                       "python": machine.get("python_version")},
            "command": "pytest bench --benchmark-json" + (f" (commit {commit[:10]})" if commit else ""),
            "timestamp": data.get("datetime", ""), "suites": [s for s in (*SUITES, "other") if any(
                r["suite"] == s for r in rows)], "peaks": None, "rows": rows,
            "notes": [f"read from the pytest-benchmark JSON {Path(path).name}: each row's median over its rounds; "
                      "ratios are to the baselines of the same group and file"]}


def load_run(path) -> dict:
    """The run in ``path`` as ``fastae bench --output`` writes it (a pytest-benchmark JSON is read
    as the same rows); ``_path`` names the file. ValueError when it is neither."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if isinstance(data, dict) and data.get("schema") == SCHEMA and "rows" in data and "device" in data:
        run = dict(data)
    elif isinstance(data, dict) and isinstance(data.get("benchmarks"), list) and "machine_info" in data:
        run = _from_pytest_benchmark(data, path)
    else:
        raise ValueError(f"{path}: not a benchmark run (expected a `fastae bench --output` JSON of schema {SCHEMA} "
                         "or a `pytest --benchmark-json` file)")
    run["_path"] = str(path)
    return run


def newest_gpu_runs(folder=RESULTS) -> list:
    """The newest CUDA run of ``fastae bench`` in ``folder``, then, for each suite it lacks, the
    newest older run on the same GPU that has it. [] when there is no CUDA run."""
    runs = []
    for p in sorted(Path(folder).glob("*.json")):
        try:
            run = load_run(p)
        except ValueError:  # codec RD results, provenance records: not benchmark runs
            continue
        if run.get("source") is None and run["device"].get("type") == "cuda":
            runs.append(run)
    runs.sort(key=lambda r: r["timestamp"], reverse=True)
    if not runs:
        return []
    chosen, covered = [runs[0]], set(runs[0]["suites"])
    for run in runs[1:]:
        missing = set(run["suites"]) - covered
        if run["device"].get("name") == runs[0]["device"].get("name") and missing:
            chosen.append(run)
            covered |= missing
    return chosen


# ---------------------------------------------------------------------------------------------- cells


def fmt_num(v, digits=3):
    if v is None:
        return ""
    if v == 0:
        return "0"
    if abs(v) >= 10**digits:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def _fmt_ratio(v):
    return "" if v is None else f"{v:.2f}x"


def _throughput(row):
    if row.get("tflops") is not None:
        return f"{row['tflops']:.3g} TFLOP/s"
    if row.get("gbps") is not None:
        return f"{row['gbps']:.3g} GB/s"
    return ""


def _rates(row):
    parts = [f"{fmt_num(v)} {unit}" for unit, v in (row.get("rates") or {}).items()]
    extra = row.get("extra") or {}
    if "peak_mb" in extra:
        parts.append(f"peak {extra['peak_mb']:.0f} MB")
    if "bpp" in extra:
        parts.append(f"{extra['bpp']:.3f} bpp")
    if "bits_per_symbol" in extra:
        parts.append(f"{extra['bits_per_symbol']:.2f} bits/symbol")
    return ", ".join(parts)


def _met(row):
    return {True: "met", False: "MISSED", None: "?" if row.get("target") else ""}[row.get("met")]


HEADER = ["case", "impl", "median ms", "spread", "achieved", "of peak", "vs eager", "vs compile", "vs addmm",
          "target", "met", "rate / notes"]
_NUMERIC = {2, 3, 4, 5, 6, 7, 8}


def row_cells(row) -> list:
    """One row's cells, as the console and markdown tables show them (``HEADER``'s columns)."""
    if row.get("median_ms") is None:
        return [row["case"], row["impl"], "", "", "", "", "", "", "", row.get("target") or "",
                "error" if row.get("target") else "", row.get("error") or ""]
    spread = "" if row.get("spread_pct") is None else f"±{row['spread_pct'] / 2:.1f}%"
    frac = "" if row.get("frac_of_peak") is None else f"{100 * row['frac_of_peak']:.0f}%"
    return [row["case"], row["impl"], f"{row['median_ms']:.4g}", spread, _throughput(row), frac,
            _fmt_ratio(row.get("ratio_vs_eager")), _fmt_ratio(row.get("ratio_vs_compile")),
            _fmt_ratio(row.get("ratio_vs_addmm_activation")), row.get("target") or "", _met(row), _rates(row)]


def _used_columns(cells):
    """The columns some row fills (case, impl and median always)."""
    return [i for i in range(len(HEADER)) if i < 3 or any(c[i] for c in cells)]


# ---------------------------------------------------------------------------------------------- tables


def format_table(result) -> str:
    """The readable fixed-width table ``fastae bench`` prints."""
    dev = result["device"]
    pk = result.get("peaks") or {}
    threads = f", {dev.get('threads')} threads" if dev.get("threads") else ""
    versions = f"; torch {dev['torch']}" if dev.get("torch") else ""
    cuda = f", CUDA {dev['cuda']}" if dev.get("type") == "cuda" and dev.get("cuda") else ""
    lines = [f"fastae bench on {dev['name']} ({dev['type']}{threads}{versions}{cuda}), {result['timestamp']}"]
    if pk:
        matmul = ", ".join(f"{v:.3g} TFLOP/s {k}" for k, v in pk["matmul_tflops"].items())
        lines.append(f"measured peaks: matmul {matmul}; copy {pk['copy_gbps']:.3g} GB/s")
    lines.append("spread: half the interquartile range, in % of the median; vs X: X's median / this row's (>1: faster)")
    for suite in result["suites"]:
        rows = [r for r in result["rows"] if r["suite"] == suite]
        if not rows:
            continue
        cells = [row_cells(r) for r in rows]
        used = _used_columns(cells)
        widths = {i: max(len(HEADER[i]), *(len(c[i]) for c in cells)) for i in used}
        fmt = lambda cs: "  ".join(cs[i].rjust(widths[i]) if i in _NUMERIC else cs[i].ljust(widths[i])  # noqa: E731
                                   for i in used).rstrip()
        lines += ["", f"== {suite} ==", fmt(HEADER), fmt(["-" * widths.get(i, 0) for i in range(len(HEADER))])]
        prev = None
        for r, c in zip(rows, cells):  # the case name once per case
            lines.append(fmt(c if r["case"] != prev else [""] + c[1:]))
            prev = r["case"]
    t = result.get("targets") or {}
    if any(t.values()):
        lines += ["", f"targets: {t['met']} met, {t['missed']} missed, {t['unknown']} unknown"]
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _md_cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows) -> list:
    """Markdown lines: a suite column, then the columns of ``HEADER`` that some row fills."""
    cells = [row_cells(r) for r in rows]
    for row, c in zip(rows, cells):
        if row.get("met") is False:
            c[HEADER.index("met")] = "**MISSED**"
    used = _used_columns(cells)
    lines = ["| suite | " + " | ".join(HEADER[i] for i in used) + " |", "|" + "---|" * (len(used) + 1)]
    for row, c in zip(rows, cells):
        lines.append("| " + " | ".join(_md_cell(x) for x in [row["suite"], *(c[i] for i in used)]) + " |")
    return lines


def _describe(run):
    d = run["device"]
    versions = ", ".join(f"{k} {d[k]}" for k in ("driver", "cuda", "torch", "triton", "fastae") if d.get(k))
    cpu = f"; CPU {d['cpu']}, {d.get('threads')} threads" if d.get("cpu") and d.get("threads") else ""
    peaks = run.get("peaks") or {}
    peak_text = ""
    if peaks:
        peak_text = (" Peaks measured in the same run: matmul " +
                     ", ".join(f"{fmt_num(v)} TFLOP/s {k}" for k, v in peaks["matmul_tflops"].items()) +
                     f"; copy {fmt_num(peaks['copy_gbps'])} GB/s.")
    return (f"**{d.get('name')}** ({versions}{cpu}), {run['timestamp'][:10]}: `{Path(run['_path']).name}`, "
            f"suites {', '.join(run['suites'])}{' (--quick)' if run.get('quick') else ''}, "
            f"`{run.get('command', '')}`.{peak_text}")


def _geomean(values):
    import math
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summary_table(rows) -> list:
    """Markdown lines: per suite and fastae implementation, how its rows compare with eager and
    torch.compile timed in the same run (geometric mean, range, rows faster)."""
    lines = ["| suite | impl | rows | vs eager: geomean (min-max) | faster than eager | "
             "vs compile: geomean (min-max) | faster than compile |", "|---|---|---|---|---|---|---|"]
    groups = {}
    for r in rows:
        if r["impl"].startswith("fastae") and r.get("median_ms") is not None:
            groups.setdefault((r["suite"], r["impl"]), []).append(r)
    for (suite, impl), group in groups.items():
        cells = [suite, impl, str(len(group))]
        for key in ("ratio_vs_eager", "ratio_vs_compile"):
            ratios = [r[key] for r in group if r.get(key)]
            if ratios:
                cells += [f"{_geomean(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}x)",
                          f"{sum(v > 1 for v in ratios)} of {len(ratios)}"]
            else:
                cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(runs, summary: bool = False, target: str = "README.md") -> str:
    """The README section for ``runs`` (newest first; each suite's rows come from the first run that
    has it). ``summary``: per suite the geometric mean of fastae's ratios and the rows with a
    target, instead of every row."""
    if not runs:
        raise ValueError("no runs")
    rows, taken = [], set()
    for run in runs:
        for suite in dict.fromkeys([*SUITES, *run["suites"]]):
            if suite in run["suites"] and suite not in taken:
                rows += [r for r in run["rows"] if r["suite"] == suite]
                taken.add(suite)
    sources = " ".join(f"`{Path(r['_path']).name}`" for r in runs)
    command = "python -m fastae.bench.report" + (" --summary" if summary else "") + f" --readme {target}"
    lines = [f"<!-- generated by `{command}` from {sources}; do not edit by hand -->", ""]
    lines += [_describe(run) for run in runs]
    if any(r["device"].get("type") != "cuda" for r in runs):
        lines += ["", "No GPU run: these figures are from a CPU and no GPU target is judged."]
    targeted = [r for r in rows if r.get("target")]
    met = sum(r.get("met") is True for r in targeted)
    missed = sum(r.get("met") is False for r in targeted)
    lines += ["", "Every row is one implementation of one case; `vs X` is X's median over this row's from the same "
              "run (above 1: faster); spread is half the interquartile range; `achieved` is TFLOP/s or GB/s and "
              "`of peak` its fraction of the peak measured in the same run."]
    if targeted:
        unknown = len(targeted) - met - missed
        lines += ["", f"Targets: **{met} met, {missed} missed**"
                  + (f", {unknown} not measured (the row failed)" if unknown else "")
                  + f" of {len(targeted)} rows with a target:", ""]
        lines += markdown_table(targeted)
    if summary:
        lines += [""] + summary_table(rows)
    else:
        lines += ["", f"<details><summary>All {len(rows)} rows</summary>", ""]
        lines += markdown_table(rows)
        lines += ["", "</details>"]
    notes = [n for run in runs for n in run.get("notes", [])]
    if notes:
        lines += [""] + [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines)


def replace_section(text, section) -> str:
    """``text`` with everything between the markers replaced by ``section``; the rest unchanged."""
    from fastae._io import replace_between

    return replace_between(text, section, START, END)


def write_readme(path, runs, summary: bool = False):
    """Rewrite ``path``'s benchmark section from ``runs``; its line endings and the rest stay as they are."""
    from fastae._io import rewrite_section

    rewrite_section(path, markdown(runs, summary=summary, target=Path(path).name), START, END)


# ---------------------------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastae.bench.report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("runs", nargs="*", help="results JSON files (default: the newest GPU run in --results)")
    parser.add_argument("--results", default=str(RESULTS), help=f"folder searched for runs (default {RESULTS})")
    parser.add_argument("--markdown", action="store_true",
                        help="print markdown (the README section) instead of the table")
    parser.add_argument("--readme", metavar="FILE", help="rewrite this file's section between the markers")
    parser.add_argument("--summary", action="store_true",
                        help="per suite the geometric mean of fastae's ratios and the rows with a target, not every row")
    parser.add_argument("--plot", metavar="PNG", help="write the chart of each row's ratio to eager (one run)")
    args = parser.parse_args(argv)
    try:
        if args.runs:
            runs = sorted((load_run(p) for p in args.runs), key=lambda r: r["timestamp"], reverse=True)
        else:
            runs = newest_gpu_runs(args.results)
            if not runs:
                print(f"fastae.bench.report: no GPU run (a `fastae bench` JSON of device type cuda) in "
                      f"{args.results}; name a JSON file to use another run", file=sys.stderr)
                return 1
        if args.plot and len(runs) != 1:
            raise ValueError(f"--plot draws one run; got {len(runs)}")
        if args.readme:
            write_readme(args.readme, runs, summary=args.summary)
            print(f"rewrote the benchmark section of {args.readme} from "
                  f"{', '.join(Path(r['_path']).name for r in runs)}")
        if args.plot:
            from fastae.bench.plot import plot_speedups

            print(f"wrote {plot_speedups(runs[0], args.plot)}")
        if args.markdown:
            print(markdown(runs, summary=args.summary))
        elif not (args.readme or args.plot):
            print("\n\n".join(format_table(r) for r in runs))
    except (ValueError, FileNotFoundError) as e:
        print(f"fastae.bench.report: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
