"""The codec's table index by fastae._C's grid lookup against torch.searchsorted: the first 12
Kodak images compressed (same bytes either way, asserted) and decompressed, three alternating
rounds in one process, medians in ms. fastae.keep_freed_memory() first, as the fastae command runs.

    python experiments/codec_index_ab.py
"""
import time

import numpy as np
from PIL import Image

import fastae
from fastae.codec import entropy
fastae.keep_freed_memory()
codec = fastae.load_codec(quality=4)
imgs = [np.array(Image.open(f'../shared/data/kodak/kodim{i:02d}.png').convert('RGB')) for i in range(1,13)]
files = [codec.compress(im) for im in imgs]
orig = entropy.GaussianConditional._lookup_grid
res = {'searchsorted': ([], []), 'grid': ([], [])}
for r in range(3):
    for mode in res:
        entropy.GaussianConditional._lookup_grid = (lambda self: False) if mode == 'searchsorted' else orig
        for im, f in zip(imgs, files):
            t = time.perf_counter(); d = codec.compress(im); res[mode][0].append(time.perf_counter() - t)
            assert d == f
            t = time.perf_counter(); codec.decompress(f); res[mode][1].append(time.perf_counter() - t)
for mode, (c, d) in res.items():
    print(mode, 'compress med ms', round(1000 * np.median(c), 1), 'decompress med ms', round(1000 * np.median(d), 1))
