"""Widen a codec's analysis transform by splitting channels (Net2WiderNet), not by adding silent ones.

    python experiments/split_widen.py INIT.safetensors OUT.safetensors --widths 128 192 256 [--seed 0]

fastae.train.widen.widen_analysis adds new channels that the old ones read through zeros: training
against the frozen decoder then never took them into use (docs/codec-history.md, "A wider analysis
transform for v8's decoder"). Here every new channel is a copy of an existing one (a random
permutation of the old channels, repeated while more are needed), so it carries signal from the
first step, and the layer after it reads each group of copies through the old weights split
among them in random shares per entry (they sum to the old weight: the function is unchanged
up to float rounding). The shares differ between the copies, so their gradients differ and they
can drift apart. GDN between the layers: a copy is normalized as its source is (beta, gamma row),
and the old channels' sums read each group of copies through the old gamma divided by the copy
count (the copies' squares are equal, so the sums are unchanged).

The output is an ordinary codec file whose decoder tensors are INIT's bit for bit (checked); train
its encoder with `fastae train codec --encoder-only --init OUT.safetensors` (no --analysis-widths:
every weight is an old one now). Prints the largest difference of the latents against INIT's on a
few random crops of the training photos.
"""

import argparse
import sys
from pathlib import Path

import torch

from fastae._io import read_safetensors
from fastae.codec.model_file import read_model_file
from fastae.train.encoder import _export_checked
from fastae.train.widen import widen_analysis


def _mapping(old: int, new: int, generator) -> torch.Tensor:
    """Source channel of each of ``new`` channels: 0..old-1, then a random permutation repeated."""
    extra = new - old
    perm = torch.cat([torch.randperm(old, generator=generator) for _ in range(-(-extra // old))]) if extra else \
        torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(old), perm[:extra]])


def _shares(source: torch.Tensor, shape, generator) -> torch.Tensor:
    """Random positive shares [shape] along dim 1 (the copies of each source channel sum to 1)."""
    raw = torch.rand(shape, generator=generator) * 0.8 + 0.2  # in [0.2, 1.0): no copy starts silent
    sums = torch.zeros(shape[0], int(source.max()) + 1, *shape[2:]).index_add_(1, source, raw)
    return raw / sums.index_select(1, source)


def _gdn_param(effective: torch.Tensor, gdn) -> torch.Tensor:
    return torch.sqrt(effective + gdn.pedestal)


def _gdn_effective(param: torch.Tensor, bound: float, gdn) -> torch.Tensor:
    return torch.clamp(param, min=bound) ** 2 - gdn.pedestal


def split_analysis(model, widths, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    wide = widen_analysis(model, widths, seed=seed)  # the structure, and a copy of everything but g_a
    old, new = model.g_a, wide.g_a
    maps = [_mapping(o, n, generator) for o, n in zip(model.analysis_widths, widths)]
    inputs = torch.arange(model.channels)
    with torch.no_grad():
        for layer, (conv_i, gdn_i) in enumerate(((0, 1), (2, 3), (4, 5), (6, None))):
            src_in = inputs
            src_out = maps[layer] if layer < 3 else torch.arange(model.M)
            w = old[conv_i].weight.float()[src_out][:, src_in]
            if layer > 0:  # the inputs are copies: split the old weight among them
                w = w * _shares(src_in, w.shape, generator)
            new[conv_i].weight.copy_(w)
            new[conv_i].bias.copy_(old[conv_i].bias.float()[src_out])
            if gdn_i is not None:
                g_old, g_new = old[gdn_i], new[gdn_i]
                beta = _gdn_effective(g_old.beta.float(), g_old.beta_bound, g_old)
                gamma = _gdn_effective(g_old.gamma.float(), g_old.gamma_bound, g_old)
                counts = torch.bincount(src_out, minlength=len(beta)).float()
                g_new.beta.copy_(_gdn_param(beta[src_out], g_old))
                g_new.gamma.copy_(_gdn_param(gamma[src_out][:, src_out] / counts[src_out][None, :], g_old))
            inputs = src_out
    return wide


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("init")
    p.add_argument("out")
    p.add_argument("--widths", type=int, nargs=3, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-id", default="fastae-checkerboard-split")
    p.add_argument("--data", default="../shared/data/photos-train")
    args = p.parse_args(argv)
    model, _, _ = read_model_file(args.init)
    model = model.float().eval()
    try:
        wide = split_analysis(model, args.widths, args.seed).eval()
    except ValueError as e:  # widen_analysis names a width below the model's
        sys.exit(str(e))
    from fastae.train.codec import load_photos, random_crops

    photos = load_photos(args.data, 2, min_side=256)
    x = random_crops(photos, 4, 256, torch.Generator().manual_seed(1))
    with torch.no_grad():
        for q in (1, model.qualities):
            a, b = model.analysis(x, q), wide.analysis(x, q)
            print(f"quality {q}: latents max |diff| {float((a - b).abs().max()):.2e} (max |latent| "
                  f"{float(a.abs().max()):.1f}), rounded differently: {int((a.round() != b.round()).sum())} of {a.numel()}")
    init_tensors = read_safetensors(args.init)
    dtype = "float16" if init_tensors["model.g_s.0.weight"].dtype == torch.float16 else "float32"
    out = Path(args.out)
    _export_checked(wide, out, args.model_id, dtype, args.init, init_tensors)  # refuses a changed decoder
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
