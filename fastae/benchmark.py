"""Throughput benchmarks behind ``fastae bench``: every fused path beside eager PyTorch and
torch.compile, timed in one run, with the device's own peaks measured in the same run.

    fastae bench --quick                                      # a minute or two on a CPU
    fastae bench --suite all --device cuda --output bench/results/h200-2026-12-01.json --plot speedups.png

Suites (``--suite``):

* ``ops``: ``linear_act`` forward and forward+backward per fastae backend x activation x dtype x
  autoencoder layer (batch 256 / 4096 / 65536 x 784->128, 128->64, 64->128, 128->784), beside
  eager ``act(F.linear(...))``, its ``torch.compile`` and ``torch._addmm_activation`` where that
  computes the same function (forward only; relu, and gelu on the CPU / gelu_tanh on CUDA).
* ``losses``: ``reconstruction_loss`` (every kind) and ``gaussian_kl`` forward+backward at 1M-64M
  elements, ``linear_bce_loss`` (128->784) at 3M-51M logits, and their peak memory.
* ``train``: one train step (forward, backward, Adam) of the MLP autoencoder 784-128-64-128-784
  and of the conv autoencoder, fastae's models beside the same networks in plain torch.nn, eager
  and compiled; samples/s.
* ``codec``: images/s and MB/s (raw RGB) of the image codec's batched encode / decode transforms
  and of whole-file compress / decompress (entropy coding included), per batch size; the rANS
  entropy coder in symbols/s.

Every row has the median time, its spread (quartiles), the ratio to each baseline of the same
case from the same run (``baseline median / row median``: above 1 is faster), the achieved
TFLOP/s or GB/s and its fraction of the device's peak measured at the start of the run (a large
matmul per dtype, a large copy). CUDA is timed with events around each call after warm-up, the L2
cache flushed before each call (as ``triton.testing.do_bench``); the CPU with ``perf_counter``,
repeating until the run lasts ``min_time`` and at least ``min_repeats`` calls.
"""

import argparse
import datetime
import gc
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

import fastae
from fastae._device import resolve_device
from fastae.ops import _backend

SUITES = ("ops", "losses", "train", "codec")
BASELINES = ("eager", "compile", "addmm_activation")  # each row's ratio_vs_<baseline>
SCHEMA = "fastae-bench/1"
LAYERS = ((784, 128), (128, 64), (64, 128), (128, 784))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LOSS_KINDS = ("mse", "l1", "bce", "bce_logits")
KODAK_SIZE = (512, 768)  # Kodak images, landscape (portrait ones are transposed)

_EAGER_ACT = {
    "none": lambda y: y,
    "relu": F.relu,
    "leaky_relu": lambda y: F.leaky_relu(y, 0.01),
    "gelu": F.gelu,
    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
}


# ================================================================================================ timing


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


@dataclass
class Settings:
    """How long to measure: the quick defaults or the full ones, per device type."""
    warmup: int = 3
    min_time: float = 0.5
    min_repeats: int = 10
    max_repeats: int = 1000

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


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _matmul_tflops(n, dtype, device, settings):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    return 2 * n**3 / settings.measure(lambda: torch.mm(a, b, out=c), device)["median_s"] / 1e12


def peaks(device, dtypes=("float32",), quick=False, settings: Settings = None) -> dict:
    """The device's achieved peaks, measured now: matmul TFLOP/s per dtype (an n x n x n product)
    and copy GB/s (bytes read + written by ``dst.copy_(src)`` of a tensor far larger than the caches)."""
    device = torch.device(device)
    settings = settings or Settings.for_run(device, quick)
    cuda = device.type == "cuda"
    n = 8192 if cuda else (1024 if quick else 2048)
    out = {"matmul_n": n, "matmul_tflops": {}}
    for name in dict.fromkeys(("float32", *dtypes)):
        out["matmul_tflops"][name] = _matmul_tflops(n, DTYPES[name], device, settings)
    numel = 2**28 if cuda else (2**24 if quick else 2**26)  # 1 GiB / 64 MiB / 256 MiB of float32
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    m = settings.measure(lambda: dst.copy_(src), device)
    out["copy_mb"] = numel * 4 / 2**20
    out["copy_gbps"] = 2 * numel * 4 / m["median_s"] / 1e9
    return out


# ================================================================================================ cases


@dataclass
class Target:
    """A goal the issue sets for fastae's rows of a case on CUDA; ``check(row)`` -> True/False/None."""
    text: str
    check: Callable[[dict], Optional[bool]]


@dataclass
class Prepared:
    """What a case's setup returns: ``impls`` maps each implementation to a zero-argument step
    (or to a string: why it cannot run here); ``inputs`` are the tensors whose ``.grad`` a step
    makes (cleared before a peak-memory measurement)."""
    impls: dict
    inputs: tuple = ()
    extra: dict = field(default_factory=dict)  # figures every row of the case carries (bits/symbol)


class Lazy:
    """An impl's step that is built only when that impl runs (compiling, building a model)."""

    def __init__(self, build):
        self.build = build


