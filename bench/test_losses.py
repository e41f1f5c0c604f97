"""Benchmarks of the fused losses beside eager PyTorch and torch.compile (fwd+bwd), and the
peak memory of linear_bce_loss beside eager linear + BCE.

    pytest bench/test_losses.py --benchmark-only --benchmark-group-by=group

GB/s counts the least traffic any fwd+bwd must make: read input and target, write the gradient.
"""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fastae
from fastae.ops import gaussian_kl, reconstruction_loss

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
SIZES = [(1024, 1024), (16384, 1024), (65536, 1024)] if CUDA else [(1024, 1024), (8192, 784)]
FASTAE = [f"fastae-{b}" for b, (ok, _) in fastae.ops.available_backends().items()
          if ok and b != "torch" and (b != "triton" or CUDA)]  # the Triton interpreter is not a speed
EAGER = {
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "bce": F.binary_cross_entropy,
    "bce_logits": F.binary_cross_entropy_with_logits,
}


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _impl(name, eager):
    if name == "eager":
        return eager
    if name == "compile":
        torch._dynamo.reset()  # each benchmark compiles afresh: the same code object, other shapes
        return torch.compile(eager, fullgraph=True)
    return None


def _bench(benchmark, group, nbytes, step):
    for _ in range(3):  # warm-up: compilation, autotuning, allocator
        step()
    benchmark.group = group
    benchmark.pedantic(step, rounds=20 if DEVICE == "cpu" else 100, iterations=1)
    benchmark.extra_info["GB_per_s"] = nbytes / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("impl", ["eager", "compile"] + FASTAE)
@pytest.mark.parametrize("kind", list(EAGER))
@pytest.mark.parametrize("rows, cols", SIZES, ids=lambda v: str(v))
def test_reconstruction_loss(benchmark, impl, kind, rows, cols):
    torch.manual_seed(0)
    x = (torch.rand if kind == "bce" else torch.randn)(rows, cols, device=DEVICE).requires_grad_()
    t = torch.rand(rows, cols, device=DEVICE)
    fn = _impl(impl, EAGER[kind])
    backend = impl.removeprefix("fastae-")

    def step():
        x.grad = None
        if fn is None:
            with fastae.ops.backend(backend):
                loss = reconstruction_loss(x, t, kind)
        else:
            loss = fn(x, t)
        loss.backward()
        _sync()

    _bench(benchmark, f"{kind} fwd+bwd {rows}x{cols}", 3 * x.numel() * x.element_size(), step)


def _kl_eager(mu, logvar):
    return -0.5 * (1 + logvar - mu * mu - logvar.exp()).sum() / mu.shape[0]


@pytest.mark.parametrize("impl", ["eager", "compile"] + FASTAE)
@pytest.mark.parametrize("rows, cols", SIZES, ids=lambda v: str(v))
def test_gaussian_kl(benchmark, impl, rows, cols):
    mu = torch.randn(rows, cols, device=DEVICE, requires_grad=True)
    logvar = torch.randn(rows, cols, device=DEVICE, requires_grad=True)
    fn = _impl(impl, _kl_eager)
    backend = impl.removeprefix("fastae-")

    def step():
        mu.grad = logvar.grad = None
        if fn is None:
            with fastae.ops.backend(backend):
                loss = gaussian_kl(mu, logvar)
        else:
            loss = fn(mu, logvar)
        loss.backward()
        _sync()

    _bench(benchmark, f"gaussian_kl fwd+bwd {rows}x{cols}", 4 * mu.numel() * mu.element_size(), step)


_PEAK_SCRIPT = """
import resource, sys, torch, torch.nn.functional as F, fastae
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the inputs exist
batch, hidden, out = {batch}, 128, 784
h = torch.randn(batch, hidden, device="{device}", requires_grad=True)
w = (torch.randn(out, hidden, device="{device}") / hidden**0.5).requires_grad_()
b = torch.zeros(out, device="{device}", requires_grad=True)
t = (torch.rand(batch, out, device="{device}") > 0.5).float()
if "{device}" == "cuda":
    torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
else:  # the high-water mark of resident memory, less the inputs
    base += sum(v.numel() * v.element_size() for v in (h, w, b, t))
if "{impl}" == "eager":
    F.binary_cross_entropy_with_logits(F.linear(h, w, b), t).backward()
else:
    fastae.ops.linear_bce_loss(h, w, b, t).backward()
if "{device}" == "cuda":
    torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated() - base
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
print(peak)
"""


@pytest.mark.parametrize("impl", ["eager", "fastae"])
def test_linear_bce_loss_peak_memory(benchmark, impl):
    """Peak memory above the inputs of one fwd+bwd at 65536x128->784 (CPU: growth of the peak
    resident memory, in a fresh process each), in extra_info; the time is the whole subprocess's."""
    batch = 65536
    code = _PEAK_SCRIPT.format(batch=batch, device=DEVICE, impl=impl)
    result = {}

    def run():
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        result["peak"] = int(out.split()[-1])

    benchmark.group = f"linear_bce_loss peak memory {batch}x128->784"
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["peak_MB"] = result["peak"] / 2**20
