"""linear_bce_loss (the output layer 128->784, its sigmoid and BCE in one op) forward+backward
beside eager `F.binary_cross_entropy_with_logits(F.linear(...))` and its torch.compile — the
linear_bce_loss cases of `fastae bench --suite losses`. Its peak memory is in bench/test_losses.py.

    pytest bench/test_linear_bce_loss.py --benchmark-only --benchmark-group-by=group

extra_info["tflops_per_s"] counts the three matmuls (logits, dh, dW).
"""

import pytest

from fastae import benchmark as fb

PARAMS = [pytest.param(c, impl, id=f"{impl}-{c.name}".replace(" ", "_"))
          for c, impl in fb.pytest_params("losses", match="linear_bce_loss")]


@pytest.mark.parametrize("case, impl", PARAMS)
def test_linear_bce_loss(benchmark, case, impl):
    fb.pytest_benchmark(benchmark, case, impl)
