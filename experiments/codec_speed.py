"""Seconds to compress and decompress one image with the codec, whole files (entropy coding included).

The median over the first --images images of a folder, per quality, with the threads torch uses
(the README's figures: 2 threads on the 2-core CPU, nothing else running). --refine STEPS times
compress with encoder-side refinement beside the plain one. --table-flips counts, over the whole
folder at the highest quality asked for, the latents whose Gaussian table float32 entropy
parameters would choose differently from the float64 ones the codec uses (why ``h_s`` and the
context run in float64: fastae/codec/parameters.py). --streams sums, over the whole folder and per
quality, the bytes of each part of the files: a checkerboard model's anchors (streams 0-1), the
other latents (2-3, coded with the context), the hyper-latents (4-5).

--keep-freed-memory runs it as the ``fastae`` command does (``fastae.keep_freed_memory()``: no page
faults for each new large tensor); each line gives the page faults per image either way.

    python experiments/codec_speed.py --data ../shared/data/kodak [--weights FILE] [--qualities 1 4 8]
        [--images 12] [--refine 30] [--table-flips] [--streams] [--keep-freed-memory]
"""

import argparse
import resource
import statistics
import time

import torch

import fastae
from fastae.data import list_images, read_rgb
from fastae.codec.format import unpack


def _median_seconds(fn, items):
    times = []
    for item in items:
        t = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def table_flips(codec, images):
    """(latents whose float32 table index differs from the float64 one, latents) over ``images``."""
    flips = total = 0
    for rgb in images:
        lat = codec.encode(torch.from_numpy(rgb).permute(2, 0, 1)[None])
        anchor_values = lambda means, scales: lat.values  # noqa: E731 (the latents as coded)
        with torch.no_grad():
            _, scales64, _ = codec.layout.parameters(lat.side, anchor_values)
            index64 = codec.model.gaussian.index(scales64)
            hyper = codec.model.h_s(lat.side.float().contiguous())
            params = codec.model.ctx.two_pass(hyper, anchor_values)[0] if codec.model.kind == "checkerboard" else hyper
            index32 = codec.model.gaussian.index(params.chunk(2, 1)[1].double())  # float32 parameters, the same thresholds
        flips += int((index32 != index64).sum())
        total += index64.numel()
    return flips, total


def stream_bytes(codec, images) -> dict:
    """Bytes summed over ``images``: {"files", "anchors", "others", "hyper"} for a checkerboard
    model, {"files", "latents", "hyper"} for a hyperprior one, {"files", "latents"} for a factorized one."""
    names = {6: ("anchors", "others", "hyper"), 4: ("latents", "hyper"), 2: ("latents",)}
    out = {}
    for rgb in images:
        data = codec.compress(rgb)
        streams = unpack(data)[1]
        out["files"] = out.get("files", 0) + len(data)
        for i, name in enumerate(names[len(streams)]):  # each part is a symbol stream and its escapes
            out[name] = out.get(name, 0) + len(streams[2 * i]) + len(streams[2 * i + 1])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder of images, e.g. ../shared/data/kodak")
    parser.add_argument("--weights", help="a codec file (default: the shipped model)")
    parser.add_argument("--qualities", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--images", type=int, default=12, help="time the first N images (default 12)")
    parser.add_argument("--refine", type=int, default=0, help="also time compress with this many refinement steps")
    parser.add_argument("--table-flips", action="store_true", help="count float32/float64 table disagreements")
    parser.add_argument("--streams", action="store_true", help="bytes of each part of the files, per quality")
    parser.add_argument("--keep-freed-memory", action="store_true", help="call fastae.keep_freed_memory() first")
    args = parser.parse_args(argv)
    if args.keep_freed_memory:
        fastae.keep_freed_memory()
    if args.images < 1:
        parser.error(f"--images must be at least 1, got {args.images}")
    paths = list_images(args.data)
    if not paths:
        parser.error(f"no images in {args.data}")
    images = [read_rgb(p) for p in paths]
    timed = images[:args.images]
    threads = torch.get_num_threads()
    for quality in args.qualities:
        codec = fastae.load_codec(quality=quality, weights=args.weights)
        codec.decompress(codec.compress(timed[0]))  # warm-up
        files = [codec.compress(rgb) for rgb in timed]
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        line = (f"quality {quality}: compress {_median_seconds(codec.compress, timed):.3f} s, "
                f"decompress {_median_seconds(codec.decompress, files):.3f} s")
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / len(timed)
        if args.refine:
            refined = fastae.load_codec(quality=quality, weights=args.weights, refine=args.refine)
            line += f", compress with refine={args.refine} {_median_seconds(refined.compress, timed):.2f} s"
        print(f"{line} (median over {len(timed)} images, {threads} threads, {faults:.0f} page faults per image)")
        if args.streams:
            parts = stream_bytes(codec, images)
            line = f"quality {quality}: " + ", ".join(f"{k} {v} B" for k, v in parts.items())
            if "anchors" in parts:
                line += f"; the other latents cost {100 * (parts['others'] / parts['anchors'] - 1):+.1f}% against the anchors"
            print(f"{line} ({len(images)} images)")
    if args.table_flips:
        codec = fastae.load_codec(quality=max(args.qualities), weights=args.weights)
        if codec.model.kind == "factorized":
            print("table flips: a factorized model chooses no tables")
        else:
            flips, total = table_flips(codec, images)
            print(f"quality {max(args.qualities)}: float32 entropy parameters pick another table than float64 "
                  f"for {flips} of {total} latents ({len(images)} images)")


if __name__ == "__main__":
    main()
