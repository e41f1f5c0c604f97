"""linear_bce_loss (the output layer 128->784, its sigmoid and BCE in one op) forward+backward
beside eager `F.binary_cross_entropy_with_logits(F.linear(...))` and its torch.compile — the
linear_bce_loss cases of `fastae bench --suite losses` (fastae/bench/losses.py).

    pytest bench/test_linear_bce_loss.py --benchmark-only --benchmark-group-by=group
    FASTAE_BENCH_QUICK=0 pytest bench/test_linear_bce_loss.py --benchmark-only -k 65536   # with the CPU's peak memory

extra_info["tflops_per_s"] counts the three matmuls (logits, dh, dW); extra_info["peak_MB"] is the
peak memory of one call above its inputs (CUDA; on the CPU outside --quick, a fresh process per row).
"""

import pytest

from fastae.bench import adapter


@pytest.mark.parametrize("case, impl", adapter.params("losses", match="linear_bce_loss"))
def test_linear_bce_loss(benchmark, case, impl):
    adapter.run_benchmark(benchmark, case, impl)