@dataclass
class Case:
    suite: str
    name: str
    impls: tuple
    setup: Callable[[], Prepared]
    dtype: Optional[str] = None  # which matmul peak flops are compared against
    flops: Optional[float] = None
    bytes: Optional[float] = None
    rates: dict = field(default_factory=dict)  # unit -> amount per call, e.g. {"samples/s": 4096}
    target: Optional[Target] = None
    memory: Optional[str] = None  # "cuda": peak allocated in-process; "rss": a subprocess per impl
    memory_spec: Optional[dict] = None
    device: Optional[torch.device] = None  # where it runs, when not the run's device (the codec's CPU rows)


def _is_fastae(impl):
    return impl.startswith("fastae")


def _fastae_backends(device, notes):
    """fastae backends that run natively on ``device``: [(impl name, backend)]."""
    device = torch.device(device)
    out = []
    for name, (ok, reason) in fastae.ops.available_backends().items():
        if name == "torch" or not _backend._runs_on(name, device):
            continue
        if name == "triton" and device.type == "cpu":
            notes.add("fastae-triton rows skipped on the CPU: Triton runs there only in its interpreter "
                      "(TRITON_INTERPRET=1), which tests correctness and is not a speed")
            continue
        if not ok:
            notes.add(f"fastae-{name} not available: {reason}")
            continue
        out.append((f"fastae-{name}", name))
    if not out:
        notes.add(f"no fused fastae backend runs on {device.type} here; the fastae rows are the torch backend")
        out.append(("fastae-torch", "torch"))
    return out


def _compiled(fn, **kwargs):
    torch._dynamo.reset()  # every case compiles afresh: shared code objects would hit the recompile limit
    return torch.compile(fn, **kwargs)


def _ratio_target(text, eager=None, compile=None, frac=None):
    def check(row):
        needs = [(row.get("ratio_vs_eager"), eager), (row.get("ratio_vs_compile"), compile),
                 (row.get("frac_of_peak"), frac)]
        needs = [(v, goal) for v, goal in needs if goal is not None]
        if any(v is None for v, _ in needs):
            return None
        return all(v >= goal for v, goal in needs)

    return Target(text, check)


# ---------------------------------------------------------------------------------------------- ops


def ops_cases(device, dtypes, activations, quick, compile_on, notes):
    device = torch.device(device)
    cuda = device.type == "cuda"
    fastae_impls = _fastae_backends(device, notes)
    if quick:
        batches, layers = ([256, 4096], [(784, 128), (128, 784)]) if not cuda else ([4096], LAYERS)
    else:
        batches, layers = [256, 4096, 65536], LAYERS
    cases = []
    for mode in ("fwd", "fwd+bwd"):
        for act in activations:
            for dtype in dtypes:
                for batch in batches:
                    for in_f, out_f in layers:
                        addmm = mode == "fwd" and (act == "relu" or act == ("gelu_tanh" if cuda else "gelu"))
                        impls = ([i for i, _ in fastae_impls] + ["eager"] + (["compile"] if compile_on else [])
                                 + (["addmm_activation"] if addmm else []))
                        target = None
                        if cuda and mode == "fwd+bwd" and batch >= 4096:
                            target = _ratio_target("≥1.25x eager, ≥1.0x compile", eager=1.25, compile=1.0)
                        cases.append(Case(
                            "ops", f"linear_act {act} {mode} {batch}x{in_f}->{out_f} {dtype}", tuple(impls),
                            _ops_setup(device, dict(fastae_impls), mode, act, DTYPES[dtype], batch, in_f, out_f),
                            dtype=dtype, flops=2 * batch * in_f * out_f * (1 if mode == "fwd" else 3), target=target))
    return cases


def _ops_setup(device, backends, mode, act, dtype, batch, in_f, out_f):
    def setup():
        g = torch.Generator(device="cpu").manual_seed(0)
        bwd = mode != "fwd"
        x = torch.randn(batch, in_f, generator=g).to(device, dtype).requires_grad_(bwd)
        w = (torch.randn(out_f, in_f, generator=g) * in_f**-0.5).to(device, dtype).requires_grad_(bwd)
        b = (torch.randn(out_f, generator=g) * 0.1).to(device, dtype).requires_grad_(bwd)
        grad = torch.randn(batch, out_f, generator=g).to(device, dtype)
        act_fn = _EAGER_ACT[act]

        def eager(x, w, b):
            return act_fn(F.linear(x, w, b))

        def step_of(fn):
            if not bwd:
                def step():
                    with torch.no_grad():
                        fn(x, w, b)
            else:
                def step():
                    x.grad = w.grad = b.grad = None
                    fn(x, w, b).backward(grad)
            return step

        def fused(name):
            def fn(x, w, b):
                with fastae.ops.backend(name):
                    return fastae.ops.linear_act(x, w, b, act)
            return fn

        impls = {impl: step_of(fused(name)) for impl, name in backends.items()}
        impls["eager"] = step_of(eager)
        impls["compile"] = Lazy(lambda: step_of(_compiled(eager, fullgraph=True)))
        impls["addmm_activation"] = step_of(
            lambda x, w, b: torch._addmm_activation(b, x, w.t(), use_gelu=act.startswith("gelu")))
        return Prepared(impls, (x, w, b))

    return setup


# ---------------------------------------------------------------------------------------------- losses

_EAGER_LOSS = {"mse": F.mse_loss, "l1": F.l1_loss, "bce": F.binary_cross_entropy,
               "bce_logits": F.binary_cross_entropy_with_logits}


def _kl_eager(mu, logvar):
    return -0.5 * (1 + logvar - mu * mu - logvar.exp()).sum() / mu.shape[0]


