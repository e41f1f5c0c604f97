"""What a float32 copy of a bf16 reconstruction costs the MLP autoencoder's train step under bf16
autocast: the step (fused_mlp forward, reconstruction_loss, backward, fused Adam) with the loss
fed ``x_hat.float()`` (as fastae's models did before reconstruction_loss took a target of
another dtype) against ``x_hat`` as it is, in one process, alternating rounds; ms per step.

    python experiments/recon_loss_copy_ab.py BATCH [--rounds 4]
"""

import argparse
import time

import torch

import fastae
from fastae.models import build_model
from fastae.models.base import full_precision
from fastae.ops import fused_mlp, reconstruction_loss
from fastae.train.fit import make_optimizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batch", type=int)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    fastae.keep_freed_memory()  # as the `fastae` command runs
    torch.manual_seed(0)
    model = build_model("mlp")
    opt = make_optimizer("adam", list(model.parameters()), lr=1e-3)
    x = torch.rand(args.batch, 784)
    layers = [*model.encoder.layers, *model.decoder.layers]

    def step(copy):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x_hat = fused_mlp(x, [m.weight for m in layers], [m.bias for m in layers],
                              [m.activation for m in layers])
            with full_precision(x.device):
                loss = reconstruction_loss(x_hat.float() if copy else x_hat, x, "mse", "mean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    n = max(3, 200_000 // args.batch)
    for _ in range(2):
        step(True)
        step(False)
    times = {True: [], False: []}
    for _ in range(args.rounds):
        for copy in (True, False):
            began = time.perf_counter()
            for _ in range(n):
                step(copy)
            times[copy].append((time.perf_counter() - began) / n * 1e3)
    for copy, label in ((True, "x_hat.float()"), (False, "x_hat as it is")):
        print(f"batch {args.batch} bf16, {label:15s}: " + " ".join(f"{t:.2f}" for t in times[copy])
              + f" ms per step (min {min(times[copy]):.2f})")


if __name__ == "__main__":
    main()
