"""What the side search of a hyperprior codec does to a folder: bytes and PSNR with and without it.

For each quality: the total bytes and the mean PSNR of the files written with
``load_codec(side_search=False)`` and with the search on, the images where the search ran, and
the time of each. ``--share`` and ``--outlier-bits`` override the trigger
(``fastae.codec.refine.SEARCH_SHARE`` and ``OUTLIER_BITS``) and ``--steps`` and ``--lr`` the search's
steps and step size;
choose them on training photos, never on the evaluation images.

    python experiments/codec_side_search.py --data data-2x/photos-train [--weights FILE] [--qualities 1 4 8]
        [--share 0.05] [--outlier-bits 16] [--steps 2] [--lr 0.1]
"""

import argparse
import time


import fastae
import fastae.codec.refine as refine
from fastae.codec.eval import psnr
from fastae.data import list_images, read_rgb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder of images, e.g. data-2x/photos-train")
    parser.add_argument("--weights", help="a hyperprior or checkerboard codec file (default: the shipped model)")
    parser.add_argument("--qualities", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--share", type=float, default=refine.SEARCH_SHARE)
    parser.add_argument("--outlier-bits", type=float, default=refine.OUTLIER_BITS)
    parser.add_argument("--steps", type=int, default=refine.SEARCH_STEPS)
    parser.add_argument("--lr", type=float, default=refine.SEARCH_LR)
    parser.add_argument("--per-image", action="store_true", help="a line for every image the search changed")
    args = parser.parse_args(argv)
    paths = list_images(args.data)
    if not paths:
        parser.error(f"no images in {args.data}")
    images = {}
    for path in paths:
        images[path.name] = read_rgb(path)
    refine.SEARCH_SHARE, refine.OUTLIER_BITS = args.share, args.outlier_bits
    refine.SEARCH_STEPS, refine.SEARCH_LR = args.steps, args.lr
    for q in args.qualities:
        plain = fastae.load_codec(quality=q, weights=args.weights, side_search=False)
        if plain.model.kind == "factorized":
            parser.error("a factorized model has no hyper-latents to search")
        searching = fastae.load_codec(quality=q, weights=args.weights)
        totals = {"off": [0, 0.0, 0.0], "on": [0, 0.0, 0.0]}  # bytes, sum of PSNR, seconds
        changed = []
        for name, rgb in images.items():
            files, scores = {}, {}
            for key, codec in (("off", plain), ("on", searching)):
                began = time.perf_counter()
                files[key] = codec.compress(rgb)
                totals[key][2] += time.perf_counter() - began
                scores[key] = psnr(rgb, plain.decompress(files[key]))
                totals[key][0] += len(files[key])
                totals[key][1] += scores[key]
            if files["on"] != files["off"]:
                changed.append(name)
                if args.per_image:
                    pixels = rgb.shape[0] * rgb.shape[1]
                    print(f"  quality {q} {name}: " + ", ".join(
                        f"search {key} {len(files[key]) * 8 / pixels:.4f} bpp {scores[key]:.2f} dB"
                        for key in ("off", "on")))
        n = len(images)
        (b0, p0, t0), (b1, p1, t1) = totals["off"], totals["on"]
        print(f"quality {q}: search off {b0} B, {p0 / n:.3f} dB, {t0:.2f} s; on {b1} B ({(b1 / b0 - 1) * 100:+.2f}%), "
              f"{p1 / n:.3f} dB, {t1:.2f} s; files changed by the search: {len(changed)} of {n}"
              + (f" ({', '.join(changed)})" if changed else ""))


if __name__ == "__main__":
    main()
