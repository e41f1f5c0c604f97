"""The side search's time (fastae.codec.refine.search_side) three ways, on the images of a folder
that trigger it: "differentiable" (each step re-quantizing the integer layers' weights inside the
autograd graph, as before constant_weights), "float32" (weights quantized once: what
precision="float32" runs) and "bfloat16" (also the convolutions under bf16 autocast: what the
default precision runs on a CPU with native bf16). Alternating rounds in one process; per mode the
median seconds per search, and the bits the model estimates for the chosen hyper-latents (rounded)
against those of the analysis' own.

    python experiments/side_search_speed.py --data ../shared/data/kodak [--quality 4] [--rounds 3]
"""

import argparse
import contextlib
import statistics
import time

import torch

import fastae
import fastae.codec.refine as refine
from fastae.codec.refine import latent_bits, needs_side_search, search_side
from fastae.data import list_images, read_rgb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--quality", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    fastae.keep_freed_memory()
    codec = fastae.load_codec(quality=args.quality)
    model, layout, q = codec.model, codec.layout, args.quality
    cases = []
    for path in list_images(args.data):
        x = torch.from_numpy(read_rgb(path)).permute(2, 0, 1)[None].float().div(255)
        with torch.inference_mode(), codec.with_precision("bfloat16")._transforms():
            y = codec._banded_analysis(codec._pad(x).contiguous(memory_format=torch.channels_last), q)
        with torch.inference_mode():
            z = model.h_a(y)
            values, scales = layout._values(y, torch.round(z).to(torch.int32))
            if bool(needs_side_search(values, scales)[0]):
                cases.append((path.name, y, z))
    print(f"{len(cases)} of the images trigger the search: {[name for name, _, _ in cases]}")

    def bits(y, z):
        with torch.inference_mode():
            values, scales = layout._values(y, torch.round(z).to(torch.int32))
            return float(latent_bits(values, scales).sum())

    modes = {"differentiable": ("float32", contextlib.nullcontext), "float32": ("float32", refine.constant_weights),
             "bfloat16": ("bfloat16", refine.constant_weights)}
    times, found = {m: [] for m in modes}, {m: 0.0 for m in modes}
    for r in range(args.rounds):
        for mode, (precision, constant) in modes.items():
            refine.constant_weights = constant
            for _, y, z in cases:
                t = time.perf_counter()
                best = search_side(model, y, z, q, precision=precision)
                times[mode].append(time.perf_counter() - t)
                if r == 0:
                    found[mode] += bits(y, best)
    own = sum(bits(y, z) for _, y, z in cases)
    for mode in modes:
        print(f"{mode:15s} {statistics.median(times[mode]):.3f} s per search (median of {len(times[mode])}), "
              f"latent bits {found[mode]:.0f} (the analysis' own: {own:.0f})")


if __name__ == "__main__":
    main()
