"""The bench/ pytest-benchmark files over the cases of ``fastae bench``: each bench/test_<op>.py
parametrizes over ``params(suite, match)`` and times with ``run_benchmark``; pytest-benchmark does
the timing, this module only builds the step and records the row's figures in ``extra_info``
(which ``python -m fastae.bench.report`` reads back as rows).

On the CPU the cases are those of ``fastae bench --quick`` unless ``FASTAE_BENCH_QUICK=0``; on
CUDA the full ones unless ``FASTAE_BENCH_QUICK=1``.
"""

import os

import torch

from fastae.bench.cases import Notes, default_device
from fastae.bench.runner import build_cases, make_row, peak_memory_mb, step_of
from fastae.bench.timing import sync


def quick_default(device=None) -> bool:
    value = os.environ.get("FASTAE_BENCH_QUICK")
    if value not in (None, "", "0", "1"):
        raise ValueError(f"FASTAE_BENCH_QUICK must be 0 or 1, got {value!r}")
    return torch.device(device or default_device()).type == "cpu" if value in (None, "") else value == "1"


def params(suite, match=None, device=None, **options) -> list:
    """``pytest.param(case, impl)`` for every impl of every case of ``suite`` whose name contains
    ``match``; one skipped param saying why when there is none (``options`` as ``build_cases``)."""
    import pytest

    device = torch.device(device or default_device())
    options.setdefault("quick", quick_default(device))
    options.setdefault("compile_on", True)
    notes = options.setdefault("notes", Notes())
    cases = [c for c in build_cases([suite], device, **options) if match is None or match in c.name]
    out = [pytest.param(c, impl, id=f"{impl}-{c.name}".replace(" ", "_")) for c in cases for impl in c.impls]
    reason = f"no {suite} case" + (f" matches {match!r}" if match else "") + " here"
    return out or [pytest.param(None, None, id="none", marks=pytest.mark.skip(
        reason=f"{reason} (notes: {' '.join(notes)})" if notes else reason))]


def run_benchmark(benchmark, case, impl, device=None, rounds=None):
    """Time ``impl`` of ``case`` with pytest-benchmark's ``benchmark`` fixture (pedantic: 3 warm-up
    calls, then ``rounds`` single calls, synchronized on CUDA); group = the case; extra_info = the
    row's suite, case, impl, dtype and device (the GPU's name, or cpu) and its figures (TFLOP/s or
    GB/s, rates, bits/symbol, peak MB), which the report reads back as the row."""
    import pytest

    device = torch.device(case.device or device or default_device())
    prepared = case.setup()  # a setup that raises fails the test (fastae bench makes it an error row)
    reason = prepared.impls.get(impl, "not applicable here")
    if isinstance(reason, str):  # why this impl cannot run here
        pytest.skip(reason)
    step = step_of(prepared, impl)

    def call():
        step()
        sync(device)

    for _ in range(3):
        call()
    benchmark.group = case.name
    benchmark.pedantic(call, rounds=rounds or (20 if device.type == "cpu" else 100), iterations=1)
    s = benchmark.stats.stats
    m = {"median_s": s.median, "q1_s": s.q1, "q3_s": s.q3, "iqr_s": s.iqr, "min_s": s.min, "repeats": s.rounds,
         "first_s": 0.0}
    row = make_row(case, impl, m, None)
    info = benchmark.extra_info
    info.update(suite=case.suite, case=case.name, impl=impl, dtype=case.dtype,
                device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    if row["tflops"] is not None:
        info["tflops_per_s"] = row["tflops"]
    if row["gbps"] is not None:
        info["GB_per_s"] = row["gbps"]
    for unit, value in row["rates"].items():
        info[unit.replace("/", "_per_")] = value
    info.update(prepared.extra.get(impl, {}))
    peak = peak_memory_mb(case, impl, step, prepared, device)
    if peak is not None:
        info["peak_MB"] = peak
