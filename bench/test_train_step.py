"""Training throughput of the MLP autoencoder (784-128-64-128-784, ReLU, sigmoid, MSE): one train
step (forward, backward, Adam) of fastae's MLPAutoencoder beside the same network in plain
torch.nn, eager and torch.compile — the mlp-ae cases of `fastae bench --suite train`
(fastae/bench/train.py).

    pytest bench/test_train_step.py --benchmark-only --benchmark-group-by=group

extra_info["samples_per_s"] is batch / median step time. The conv autoencoder is bench/test_conv_train_step.py.
"""

import pytest

from fastae.bench import adapter


@pytest.mark.parametrize("case, impl", adapter.params("train", match="mlp-ae"))
def test_mlp_ae_train_step(benchmark, case, impl):
    adapter.run_benchmark(benchmark, case, impl)
