"""Encoder-side refinement and side search (fastae.codec.refine) on tiny models: files any decoder reads."""

import math
import re

import numpy as np
import pytest
import torch

import fastae
from fastae.codec.api import Codec
from fastae.codec.format import read_header
from fastae.models.codec import HyperpriorCodec
from tests._codec import photo


@pytest.mark.slow
def test_refine_writes_files_the_plain_decoder_reads(tiny_codec):
    """Refinement changes only the encoder: its files decode with a codec that does not refine, to
    exactly the refining codec's reconstruction; they are deterministic; and the latents kept are
    never rated worse by the model than the unrefined ones (the best of the steps is kept)."""
    from fastae.codec.refine import _costs, refine_latents

    rgb = photo((37, 70))
    refined = Codec(tiny_codec._loaded, tiny_codec.quality, refine=6)
    assert "refine=6" in repr(refined) and refined.with_quality(1).refine == 6
    data = refined.compress(rgb)
    assert refined.compress(rgb) == data
    assert np.array_equal(tiny_codec.decompress(data), refined.reconstruct(rgb))
    assert read_header(data).latent_shapes == read_header(tiny_codec.compress(rgb)).latent_shapes
    model = tiny_codec.model
    x = tiny_codec._pad(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)
    with torch.no_grad():
        y0 = model.analysis(x, 2)
        z0 = model.h_a(y0) if isinstance(model, HyperpriorCodec) else None
    y, z = refine_latents(model, x, y0, 2, 6, 37, 70)
    assert (z is None) == (z0 is None) and y.shape == y0.shape
    with torch.no_grad():
        before = _costs(model, x, y0, z0, 2, 37, 70, torch.zeros_like(y0))[0]
        after = _costs(model, x, y, z, 2, 37, 70, torch.zeros_like(y0))[0]
    assert after.item() <= before.item()


@pytest.mark.parametrize("bad", [-1, 1.5, "50", True])
def test_refine_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=re.escape(f"refine must be a number of steps >= 0 (0: off), got {bad!r}")):
        fastae.load_codec(quality=1, refine=bad)


def test_latent_bits_and_the_search_trigger_against_a_direct_computation():
    """latent_bits is -log2 of the discretized Gaussian's mass (scale bounded below at 0.11, mass at
    1e-9), written here with math.erf; an image is searched when its latents of more than 16 bits
    carry at least 5% of its bits."""
    from fastae.codec.refine import OUTLIER_BITS, SEARCH_SHARE, latent_bits, needs_side_search

    def bits(v, s):
        s = max(s, 0.11)
        cdf = lambda t: 0.5 * (1 + math.erf(t / (s * math.sqrt(2))))  # noqa: E731
        return -math.log2(max(cdf(v + 0.5) - cdf(v - 0.5), 1e-9))

    values = torch.tensor([0.0, 1.0, -2.0, 3.0, 0.0], dtype=torch.float64)
    scales = torch.tensor([1.0, 0.5, 0.05, 0.11, -3.0], dtype=torch.float64)
    got = latent_bits(values, scales)
    assert got.tolist() == pytest.approx([bits(v, s) for v, s in zip(values.tolist(), scales.tolist())], rel=1e-9)
    assert got[2] > OUTLIER_BITS and got[1] < OUTLIER_BITS
    # image 0: one outlier among latents of 1.39 bits; its share decides, either side of SEARCH_SHARE
    plain = bits(0, 1.0)
    outlier = bits(3, 0.11)
    n_below = math.ceil(outlier * (1 - SEARCH_SHARE) / (SEARCH_SHARE * plain)) + 1  # share just under 5%
    n_above = math.floor(outlier * (1 - SEARCH_SHARE) / (SEARCH_SHARE * plain)) - 1  # just over
    rows = []
    for n in (n_below, n_above, n_above):
        v = torch.zeros(1, 1, 1, n_below + 1, dtype=torch.float64)
        s = torch.full_like(v, 1.0)
        v[..., n:] = 0
        s[..., n + 1:] = 0.11  # the latents after it: zeros at the smallest scale, 1e-5 bits each
        v[..., n] = 3
        s[..., n] = 0.11
        rows.append((v, s))
    rows[2][0][..., :] = 0  # no outlier at all
    flags = needs_side_search(torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows]))
    assert flags.tolist() == [False, True, False]


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_search_side_never_rates_worse_and_the_plain_decoder_reads_its_files(tiny_codec, precision):
    """search_side returns per image hyper-latents whose rounded value the model (in the search's
    precision) rates at no more bits than the analysis' own; a file written with side search on
    decodes with a codec that has it off, to the searching codec's reconstruction; compressing
    twice gives the same bytes."""
    from fastae.codec.refine import latent_bits, search_side

    model = tiny_codec.model
    if not isinstance(model, HyperpriorCodec):
        pytest.skip("a factorized model has no hyper-latents")
    rgb = photo((64, 128))
    x = torch.from_numpy(np.stack([rgb, rgb[::-1].copy()])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        y = model.analysis(x, 2)
        z0 = model.h_a(y)

    def rated(z):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            z_hat = torch.round(z)
            means, scales = model.entropy_parameters(z_hat, y)
            bits_z = -torch.log2(model.priors[1].likelihood(z_hat)).sum((1, 2, 3))
            return latent_bits(torch.round(y - means), scales).sum((1, 2, 3)) + bits_z

    z = search_side(model, y, z0, 2, steps=4, lr=0.5, precision=precision)
    assert z.shape == z0.shape and not torch.equal(torch.round(z), torch.round(z0))  # it moved somewhere
    assert (rated(z) <= rated(z0)).all()
    searching = Codec(tiny_codec._loaded, tiny_codec.quality, side_search=True, precision=precision)
    plain = Codec(tiny_codec._loaded, tiny_codec.quality, side_search=False, precision=precision)
    assert "side_search=False" in repr(plain) and "side_search" not in repr(searching)
    assert plain.with_quality(1).side_search is False
    data = searching.compress(rgb)
    assert searching.compress(rgb) == data
    assert np.array_equal(plain.decompress(data), searching.reconstruct(rgb))


@pytest.mark.parametrize("bad", ["float16", "bf16", None])
def test_search_side_rejects_unknown_precisions(bad):
    from fastae.codec.refine import search_side

    model = fastae.load_codec(quality=1).model
    y, z = torch.zeros(1, model.M, 4, 4), torch.zeros(1, model.N, 1, 1)
    with pytest.raises(ValueError, match=re.escape(f"precision must be 'float32' or 'bfloat16', got {bad!r}")):
        search_side(model, y, z, 1, precision=bad)


@pytest.mark.parametrize("bad", [0, 1, "yes", None])
def test_side_search_rejects_non_booleans(bad):
    with pytest.raises(ValueError, match=re.escape(f"side_search must be True or False, got {bad!r}")):
        fastae.load_codec(quality=1, side_search=bad)


def test_coding_does_not_import_torch_dynamo():
    """Compressing and decompressing with the shipped model, the side search included, stays off
    torch.optim and the custom-op wrappers, which import torch._dynamo (3-4 s) on first use."""
    import subprocess
    import sys

    code = """
import sys
import numpy as np
import torch
from fastae.codec.api import load_codec
from fastae.codec.refine import search_side
codec = load_codec(quality=2)
image = (np.random.RandomState(0).rand(64, 80, 3) * 255).astype(np.uint8)
codec.decompress(codec.compress(image))
model = codec.model
with torch.inference_mode():
    y = model.g_a(torch.rand(1, 3, 128, 128))
    z = model.h_a(y)
search_side(model, y, z, 2)
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
