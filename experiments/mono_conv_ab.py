"""fastae.ops.mono_conv against oneDNN (torch's convolutions) for the conv autoencoder's one-channel
layers: the three kernels alone at the model's shapes, and the whole train step (forward,
backward, fastae's Adam) of fastae's ConvAutoencoder as built (MonoConv2d / MonoConvTranspose2d)
against the same model with those two layers as nn.Conv2d / nn.ConvTranspose2d (same weights),
and the plain torch.nn network eager, in one process, taking turns (fastae.bench.timing.measure_interleaved;
kernels: 5 rounds; steps: --rounds rounds of 10 steps, 2 at batches above 256); medians in ms.
fastae.keep_freed_memory() first, as the fastae command runs.

    python experiments/mono_conv_ab.py BATCH fp32|bf16 [--rounds 7]
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import fastae
from fastae.bench.timing import measure_interleaved
from fastae.bench.train import PlainConvAutoencoder
from fastae.models import build_model
from fastae.nn import MonoConv2d, MonoConvTranspose2d
from fastae.train.fit import make_optimizer


def _as_torch_layers(model):
    """The model with its Mono layers replaced by the torch modules they derive from (same weights)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, (MonoConv2d, MonoConvTranspose2d)):
                base = nn.Conv2d(1, child.out_channels, 3, 2, 1) if isinstance(child, MonoConv2d) else \
                    nn.ConvTranspose2d(child.in_channels, 1, 3, 2, 1, output_padding=child.output_padding)
                base.load_state_dict(child.state_dict())
                setattr(parent, name, base.to(memory_format=torch.channels_last))
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batch", type=int)
    parser.add_argument("dtype", choices=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    fastae.keep_freed_memory()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    B = args.batch

    torch.manual_seed(0)
    img = torch.rand(B, 1, 28, 28, dtype=dtype)
    w = (torch.randn(32, 1, 3, 3) / 3).to(dtype)
    w_cl = w.contiguous(memory_format=torch.channels_last)
    b32, b1 = torch.randn(32, dtype=dtype), torch.randn(1, dtype=dtype)
    x = torch.randn(B, 32, 14, 14, dtype=dtype).contiguous(memory_format=torch.channels_last)
    ops = torch.ops.fastae_C
    kernels = {
        "1->32 forward": (lambda: ops.mono_conv_fwd(img, w, b32), lambda: F.conv2d(img, w_cl, b32, 2, 1)),
        "32->1 forward": (lambda: ops.mono_conv_tfwd(x, w, b1, 28, 28),
                          lambda: F.conv_transpose2d(x, w, b1, 2, 1, 1)),
        "weight gradient": (lambda: ops.mono_conv_wgrad(x, img),
                            lambda: torch.ops.aten.convolution_backward(x, img, w_cl, [32], [2, 2], [1, 1], [1, 1],
                                                                        False, [0, 0], 1, [False, True, True])),
    }
    for name, (mine, onednn) in kernels.items():  # taking turns, as fastae bench times on the CPU
        got, _ = measure_interleaved({"mine": mine, "onednn": onednn}, min_time=1.0, min_repeats=10, rounds=5)
        print(f"batch {B} {args.dtype} {name}: mono_conv {got['mine']['median_s'] * 1e3:.3f} ms, "
              f"oneDNN {got['onednn']['median_s'] * 1e3:.3f} ms")

    x = torch.rand(B, 1, 28, 28)
    amp = args.dtype == "bf16"

    def make(kind):
        torch.manual_seed(0)
        if kind == "eager":
            model = PlainConvAutoencoder()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        else:
            model = build_model("conv")
            if kind == "fastae, oneDNN layers":
                model = _as_torch_layers(model)
            opt = make_optimizer("adam", list(model.parameters()), lr=1e-3)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = model.loss(x)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    steps = {kind: make(kind) for kind in ("fastae", "fastae, oneDNN layers", "eager")}
    per_round = 10 if B <= 256 else 2
    got, _ = measure_interleaved(steps, warmup=3, min_time=0.0, min_repeats=per_round * args.rounds,
                                 rounds=args.rounds)
    med = {kind: m["median_s"] * 1e3 for kind, m in got.items()}
    print(f"batch {B} {args.dtype} train step: " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items())
          + f"; fastae {med['eager'] / med['fastae']:.2f}x eager, "
          f"{med['fastae, oneDNN layers'] / med['fastae']:.2f}x its oneDNN layers")


if __name__ == "__main__":
    main()
