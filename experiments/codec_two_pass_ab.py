"""The integer checkerboard context's two passes (IntegerCheckerboardContext.two_pass_int) three
ways, in one process, alternating: "before" (the code of 2026-12-03's main, copied below: int64
sums of each pass, a concatenation per pass, torch's requantization, a where), "torch glue" (the
current code with fastae._C's int_requantize and int_add_clamp switched off) and "native glue"
(the current code). The same files and pixels are asserted; medians in ms of the two passes alone
on one image's hyper output, and of whole decompressions of the first 12 Kodak images. The
training (if any) should be paused: the two cores are easily disturbed.

    python experiments/codec_two_pass_ab.py [--rounds 3]
"""

import argparse
import time

import numpy as np
import torch
from PIL import Image

import fastae
from fastae.nn import integer
from fastae.ops import int_conv


def two_pass_before(self, hyper, anchor_values):
    """IntegerCheckerboardContext.two_pass_int as it was (with its _pass_int)."""
    def pass_int(h, hq, aq):
        second = aq is not None
        bound = int(self.context.out_bound)
        if second:
            ctx = self.context.forward_int(aq, self.anchor_plan, x_max=int(self.anchor_bound))
        else:
            ctx = hq.new_zeros(*hq.shape[:3], self.M)
        plan = self.pass_plans[int(second)]
        p = self.params[0].forward_int(torch.cat([hq, ctx], dim=3), plan, x_max=bound)
        p = self.params[1].forward_int(p, plan, x_max=int(self.params[0].out_bound))
        return (h.long() + p).clamp_(-integer._OUT_LIMIT, integer._OUT_LIMIT).int()

    def requantize(x, scale, bound):
        mult, shift = integer.quantize_multiplier(2.0 ** -integer.OUTPUT_FRAC_BITS / scale.double().cpu())
        return int_conv.requantize(x, torch.stack([mult, mult]), shift, -bound, bound, torch.int16)

    h = hyper.permute(0, 2, 3, 1).contiguous()
    hq = requantize(h, self._hyper_scale(), int(self.context.out_bound))
    first = pass_int(h, hq, None)
    means, scales = first.permute(0, 3, 1, 2).split(self.M, dim=1)
    values = anchor_values(means, scales)
    anchors = (values.long().permute(0, 2, 3, 1) << integer.OUTPUT_FRAC_BITS).add_(first[..., :self.M])
    aq = requantize(anchors, self.context.in_scale, int(self.anchor_bound))
    second = pass_int(h, hq, aq)
    own = torch.zeros(h.shape[1:3], dtype=torch.bool, device=h.device)
    own[0::2, 1::2] = own[1::2, 0::2] = True
    return torch.where(own[:, :, None], second, first).permute(0, 3, 1, 2), values


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/kodak")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    fastae.keep_freed_memory()
    codec = fastae.load_codec(quality=4)
    images = [np.array(Image.open(f"{args.data}/kodim{i:02d}.png").convert("RGB")) for i in range(1, 13)]
    files = [codec.compress(im) for im in images]
    pixels = [codec.decompress(f) for f in files]
    ctx = codec.layout.parameters.ctx
    _, latents, _ = codec._read(files[4], 10**9)
    with torch.inference_mode():
        hyper = codec.layout.parameters.h_s.forward_int(latents.side)
    values = latents.values
    current, native = integer.IntegerCheckerboardContext.two_pass_int, int_conv._native_cpu
    modes = {"before": (two_pass_before, native), "torch glue": (current, lambda *a: False),
             "native glue": (current, native)}
    passes, decodes = {m: [] for m in modes}, {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode, (fn, check) in modes.items():
            integer.IntegerCheckerboardContext.two_pass_int, int_conv._native_cpu = fn, check
            with torch.inference_mode():
                for _ in range(10):
                    t = time.perf_counter()
                    ctx.two_pass_int(hyper, lambda m, s: values)
                    passes[mode].append(time.perf_counter() - t)
            for f, want in zip(files, pixels):
                t = time.perf_counter()
                got = codec.decompress(f)
                decodes[mode].append(time.perf_counter() - t)
                assert np.array_equal(got, want)
            assert [codec.compress(im) for im in images[:2]] == files[:2]
    integer.IntegerCheckerboardContext.two_pass_int, int_conv._native_cpu = current, native
    for mode in modes:
        print(f"{mode:12s} two passes {1000 * np.median(passes[mode]):6.2f} ms, "
              f"decompress {1000 * np.median(decodes[mode]):6.1f} ms (medians of {len(passes[mode])} / "
              f"{len(decodes[mode])})")


if __name__ == "__main__":
    main()
