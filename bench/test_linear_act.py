"""Benchmarks of fastae.ops.linear_act beside eager PyTorch, torch.compile and
torch._addmm_activation, at autoencoder shapes.

    pytest bench/test_linear_act.py --benchmark-only --benchmark-group-by=group

Each group holds one (mode, activation, shape, dtype); compare the rows' medians within it.
On CPU the largest batch is left out and only fp32 runs; on a GPU every backend and dtype runs.
"""

import pytest
import torch
import torch.nn.functional as F

import fastae
from fastae.ops import linear_act

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
BATCHES = [256, 4096, 65536] if CUDA else [256, 4096]
LAYERS = [(784, 128), (128, 64), (64, 128), (128, 784)]
ACTS = ["relu", "gelu"]
DTYPES = [torch.float32, torch.bfloat16] if CUDA else [torch.float32]
FASTAE = [f"fastae-{b}" for b, (ok, _) in fastae.ops.available_backends().items() if ok and b != "torch"
          and (b != "triton" or CUDA)]  # the Triton interpreter is not a speed


def _eager(act):
    return lambda x, w, b: getattr(F, act)(F.linear(x, w, b))


def _impl(name, act, mode):
    if name == "eager":
        return _eager(act)
    if name == "compile":
        torch._dynamo.reset()  # each benchmark compiles afresh: the same code object, other shapes
        return torch.compile(_eager(act), fullgraph=True)
    if name == "addmm_activation":
        if mode != "fwd":
            pytest.skip("torch._addmm_activation has no backward")
        if act == "gelu" and CUDA:  # cuBLASLt's GELU epilogue
            pytest.skip("_addmm_activation's CUDA gelu is the tanh approximation")
        return lambda x, w, b: torch._addmm_activation(b, x, w.t(), use_gelu=act == "gelu")
    backend = name.removeprefix("fastae-")

    def run(x, w, b):
        with fastae.ops.backend(backend):
            return linear_act(x, w, b, act)

    return run


def _sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", ["eager", "compile", "addmm_activation"] + FASTAE)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("in_f, out_f", LAYERS, ids=lambda v: str(v))
@pytest.mark.parametrize("batch", BATCHES)
def test_linear_act(benchmark, impl, mode, dtype, act, in_f, out_f, batch):
    torch.manual_seed(0)
    x = torch.randn(batch, in_f, device=DEVICE, dtype=dtype, requires_grad=mode != "fwd")
    w = (torch.randn(out_f, in_f, device=DEVICE, dtype=dtype) * in_f**-0.5).requires_grad_(mode != "fwd")
    b = torch.zeros(out_f, device=DEVICE, dtype=dtype, requires_grad=mode != "fwd")
    grad = torch.randn(batch, out_f, device=DEVICE, dtype=dtype)
    fn = _impl(impl, act, mode)

    def step():
        if mode == "fwd":
            with torch.no_grad():
                fn(x, w, b)
        else:
            x.grad = w.grad = b.grad = None
            fn(x, w, b).backward(grad)
        _sync()

    for _ in range(3):  # warm-up: compilation, autotuning, allocator
        step()
    benchmark.group = f"{mode} {act} {batch}x{in_f}->{out_f} {str(dtype).removeprefix('torch.')}"
    flops = 2 * batch * in_f * out_f * (1 if mode == "fwd" else 3)
    benchmark.pedantic(step, rounds=20 if DEVICE == "cpu" else 100, iterations=1)
    benchmark.extra_info["tflops_per_s"] = flops / benchmark.stats.stats.median / 1e12
