"""Training throughput of the conv autoencoder (1x28x28, channels 32, 64, latent 32): one train
step (forward, backward, Adam) of fastae's ConvAutoencoder beside the same network in plain
torch.nn, eager and torch.compile — the conv-ae cases of `fastae bench --suite train`
(fastae/bench/train.py).

    pytest bench/test_conv_train_step.py --benchmark-only --benchmark-group-by=group

extra_info["samples_per_s"] is batch / median step time. The MLP autoencoder is bench/test_train_step.py.
"""

import pytest

from fastae.bench import adapter


@pytest.mark.parametrize("case, impl", adapter.params("train", match="conv-ae"))
def test_conv_ae_train_step(benchmark, case, impl):
    adapter.run_benchmark(benchmark, case, impl)
