"""The MLP autoencoder's train step as `fastae train` runs it (fastae.models' MLPAutoencoder,
fastae's optimizer, fit's step: MLPAutoencoder._loss_and_grads, no autograd) against the same
network in plain torch.nn with torch.optim.Adam, eager, or (`--against autograd`) against
loss().backward() on the same model and optimizer; in one process, 31 rounds taking turns (the
order alternating), each round a block of steps per side. Prints the median ms per step and the
median (and quartiles) of the per-round ratios other / fastae, which a slow phase of the machine
shared by both sides of a round does not move.

Where a model's tensors land in memory moves its step by a few percent: three identical
MLPAutoencoders stepped in turns in one process measured 3.35 / 3.21 / 3.10 ms at batch 256
(another run 3.40 / 3.32 / 3.29), the first built the slowest. `--against eager` compares two
models and carries that; `--against autograd` steps one model both ways and does not.

    python experiments/mlp_step_ab.py 1,16,256,4096 [--dtype fp32|bf16] [--against eager|autograd]
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
parser.add_argument("--against", choices=("eager", "autograd"), default="eager",
                    help="eager: plain torch.nn and torch.optim.Adam; autograd: the same model's loss().backward()")
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


def autograd_step(model, opt, x):
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
    fo = make_optimizer("adam", list(fm.parameters()), lr=1e-3)
    if args.against == "autograd":
        other = autograd_step(fm, fo, x)
    else:
        em = PlainMLPAutoencoder()
        other = autograd_step(em, torch.optim.Adam(em.parameters(), lr=1e-3), x)
    steps = {"fastae": fastae_step(fm, fo, x), args.against: other}
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
    other = args.against
    ratios = sorted(e / f for e, f in zip(ms[other], ms["fastae"]))
    print(f"batch {batch} {dtype}: fastae {sorted(ms['fastae'])[15]:.3f} ms, {other} {sorted(ms[other])[15]:.3f} ms; "
          f"{other} / fastae per round: median {ratios[15]:.3f} (quartiles {ratios[7]:.3f}-{ratios[23]:.3f})")