def _linear_bce_eager(h, w, b, t):
    return F.binary_cross_entropy_with_logits(F.linear(h, w, b), t)


def losses_cases(device, quick, compile_on, notes):
    device = torch.device(device)
    cuda = device.type == "cuda"
    fastae_impls = _fastae_backends(device, notes)
    backends = dict(fastae_impls)
    base = ["eager"] + (["compile"] if compile_on else [])
    impls = tuple([i for i, _ in fastae_impls] + base)
    sizes = [(1024, 1024)] if quick else [(1024, 1024), (16384, 1024), (65536, 1024)]
    bce_batches = [4096] if quick else [4096, 16384, 65536]
    memory = "cuda" if cuda else (None if quick else "rss")
    if not cuda and quick:
        notes.add("losses: peak memory not measured in --quick on the CPU (it takes a fresh process per row)")
    target = _ratio_target("≥2x eager, ≥85% of copy GB/s", eager=2.0, frac=0.85) if cuda else None
    cases = []
    for rows, cols in sizes:
        n = rows * cols
        for kind in LOSS_KINDS:
            cases.append(Case("losses", f"reconstruction_loss {kind} fwd+bwd {rows}x{cols} float32", impls,
                              _recon_setup(device, backends, kind, rows, cols), dtype="float32", bytes=3 * n * 4,
                              target=target, memory="cuda" if cuda else None))
        cases.append(Case("losses", f"gaussian_kl fwd+bwd {rows}x{cols} float32", impls,
                          _kl_setup(device, backends, rows, cols), dtype="float32", bytes=4 * n * 4,
                          target=target, memory="cuda" if cuda else None))
    bce_target = _ratio_target("≥2x eager (matmul-bound: no bandwidth goal)", eager=2.0) if cuda else None
    for batch in bce_batches:
        hidden, out = 128, 784
        rss_impls = tuple(i for i in impls if i != "compile")  # a fresh process would compile from scratch
        cases.append(Case("losses", f"linear_bce_loss fwd+bwd {batch}x{hidden}->{out} float32", impls,
                          _linear_bce_setup(device, backends, batch, hidden, out), dtype="float32",
                          flops=3 * 2 * batch * hidden * out,
                          target=bce_target,
                          memory=memory, memory_spec={"batch": batch, "impls": rss_impls}))
    if memory == "rss":
        notes.add("losses: CPU peak memory is measured for linear_bce_loss only (a fresh process per row, after a "
                  "small warm-up call: growth of the peak resident set above the inputs), not for compile")
    return cases


def _loss_step(fn, inputs):
    def step():
        for t in inputs:
            t.grad = None
        fn().backward()
    return step


def _backend_call(name, fn):
    def call():
        with fastae.ops.backend(name):
            return fn()
    return call


def _recon_setup(device, backends, kind, rows, cols):
    def setup():
        g = torch.Generator(device="cpu").manual_seed(0)
        if kind == "bce":
            x = torch.rand(rows, cols, generator=g).clamp_(1e-3, 1 - 1e-3)
        else:
            x = torch.randn(rows, cols, generator=g)
        x = x.to(device).requires_grad_()
        t = torch.rand(rows, cols, generator=g).to(device)
        eager = _EAGER_LOSS[kind]
        impls = {impl: _loss_step(_backend_call(name, lambda: fastae.ops.reconstruction_loss(x, t, kind)), (x,))
                 for impl, name in backends.items()}
        impls["eager"] = _loss_step(lambda: eager(x, t), (x,))

        def compiled():
            fn = _compiled(eager, fullgraph=True)
            return _loss_step(lambda: fn(x, t), (x,))

        impls["compile"] = Lazy(compiled)
        return Prepared(impls, (x,))

    return setup


def _kl_setup(device, backends, rows, cols):
    def setup():
        g = torch.Generator(device="cpu").manual_seed(0)
        mu = torch.randn(rows, cols, generator=g).to(device).requires_grad_()
        logvar = (torch.randn(rows, cols, generator=g) * 0.5).to(device).requires_grad_()
        impls = {impl: _loss_step(_backend_call(name, lambda: fastae.ops.gaussian_kl(mu, logvar)), (mu, logvar))
                 for impl, name in backends.items()}
        impls["eager"] = _loss_step(lambda: _kl_eager(mu, logvar), (mu, logvar))

        def compiled():
            fn = _compiled(_kl_eager, fullgraph=True)
            return _loss_step(lambda: fn(mu, logvar), (mu, logvar))

        impls["compile"] = Lazy(compiled)
        return Prepared(impls, (mu, logvar))

    return setup


def _linear_bce_tensors(device, batch, hidden, out):
    g = torch.Generator(device="cpu").manual_seed(0)
    h = torch.randn(batch, hidden, generator=g).to(device).requires_grad_()
    w = (torch.randn(out, hidden, generator=g) * hidden**-0.5).to(device).requires_grad_()
    b = torch.zeros(out, device=device, requires_grad=True)
    t = (torch.rand(batch, out, generator=g) > 0.5).float().to(device)
    return h, w, b, t


