"""The conv autoencoder's train step (forward, backward, Adam): fastae's ConvAutoencoder (with
fastae's optimizer) against the same network in plain torch.nn (torch.optim.Adam), in one
process, alternating blocks of 10 steps, wall-clock medians in ms. Freed memory is kept in the
process (fastae.keep_freed_memory(), as the `fastae` command runs) unless --default-malloc: without
it a step's activations fault in fresh pages, which costs the network that allocates more.

    python experiments/conv_ae_vs_eager.py BATCH fp32|bf16 [--rounds 5] [--default-malloc]
"""

import argparse
import statistics
import time

import torch

import fastae
from fastae.bench.train import PlainConvAutoencoder
from fastae.models import build_model
from fastae.train.fit import make_optimizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batch", type=int)
    parser.add_argument("dtype", choices=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--default-malloc", action="store_true")
    args = parser.parse_args(argv)
    if not args.default_malloc:
        fastae.keep_freed_memory()
    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28)
    amp = args.dtype == "bf16"

    def make(kind):
        if kind == "fastae":
            model = build_model("conv")
            opt = make_optimizer("adam", list(model.parameters()), lr=1e-3)
        else:
            model = PlainConvAutoencoder()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = model.loss(x)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    steps = {kind: make(kind) for kind in ("fastae", "eager")}
    for step in steps.values():
        for _ in range(5):
            step()
    times = {kind: [] for kind in steps}
    for _ in range(args.rounds):
        for kind, step in steps.items():
            t = time.perf_counter()
            for _ in range(10):
                step()
            times[kind].append((time.perf_counter() - t) / 10)
    med = {kind: 1000 * statistics.median(v) for kind, v in times.items()}
    print(f"batch {args.batch} {args.dtype}: fastae {med['fastae']:.1f} ms, eager {med['eager']:.1f} ms, "
          f"fastae {med['eager'] / med['fastae']:.2f}x eager")


if __name__ == "__main__":
    main()
