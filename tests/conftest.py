import os

import torch

# Without a GPU the Triton kernels run in the interpreter on CPU tensors. Triton reads this
# when its kernels are defined, so it must be set before fastae.kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains or runs for more than a few seconds (deselect with -m 'not slow')")
