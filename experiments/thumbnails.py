"""Write small crops (thumbnails) of a folder of photographs: the case where a .fae file's header
is a large share of its size (issue 24: ML datasets are full of 32x32 to 256x256 images).

    python experiments/other_photos.py /tmp/other-photos
    python experiments/thumbnails.py /tmp/other-photos /tmp/crops64 --size 64 --per-image 6
    fastae eval --data /tmp/crops64 --references webp jpeg avif --output crops64.json

Crops are taken at seeded random positions (seed = the running crop count), 6 per image by default.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from fastae.data import list_images, read_rgb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="a folder of photographs")
    parser.add_argument("dst", help="the folder for the crops (PNG)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--per-image", type=int, default=6)
    args = parser.parse_args(argv)
    out = Path(args.dst)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for path in list_images(args.src):
        a = read_rgb(path)
        h, w = a.shape[:2]
        if h < args.size or w < args.size:
            continue
        rng = np.random.default_rng(n)
        for k in range(args.per_image):
            y, x = rng.integers(0, h - args.size + 1), rng.integers(0, w - args.size + 1)
            Image.fromarray(a[y:y + args.size, x:x + args.size]).save(out / f"{path.stem}-{k}.png")
            n += 1
    print(f"wrote {n} crops of {args.size}x{args.size} to {out}")


if __name__ == "__main__":
    main()
