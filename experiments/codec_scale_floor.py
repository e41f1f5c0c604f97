"""Bytes of a folder's files when a hyperprior codec never codes with its smallest Gaussian tables.

A floor of k tables sends every latent whose predicted scale would choose one of the k smallest
tables to table k instead (the same rule in the encoder and the decoder, set here on the loaded
codec only: the shipped file is not changed). Prints the total bytes per floor and quality;
choose a floor on training photos, never on the evaluation images. The codec codes the analysis'
own hyper-latents (side_search=False), so that the floor alone moves the bytes.

    python experiments/codec_scale_floor.py --data data-2x/photos-train [--weights FILE] [--qualities 1 4]
        [--floors 0 1 2 3 4 6 8]
"""

import argparse
import copy

import numpy as np

import fastae
from fastae.data import list_images, read_rgb


def floored(codec, k: int):
    """``codec`` set to code with table k where its thresholds would choose a smaller one (on a
    copy of its layout and Gaussian: codecs of the same file share the cached model)."""
    codec.layout = copy.copy(codec.layout)
    codec.layout.gaussian = gaussian = copy.deepcopy(codec.layout.gaussian)
    thresholds = gaussian.tables["thresholds"].clone()
    thresholds[:k] = -float(np.finfo(np.float64).max)
    gaussian.load_tables({**gaussian.tables, "thresholds": thresholds})
    return codec


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder of images, e.g. data-2x/photos-train")
    parser.add_argument("--weights", help="a hyperprior or checkerboard codec file (default: the shipped model)")
    parser.add_argument("--qualities", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--floors", type=int, nargs="+", default=[0, 1, 2, 3, 4, 6, 8])
    args = parser.parse_args(argv)
    paths = list_images(args.data)
    if not paths:
        parser.error(f"no images in {args.data}")
    images = []
    for path in paths:
        images.append(read_rgb(path))
    for q in args.qualities:
        cells = []
        for k in args.floors:
            codec = fastae.load_codec(quality=q, weights=args.weights, side_search=False)
            if codec.model.kind == "factorized":
                parser.error("a factorized model has no Gaussian tables")
            floored(codec, k)
            scale = float(codec.layout.gaussian.tables["scales"][k])
            cells.append(f"floor {k} (scale {scale:.3f}): {sum(len(codec.compress(x)) for x in images)} B")
        print(f"quality {q}: " + ", ".join(cells) + f" ({len(images)} images)")


if __name__ == "__main__":
    main()
