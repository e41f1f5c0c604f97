"""Running the suites: the cases of each suite, each implementation measured, its row of the
results JSON (schema ``fastae-bench/1``) with the ratios to its case's baselines from the same run
and, on CUDA, whether it meets its target."""

import datetime
import gc
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

import fastae
from fastae._device import resolve_device
from fastae.bench.cases import BASELINES, DTYPES, SCHEMA, SUITES, Lazy, Notes, Prepared, is_fastae
from fastae.bench.codec import codec_cases
from fastae.bench.losses import losses_cases, rss_peak
from fastae.bench.ops import EAGER_ACT, ops_cases
from fastae.bench.timing import Settings, peaks
from fastae.bench.train import train_cases


def device_info(device) -> dict:
    """What the results JSON records of the machine: device name, CPU, threads, library versions."""
    device = torch.device(device)
    info = {"type": device.type}
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    build = fastae.build_info()
    info.update(name=cpu, cpu=cpu, threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
                torch=torch.__version__, triton=triton_version, fastae=fastae.__version__,
                fastae_C={k: build.get(k) for k in ("torch", "cuda", "cuda_arch_list", "loaded", "load_error")},
                python=platform.python_version(), platform=platform.platform(), cuda=torch.version.cuda,
                driver=None)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}", memory_gb=props.total_memory / 2**30,
                    sm_count=props.multi_processor_count, driver=_driver_version(),
                    allow_tf32=torch.backends.cuda.matmul.allow_tf32, cudnn=torch.backends.cudnn.version())
    return info


def _driver_version():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def build_cases(suites, device, *, dtypes=None, activations=("relu", "gelu"), quick=False, compile_on=True,
                codec_weights=None, images=None, notes=None) -> list:
    """The cases of ``suites`` for ``device``; ``notes`` (``Notes``, an ordered set) collects what
    was left out and why."""
    notes = Notes() if notes is None else notes
    device = torch.device(device)
    dtypes = list(dtypes or (["float32", "bfloat16"] if device.type == "cuda" else ["float32"]))
    cases = []
    for suite in suites:
        if suite == "ops":
            cases += ops_cases(device, dtypes, activations, quick, compile_on, notes)
        elif suite == "losses":
            cases += losses_cases(device, quick, compile_on, notes)
        elif suite == "train":
            cases += train_cases(device, dtypes, quick, compile_on, notes)
        elif suite == "codec":
            cases += codec_cases(device, quick, codec_weights, images, notes)
        else:
            raise ValueError(f"unknown suite {suite!r}; expected one of {SUITES}")
    return cases


def make_row(case, impl, m, pk) -> dict:
    """The results JSON's row of ``impl`` of ``case`` from its timing ``m`` (``timing.measure``'s
    dict; None: a row that failed) and the run's peaks ``pk``."""
    row = {"suite": case.suite, "case": case.name, "impl": impl, "dtype": case.dtype, "median_ms": None,
           "q1_ms": None, "q3_ms": None, "iqr_ms": None, "spread_pct": None, "repeats": 0, "first_call_ms": None,
           "flops": case.flops, "bytes": case.bytes, "tflops": None, "gbps": None, "frac_of_peak": None,
           "rates": {}, "extra": {}, **{f"ratio_vs_{b}": None for b in BASELINES},
           "target": None, "met": None, "error": None}
    if m is None:
        return row
    t = m["median_s"]
    row.update(median_ms=t * 1e3, q1_ms=m["q1_s"] * 1e3, q3_ms=m["q3_s"] * 1e3, iqr_ms=m["iqr_s"] * 1e3,
               spread_pct=100 * m["iqr_s"] / t if t else None, repeats=m["repeats"], first_call_ms=m["first_s"] * 1e3)
    if case.flops:
        row["tflops"] = case.flops / t / 1e12
        peak = (pk or {}).get("matmul_tflops", {}).get(case.dtype)
        row["frac_of_peak"] = row["tflops"] / peak if peak else None
    elif case.bytes:
        row["gbps"] = case.bytes / t / 1e9
        peak = (pk or {}).get("copy_gbps")
        row["frac_of_peak"] = row["gbps"] / peak if peak else None
    row["rates"] = {unit: amount / t for unit, amount in case.rates.items()}
    return row


