"""Does a codec's rate depend on the size of the image it codes? The same pixels, coded whole and in tiles.

The top-left 512x512 of every image of a folder is compressed as one image, as four 256x256 tiles
and as sixteen 128x128 tiles; for each tile size and quality the script prints the bits per pixel
of the coded streams (the entropy-coded payload, without the .fae header, which would make small
tiles look dearer for every model alike) and the PSNR. An entropy model that generalizes codes
the tiles at about the same rate at every size; fastae-checkerboard-v2, trained on 128x128
crops, did not (the README's "Measured on Kodak").

    python experiments/codec_tile_rate.py --data ../shared/data/kodak [--weights FILE ...] [--qualities 4 8]
"""

import argparse

import numpy as np

import fastae
from fastae.codec.eval import psnr
from fastae.data import list_images, read_rgb
from fastae.codec.format import unpack

SIZE = 512
TILES = (512, 256, 128)


def tile_rates(codec, images, tiles=TILES) -> dict:
    """{tile size: (payload bits per pixel, mean PSNR over the tiles)} for the SIZE x SIZE ``images``."""
    out = {}
    for t in tiles:
        bits = pixels = 0
        scores = []
        for rgb in images:
            for i in range(0, SIZE, t):
                for j in range(0, SIZE, t):
                    tile = np.ascontiguousarray(rgb[i:i + t, j:j + t])
                    data = codec.compress(tile)
                    bits += 8 * sum(len(s) for s in unpack(data)[1])
                    pixels += t * t
                    scores.append(psnr(tile, codec.decompress(data)))
        out[t] = (bits / pixels, float(np.mean(scores)))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder of images of at least 512x512, e.g. ../shared/data/kodak")
    parser.add_argument("--weights", nargs="+", default=[None], help="codec files (default: the shipped model)")
    parser.add_argument("--qualities", type=int, nargs="+", default=[4, 8])
    args = parser.parse_args(argv)
    images = []
    for path in list_images(args.data):
        rgb = read_rgb(path)
        if min(rgb.shape[:2]) >= SIZE:
            images.append(rgb[:SIZE, :SIZE])
    if not images:
        parser.error(f"no image of at least {SIZE}x{SIZE} in {args.data}")
    for weights in args.weights:
        for q in args.qualities:
            codec = fastae.load_codec(quality=q, weights=weights)
            cells = ", ".join(f"{t}x{t} tiles {bpp:.3f} bpp {db:.2f} dB" for t, (bpp, db) in tile_rates(codec, images).items())
            print(f"{codec.model_id} quality {q}: {cells} ({len(images)} images)")


if __name__ == "__main__":
    main()
