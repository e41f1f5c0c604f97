"""How far the integer entropy networks (fastae.nn.integer), converted from the shipped model's
float h_s and checkerboard context by scale calibration alone (no fine-tuning), are from the
float64 networks the codec runs today: the bytes of the latents' streams coded with the tables
each implies, the share of latents on another table, the means' difference.

--time also times both networks on each Kodak image (their median, thread time at one thread
and wall time at the threads torch uses), the anchors' values given (as the encoder has them).

Calibration: hyper-latents, h_s outputs and decoded anchors of --calib photos from
photos-train (never Kodak), center crops of --crop pixels, at every quality. Evaluation: the
first --images Kodak images at --qualities, the latents' streams (anchors and others, escapes
included) coded by rANS with the codec's Gaussian tables; the hyper-latents (their stream is the
same for both) and the side search are left out.

    python experiments/integer_entropy.py [--data ../shared/data] [--calib 8] [--crop 512] [--images 4]
        [--qualities 1 4 8] [--time]
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastae.codec.image import _code, _read_model_file
from fastae.codec import DEFAULT_MODEL
from fastae.codec.image import WEIGHTS_DIR
from fastae.models.codec import checkerboard
from fastae.nn.integer import (OUTPUT_FRAC_BITS, IntegerCheckerboardContext, IntegerHyperSynthesis,
                               scale_table_index)



def _image(path, crop=None):
    rgb = np.array(Image.open(path).convert("RGB"))
    if crop:
        h, w = rgb.shape[:2]
        top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        rgb = rgb[top:top + crop, left:left + crop]
    h, w = rgb.shape[:2]
    rgb = rgb[:h // 64 * 64, :w // 64 * 64]  # the hyperprior's stride
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


@torch.no_grad()
def calibration_samples(model, paths, qualities, crop):
    """(hyper-latents, h_s outputs, decoded anchors) of each image at each quality, from the float model."""
    zs, hypers, anchors = [], [], []
    for path in paths:
        x = _image(path, crop)
        for q in qualities:
            y = model.analysis(x, q)
            z = torch.round(model.h_a(y))
            hyper = model.h_s(z)
            means = model.ctx(hyper).chunk(2, 1)[0]  # the anchors' means (first pass)
            mask = checkerboard(*y.shape[-2:])
            zs.append(z)
            hypers.append(hyper)
            anchors.append((torch.round(y - means) + means) * mask)
    return zs, hypers, anchors


def _stream_bytes(values, index, gaussian):
    mask = checkerboard(*values.shape[-2:]).expand_as(values)
    total = 0
    for part in (mask, ~mask):
        total += sum(len(s) for s in _code(values[part][:, None].cpu(), gaussian, index[part].cpu()))
    return total


@torch.no_grad()
def compare(loaded, hs, ctx, x, quality):
    model = loaded.model
    gaussian, thresholds = loaded.gaussian, loaded.gaussian[4]
    y = model.analysis(x, quality).double()
    side = torch.round(model.h_a(y.float())).to(torch.int32)
    # float64, as fastae.codec.image.Codec._entropy
    hyper64 = loaded.h_s64(side.double())
    params64, values64 = loaded.ctx64.two_pass(hyper64, lambda m, s: torch.round(y - m))
    means64, scales64 = params64.chunk(2, 1)
    index64 = torch.searchsorted(thresholds, scales64.contiguous()).to(torch.int32)
    # integers
    unit = 2.0 ** -OUTPUT_FRAC_BITS
    params, values = ctx.two_pass_int(hs.forward_int(side), lambda m, s: torch.round(y - m.double() * unit).int())
    means, scales = params.split(model.M, dim=1)
    index = scale_table_index(scales, thresholds)
    values = torch.round(y - means.double() * unit).int()
    values64 = torch.round(y - means64).int()
    return {"bytes64": _stream_bytes(values64, index64, gaussian), "bytes_int": _stream_bytes(values, index, gaussian),
            "other_table": float((index != index64).float().mean()),
            "mean_abs_diff": float((means.double() * unit - means64).abs().mean()),
            "latents": values.numel()}


def _median_ms(fn, clock, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return 1e3 * statistics.median(times)


@torch.no_grad()
def time_networks(loaded, hs, ctx, x, quality):
    """{(network, clock): median ms} of the float64 and the integer entropy networks on one image."""
    model = loaded.model
    y = model.analysis(x, quality).double()
    side = torch.round(model.h_a(y.float())).to(torch.int32)
    values = torch.round(y).int()

    def float64():
        loaded.ctx64.two_pass(loaded.h_s64(side.double()), lambda m, s: values.double())

    def integer():
        ctx.two_pass_int(hs.forward_int(side), lambda m, s: values)

    threads = torch.get_num_threads()
    out = {}
    for name, fn in (("float64", float64), ("integer", integer)):
        out[name, "wall"] = _median_ms(fn, time.perf_counter)
        torch.set_num_threads(1)
        out[name, "thread"] = _median_ms(fn, time.thread_time)
        torch.set_num_threads(threads)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="holding photos-train/ and kodak/")
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--qualities", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--weights", default=str(WEIGHTS_DIR / f"{DEFAULT_MODEL}.safetensors"))
    ap.add_argument("--time", action="store_true", help="also time both networks")
    args = ap.parse_args()
    loaded = _read_model_file(args.weights, "cpu")
    model = loaded.model.to(memory_format=torch.contiguous_format)
    calib = sorted((args.data / "photos-train").glob("*.png"))[:args.calib]
    zs, hypers, anchors = calibration_samples(model, calib, range(1, model.qualities + 1), args.crop)
    hs = IntegerHyperSynthesis.from_float(model.h_s, zs)
    ctx = IntegerCheckerboardContext.from_float(model.ctx, hypers, anchors)
    kodak = sorted((args.data / "kodak").glob("*.png"))[:args.images]
    for q in args.qualities:
        rows = [compare(loaded, hs, ctx, _image(p), q) for p in kodak]
        b64, bint = sum(r["bytes64"] for r in rows), sum(r["bytes_int"] for r in rows)
        latents = sum(r["latents"] for r in rows)
        print(f"quality {q}: latent streams {b64} bytes (float64) -> {bint} bytes (integer), "
              f"{100 * (bint / b64 - 1):+.2f}%; latents on another table "
              f"{100 * sum(r['other_table'] * r['latents'] for r in rows) / latents:.2f}%; "
              f"mean |means difference| {sum(r['mean_abs_diff'] * r['latents'] for r in rows) / latents:.4f}",
              flush=True)
    if args.time:
        runs = [time_networks(loaded, hs, ctx, _image(p), args.qualities[-1]) for p in kodak]
        for key in runs[0]:
            print(f"{key[0]} entropy networks, {key[1]} time: median {statistics.median(r[key] for r in runs):.1f} ms "
                  f"per image ({torch.get_num_threads()} threads for wall time)", flush=True)


if __name__ == "__main__":
    main()
