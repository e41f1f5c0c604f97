"""Timing and the device's peaks: how every row of ``fastae bench`` is measured.

CUDA is timed with events around each call after warm-up, the L2 cache flushed before each call
(as ``triton.testing.do_bench``); the CPU with ``perf_counter``, repeating until the run lasts
``min_time`` and at least ``min_repeats`` calls, the impls of one case taking turns in rounds
(``measure_interleaved``).
"""

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


def _quantile(sorted_values, q):
    """Linear-interpolation quantile of an already sorted list."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _summary(times, first_s):
    s = sorted(times)
    q1, q3 = _quantile(s, 0.25), _quantile(s, 0.75)
    return {"median_s": statistics.median(s), "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1, "min_s": s[0],
            "repeats": len(s), "first_s": first_s}


_L2_FLUSH = {}


def _l2_buffer(device):
    key = str(device)
    if key not in _L2_FLUSH:
        _L2_FLUSH[key] = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    return _L2_FLUSH[key]


def measure(fn: Callable[[], object], device="cpu", *, warmup: int = 3, min_time: float = 0.3,
            min_repeats: int = 5, max_repeats: int = 1000, max_time: float = 30.0, flush_l2: bool = True) -> dict:
    """Time ``fn()``: ``{median_s, q1_s, q3_s, iqr_s, min_s, repeats, first_s}``.

    ``warmup`` calls first (compilation, autotuning, the allocator; the first one's time is
    ``first_s``), then timed calls until they add up to ``min_time`` seconds and number at least
    ``min_repeats`` (at most ``max_repeats``; past ``max_time`` seconds, at least 3). On CUDA each
    call is timed by a pair of events, after an L2 flush when ``flush_l2``; on the CPU by
    ``time.perf_counter`` (``fn`` must be synchronous there).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    first_s = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        fn()
    if not cuda:
        times, start = [], time.perf_counter()
        while len(times) < max_repeats:
            elapsed = time.perf_counter() - start
            if len(times) >= min_repeats and elapsed >= min_time:
                break
            if len(times) >= 3 and elapsed >= max_time:
                break
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return _summary(times, first_s)
    # CUDA: estimate the time of one call, then time n calls, each between its own events.
    torch.cuda.synchronize(device)
    flush = _l2_buffer(device) if flush_l2 else None
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(3):
        fn()
    end.record()
    torch.cuda.synchronize(device)
    estimate = max(begin.elapsed_time(end) / 3e3, 1e-7)
    n = int(min(max(math.ceil(min_time / estimate), min_repeats), max_repeats, max(3, max_time / estimate)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        if flush is not None:
            flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize(device)
    return _summary([s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)], first_s)


def measure_interleaved(fns: dict, *, warmup: int = 3, min_time: float = 0.3, min_repeats: int = 5,
                        max_repeats: int = 1000, max_time: float = 30.0, rounds: int = 5):
    """Time several CPU callables against each other: ``({name: summary}, {name: exception})``, each
    summary as ``measure`` gives.

    Each fn is warmed up (``warmup`` calls, the first one's time is ``first_s``; a fn that raises,
    there or later, is left out from then on and its exception returned), then the timed calls are spread over ``rounds``
    rounds that take every fn in turn, from a different first fn each round. On a shared machine a
    slow phase (another job, the hypervisor taking the CPU) then falls on every fn alike instead of
    on whichever ran through it, so the ratios between them hold where the times do not. Each fn
    gets at least ``min_repeats`` calls and ``min_time`` seconds in all (at most ``max_repeats``
    calls; ``max_time`` seconds per fn, at least one call a round), from its warm-up time per call.
    """
    first, per_call, errors = {}, {}, {}
    for name, fn in fns.items():
        try:
            t0 = time.perf_counter()
            fn()
            first[name] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(max(warmup - 1, 0)):
                fn()
            per_call[name] = (time.perf_counter() - t0) / (warmup - 1) if warmup > 1 else first[name]
        except Exception as e:  # noqa: BLE001  (the caller reports it as that fn's row)
            errors[name] = e
    names = [n for n in fns if n not in errors]
    if not names:
        return {}, errors
    calls = {}
    for n in names:
        want = max(min_repeats, math.ceil(min_time / max(per_call[n], 1e-9)))
        want = min(want, max_repeats, max(3, int(max_time / max(per_call[n], 1e-9))))
        calls[n] = max(1, math.ceil(want / rounds))
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[n]
            try:
                for _ in range(calls[n] if n not in errors else 0):
                    t = time.perf_counter()
                    fn()
                    times[n].append(time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001  (a later failure, e.g. out of memory: that fn's row says so)
                errors[n] = e
    return {n: _summary(times[n], first[n]) for n in names if n not in errors}, errors


@dataclass
class Settings:
    """How long to measure: the quick defaults or the full ones, per device type."""
    warmup: int = 3
    min_time: float = 0.5
    min_repeats: int = 10
    max_repeats: int = 1000
    rounds: int = 5  # CPU: the impls of a case take turns (measure_interleaved)

    @classmethod
    def for_run(cls, device, quick, min_time=None):
        cuda = torch.device(device).type == "cuda"
        if quick:
            s = cls(warmup=3 if cuda else 2, min_time=0.05 if cuda else 0.25, min_repeats=10 if cuda else 5)
        else:
            s = cls(warmup=3, min_time=0.2 if cuda else 0.5, min_repeats=25 if cuda else 10)
        if min_time is not None:
            s.min_time = min_time
        return s

    def measure(self, fn, device):
        return measure(fn, device, warmup=self.warmup, min_time=self.min_time, min_repeats=self.min_repeats,
                       max_repeats=self.max_repeats)

    def measure_interleaved(self, fns):
        return measure_interleaved(fns, warmup=self.warmup, min_time=self.min_time, min_repeats=self.min_repeats,
                                   max_repeats=self.max_repeats, rounds=self.rounds)


def sync(device):
    """Wait for ``device``'s queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _matmul_tflops(n, dtype, device, settings):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    return 2 * n**3 / settings.measure(lambda: torch.mm(a, b, out=c), device)["median_s"] / 1e12


def peaks(device, dtypes=("float32",), quick=False, settings: Settings = None) -> dict:
    """The device's achieved peaks, measured now: matmul TFLOP/s per dtype name (an n x n x n
    product) and copy GB/s (bytes read + written by ``dst.copy_(src)`` of a tensor far larger than
    the caches)."""
    device = torch.device(device)
    settings = settings or Settings.for_run(device, quick)
    cuda = device.type == "cuda"
    n = 8192 if cuda else (1024 if quick else 2048)
    out = {"matmul_n": n, "matmul_tflops": {}}
    for name in dict.fromkeys(("float32", *dtypes)):
        out["matmul_tflops"][name] = _matmul_tflops(n, getattr(torch, name), device, settings)
    numel = 2**28 if cuda else (2**24 if quick else 2**26)  # 1 GiB / 64 MiB / 256 MiB of float32
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    m = settings.measure(lambda: dst.copy_(src), device)
    out["copy_mb"] = numel * 4 / 2**20
    out["copy_gbps"] = 2 * numel * 4 / m["median_s"] / 1e9
    return out
