"""The MLP autoencoder's train step as `fastae train` runs it (fastae.models' MLPAutoencoder,
fastae's optimizer, fit's step: MLPAutoencoder._loss_and_grads, no autograd) against the same
network in plain torch.nn with torch.optim.Adam, eager; in one process, 31 rounds taking turns
(the order alternating), each round a block of steps per side. Prints the median ms per step and
the median (and quartiles) of the per-round ratios eager / fastae, which a slow phase of the
machine shared by both sides of a round does not move.

    python experiments/mlp_step_ab.py 1,16,256,4096 [--dtype fp32|bf16]
"""
import argparse
import time

import torch

import fastae
from fastae.bench.train import PlainMLPAutoencoder
from fastae.models import build_model
from fastae.train.fit import make_optimizer

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("batches", help="comma-separated batch sizes, e.g. 256,4096")
parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: both sides under autocast")
args = parser.parse_args()
fastae.keep_freed_memory()
dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
amp = dtype != torch.float32


def fastae_step(model, opt, x):
    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype, enabled=amp):
            terms = model._loss_and_grads(x)
            if terms is None:
                loss = model.loss(x)["loss"]
        if terms is None:
            loss.backward()
        opt.step()
    return step


def eager_step(model, opt, x):
    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=amp):
            loss = model.loss(x)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


for batch in [int(b) for b in args.batches.split(",")]:
    torch.manual_seed(0)
    x = torch.rand(batch, 784)
    fm = build_model("mlp")
    em = PlainMLPAutoencoder()
    steps = {"fastae": fastae_step(fm, make_optimizer("adam", list(fm.parameters()), lr=1e-3), x),
             "eager": eager_step(em, torch.optim.Adam(em.parameters(), lr=1e-3), x)}
    for f in steps.values():
        f(), f()
    n = max(2, min(50, 6000 // batch))
    ms = {k: [] for k in steps}
    for r in range(31):
        for name, f in (steps.items() if r % 2 else reversed(steps.items())):
            began = time.perf_counter()
            for _ in range(n):
                f()
            ms[name].append((time.perf_counter() - began) / n * 1e3)
    ratios = sorted(e / f for e, f in zip(ms["eager"], ms["fastae"]))
    print(f"batch {batch} {dtype}: fastae {sorted(ms['fastae'])[15]:.3f} ms, eager {sorted(ms['eager'])[15]:.3f} ms; "
          f"eager / fastae per round: median {ratios[15]:.3f} (quartiles {ratios[7]:.3f}-{ratios[23]:.3f})")
