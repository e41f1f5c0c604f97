"""Training throughput: one MLP-AE train step (784-128-64-128-784, ReLU, sigmoid, MSE, Adam) with
fastae's fused modules beside the same model in plain torch.nn, eager and torch.compile.

    pytest bench/test_train_step.py --benchmark-only --benchmark-group-by=group

extra_info["samples_per_s"] is batch / median step time.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastae.models import MLPAutoencoder

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
BATCHES = [256, 4096] if not CUDA else [256, 4096, 65536]
DTYPES = [torch.float32] if not CUDA else [torch.float32, torch.bfloat16]


class PlainAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                                 nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 784), nn.Sigmoid())

    def loss(self, x, phase="ae"):
        return {"loss": F.mse_loss(self.net(x), x)}


def _step_fn(impl):
    torch.manual_seed(0)
    model = (MLPAutoencoder() if impl.startswith("fastae") else PlainAE()).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if impl.endswith("compile"):
        torch._dynamo.reset()  # each benchmark compiles afresh
    loss_fn = torch.compile(model.loss) if impl.endswith("compile") else model.loss
    return model, opt, loss_fn


@pytest.mark.parametrize("impl", ["torch-eager", "torch-compile", "fastae", "fastae-compile"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", BATCHES)
def test_mlp_ae_train_step(benchmark, impl, dtype, batch):
    model, opt, loss_fn = _step_fn(impl)
    x = torch.rand(batch, 784, device=DEVICE)
    amp = dtype != torch.float32

    def step():
        with torch.autocast(DEVICE, dtype=dtype, enabled=amp):
            loss = loss_fn(x)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if CUDA:
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    benchmark.group = f"mlp-ae train step batch {batch} {str(dtype).removeprefix('torch.')}"
    benchmark.pedantic(step, rounds=20 if DEVICE == "cpu" else 100, iterations=1)
    benchmark.extra_info["samples_per_s"] = batch / benchmark.stats.stats.median
