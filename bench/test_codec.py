"""Image codec throughput: batched encode / decode transforms and whole-file compress / decompress
(entropy coding included), in images/s and MB/s of raw RGB, per batch size — the image cases of
`fastae bench --suite codec` (fastae/bench/codec.py).

    pytest bench/test_codec.py --benchmark-only --benchmark-group-by=group

The codec is the shipped model (fastae/codec/weights/), or the file named by FASTAE_CODEC_WEIGHTS
(written by `fastae train codec`); without either every test skips, saying so. Images: the Kodak
set beside the repository (../shared/data/kodak) or FASTAE_BENCH_IMAGES, else synthetic smooth
images. On the CPU the shapes are small (256x384, batch 1 and 2); on a GPU Kodak-sized, batch 1/8/32.
The entropy coder alone is bench/test_entropy_coder.py.
"""

import os
from pathlib import Path

import pytest

from fastae.bench import adapter

KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"
IMAGES = os.environ.get("FASTAE_BENCH_IMAGES") or (str(KODAK) if KODAK.is_dir() else None)
PARAMS = adapter.params("codec", match="codec ", codec_weights=os.environ.get("FASTAE_CODEC_WEIGHTS"), images=IMAGES)


@pytest.mark.parametrize("case, impl", PARAMS)
def test_codec(benchmark, case, impl):
    adapter.run_benchmark(benchmark, case, impl, rounds=5 if case.device.type == "cpu" else 20)
