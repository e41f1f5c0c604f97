"""Benchmarks of fastae.ops.gdn (GDN/IGDN) beside eager PyTorch (the 1x1 convolution of the
squares, then sqrt/rsqrt and the product, in place without gradients: fastae's GDN before the fused op), at the
shapes of a Kodak decode (inference) and of a codec training batch (forward and backward).

    pytest bench/test_gdn.py --benchmark-only --benchmark-group-by=group
    OMP_NUM_THREADS=1 pytest bench/test_gdn.py --benchmark-only --benchmark-group-by=group \\
        --benchmark-timer=time.thread_time      # one thread's CPU time: steady on a shared machine

Each group holds one (mode, shape, dtype, layout); compare the rows' medians within it.
"""

import pytest
import torch
import torch.nn.functional as F

import fastae
from fastae.ops import gdn

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DECODE = [(1, 96, 256, 384), (1, 96, 128, 192), (1, 192, 64, 96)]  # IGDN inputs of the synthesis of a 768x512 image
TRAIN = [(8, 128, 64, 64)]
FASTAE = [f"fastae-{b}" for b, (ok, _) in fastae.ops.available_backends().items() if ok and b not in ("torch", "cuda")
          and (b != "triton" or CUDA)]  # the Triton interpreter is not a speed


def _eager(x, beta, gamma, inverse):
    norm = F.conv2d(x * x, gamma[:, :, None, None].to(x.dtype), beta.to(x.dtype))
    if not torch.is_grad_enabled():
        return (norm.sqrt_() if inverse else norm.rsqrt_()).mul_(x)
    return x * torch.sqrt(norm) if inverse else x * torch.rsqrt(norm)


def _inputs(shape, dtype, layout, grad):
    g = torch.Generator().manual_seed(0)
    c = shape[1]
    x = torch.randn(shape, generator=g).to(DEVICE, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    beta = (torch.rand(c, generator=g) + 0.5).to(DEVICE).requires_grad_(grad)
    gamma = (torch.rand(c, c, generator=g) * 0.1).to(DEVICE).requires_grad_(grad)
    return x.requires_grad_(grad), beta, gamma


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _run(impl, x, beta, gamma, inverse):
    if impl == "eager":
        return _eager(x, beta, gamma, inverse)
    with fastae.ops.backend(impl.removeprefix("fastae-")):
        return gdn(x, beta, gamma, inverse)


@pytest.mark.parametrize("impl", ["eager"] + FASTAE)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", DECODE, ids=str)
def test_igdn_inference(benchmark, impl, layout, dtype, shape):
    x, beta, gamma = _inputs(shape, dtype, layout, False)

    def step():
        with torch.no_grad():
            _run(impl, x, beta, gamma, True)
        _sync()

    step()
    benchmark.group = f"igdn fwd {list(shape)} {dtype} {layout}"
    benchmark.pedantic(step, rounds=10 if DEVICE == "cpu" else 100, iterations=1)


@pytest.mark.parametrize("impl", ["eager"] + FASTAE)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", TRAIN, ids=str)
def test_gdn_training(benchmark, impl, layout, dtype, shape):
    x, beta, gamma = _inputs(shape, dtype, layout, True)
    grad = torch.randn_like(x)

    def step():
        x.grad = beta.grad = gamma.grad = None
        _run(impl, x, beta, gamma, False).backward(grad)
        _sync()

    step()
    benchmark.group = f"gdn fwd+bwd {list(shape)} {dtype} {layout}"
    benchmark.pedantic(step, rounds=5 if DEVICE == "cpu" else 50, iterations=1)
