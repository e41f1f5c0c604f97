import os

import pytest
import torch

# Without a GPU the Triton kernels run in the interpreter on CPU tensors. Triton reads this
# when its kernels are defined, so it must be set before fastae.kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: runs on a CUDA device (`pytest -m cuda` selects every such case): "
                                       "added to the cuda and triton backend cases where CUDA is present; a test "
                                       "marked by hand skips where it is not")
    config.addinivalue_line("markers", "slow: takes more than a few seconds (`pytest -m 'not slow'` leaves them out)")


def pytest_collection_modifyitems(config, items):
    gpu = torch.cuda.is_available()
    for item in items:
        backend = item.callspec.params.get("backend") if hasattr(item, "callspec") else None
        if gpu and backend in ("cuda", "triton"):  # tests._util.device_for puts both on the GPU
            item.add_marker(pytest.mark.cuda)
        elif not gpu and item.get_closest_marker("cuda") is not None:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
