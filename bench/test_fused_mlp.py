"""fastae.ops.fused_mlp: the MLP autoencoder's network (784-128-64-128-784, ReLU, sigmoid) forward and
backward as one op per fastae backend, beside the same nn.Sequential eager and torch.compile — the
fused_mlp cases of `fastae bench --suite train` (fastae/bench/train.py).

    pytest bench/test_fused_mlp.py --benchmark-only --benchmark-group-by=group
"""

import pytest

from fastae.bench import adapter


@pytest.mark.parametrize("case, impl", adapter.params("train", match="fused_mlp"))
def test_fused_mlp_fwd_bwd(benchmark, case, impl):
    adapter.run_benchmark(benchmark, case, impl)
