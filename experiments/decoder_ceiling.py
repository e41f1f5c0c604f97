"""How well a codec's synthesis can decode at all: the PSNR of g_s fed latents optimized for one
image (Adam on the unquantized latents against the MSE alone, from the analysis' own), beside g_s
fed the analysis' latents unquantized and rounded. The gap between the first two is what a better
encoder could gain; the first is an upper bound of what this decoder gives at that quality.

    python experiments/decoder_ceiling.py --data ../shared/data/kodak --images 3 --qualities 8 [--weights FILE]

Center crops of --crop pixels (the optimization runs the synthesis forward and backward --steps
times per image and quality: about 30 s for a 256x256 crop at 300 steps on two cores).
"""

import argparse
import time

import torch

import fastae
from fastae.data import list_images, read_rgb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--weights", help="a codec file (default: the shipped model)")
    parser.add_argument("--images", type=int, default=3, help="the first N images")
    parser.add_argument("--qualities", type=int, nargs="+", default=[8])
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args(argv)
    model = fastae.load_codec(quality=1, weights=args.weights).model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    paths = list_images(args.data)[:args.images]
    if not paths:
        parser.error(f"no images in {args.data}")

    def psnr(y, x, q):
        with torch.no_grad():
            return -10 * float(torch.log10(((model.synthesis(y, q).clamp(0, 1) - x) ** 2).mean()))

    for path in paths:
        x = torch.from_numpy(read_rgb(path)).permute(2, 0, 1)[None].float() / 255
        h, w = x.shape[-2:]
        c = args.crop // 2
        x = x[..., h // 2 - c:h // 2 + c, w // 2 - c:w // 2 + c]
        for q in args.qualities:
            with torch.no_grad():
                y0 = model.analysis(x, q)
            y = y0.clone().requires_grad_(True)
            opt = torch.optim.Adam([y], lr=args.lr)
            began = time.monotonic()
            for _ in range(args.steps):
                opt.zero_grad()
                ((model.synthesis(y, q) - x) ** 2).mean().backward()
                opt.step()
            print(f"{path.name} quality {q}: analysis' latents rounded {psnr(torch.round(y0), x, q):.2f} dB, "
                  f"unquantized {psnr(y0, x, q):.2f} dB; optimized for the image {psnr(y.detach(), x, q):.2f} dB "
                  f"({args.steps} steps, {time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
