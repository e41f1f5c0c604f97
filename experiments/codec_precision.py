"""PSNR and rate of the codec's bf16 path against its exact float32 path, per quality.

Each image is compressed and decompressed twice, once with ``precision="bfloat16"`` on both sides
and once with ``precision="float32"`` on both sides (the analysis' precision changes a few latents
too, so the rates may differ slightly); the JSON has the mean PSNR and bpp of each path per quality
and their differences, and the latents' agreement: the bf16 file decoded under float32 gives the
latents the bf16 decoder reads (they do not depend on the transforms' precision).

    python experiments/codec_precision.py --data ../shared/data/kodak --output precision.json
"""

import argparse
import json
import platform
import time

import numpy as np
import torch
from tqdm.auto import tqdm

import fastae
from fastae._io import write_text
from fastae.codec.metrics import psnr
from fastae.data import list_images, read_rgb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder of images, e.g. ../shared/data/kodak")
    parser.add_argument("--model", default=fastae.codec.DEFAULT_MODEL)
    parser.add_argument("--qualities", type=int, nargs="+", default=list(range(1, 9)))
    parser.add_argument("--output", required=True, help="the results JSON")
    args = parser.parse_args(argv)
    paths = list_images(args.data)
    if not paths:
        parser.error(f"no images in {args.data}")
    images = [read_rgb(p) for p in paths]
    rows = []
    bar = tqdm(total=len(args.qualities) * len(images), desc="precision", dynamic_ncols=True)
    for q in args.qualities:
        fast = fastae.load_codec(quality=q, model=args.model, precision="bfloat16")
        exact = fast.with_precision("float32")
        per = {"bfloat16": ([], []), "float32": ([], [])}
        same_latents = 0
        for rgb in images:
            pixels = rgb.shape[0] * rgb.shape[1]
            for name, codec in (("bfloat16", fast), ("float32", exact)):
                data = codec.compress(rgb)
                per[name][0].append(psnr(rgb, codec.decompress(data)))
                per[name][1].append(len(data) * 8 / pixels)
                if name == "bfloat16":
                    a, b = fast._read(data, 1 << 30)[1], exact._read(data, 1 << 30)[1]
                    same_latents += bool(torch.equal(a.values, b.values) and torch.equal(a.side, b.side))
            bar.update(1)
        row = {"quality": q, "images": len(images), "same_latents_either_decoder": same_latents}
        for name, (p, r) in per.items():
            row[name] = {"psnr": float(np.mean(p)), "bpp": float(np.mean(r))}
        row["psnr_bf16_minus_fp32"] = row["bfloat16"]["psnr"] - row["float32"]["psnr"]
        row["bpp_bf16_over_fp32"] = row["bfloat16"]["bpp"] / row["float32"]["bpp"] - 1
        rows.append(row)
        bar.write(f"quality {q}: PSNR bf16 {row['bfloat16']['psnr']:.3f} fp32 {row['float32']['psnr']:.3f} "
                  f"({row['psnr_bf16_minus_fp32']:+.4f} dB), bpp {row['bpp_bf16_over_fp32']:+.3%}")
    bar.close()
    meta = {"command": "python experiments/codec_precision.py " + " ".join(argv or __import__("sys").argv[1:]),
            "model": args.model, "data": args.data, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_text(args.output, json.dumps({"rows": rows, "meta": meta}, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