def _linear_bce_setup(device, backends, batch, hidden, out):
    def setup():
        h, w, b, t = _linear_bce_tensors(device, batch, hidden, out)
        impls = {impl: _loss_step(_backend_call(name, lambda: fastae.ops.linear_bce_loss(h, w, b, t)), (h, w, b))
                 for impl, name in backends.items()}
        impls["eager"] = _loss_step(lambda: _linear_bce_eager(h, w, b, t), (h, w, b))

        def compiled():
            fn = _compiled(_linear_bce_eager, fullgraph=True)
            return _loss_step(lambda: fn(h, w, b, t), (h, w, b))

        impls["compile"] = Lazy(compiled)
        return Prepared(impls, (h, w, b))

    return setup


def _proc_status_kb(field_name):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise OSError(f"{field_name} not in /proc/self/status")


def _rss_peak_child(batch, impl):
    """Run in a fresh process: growth of the resident set over one linear_bce_loss fwd+bwd above
    the inputs (``impl``: eager or fastae-<backend>); prints bytes. Linux resets the high-water
    mark (writing 5 to /proc/self/clear_refs) once the inputs exist; elsewhere the growth of the
    process's peak above its peak before the inputs, less their size."""
    import resource

    def step(h, w, b, t):
        if impl == "eager":
            _linear_bce_eager(h, w, b, t).backward()
        else:
            with fastae.ops.backend(impl.removeprefix("fastae-")):
                fastae.ops.linear_bce_loss(h, w, b, t).backward()

    step(*_linear_bce_tensors("cpu", 8, 128, 784))  # first-call set-up (libraries, thread pools) is not the op's
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    h, w, b, t = _linear_bce_tensors("cpu", batch, 128, 784)
    inputs = sum(v.numel() * v.element_size() for v in (h, w, b, t))
    try:
        gc.collect()
        base = _proc_status_kb("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm = lambda: _proc_status_kb("VmHWM") * 1024  # noqa: E731
    except OSError:
        base = before + inputs
        hwm = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # noqa: E731
    step(h, w, b, t)
    print(hwm() - base)


def _rss_peak(batch, impl):
    code = f"from fastae import benchmark; benchmark._rss_peak_child({int(batch)}, {impl!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    return int(out.stdout.split()[-1])


def _cuda_peak(step, inputs, device):
    for t in inputs:
        t.grad = None
    torch.cuda.synchronize(device)
    gc.collect()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


# ---------------------------------------------------------------------------------------------- train


class PlainMLPAutoencoder(nn.Module):
    """fastae's MLPAutoencoder defaults in plain torch.nn: 784-128-64-128-784, ReLU, sigmoid, MSE."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                                 nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 784), nn.Sigmoid())

    def loss(self, x):
        x = x.reshape(x.shape[0], -1)
        return {"loss": F.mse_loss(self.net(x).float(), x)}


class PlainConvAutoencoder(nn.Module):
    """fastae's ConvAutoencoder defaults (1x28x28, channels 32, 64, latent 32, linear code) in plain torch.nn."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                                     nn.Flatten(), nn.Linear(64 * 7 * 7, 32))
        self.decoder = nn.Sequential(nn.Linear(32, 64 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (64, 7, 7)),
                                     nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ReLU(),
                                     nn.ConvTranspose2d(32, 1, 3, 2, 1, output_padding=1), nn.Sigmoid())

    def loss(self, x):
        return {"loss": F.mse_loss(self.decoder(self.encoder(x)).float(), x)}


_MLP_FLOPS_PER_SAMPLE = 6 * (784 * 128 + 128 * 64 + 64 * 128 + 128 * 784)  # matmuls, fwd + bwd


def train_cases(device, dtypes, quick, compile_on, notes):
    device = torch.device(device)
    cuda = device.type == "cuda"
    impls = ("fastae", "fastae+compile", "eager", "compile") if compile_on else ("fastae", "eager")
    notes.add("train: fastae = fastae.models (auto backend); eager / compile = the same network in plain torch.nn; "
              "one step = forward, backward, Adam; bfloat16 rows run under autocast")
    cases = []
    for model in ("mlp", "conv"):
        if quick:
            batches = [256] if model == "mlp" else [64]
        else:
            batches = [256, 4096, 65536] if model == "mlp" else [256, 4096]
        for dtype in dtypes:
            for batch in batches:
                target = None
                if cuda and model == "mlp":
                    target = _ratio_target("≥2x eager", eager=2.0)
                cases.append(Case(
                    "train", f"{model}-ae train step batch {batch} {dtype}", impls,
                    _train_setup(device, model, DTYPES[dtype], batch), dtype=dtype,
                    flops=_MLP_FLOPS_PER_SAMPLE * batch if model == "mlp" else None,
                    rates={"samples/s": batch}, target=target))
    return cases


def _train_setup(device, model_name, dtype, batch):
    def setup():
        from fastae.models import build_model

        torch.manual_seed(0)
        shape = (batch, 784) if model_name == "mlp" else (batch, 1, 28, 28)
        x = torch.rand(*shape, generator=torch.Generator(device="cpu").manual_seed(0)).to(device)
        amp = dtype != torch.float32

        def make(impl):
            def build():
                if impl.startswith("fastae"):
                    model = build_model(model_name).to(device)
                else:
                    model = (PlainMLPAutoencoder() if model_name == "mlp" else PlainConvAutoencoder()).to(device)
                opt = torch.optim.Adam(model.parameters(), lr=1e-3)
                loss_fn = _compiled(model.loss) if impl.endswith("compile") else model.loss

                def step():
                    with torch.autocast(device.type, dtype=dtype, enabled=amp):
                        loss = loss_fn(x)["loss"]
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

                return step
            return build

        return Prepared({impl: Lazy(make(impl)) for impl in ("fastae", "fastae+compile", "eager", "compile")})

    return setup


# ---------------------------------------------------------------------------------------------- codec


def _synthetic_images(n, height, width, seed=0):
    """Smooth random RGB images, uint8 [n, 3, H, W]: low-frequency colour fields plus a little noise."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    low = torch.rand(n, 3, max(height // 32, 1), max(width // 32, 1), generator=g)
    x = F.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
    x = x + 0.03 * torch.randn(n, 3, height, width, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _folder_images(folder, n, height, width):
    """n images from ``folder`` (cycled), portrait ones transposed, centre-cropped to H x W, uint8 [n, 3, H, W]."""
    import numpy as np
    from PIL import Image

    from fastae.codec.folder import image_files

    paths = image_files(folder)
    if not paths:
        raise FileNotFoundError(f"--images {folder}: no images found")
    out = []
    for i in range(n):
        with Image.open(paths[i % len(paths)]) as img:
            a = np.asarray(img.convert("RGB"))
        if a.shape[0] > a.shape[1]:
            a = a.transpose(1, 0, 2)
        if a.shape[0] < height or a.shape[1] < width:
            raise ValueError(f"--images: {paths[i % len(paths)]} is smaller than {height} x {width}")
        top, left = (a.shape[0] - height) // 2, (a.shape[1] - width) // 2
        out.append(torch.from_numpy(np.ascontiguousarray(a[top:top + height, left:left + width])).permute(2, 0, 1))
    return torch.stack(out)


def _load_bench_codec(device, weights, notes):
    """The codec to measure: ``weights`` if given, else the shipped default model; None (with a
    note) when there is none."""
    from fastae.codec.image import DEFAULT_MODEL, load_codec, shipped_models

    if weights is None:
        if DEFAULT_MODEL not in shipped_models():
            notes.add(f"codec: no shipped codec model ({DEFAULT_MODEL} is not in fastae/codec/weights/): the "
                      "image codec rows are skipped; the entropy coder is still measured (--codec-weights FILE "
                      "measures a codec file written by `fastae train codec`)")
            return None
        codec = load_codec(quality=1, device=device)
    else:
        codec = load_codec(quality=1, weights=weights, device=device)
    return codec.with_quality(min(4, codec.model.qualities))


def codec_cases(device, quick, weights, images, notes):
    device = torch.device(device)
    cuda = device.type == "cuda"
    cases = _entropy_coder_cases(quick, notes)
    codec = _load_bench_codec(device, weights, notes)
    if codec is None:
        return cases
    height, width = KODAK_SIZE if (cuda or not quick) else (256, 384)
    runs = [(device, [1, 8] if quick else [1, 8, 32])] if cuda else [(device, [1, 2] if quick else [1, 4])]
    if cuda and not quick:
        runs.append((torch.device("cpu"), [1]))
    source = f"images from {images}" if images else "synthetic smooth images"
    notes.add(f"codec: model {codec.model_id} (hash {codec.hash.hex()}), quality {codec.quality}, {source}; "
              "MB/s counts raw RGB bytes (H x W x 3) per second; compress = encode + entropy coding to .fae bytes, "
              "decompress = .fae bytes to uint8 images on the CPU")
    for dev, batches in runs:
        impl = f"fastae-{dev.type}"
        dev_codec = codec if dev == device else _load_bench_codec(dev, weights, notes)
        for batch in batches:
            for op in ("compress", "decompress", "encode", "decode"):
                target = None
                if dev.type == "cuda" and batch > 1 and op in ("compress", "decompress") and \
                        (height, width) == KODAK_SIZE:
                    target = Target("≥150 images/s", lambda row: row["rates"]["images/s"] >= 150)
                cases.append(Case(
                    "codec", f"codec {op} batch {batch} {height}x{width} q{codec.quality}", (impl,),
                    _codec_setup(dev_codec, impl, op, batch, height, width, images),
                    rates={"images/s": batch, "MB/s": batch * height * width * 3 / 1e6}, target=target,
                    device=dev))
    return cases


def _codec_setup(codec, impl, op, batch, height, width, images):
    def setup():
        import numpy as np

        x = (_folder_images(images, batch, height, width) if images
             else _synthetic_images(batch, height, width))
        if op == "compress":
            if batch == 1:
                rgb = np.ascontiguousarray(x[0].permute(1, 2, 0).numpy())
                step = lambda: codec.compress(rgb)  # noqa: E731  (the public API, image by image)
            else:
                first = codec.compress_batch(x[:1])[0]
                if first != codec.compress(np.ascontiguousarray(x[0].permute(1, 2, 0).numpy())):
                    return Prepared({impl: "Codec.compress_batch does not match Codec.compress"})
                step = lambda: codec.compress_batch(x)  # noqa: E731
        elif op == "decompress":
            files = codec.compress_batch(x)
            if batch == 1:
                step = lambda: codec.decompress(files[0])  # noqa: E731
            else:
                mine = codec.decompress_batch(files[:1])[0].cpu().permute(1, 2, 0).numpy()
                if not np.array_equal(mine, codec.decompress(files[0])):
                    return Prepared({impl: "Codec.decompress_batch does not match Codec.decompress"})
                step = lambda: codec.decompress_batch(files).cpu()  # noqa: E731
        elif op == "encode":
            xd = x.to(codec.device)
            step = lambda: codec.encode(xd)  # noqa: E731
        else:
            latents = codec.encode(x.to(codec.device))
            step = lambda: codec.decode(latents)  # noqa: E731
        return Prepared({impl: step})

    return setup


_CODER_CHANNELS, _CODER_LENGTH = 160, 48 * 32  # one Kodak-sized latent


def coder_data():
    """The entropy coder benchmark's input: 160 Laplacian-like tables and one Kodak-sized latent of symbols."""
    import numpy as np

    from fastae.codec.tables import tables_from_pmf

    rng = np.random.default_rng(0)
    support = np.arange(-300, 301)
    scales = np.geomspace(0.3, 20, _CODER_CHANNELS)
    pmf = np.exp(-np.abs(support)[None] / scales[:, None])
    cdfs, _, sizes = tables_from_pmf(pmf, support)
    symbols = np.empty((_CODER_CHANNELS, _CODER_LENGTH), np.int32)
    for c in range(_CODER_CHANNELS):
        p = np.diff(cdfs[c])[:sizes[c]] / 65536
        symbols[c] = rng.choice(sizes[c], _CODER_LENGTH, p=p / p.sum())
    return symbols, cdfs, np.arange(_CODER_CHANNELS, dtype=np.int32)


def _entropy_coder_cases(quick, notes):
    from fastae.codec import rans

    native = rans.native_available()
    impl = "fastae-rans" if native else "python-rans"
    if not native:
        notes.add("codec: fastae._C is not loaded; the entropy coder rows are the pure-Python rANS")
    n = _CODER_CHANNELS * _CODER_LENGTH
    cases = []
    for op in ("encode", "decode"):
        cases.append(Case("codec", f"entropy coder {op} {_CODER_CHANNELS}x{_CODER_LENGTH} symbols", (impl,),
                          _coder_setup(op, impl), rates={"Msymbols/s": n / 1e6}))
    return cases


def _coder_setup(op, impl):
    def setup():
        from fastae.codec import rans

        symbols, cdfs, index = coder_data()
        stream = rans.encode(symbols, cdfs, index)
        bits = len(stream) * 8 / symbols.size
        if op == "encode":
            step = lambda: rans.encode(symbols, cdfs, index)  # noqa: E731
        else:
            step = lambda: rans.decode(stream, cdfs, index, _CODER_LENGTH)  # noqa: E731
        return Prepared({impl: step}, extra={"bits_per_symbol": bits})

    return setup


# ---------------------------------------------------------------------------------------------- pytest-benchmark


def default_device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pytest_params(suite, match=None, device=None, **options):
    """``[(case, impl)]`` of ``suite`` for the bench/ pytest-benchmark files, optionally only the cases
    whose name contains ``match``: the quick shapes on the CPU, the full ones on CUDA (``options``
    as ``build_cases``)."""
    device = torch.device(device or default_device())
    options.setdefault("quick", device.type == "cpu")
    options.setdefault("compile_on", True)
    cases = build_cases([suite], device, **options)
    return [(c, impl) for c in cases if match is None or match in c.name for impl in c.impls]


def pytest_benchmark(benchmark, case, impl, device=None, rounds=None):
    """Time ``impl`` of ``case`` with pytest-benchmark's ``benchmark`` fixture (pedantic: 3 warm-up
    calls, then ``rounds`` single calls, synchronized on CUDA); group = the case, extra_info = the
    row's figures (TFLOP/s or GB/s, rates)."""
    import pytest

    device = torch.device(device or default_device())
    step = case.setup().impls.get(impl, "not applicable here")
    if isinstance(step, str):
        pytest.skip(step)
    if isinstance(step, Lazy):
        step = step.build()

    def call():
        step()
        _sync(device)

    for _ in range(3):
        call()
    benchmark.group = case.name
    benchmark.pedantic(call, rounds=rounds or (20 if device.type == "cpu" else 100), iterations=1)
    row = _row(case, impl, {"median_s": benchmark.stats.stats.median, "q1_s": benchmark.stats.stats.q1,
                            "q3_s": benchmark.stats.stats.q3, "iqr_s": benchmark.stats.stats.iqr,
                            "min_s": benchmark.stats.stats.min, "repeats": benchmark.stats.stats.rounds,
                            "first_s": 0.0}, None, device)
    if row["tflops"] is not None:
        benchmark.extra_info["tflops_per_s"] = row["tflops"]
    if row["gbps"] is not None:
        benchmark.extra_info["GB_per_s"] = row["gbps"]
    for unit, value in row["rates"].items():
        benchmark.extra_info[unit.replace("/", "_per_")] = value


# ================================================================================================ running


def device_info(device) -> dict:
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
                codec_weights=None, images=None, notes=None):
    """The cases of ``suites`` for ``device``; ``notes`` (``_Notes``, an ordered set) collects what
    was left out and why."""
    notes = _Notes() if notes is None else notes
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


