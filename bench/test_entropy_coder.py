"""Entropy coder throughput: fastae's rANS (csrc/rans.cpp) beside constriction's ANS coder, on the
symbols of one Kodak-sized latent (160 channels x 48 x 32 = 245,760 symbols, Laplacian-like tables
from the same integer frequencies), in symbols per second.

    pytest bench/test_entropy_coder.py --benchmark-only --benchmark-group-by=group

fastae's coder is also measured in the layout a hyperprior model codes its latents with
("per-latent": the same symbols as 245,760 rows of one symbol, each with its own table index).

Both coders use the same 16-bit frequency tables and write the same number of bits (within a few
bytes); the extra_info column gives M symbols/s and bits per symbol.
"""

import numpy as np
import pytest

from fastae.benchmark import coder_data
from fastae.codec import rans

CHANNELS, LENGTH = 160, 48 * 32  # as fastae.benchmark.coder_data


@pytest.fixture(scope="module")
def data():
    symbols, cdfs, index = coder_data()
    sizes = (cdfs < 65536).sum(1)  # a table's size: its entries below the total
    return symbols, cdfs, sizes, index


def _record(benchmark, n, nbytes):
    benchmark.extra_info["Msymbols_per_s"] = n / benchmark.stats.stats.median / 1e6
    benchmark.extra_info["bits_per_symbol"] = nbytes * 8 / n


@pytest.mark.skipif(not rans.native_available(), reason="fastae._C is not loaded")
@pytest.mark.parametrize("impl", ["fastae-rans"])
@pytest.mark.parametrize("layout", ["per-channel", "per-latent"])
@pytest.mark.parametrize("direction", ["encode", "decode"])
def test_fastae_rans(benchmark, data, impl, layout, direction):
    symbols, cdfs, _, index = data
    length = LENGTH
    if layout == "per-latent":
        symbols, index, length = symbols.reshape(-1, 1), np.repeat(index, LENGTH).astype(np.int32), 1
    benchmark.group = f"entropy coder {direction}"
    stream = rans.encode(symbols, cdfs, index)
    if direction == "encode":
        benchmark(rans.encode, symbols, cdfs, index)
    else:
        out = benchmark(rans.decode, stream, cdfs, index, length)
        assert np.array_equal(out.numpy(), symbols)
    _record(benchmark, symbols.size, len(stream))


@pytest.mark.parametrize("impl", ["constriction"])
@pytest.mark.parametrize("direction", ["encode", "decode"])
def test_constriction(benchmark, data, impl, direction):
    constriction = pytest.importorskip("constriction")
    symbols, cdfs, sizes, _ = data
    benchmark.group = f"entropy coder {direction}"
    models = [constriction.stream.model.Categorical(np.diff(cdfs[c])[:sizes[c]] / 65536.0, perfect=False)
              for c in range(CHANNELS)]

    def encode():
        coder = constriction.stream.stack.AnsCoder()
        for c in range(CHANNELS - 1, -1, -1):
            coder.encode_reverse(symbols[c], models[c])
        return coder.get_compressed()

    def decode(compressed):
        coder = constriction.stream.stack.AnsCoder(compressed)
        return [coder.decode(models[c], LENGTH) for c in range(CHANNELS)]

    compressed = encode()
    if direction == "encode":
        benchmark(encode)
    else:
        out = benchmark(decode, compressed)
        assert all(np.array_equal(o, symbols[c]) for c, o in enumerate(out))
    _record(benchmark, symbols.size, compressed.nbytes)
