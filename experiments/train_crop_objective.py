"""The rate-distortion objective of codec files on 16 fixed training crops: 256x256 crops (seed
123) of ../shared/data/photos-train downscaled 2x, coded with rounded latents (noise=False); per
file the sum over its qualities of lambda * 255^2 * MSE + bpp, and each quality's bpp / PSNR. The
measure docs/codec-history.md compares encoder fine-tunes by (v8: 20.762).

    python experiments/train_crop_objective.py A.safetensors[,B.safetensors...] [THREADS]
"""
import sys

import torch

from fastae.codec.model_file import read_model_file
from fastae.train.codec import load_photos, random_crops


def main(argv):
    torch.set_num_threads(int(argv[1]) if len(argv) > 1 else 2)
    photos = load_photos("../shared/data/photos-train", 2, min_side=256)
    x = random_crops(photos, 16, 256, torch.Generator().manual_seed(123))
    for path in argv[0].split(","):
        model = read_model_file(path)[0].float().eval()
        total, rows = 0.0, []
        with torch.no_grad():
            for q in range(1, model.qualities + 1):
                out = model(x, q, noise=False)
                mse = torch.mean((out["x_hat"].clamp(0, 1) - x) ** 2)
                total += float(model.lambdas[q - 1] * 255 ** 2 * mse + out["bpp"])
                rows.append(f"q{q} {float(out['bpp']):.3f}/{float(-10 * torch.log10(mse)):.2f}")
        print(path, f"{total:.4f}", " ".join(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
