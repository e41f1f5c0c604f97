"""Entropy coder throughput: fastae's rANS (csrc/rans.cpp) beside constriction's ANS coder when it
is installed, on the symbols of one Kodak-sized latent (160 channels x 48 x 32 = 245,760 symbols,
Laplacian-like tables from the same 16-bit frequencies) — the entropy coder cases of
`fastae bench --suite codec` (fastae/bench/codec.py).

    pytest bench/test_entropy_coder.py --benchmark-only --benchmark-group-by=group

Per channel (160x1536: a row of symbols per table, as a factorized model codes) and per latent
(245760x1: each symbol with its own table index, as a hyperprior model codes). extra_info gives
Msymbols_per_s and bits_per_symbol.
"""

import pytest

from fastae.bench import adapter


@pytest.mark.parametrize("case, impl", adapter.params("codec", match="entropy coder"))
def test_entropy_coder(benchmark, case, impl):
    adapter.run_benchmark(benchmark, case, impl)
