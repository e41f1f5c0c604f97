"""How much a widened codec uses its new channels: per layer, the mean norm of the weights through
which the old channels and the new ones act (the new ones start at zero or 1/100 of a fresh
layer's, fastae.train.widen), and the mean log-gain of the old and new latents per quality.

    python experiments/widened_channels.py --narrow tests/data/codec/fastae-checkerboard-v4.safetensors \
        --wide /work/runs/codec-w2/model.safetensors

--wide: a codec file or a training checkpoint's model.safetensors.
"""

import argparse

import torch

from fastae._io import read_safetensors


def _model_tensors(path):
    tensors = read_safetensors(path)
    if any(k.startswith("model.") for k in tensors):  # a codec file
        tensors = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    return {k: v.float() for k, v in tensors.items()}


def _norms(w, dim):
    """Norm of each slice of w along dim (the weights of one channel)."""
    return w.transpose(0, dim).flatten(1).norm(dim=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--narrow", required=True)
    parser.add_argument("--wide", required=True)
    args = parser.parse_args(argv)
    narrow, wide = _model_tensors(args.narrow), _model_tensors(args.wide)
    print("layer: mean channel-weight norm, old channels / new channels (the narrow model's)")
    for name in sorted(k for k in wide if k.endswith(".weight") and k.startswith(("g_a.", "g_s.")) and wide[k].dim() == 4):
        w, v = wide[name], narrow[name]
        transposed = name.startswith("g_s.")  # ConvTranspose2d: [in, out, k, k]
        out_dim, in_dim = (1, 0) if transposed else (0, 1)
        parts = []
        for what, dim in (("outputs", out_dim), ("inputs", in_dim)):
            old = v.shape[dim]
            if w.shape[dim] > old:
                n = _norms(w, dim)
                parts.append(f"{what} {n[:old].mean():.3f} / {n[old:].mean():.3f} (narrow {_norms(v, dim).mean():.3f})")
        if parts:
            print(f"  {name} {list(v.shape)} -> {list(w.shape)}: " + "; ".join(parts))
    old = narrow["log_gain"].shape[1]
    for q in range(wide["log_gain"].shape[0]):
        g = wide["log_gain"][q]
        print(f"  quality {q + 1}: mean log-gain old latents {g[:old].mean():.2f}, new {g[old:].mean():.2f}")


if __name__ == "__main__":
    main()
