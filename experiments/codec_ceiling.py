"""How much of a codec's distortion comes from quantization, and how much from its transforms.

For each quality, the mean PSNR over a folder of images of the synthesis fed the unquantized
latents, g_s(g_a(x)), beside the synthesis fed the rounded ones (what the codec decodes, before
the 8-bit rounding). When the two meet, a finer quantization buys little: the transforms set the
ceiling.

    python experiments/codec_ceiling.py --data ../shared/data/kodak [--weights FILE] [--qualities 1 4 8]
"""

import argparse

import numpy as np
import torch

import fastae
from fastae.data import list_images, read_rgb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder of images, e.g. ../shared/data/kodak")
    parser.add_argument("--weights", help="a codec file (default: the shipped model)")
    parser.add_argument("--qualities", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args(argv)
    codec = fastae.load_codec(quality=1, weights=args.weights)
    model = codec.model
    paths = list_images(args.data)
    if not paths:
        parser.error(f"no images in {args.data}")
    psnr = {q: ([], []) for q in args.qualities}
    for path in paths:
        x = torch.from_numpy(read_rgb(path)).permute(2, 0, 1)[None].float() / 255
        h, w = x.shape[-2:]
        xp = codec._pad(x)  # edge-replicated to the model's stride, as compress does
        with torch.no_grad():
            for q in args.qualities:
                free = model.synthesis(model.analysis(xp, q), q)[..., :h, :w].clamp(0, 1)
                rounded = codec.decode(codec.encode(x, q), dtype=torch.float32)  # as decompress, mean-shifted rounding included
                for i, x_hat in enumerate((free, rounded)):
                    psnr[q][i].append(-10 * float(torch.log10(((x_hat - x) ** 2).mean())))
    for q, (free, rounded) in psnr.items():
        print(f"quality {q}: unquantized latents {np.mean(free):.2f} dB, rounded latents {np.mean(rounded):.2f} dB "
              f"(mean over {len(free)} images)")


if __name__ == "__main__":
    main()