class _Notes(dict):
    def add(self, text):
        self[text] = None


def _row(case, impl, m, pk, device):
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


def _add_ratios(rows):
    base = {r["impl"]: r["median_ms"] for r in rows if r["impl"] in BASELINES and r["median_ms"]}
    for r in rows:
        for b in BASELINES:
            if b in base and r["median_ms"]:
                r[f"ratio_vs_{b}"] = base[b] / r["median_ms"]


def _judge(case, rows, device):
    """Set ``target`` and ``met`` on fastae's rows of ``case`` — on CUDA, where the issue sets the targets."""
    if case.target is None or torch.device(device).type != "cuda":
        return
    for r in rows:
        if _is_fastae(r["impl"]):
            r["target"] = case.target.text
            r["met"] = None if r["median_ms"] is None else case.target.check(r)


def run_case(case, device, settings, pk=None, progress=None):
    """Measure every impl of ``case``: its rows, with ratios to the case's own baselines and, on
    CUDA, its target and whether it was met."""
    device = torch.device(case.device or device)
    rows = []
    try:
        prepared = case.setup()
    except Exception as e:  # noqa: BLE001  (a failing case is a row that says why, not a dead run)
        prepared = Prepared({impl: f"setup failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                             for impl in case.impls})
    for impl in case.impls:
        if progress is not None:
            progress.set_postfix_str(f"{case.name} [{impl}]"[-70:], refresh=False)
        step = prepared.impls.get(impl, "not applicable here")
        row = None
        try:
            if isinstance(step, str):
                raise RuntimeError(step)
            if isinstance(step, Lazy):
                step = step.build()
            m = settings.measure(step, device)
            row = _row(case, impl, m, pk, device)
            row["extra"].update(prepared.extra)
            if case.memory == "cuda":
                row["extra"]["peak_mb"] = _cuda_peak(step, prepared.inputs, device) / 2**20
            elif case.memory == "rss" and impl in case.memory_spec["impls"]:
                row["extra"]["peak_mb"] = _rss_peak(case.memory_spec["batch"], impl) / 2**20
        except Exception as e:  # noqa: BLE001
            row = _row(case, impl, None, pk, device)
            msg = str(e).strip().splitlines()
            row["error"] = f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        step = None
        if progress is not None:
            progress.update(1)
    _add_ratios(rows)
    _judge(case, rows, device)
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
        if a not in _EAGER_ACT:
            raise ValueError(f"--activations: unknown activation {a!r}; expected some of {list(_EAGER_ACT)}")
    notes = _Notes()
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
                              if device.type == "cuda" else "time.perf_counter around each call after warm-up"),
                   "warmup": settings.warmup, "min_time_s": settings.min_time, "min_repeats": settings.min_repeats,
                   "max_repeats": settings.max_repeats,
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


# ================================================================================================ output


def _fmt_num(v, digits=3):
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
    parts = [f"{_fmt_num(v)} {unit}" for unit, v in (row.get("rates") or {}).items()]
    extra = row.get("extra") or {}
    if "peak_mb" in extra:
        parts.append(f"peak {extra['peak_mb']:.0f} MB")
    if "bits_per_symbol" in extra:
        parts.append(f"{extra['bits_per_symbol']:.2f} bits/symbol")
    return ", ".join(parts)


def _met(row):
    return {True: "met", False: "MISSED", None: "?" if row.get("target") else ""}[row.get("met")]


def row_cells(row):
    """One row's cells, as the console and markdown tables show them."""
    if row.get("median_ms") is None:
        return [row["case"], row["impl"], "", "", "", "", "", "", "", row.get("target") or "",
                "error" if row.get("target") else "", row.get("error") or ""]
    spread = "" if row.get("spread_pct") is None else f"±{row['spread_pct'] / 2:.1f}%"
    frac = "" if row.get("frac_of_peak") is None else f"{100 * row['frac_of_peak']:.0f}%"
    return [row["case"], row["impl"], f"{row['median_ms']:.4g}", spread, _throughput(row), frac,
            _fmt_ratio(row.get("ratio_vs_eager")), _fmt_ratio(row.get("ratio_vs_compile")),
            _fmt_ratio(row.get("ratio_vs_addmm_activation")), row.get("target") or "", _met(row), _rates(row)]


HEADER = ["case", "impl", "median ms", "spread", "achieved", "of peak", "vs eager", "vs compile", "vs addmm",
          "target", "met", "rate / notes"]


def format_table(result) -> str:
    """The readable fixed-width table ``fastae bench`` prints."""
    dev = result["device"]
    pk = result.get("peaks") or {}
    lines = [f"fastae bench on {dev['name']} ({dev['type']}, {dev.get('threads')} threads; torch {dev['torch']}"
             f"{', CUDA ' + str(dev['cuda']) if dev['type'] == 'cuda' else ''}), {result['timestamp']}"]
    if pk:
        matmul = ", ".join(f"{v:.3g} TFLOP/s {k}" for k, v in pk["matmul_tflops"].items())
        lines.append(f"measured peaks: matmul {matmul}; copy {pk['copy_gbps']:.3g} GB/s")
    lines.append("spread: half the interquartile range, in % of the median; vs X: X's median / this row's (>1: faster)")
    for suite in result["suites"]:
        rows = [r for r in result["rows"] if r["suite"] == suite]
        if not rows:
            continue
        cells = [row_cells(r) for r in rows]
        used = [i for i in range(len(HEADER)) if i < 3 or any(c[i] for c in cells)]
        widths = {i: max(len(HEADER[i]), *(len(c[i]) for c in cells)) for i in used}
        numeric = {2, 3, 4, 5, 6, 7, 8}
        fmt = lambda cs: "  ".join(cs[i].rjust(widths[i]) if i in numeric else cs[i].ljust(widths[i])  # noqa: E731
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


def plot_speedups(result, path):
    """A bar chart of every non-eager row's ratio to eager (log scale; 1 = eager)."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError("--plot needs matplotlib (pip install 'fastae[plot]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastae._io import atomic_path

    rows = [r for r in result["rows"] if r["impl"] != "eager" and r.get("ratio_vs_eager")]
    if not rows:
        raise ValueError("--plot: no row has a ratio to eager (no eager baseline ran)")
    labels = [f"{r['case']} [{r['impl']}]" for r in rows]
    values = [r["ratio_vs_eager"] for r in rows]
    colors = ["tab:blue" if _is_fastae(r["impl"]) else "tab:gray" for r in rows]
    from matplotlib.ticker import FuncFormatter, NullFormatter

    height = 1.2 + 0.2 * len(rows)
    fig, ax = plt.subplots(figsize=(12, height))
    y = list(range(len(rows)))
    ax.barh(y, [v - 1 for v in values], left=1, color=colors)  # bars grow from 1 (= eager) either way
    ax.set_yticks(y, labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("eager median / median (>1: faster than eager PyTorch); blue: fastae, grey: other baselines")
    dev = result["device"]
    ax.set_title(f"fastae bench, {dev['name']}, {result['timestamp'][:10]}", fontsize=9)
    fig.subplots_adjust(left=0.42, right=0.98, top=1 - 0.45 / height, bottom=0.55 / height)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


# ================================================================================================ CLI


def _csv(value):
    return [v.strip() for v in value.split(",") if v.strip()]


def add_parser(subparsers):
    """Add the ``bench`` subcommand to an argparse ``subparsers`` (fastae.cli's); its func returns an exit status."""
    p = subparsers.add_parser(
        "bench", help="throughput of fastae's fused paths beside eager PyTorch and torch.compile",
        description="Throughput of fastae's fused paths beside eager PyTorch and torch.compile, timed in one run, "
                    "with the device's matmul and copy peaks measured in the same run; see fastae/benchmark.py.")
    p.add_argument("--suite", default="all", help=f"one of {', '.join(SUITES)}, all, or a comma list (default all)")
    p.add_argument("--quick", action="store_true", help="a few small shapes, no torch.compile on the CPU (well under a minute on a 2-core CPU)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    p.add_argument("--dtype", type=_csv, help="comma list of float32, bfloat16, float16 "
                                              "(default: cuda float32,bfloat16; cpu float32)")
    p.add_argument("--activations", type=_csv, default=["relu", "gelu"],
                   help="linear_act activations, comma list or 'all' (default relu,gelu)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile rows; auto: off for --quick on the CPU, on otherwise")
    p.add_argument("--output", help="write the results JSON here (atomically)")
    p.add_argument("--plot", help="write a bar chart of the ratios to eager here (needs matplotlib)")
    p.add_argument("--codec-weights",
                   help="measure this codec file (from `fastae train codec`) instead of the shipped one")
    p.add_argument("--images", help="codec: a folder of images (e.g. Kodak) instead of synthetic ones")
    p.add_argument("--cases", action="append", metavar="TEXT",
                   help="only cases whose name contains TEXT (repeatable; case-insensitive)")
    p.add_argument("--min-time", type=float,
                   help="seconds of timed calls per row (default: quick 0.25 CPU / 0.05 CUDA; else 0.5 CPU / 0.2 CUDA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-peaks", action="store_true", help=argparse.SUPPRESS)  # tests: skip the peak measurement
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args) -> int:
    suites = SUITES if args.suite == "all" else tuple(_csv(args.suite))
    if not suites:
        raise ValueError(f"--suite: no suite named; expected {', '.join(SUITES)} or all")
    for s in suites:
        if s not in SUITES:
            raise ValueError(f"--suite: unknown suite {s!r}; expected {', '.join(SUITES)} or all")
    if args.plot and set(suites) <= {"codec"}:
        raise ValueError("--plot draws each row's ratio to eager PyTorch; the codec suite has no eager rows")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    activations = list(_EAGER_ACT) if args.activations == ["all"] else args.activations
    argv = getattr(args, "argv", None)
    command = shlex.join(["fastae", *(argv if argv is not None else sys.argv[1:])])
    result = run(suites, device, quick=args.quick, dtypes=args.dtype, activations=activations, compile=args.compile,
                 codec_weights=args.codec_weights, images=args.images, cases=args.cases, min_time=args.min_time,
                 progress=not args.no_progress, command=command, measure_peaks=not args.no_peaks)
    print(format_table(result))
    if args.output:
        from fastae._io import write_text

        write_text(args.output, json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.output}")
    if args.plot:
        print(f"wrote {plot_speedups(result, args.plot)}")
    failed = sorted({r["case"] for r in result["rows"] if "setup failed" in (r.get("error") or "")})
    if failed:  # the case could not even be prepared (e.g. --images names no image folder)
        print(f"fastae bench: setup failed for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    """``python -m fastae.benchmark ...``: the same as ``fastae bench ...``."""
    parser = argparse.ArgumentParser(prog="fastae")
    add_parser(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(["bench", *argv])
    args.argv = ["bench", *argv]
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"fastae bench: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