def add_ratios(rows):
    """Set each row's ``ratio_vs_<baseline>`` = baseline median / row median, within one case's rows."""
    base = {r["impl"]: r["median_ms"] for r in rows if r["impl"] in BASELINES and r["median_ms"]}
    for r in rows:
        for b in BASELINES:
            if b in base and r["median_ms"]:
                r[f"ratio_vs_{b}"] = base[b] / r["median_ms"]


def judge(case, rows, device):
    """Set ``target`` and ``met`` on fastae's rows of ``case`` — on CUDA, where the issue sets the targets."""
    if case.target is None or torch.device(device).type != "cuda":
        return
    for r in rows:
        if is_fastae(r["impl"]):
            r["target"] = case.target.text
            r["met"] = None if r["median_ms"] is None else case.target.check(r)


def cuda_peak(step, inputs, device) -> int:
    """Bytes allocated on ``device`` by one ``step()`` above what was allocated before it."""
    for t in inputs:
        t.grad = None
    torch.cuda.synchronize(device)
    gc.collect()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def peak_memory_mb(case, impl, step, prepared, device):
    """MB of peak memory of one call of ``impl`` of ``case`` (as ``case.memory`` says), or None."""
    if case.memory == "cuda":
        return cuda_peak(step, prepared.inputs, device) / 2**20
    if case.memory == "rss" and impl in case.memory_spec["impls"]:
        return rss_peak(case.memory_spec["batch"], impl) / 2**20
    return None


def prepare(case) -> Prepared:
    """``case.setup()``; a setup that raises gives every impl the reason instead of a step."""
    try:
        return case.setup()
    except Exception as e:  # noqa: BLE001  (a failing case is a row that says why, not a dead run)
        first = str(e).splitlines()[0] if str(e) else ""
        return Prepared({impl: f"setup failed: {type(e).__name__}: {first}" for impl in case.impls})


def step_of(prepared, impl):
    """The zero-argument step of ``impl``; RuntimeError with the reason when it cannot run here."""
    step = prepared.impls.get(impl, "not applicable here")
    if isinstance(step, str):
        raise RuntimeError(step)
    return step.build() if isinstance(step, Lazy) else step


def run_case(case, device, settings, pk=None, progress=None) -> list:
    """Measure every impl of ``case``: its rows, with ratios to the case's own baselines and, on
    CUDA, its target and whether it was met. On the CPU the impls are timed in turns
    (``measure_interleaved``); on CUDA one after the other, each built only for its turn."""
    device = torch.device(case.device or device)
    prepared = prepare(case)
    cpu = device.type == "cpu"
    steps, errors, measured = {}, {}, {}
    if cpu:  # every impl built first, then they take turns: a slow phase of the machine falls on all of them
        for impl in case.impls:
            try:
                steps[impl] = step_of(prepared, impl)
            except Exception as e:  # noqa: BLE001
                errors[impl] = e
        if progress is not None:
            progress.set_postfix_str(f"{case.name} [{', '.join(steps)}]"[-70:], refresh=False)
        measured, failed = settings.measure_interleaved(steps)
        errors.update(failed)
    rows = []
    for impl in case.impls:
        if progress is not None and not cpu:
            progress.set_postfix_str(f"{case.name} [{impl}]"[-70:], refresh=False)
        step = None
        try:
            if impl in errors:
                raise errors[impl]
            step = steps[impl] if cpu else step_of(prepared, impl)  # CUDA: one impl's memory at a time
            row = make_row(case, impl, measured[impl] if cpu else settings.measure(step, device), pk)
            row["extra"].update(prepared.extra.get(impl, {}))
            peak = peak_memory_mb(case, impl, step, prepared, device)
            if peak is not None:
                row["extra"]["peak_mb"] = peak
        except Exception as e:  # noqa: BLE001
            row = make_row(case, impl, None, pk)
            msg = str(e).strip().splitlines()
            row["error"] = f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        step = steps[impl] = None
        if progress is not None:
            progress.update(1)
    add_ratios(rows)
    judge(case, rows, device)
    del prepared
    gc.collect()
    return rows


