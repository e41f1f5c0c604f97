"""linear_act forward and forward+backward beside eager PyTorch, torch.compile and
torch._addmm_activation at autoencoder shapes — the cases of `fastae bench --suite ops`
(fastae/bench/ops.py).

    pytest bench/test_linear_act.py --benchmark-only --benchmark-group-by=group

Each group is one case (activation, mode, shape, dtype); extra_info["tflops_per_s"] counts its
matmuls. On the CPU the cases of `fastae bench --quick` (FASTAE_BENCH_QUICK=0: all of them).
"""

import pytest

from fastae.bench import adapter


@pytest.mark.parametrize("case, impl", adapter.params("ops", match="linear_act"))
def test_linear_act(benchmark, case, impl):
    adapter.run_benchmark(benchmark, case, impl)
