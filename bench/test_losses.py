"""reconstruction_loss (every kind) and gaussian_kl forward+backward beside eager PyTorch and
torch.compile — those cases of `fastae bench --suite losses` (fastae/bench/losses.py); on CUDA each
row's peak memory too. linear_bce_loss is bench/test_linear_bce_loss.py.

    pytest bench/test_losses.py --benchmark-only --benchmark-group-by=group

extra_info["GB_per_s"] counts the least traffic any fwd+bwd must make: read the inputs, write the gradients.
"""

import pytest

from fastae.bench import adapter


@pytest.mark.parametrize("case, impl", adapter.params("losses", match="reconstruction_loss"))
def test_reconstruction_loss(benchmark, case, impl):
    adapter.run_benchmark(benchmark, case, impl)


@pytest.mark.parametrize("case, impl", adapter.params("losses", match="gaussian_kl"))
def test_gaussian_kl(benchmark, case, impl):
    adapter.run_benchmark(benchmark, case, impl)