def run(suites=SUITES, device="cpu", *, quick=False, dtypes=None, activations=("relu", "gelu"), compile="auto",
        codec_weights=None, images=None, cases=None, min_time=None, progress=True, command=None,
        measure_peaks=True) -> dict:
    """Run the suites; the result dict that ``--output`` writes (see ``fastae bench --help``)."""
    started = time.perf_counter()
    timestamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    device = resolve_device(device, "--device")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {device.type!r}")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtypes = list(dtypes or (["float32", "bfloat16"] if device.type == "cuda" else ["float32"]))
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"--dtype: unknown dtype {d!r}; expected some of {list(DTYPES)}")
    for a in activations:
        if a not in EAGER_ACT:
            raise ValueError(f"--activations: unknown activation {a!r}; expected some of {list(EAGER_ACT)}")
    notes = Notes()
    if compile == "auto":
        compile_on = not (quick and device.type == "cpu")
        if not compile_on:
            notes.add("torch.compile rows (compile, fastae+compile) skipped: --quick on the CPU, where compiling "
                      "each case takes longer than measuring it (--compile on to include them)")
    else:
        compile_on = compile == "on"
        if not compile_on:
            notes.add("torch.compile rows (compile, fastae+compile) skipped: --compile off")
    all_cases = build_cases(suites, device, dtypes=dtypes, activations=activations, quick=quick,
                            compile_on=compile_on, codec_weights=codec_weights, images=images, notes=notes)
    if cases:
        wanted = [c.lower() for c in cases]
        all_cases = [c for c in all_cases if any(w in c.name.lower() for w in wanted)]
        if not all_cases:
            raise ValueError(f"--cases {cases}: no case of suites {list(suites)} matches")
        notes.add(f"only the cases matching --cases {' '.join(map(shlex.quote, cases))}")
    if device.type == "cpu" and measure_peaks:
        notes.add("of peak: the peaks are measured out of cache (see peaks), so a case whose data fits the CPU's "
                  "caches can exceed 100%")
    settings = Settings.for_run(device, quick, min_time)
    total = sum(len(c.impls) for c in all_cases) + (1 if measure_peaks else 0)
    bar = _progress_bar(total, progress)
    pk = None
    try:
        if measure_peaks:
            bar.set_postfix_str("device peaks: matmul and copy", refresh=False)
            pk = peaks(device, dtypes, quick, settings)
            bar.update(1)
        rows = []
        for case in all_cases:
            rows += run_case(case, device, settings, pk, bar)
    finally:
        bar.close()
    met = [r["met"] for r in rows if r["target"] is not None]
    return {
        "schema": SCHEMA,
        "device": device_info(device),
        "command": command or "fastae bench",
        "timestamp": timestamp,
        "suites": [s for s in SUITES if s in suites],
        "quick": quick,
        "dtypes": dtypes,
        "activations": list(activations),
        "compile": compile_on,
        "timing": {"method": ("CUDA events around each call after warm-up, L2 flushed (256 MB) before each call"
                              if device.type == "cuda" else "time.perf_counter around each call after warm-up; the impls of a case "
                              "take turns in `rounds` rounds (fastae.bench.timing.measure_interleaved)"),
                   "warmup": settings.warmup, "min_time_s": settings.min_time, "min_repeats": settings.min_repeats,
                   "max_repeats": settings.max_repeats, "rounds": settings.rounds if device.type == "cpu" else None,
                   "ratio": "ratio_vs_<baseline> = baseline median / row median, same case, same run (>1: faster)"},
        "peaks": pk,
        "targets": {"met": sum(m is True for m in met), "missed": sum(m is False for m in met),
                    "unknown": sum(m is None for m in met)},
        "rows": rows,
        "notes": list(notes),
        "elapsed_s": time.perf_counter() - started,
    }


class _NoBar:
    def set_postfix_str(self, *a, **k):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress_bar(total, enabled):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="fastae bench", unit="row", file=sys.stderr, dynamic_ncols=True)
